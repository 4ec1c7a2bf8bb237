#!/usr/bin/env python3
"""PromQL and metric-name checks for the Grafana dashboards and the alert rules.

    promql_metrics.py --promtool PATH [--metrics-dump DIR]

Prints one line per check, `PASS name: detail` or `FAIL name: detail`, and exits 1 on any FAIL:

- promql/<dashboard>: every PromQL expression of the dashboard (panels, template variables'
  label_values selectors, annotations), Grafana variables substituted, parsed by promtool (as
  recording rules in a temporary rules file: `promtool check rules` parses each expression).
- metrics/known: every metric name used by a dashboard or an alert is listed in
  grafana/metrics.txt.
- metrics/in-code: every `tickflow` metric of metrics.txt appears as a string in the Rust
  sources (services/*/src, shared/src); `tickflow-pending` ones that are not there yet are
  listed, and a pending one that is there is flagged so the marker is dropped.
- metrics/dump (with --metrics-dump DIR): every tickflow metric used is present in the
  /metrics text dumps in DIR (files of `curl -s host:port/metrics` output).
- metrics/help (with --metrics-dump DIR): every tickflow metric in the dumps carries a
  `# HELP` text (a service that describes its metrics before the recorder exists exports none).
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARDS = os.path.join(ROOT, "grafana", "dashboards")
ALERTS = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
METRICS = os.path.join(ROOT, "grafana", "metrics.txt")
PROM_UID = "tickflow-prometheus"

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2", "start", "end"}
SUFFIXES = {"summary": ("_sum", "_count"), "histogram": ("_sum", "_count", "_bucket")}

failures = 0


def report(ok, name, detail):
    global failures
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures += 1


def substitute(expr):
    """Replaces Grafana's variables with values PromQL accepts."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}", "5m", expr)
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::[^}]*)?\}|\$[A-Za-z_][A-Za-z0-9_]*", "x", expr)


def metric_names(expr):
    """The metric names an expression selects (a small PromQL lexer, not a parser)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_exprs(path):
    """(where, expr) for every PromQL expression in one dashboard JSON."""
    with open(path, encoding="utf-8") as handle:
        board = json.load(handle)
    out = []

    def is_prom(obj, default=False):
        ds = obj.get("datasource") or {}
        return ds.get("uid") == PROM_UID if isinstance(ds, dict) else default

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target and is_prom(target, is_prom(panel)):
                    out.append((f"panel '{panel.get('title')}' {target.get('refId')}", target["expr"]))
            walk(panel.get("panels", []))

    walk(board.get("panels", []))
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.match(r"\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*$", query or "")
        if match:
            out.append((f"variable '{var['name']}'", match.group(1)))
    for ann in board.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append((f"annotation '{ann.get('name')}'", ann["expr"]))
    return out


def alert_exprs():
    with open(ALERTS, encoding="utf-8") as handle:
        rules = yaml.safe_load(handle)
    return [(f"alert {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


def promtool_parse(promtool, label, exprs):
    rules = {"groups": [{"name": "parse", "rules": [
        {"record": f"tickflow_check:expr_{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump(rules, handle, sort_keys=False)
        path = handle.name
    try:
        result = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if result.returncode == 0:
        report(True, f"promql/{label}", f"{len(exprs)} expressions parsed by promtool")
        return
    detail = (result.stdout + result.stderr).strip().replace("\n", " | ")
    for i, (where, _) in enumerate(exprs):
        detail = detail.replace(f"tickflow_check:expr_{i}", where)
    report(False, f"promql/{label}", detail)


def load_known():
    known = {}
    with open(METRICS, encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line:
                name, kind, source = line.split()[:3]
                known[name] = (kind, source)
    return known


def resolve(name, known):
    """The metrics.txt entry a used name belongs to (a summary's _sum/_count included)."""
    if name in known:
        return name
    for base, (kind, _) in known.items():
        for suffix in SUFFIXES.get(kind, ()):
            if name == base + suffix:
                return base
    return None


def source_strings():
    text = []
    for path in glob.glob(os.path.join(ROOT, "services", "*", "src", "**", "*.rs"), recursive=True) + \
            glob.glob(os.path.join(ROOT, "shared", "src", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as handle:
            text.append(handle.read())
    return set(re.findall(r'"(tickflow_[a-z0-9_]+)"', "\n".join(text)))


def dump_undescribed(directory):
    """tickflow metric families that have a `# TYPE` line but no `# HELP` line, with the file."""
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*"))):
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        typed = set(re.findall(r"^# TYPE (tickflow_\w+) ", text, re.M))
        helped = set(re.findall(r"^# HELP (tickflow_\w+) ", text, re.M))
        for name in typed - helped:
            out.setdefault(name, os.path.basename(path))
    return out


def dump_names(directory):
    names = set()
    for path in sorted(glob.glob(os.path.join(directory, "*"))):
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("# TYPE "):
                    names.add(line.split()[2])
                elif line and not line.startswith("#"):
                    match = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
                    if match:
                        names.add(match.group(1))
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promtool", required=True)
    parser.add_argument("--metrics-dump", metavar="DIR")
    args = parser.parse_args()

    used = {}  # metric name -> where
    for path in sorted(glob.glob(os.path.join(DASHBOARDS, "*.json"))):
        exprs = dashboard_exprs(path)
        label = os.path.basename(path)
        if not exprs:
            report(False, f"promql/{label}", "no PromQL expression found")
            continue
        promtool_parse(args.promtool, label, exprs)
        for where, expr in exprs:
            for name in metric_names(substitute(expr)):
                used.setdefault(name, f"{label} {where}")
    for where, expr in alert_exprs():
        for name in metric_names(expr):
            used.setdefault(name, f"alerts.yml {where}")

    known = load_known()
    unknown = sorted(f"{name} ({where})" for name, where in used.items() if resolve(name, known) is None)
    report(not unknown, "metrics/known",
           f"{len(used)} metric names used by dashboards and alerts, all in grafana/metrics.txt"
           if not unknown else "not in grafana/metrics.txt: " + "; ".join(unknown))

    in_code = source_strings()
    missing, pending, graduated = [], [], []
    for name, (_, source) in sorted(known.items()):
        if source == "tickflow" and name not in in_code:
            missing.append(name)
        elif source == "tickflow-pending":
            (graduated if name in in_code else pending).append(name)
    detail = f"{sum(1 for _, s in known.values() if s == 'tickflow')} tickflow metrics found in the Rust sources"
    if pending:
        detail += f"; pending, not in the code yet: {', '.join(pending)}"
    if missing:
        report(False, "metrics/in-code", "listed as exported but not in the Rust sources: " + ", ".join(missing))
    elif graduated:
        report(False, "metrics/in-code", "now in the code, drop `-pending` in grafana/metrics.txt: " + ", ".join(graduated))
    else:
        report(True, "metrics/in-code", detail)

    if args.metrics_dump:
        present = dump_names(args.metrics_dump)
        wanted = sorted({resolve(n, known) for n in used if resolve(n, known)
                         and known[resolve(n, known)][1] == "tickflow"})
        absent = [n for n in wanted if n not in present and not any(n + s in present for s in ("_sum", "_count"))]
        report(not absent, "metrics/dump",
               f"{len(wanted)} tickflow metrics used, all in the dumps of {args.metrics_dump}"
               if not absent else "used but absent from the dumps: " + ", ".join(absent))
        undescribed = dump_undescribed(args.metrics_dump)
        report(not undescribed, "metrics/help",
               "every tickflow metric in the dumps has a HELP text" if not undescribed
               else "no # HELP for: " + ", ".join(f"{n} ({f})" for n, f in sorted(undescribed.items())))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
