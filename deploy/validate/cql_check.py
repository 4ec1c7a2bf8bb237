#!/usr/bin/env python3
"""Checks every CQL query of the Grafana dashboards against the schema in shared/cql/*.cql.

    cql_check.py                        static check against shared/cql/*.cql
    cql_check.py --live HOST:PORT       also run every query against a real Cassandra whose
                                        `market` keyspace is migrated (tickflow-admin migrate)

One line per dashboard: PASS, or FAIL with each problem. For each SELECT (Grafana's variables
replaced by sample values of the right type):
- the keyspace is `market` and the table exists in the migrations;
- every selected, cast or restricted column exists, and CASTs target a numeric or text type
  (the Cassandra datasource plugin cannot read `decimal`: prices are CAST(... AS double));
- the read is single-partition: every partition-key column is restricted with `=`, ranges
  apply to clustering columns only, no non-key column is restricted, no ALLOW FILTERING;
- literals fit the column types (date 'YYYY-MM-DD', integers for bigint/int, quoted text).
With --live, each query (variables substituted the same way) is then executed with the
DataStax Python driver: Cassandra itself parses it, resolves every table, column and CAST, and
refuses a multi-partition read without ALLOW FILTERING. scripts/test runs this after the
integration tests against the local stack.
"""

import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CQL_DIR = os.path.join(ROOT, "shared", "cql")
DASHBOARDS = os.path.join(ROOT, "grafana", "dashboards")
CASS_UID = "tickflow-cassandra"
KEYSPACE = "market"
CAST_TARGETS = {"double", "float", "int", "bigint", "text", "varchar", "ascii", "timestamp"}

# Grafana variables and the datasource's macros, replaced by sample values before checking.
SAMPLES = [
    (r"'\$\{__(?:from|to):date:YYYY-MM-DD\}'", "'2026-01-02'"),
    (r"\$\{__(?:from|to)\}000", "1767312000000000"),
    (r"\$__time(?:From|To)", "'2026-01-02 00:00:00+0000'"),
    (r"\$__unixEpoch(?:From|To)", "1767312000"),
    (r"'\$\{?[A-Za-z_]\w*(?::[^}']*)?\}?'", "'BTC-USD'"),
]


def load_schema():
    tables = {}
    for path in sorted(glob.glob(os.path.join(CQL_DIR, "*.cql"))):
        with open(path, encoding="utf-8") as handle:
            text = re.sub(r"--[^\n]*", "", handle.read())
        for match in re.finditer(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\((.*?)\)\s*(?:WITH|;)",
                                 text, re.S | re.I):
            name, body = match.group(1).lower(), match.group(2)
            columns, partition, clustering = {}, [], []
            pk = re.search(r"PRIMARY\s+KEY\s*\((.*)\)\s*$", body.strip(), re.S | re.I)
            if not pk:
                raise SystemExit(f"{path}: table {name}: no PRIMARY KEY clause found")
            for line in body[:pk.start()].split(","):
                parts = line.split()
                if len(parts) >= 2:
                    columns[parts[0].lower()] = parts[1].lower()
            key = pk.group(1).strip()
            if key.startswith("("):
                inner, rest = key[1:].split(")", 1)
                partition = [c.strip().lower() for c in inner.split(",")]
                clustering = [c.strip().lower() for c in rest.split(",") if c.strip()]
            else:
                cols = [c.strip().lower() for c in key.split(",")]
                partition, clustering = cols[:1], cols[1:]
            tables[name] = {"columns": columns, "partition": partition, "clustering": clustering,
                            "file": os.path.basename(path)}
    return tables


def split_top(text, sep):
    """Splits on `sep` (a regex) outside parentheses and quotes."""
    parts, depth, quote, start, i = [], 0, False, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0:
            match = re.match(sep, text[i:], re.I)
            word = sep[0].isalpha()
            if match and (not word or i == 0 or not text[i - 1].isalnum()):
                parts.append(text[start:i])
                i += match.end()
                start = i
                continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def literal_fits(kind, value):
    value = value.strip()
    if kind == "date":
        return re.fullmatch(r"'\d{4}-\d{2}-\d{2}'", value) is not None
    if kind in ("bigint", "int", "smallint", "varint", "counter"):
        return re.fullmatch(r"-?\d+", value) is not None
    if kind in ("text", "varchar", "ascii"):
        return re.fullmatch(r"'(?:[^']|'')*'", value) is not None
    if kind == "timestamp":
        return re.fullmatch(r"'[^']+'|-?\d+", value) is not None
    if kind in ("double", "float", "decimal"):
        return re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", value) is not None
    if kind == "boolean":
        return value.lower() in ("true", "false")
    return True


QUERY = re.compile(
    r"^SELECT\s+(?P<select>.+?)\s+FROM\s+(?P<table>[\w.]+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>.+?))?"
    r"(?:\s+PER\s+PARTITION\s+LIMIT\s+(?P<ppl>\S+))?"
    r"(?:\s+LIMIT\s+(?P<limit>\S+))?"
    r"(?P<filtering>\s+ALLOW\s+FILTERING)?\s*;?\s*$", re.I | re.S)


def substitute(query):
    for pattern, sample in SAMPLES:
        query = re.sub(pattern, sample, query)
    return query


def check_query(query, tables):
    problems = []
    query = substitute(query)
    if "$" in query:
        problems.append(f"unknown Grafana variable or macro left in: {query}")
        return problems
    match = QUERY.match(query.strip())
    if not match:
        return [f"not a SELECT this check understands: {query}"]
    table_ref = match.group("table").lower()
    keyspace, _, table = table_ref.rpartition(".")
    if keyspace != KEYSPACE:
        problems.append(f"{table_ref}: name the keyspace `{KEYSPACE}.` explicitly")
    if table not in tables:
        return problems + [f"no table {table} in shared/cql"]
    schema = tables[table]
    columns = schema["columns"]

    for item in split_top(match.group("select"), r","):
        cast = re.fullmatch(r"CAST\s*\(\s*(\w+)\s+AS\s+(\w+)\s*\)(?:\s+AS\s+\w+)?", item, re.I)
        plain = re.fullmatch(r"(\w+)(?:\s+AS\s+\w+)?", item, re.I)
        if cast:
            column, target = cast.group(1).lower(), cast.group(2).lower()
            if target not in CAST_TARGETS:
                problems.append(f"CAST({column} AS {target}): not a type the dashboards can read")
        elif plain:
            column = plain.group(1).lower()
        elif item == "*":
            continue
        else:
            problems.append(f"selector not understood: {item}")
            continue
        if column not in columns:
            problems.append(f"{table} has no column {column}")
        elif columns[column] == "decimal" and not cast:
            problems.append(f"{column} is decimal: the Cassandra datasource cannot read it, CAST it AS double")

    restricted_eq, ranged, restricted_clustering = set(), [], []
    for cond in split_top(match.group("where") or "", r"AND\s"):
        m = re.fullmatch(r"(\w+)\s*(=|>=|<=|>|<|IN)\s*(.+)", cond, re.I | re.S)
        if not m:
            problems.append(f"condition not understood: {cond}")
            continue
        column, op, value = m.group(1).lower(), m.group(2).upper(), m.group(3)
        if column not in columns:
            problems.append(f"{table} has no column {column}")
            continue
        values = [v.strip() for v in value.strip()[1:-1].split(",")] if op == "IN" else [value]
        for v in values:
            if not literal_fits(columns[column], v):
                problems.append(f"{column} ({columns[column]}) {op} {v.strip()}: literal does not fit the type")
        if column in schema["partition"]:
            if op != "=":
                problems.append(f"partition key {column} restricted with {op}: not a single-partition read")
            restricted_eq.add(column)
        elif column in schema["clustering"]:
            (restricted_eq.add(column) if op == "=" else ranged.append(column))
            restricted_clustering.append(column)
        else:
            problems.append(f"{column} is not a key column of {table}: needs ALLOW FILTERING")
    missing = [c for c in schema["partition"] if c not in restricted_eq]
    if missing:
        problems.append(f"partition key not fully restricted (missing {', '.join(missing)}): not a single-partition read")
    for column in set(restricted_clustering):
        position = schema["clustering"].index(column)
        before = schema["clustering"][:position]
        if any(c not in restricted_eq for c in before):
            problems.append(f"{column} is restricted: the clustering columns before it must be restricted with =")
    if match.group("filtering"):
        problems.append("ALLOW FILTERING: dashboards must read single partitions")
    for name in ("limit", "ppl"):
        if match.group(name) and not match.group(name).isdigit():
            problems.append(f"LIMIT {match.group(name)} is not an integer")
    if match.group("order"):
        for part in match.group("order").split(","):
            column = part.split()[0].lower()
            if column not in schema["clustering"]:
                problems.append(f"ORDER BY {column}: not a clustering column")
    return problems


def dashboard_queries(path):
    with open(path, encoding="utf-8") as handle:
        board = json.load(handle)
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource") or {}
                if isinstance(ds, dict) and ds.get("uid") == CASS_UID:
                    out.append((panel.get("title"), target.get("target", "")))
            walk(panel.get("panels", []))

    walk(board.get("panels", []))
    for var in board.get("templating", {}).get("list", []):
        ds = var.get("datasource") or {}
        if isinstance(ds, dict) and ds.get("uid") == CASS_UID:
            query = var.get("query")
            out.append((f"variable {var['name']}", query.get("query") if isinstance(query, dict) else query))
    return out


def run_live(contact, boards):
    """Executes every dashboard query on the Cassandra at `contact`; one line per dashboard."""
    try:
        from cassandra.cluster import Cluster
    except ImportError:
        print("FAIL cql-live: the Python package cassandra-driver is not installed for this "
              "interpreter (scripts/stack installs it into the stack's venv: run this with "
              "$TICKFLOW_STACK_PYTHON)")
        return 1
    host, _, port = contact.rpartition(":")
    cluster = Cluster([host or contact], port=int(port or 9042), connect_timeout=10)
    try:
        session = cluster.connect()
    except Exception as error:  # the driver raises NoHostAvailable and friends
        print(f"FAIL cql-live: cannot connect to Cassandra at {contact}: {error}")
        return 1
    failed = 0
    try:
        tables = {row.table_name for row in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (KEYSPACE,))}
        if not tables:
            print(f"FAIL cql-live: keyspace {KEYSPACE} has no tables at {contact}: "
                  "apply the migrations first (tickflow-admin migrate)")
            return 1
        version = session.execute("SELECT release_version FROM system.local").one().release_version
        for name, queries in boards:
            problems = []
            for title, query in queries:
                try:
                    session.execute(substitute(query), timeout=10)
                except Exception as error:
                    problems.append(f"'{title}': {type(error).__name__}: {error}")
            if problems:
                failed += 1
                print(f"FAIL cql-live/{name}: " + " | ".join(problems))
            else:
                print(f"PASS cql-live/{name}: {len(queries)} CQL queries ran on Cassandra "
                      f"{version} at {contact} ({len(tables)} tables in {KEYSPACE})")
    finally:
        cluster.shutdown()
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--live", metavar="HOST:PORT")
    args = parser.parse_args()
    tables = load_schema()
    failed = 0
    total = 0
    boards = []
    for path in sorted(glob.glob(os.path.join(DASHBOARDS, "*.json"))):
        queries = dashboard_queries(path)
        total += len(queries)
        if queries:
            boards.append((os.path.basename(path), queries))
        problems = []
        for title, query in queries:
            problems += [f"'{title}': {p}" for p in check_query(query, tables)]
        name = os.path.basename(path)
        if problems:
            failed += 1
            print(f"FAIL cql/{name}: " + " | ".join(problems))
        else:
            print(f"PASS cql/{name}: {len(queries)} CQL queries, tables and columns as in shared/cql "
                  f"({len(tables)} tables), single-partition reads")
    if args.live:
        failed += run_live(args.live, boards)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
