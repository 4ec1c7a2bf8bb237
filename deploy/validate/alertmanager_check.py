#!/usr/bin/env python3
"""Checks where tickflow's alerts go: deploy/alertmanager and the runbooks of deploy/prometheus.

    alertmanager_check.py [--skip-live] [--skip-ansible]

One PASS/FAIL/SKIP line per check, exit 1 on any FAIL:

  alertmanager/runbooks       every alert of alerts.yml has a runbook_url (one base for all) whose
                              page exists in deploy/runbooks and is titled with the alert's name;
                              no page without its alert
  alertmanager/check-config   amtool check-config (the templates included)
  alertmanager/routes         amtool config routes test: every alert of alerts.yml, plus
                              kube-prometheus-stack's, reaches the receivers its severity says
  alertmanager/live           a real Alertmanager on 127.0.0.1 (a free port, a few seconds):
                              alerts posted, then which are inhibited, and which notifications
                              reach the webhook, Slack and PagerDuty (all three pointed at a local
                              sink): grouping, inhibition, templates, and what a resolved cause
                              releases
  alertmanager/ansible-values ansible/roles/observability's values.yaml.j2 rendered as its task
                              does, with and without the vault's secrets: the config is the
                              committed one minus the integrations without a secret, the Secret
                              and its mount come and go with them, and amtool accepts each

amtool and alertmanager come from Debian's prometheus-alertmanager (pinned below), unpacked with
`apt-get download` + `dpkg-deb -x` into the tools directory of scripts/tools.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AM_DIR = os.path.join(ROOT, "deploy", "alertmanager")
CONFIG = os.path.join(AM_DIR, "alertmanager.yml")
ALERTS = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
RUNBOOKS = os.path.join(ROOT, "deploy", "runbooks")
VALUES = os.path.join(ROOT, "ansible", "roles", "observability", "templates", "values.yaml.j2")
DEFAULTS = os.path.join(ROOT, "ansible", "roles", "observability", "defaults", "main.yml")

TOOLS = os.environ.get("TICKFLOW_TOOLS_HOME", os.path.expanduser("~/.cache/tickflow/tools"))
BIN = os.path.join(TOOLS, "bin")
ALERTMANAGER_DEB_VERSION = "0.25.0-1+b4"
# Where the config expects its templates and secrets: the paths of the operator's mounts.
TEMPLATES_DIR = "/etc/alertmanager/config/"
SECRETS_DIR = "/etc/alertmanager/secrets/alertmanager-tickflow-receivers/"

# The routing contract (alerts.yml, "Severities"): what each severity must reach.
RECEIVERS_BY_SEVERITY = {
    "critical": ["tickflow-webhook", "tickflow-page"],
    "warning": ["tickflow-webhook", "tickflow-team"],
    "info": ["discard"],
}
# Alerts that are not in alerts.yml: kube-prometheus-stack's, and one without severity.
EXTRA_ROUTES = [
    ({"alertname": "Watchdog", "severity": "none"}, ["discard"]),
    ({"alertname": "InfoInhibitor", "severity": "none"}, ["discard"]),
    ({"alertname": "KubePodCrashLooping", "severity": "warning", "namespace": "tickflow"},
     ["tickflow-webhook", "tickflow-team"]),
    ({"alertname": "KubeNodeNotReady", "severity": "critical"}, ["tickflow-webhook", "tickflow-page"]),
    ({"alertname": "SomethingWithoutSeverity"}, ["tickflow-team"]),
]

results = []


def report(status, name, detail, output=""):
    results.append(status)
    print(f"{status} {name}: {detail}")
    if output and status == "FAIL":
        for line in output.rstrip().splitlines()[-40:]:
            print(f"    {line}")


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


# --- tools ----------------------------------------------------------------------------------

# Where Debian's alertmanager build reads its default notification templates from.
DEBIAN_TEMPLATES = ["/usr/share/prometheus/alertmanager/default.tmpl",
                    "/usr/share/prometheus/alertmanager/email.tmpl"]


def install_alertmanager():
    """amtool and alertmanager come from scripts/tools (Debian's prometheus-alertmanager)."""
    missing = [b for b in ("amtool", "alertmanager") if not os.access(os.path.join(BIN, b), os.X_OK)]
    if missing:
        return f"{', '.join(missing)} not in {BIN}: run scripts/tools"
    return None


def amtool(*args):
    return run([os.path.join(BIN, "amtool"), *args])


# --- inputs ---------------------------------------------------------------------------------

def load_alerts():
    with open(ALERTS, encoding="utf-8") as handle:
        rules = yaml.safe_load(handle)
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def local_config(work, overrides=None):
    """The committed config with the operator's template path pointed at the repository, so amtool
    parses the real templates; `overrides` edits the parsed config (the live test's sinks)."""
    with open(CONFIG, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["templates"] = [t.replace(TEMPLATES_DIR, AM_DIR + "/") for t in config.get("templates", [])]
    if overrides:
        overrides(config)
    path = os.path.join(work, "alertmanager.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return path


# --- checks ---------------------------------------------------------------------------------

def check_runbooks(alerts):
    problems, bases = [], set()
    pages = {f for f in os.listdir(RUNBOOKS) if f.endswith(".md") and f != "README.md"}
    for rule in alerts:
        name = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url")
        if not url:
            problems.append(f"{name}: no runbook_url annotation")
            continue
        match = re.fullmatch(r"(.*/)deploy/runbooks/([^/#]+\.md)", url)
        if not match:
            problems.append(f"{name}: runbook_url {url} does not end in deploy/runbooks/<page>.md")
            continue
        bases.add(match.group(1))
        page = match.group(2)
        path = os.path.join(RUNBOOKS, page)
        if not os.path.isfile(path):
            problems.append(f"{name}: runbook_url names deploy/runbooks/{page}, which does not exist")
            continue
        pages.discard(page)
        with open(path, encoding="utf-8") as handle:
            title = handle.readline().strip()
        if title != f"# {name}":
            problems.append(f"deploy/runbooks/{page}: first line is {title!r}, not '# {name}'")
    if len(bases) > 1:
        problems.append(f"runbook_urls use several bases: {sorted(bases)}")
    problems += [f"deploy/runbooks/{p}: no alert links to it" for p in sorted(pages)]
    if problems:
        report("FAIL", "alertmanager/runbooks", f"{len(problems)} problem(s)", "\n".join(problems))
    else:
        report("PASS", "alertmanager/runbooks",
               f"{len(alerts)} alerts, each with a runbook page under {next(iter(bases), '?')}deploy/runbooks/")


def check_config(work):
    result = amtool("check-config", local_config(work))
    output = result.stdout + result.stderr
    found = re.search(r"(\d+) inhibit rules.*?(\d+) receivers.*?(\d+) templates", output, re.S)
    if result.returncode != 0 or not found or found.group(3) == "0":
        report("FAIL", "alertmanager/check-config", "amtool check-config deploy/alertmanager/alertmanager.yml", output)
    else:
        report("PASS", "alertmanager/check-config",
               f"amtool check-config: {found.group(1)} inhibit rules, {found.group(2)} receivers, {found.group(3)} template file(s)")


def check_routes(work, alerts):
    config = local_config(work)
    cases = []
    for rule in alerts:
        labels = {"alertname": rule["alert"], **rule.get("labels", {})}
        cases.append((labels, RECEIVERS_BY_SEVERITY[labels["severity"]]))
    cases += EXTRA_ROUTES
    failures = []
    for labels, expected in cases:
        args = [f"{k}={v}" for k, v in labels.items()]
        result = amtool("config", "routes", "test", f"--config.file={config}",
                        f"--verify.receivers={','.join(expected)}", *args)
        if result.returncode != 0:
            # amtool prints the receivers it resolved on stdout, then warnings: keep the former.
            got = result.stdout.strip().splitlines()[0] if result.stdout.strip() else result.stderr.strip()
            failures.append(f"{' '.join(args)}: expected {','.join(expected)}, got {got}")
    if failures:
        report("FAIL", "alertmanager/routes", f"{len(failures)} of {len(cases)} label sets misrouted", "\n".join(failures))
    else:
        report("PASS", "alertmanager/routes",
               f"{len(cases)} label sets reach their receivers (critical: webhook + PagerDuty/Slack, warning: webhook + Slack, info: none)")


class Sink:
    """A local HTTP server standing in for the webhook, Slack and PagerDuty: records every
    notification by path (/webhook, /slack, /pagerduty)."""

    def __init__(self):
        self.received = {"webhook": [], "slack": [], "pagerduty": []}
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink.lock:
                    sink.received.setdefault(self.path.strip("/"), []).append(json.loads(body))
                self.send_response(202 if self.path == "/pagerduty" else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status":"success","message":"ok","dedup_key":"x"}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return json.loads(json.dumps(self.received))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_alerts(api, alerts):
    request = urllib.request.Request(f"{api}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def get_alerts(api):
    with urllib.request.urlopen(f"{api}/api/v2/alerts", timeout=5) as response:
        return json.loads(response.read())


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


def live_scenario(runbook_of):
    """The alerts posted, and what must happen to each. One Kafka outage seen by every service,
    with the symptoms it causes; a Cassandra outage seen by fair-price only; a provider's dead
    connection; and unrelated warnings that must still notify."""
    def alert(name, inhibited, **labels):
        return {"labels": {"alertname": name, **labels},
                "annotations": {"summary": f"{name} {labels}", "runbook_url": runbook_of[name]},
                "inhibited": inhibited}

    crit, warn = {"severity": "critical"}, {"severity": "warning"}
    alerts = [alert("TickflowDependencyDown", False, job=job, instance=f"{job}-0", dependency="kafka", **crit)
              for job in ("ingest-gateway", "normalizer", "trade-aggregator", "fair-price")]
    alerts += [alert("TickflowFairPriceStale", True, instrument=i, **crit) for i in ("BTC-USD", "ETH-USD", "SOL-USD")]
    alerts += [alert("TickflowGatewayKafkaErrors", True, provider="coinbase", error_type="timeout", **crit),
               alert("TickflowConsumerLagHigh", True, job="normalizer", **warn),
               alert("TickflowDependencyDown", False, job="fair-price", instance="fair-price-0", dependency="cassandra", **crit),
               alert("TickflowCassandraWriteErrors", True, job="fair-price", sink="cassandra", error_type="timeout", **warn),
               alert("TickflowCassandraWriteErrors", False, job="trade-aggregator", sink="cassandra_candles", error_type="timeout", **warn),
               alert("TickflowGatewayConnectionDown", False, provider="kraken", connection="kraken-0", **crit),
               alert("TickflowGatewayNoMessages", True, provider="kraken", **warn),
               alert("TickflowGatewayNoMessages", False, provider="coinbase", **warn),
               alert("TickflowSourceRateDrop", True, kind="RATE_DROP", provider="coinbase", exchange="coinbase", instrument="SOL-USD", severity="info")]
    return alerts


def check_live(work, alerts_yml):
    runbook_of = {r["alert"]: r["annotations"]["runbook_url"] for r in alerts_yml}
    sink = Sink()
    secrets = os.path.join(work, "secrets")
    os.makedirs(secrets)
    with open(os.path.join(secrets, "slack-api-url"), "w", encoding="utf-8") as handle:
        handle.write(f"{sink.url}/slack\n")
    with open(os.path.join(secrets, "pagerduty-routing-key"), "w", encoding="utf-8") as handle:
        handle.write("0123456789abcdef0123456789abcdef\n")

    def overrides(config):
        # Only the timings and the endpoints change: routes, grouping and inhibitions are the
        # committed ones.
        config.setdefault("global", {})["pagerduty_url"] = f"{sink.url}/pagerduty"

        def fast(route, root):
            for timing in ("group_wait", "group_interval"):
                if root or timing in route:
                    route[timing] = "1s"
            for child in route.get("routes", []):
                fast(child, False)
        fast(config["route"], True)
        for receiver in config["receivers"]:
            for kind in ("slack_configs", "pagerduty_configs"):
                for integration in receiver.get(kind, []):
                    for key in ("api_url_file", "routing_key_file"):
                        if key in integration:
                            integration[key] = integration[key].replace(SECRETS_DIR, secrets + "/")
            for integration in receiver.get("webhook_configs", []):
                integration["url"] = f"{sink.url}/webhook"

    config = local_config(work, overrides)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log_path = os.path.join(work, "alertmanager.log")
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [os.path.join(BIN, "alertmanager"), f"--config.file={config}",
             f"--storage.path={os.path.join(work, 'data')}", f"--web.listen-address=127.0.0.1:{port}",
             "--cluster.listen-address=", "--log.level=info"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        problems = live_checks(api, sink, live_scenario(runbook_of), process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        sink.server.shutdown()
    if problems:
        with open(log_path, encoding="utf-8") as handle:
            log_tail = handle.read().splitlines()[-15:]
        report("FAIL", "alertmanager/live", f"{len(problems)} problem(s) on a running Alertmanager",
               "\n".join(problems + ["--- alertmanager log ---"] + log_tail))


def live_checks(api, sink, scenario, process):
    def ready():
        if process.poll() is not None:
            return True
        try:
            with urllib.request.urlopen(f"{api}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False
    if not wait_until(ready, 15) or process.poll() is not None:
        return [f"alertmanager did not become ready on {api} (exit code {process.poll()})"]

    now = datetime.now(timezone.utc)
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.000Z")  # noqa: E731
    payload = [{"labels": a["labels"], "annotations": a["annotations"],
                "startsAt": stamp(now), "endsAt": stamp(now + timedelta(minutes=10))} for a in scenario]
    post_alerts(api, payload)

    def key(labels):
        return json.dumps({k: v for k, v in sorted(labels.items())})

    expected_inhibited = {key(a["labels"]) for a in scenario if a["inhibited"]}
    # Notifying groups: (alertname, dependency, provider) of every notifying alert.
    notifying = [a for a in scenario if not a["inhibited"] and a["labels"]["severity"] != "info"]
    groups = {}
    for a in notifying:
        labels = a["labels"]
        group = (labels["alertname"], labels.get("dependency", ""), labels.get("provider", ""))
        groups.setdefault(group, []).append(a)
    critical_groups = {g for g, members in groups.items() if members[0]["labels"]["severity"] == "critical"}

    def webhook_groups(received):
        return {(n["groupLabels"].get("alertname"), n["groupLabels"].get("dependency", ""),
                 n["groupLabels"].get("provider", "")) for n in received["webhook"]}

    def inhibited_now():
        return {key(a["labels"]) for a in get_alerts(api) if a["status"]["inhibitedBy"]}

    settled = wait_until(lambda: webhook_groups(sink.snapshot()) >= set(groups)
                         and len(sink.snapshot()["pagerduty"]) >= len(critical_groups)
                         and inhibited_now() >= expected_inhibited, 20)
    time.sleep(2)  # two more group intervals: anything unexpected arrives too
    received = sink.snapshot()
    problems = []
    if not settled:
        problems.append("timed out waiting for the expected notifications")

    inhibited = inhibited_now()
    for k in sorted(expected_inhibited - inhibited):
        problems.append(f"not inhibited, but should be: {k}")
    for k in sorted(inhibited - expected_inhibited):
        problems.append(f"inhibited, but should not be: {k}")

    # Grouping: one webhook notification per group, holding all its alerts.
    seen = {}
    for notification in received["webhook"]:
        g = (notification["groupLabels"].get("alertname"), notification["groupLabels"].get("dependency", ""),
             notification["groupLabels"].get("provider", ""))
        seen.setdefault(g, []).append(notification)
        for alert in notification["alerts"]:
            if key(alert["labels"]) in expected_inhibited:
                problems.append(f"an inhibited alert was notified: {key(alert['labels'])}")
    for g, members in groups.items():
        notes = seen.get(g, [])
        if len(notes) != 1:
            problems.append(f"group {g}: {len(notes)} webhook notifications, expected 1")
        elif len(notes[0]["alerts"]) != len(members):
            problems.append(f"group {g}: {len(notes[0]['alerts'])} alerts in its notification, expected {len(members)}")
    for g in set(seen) - set(groups):
        problems.append(f"unexpected webhook notification for group {g}")

    # PagerDuty: one event per critical group, with the runbook link; Slack: one message per
    # notifying group, its text naming the runbook.
    pd_titles = sorted(e["payload"]["summary"] for e in received["pagerduty"])
    if len(received["pagerduty"]) != len(critical_groups):
        problems.append(f"{len(received['pagerduty'])} PagerDuty events, expected {len(critical_groups)}: {pd_titles}")
    for event in received["pagerduty"]:
        links = [link.get("href", "") for link in event.get("links", [])]
        if not any("/deploy/runbooks/" in link for link in links):
            problems.append(f"PagerDuty event without a runbook link: {event['payload']['summary']}")
        if event.get("routing_key") != "0123456789abcdef0123456789abcdef":
            problems.append("PagerDuty event without the routing key read from its file")
    slack = received["slack"]
    if len(slack) != len(groups):
        problems.append(f"{len(slack)} Slack messages, expected {len(groups)}: "
                        f"{sorted(m['attachments'][0]['title'] for m in slack)}")
    for message in slack:
        attachment = message["attachments"][0]
        if "Runbook: https://" not in attachment.get("text", ""):
            problems.append(f"Slack message without its runbook: {attachment.get('title')}")
    kafka_title = [t for t in pd_titles if "TickflowDependencyDown kafka" in t]
    if kafka_title != ["[FIRING:4] TickflowDependencyDown kafka"]:
        problems.append(f"the Kafka page is titled {kafka_title}, expected one '[FIRING:4] TickflowDependencyDown kafka'")
    if problems:
        return problems

    # Kafka back: its alerts resolve, the stale fair prices it held back notify, once, together.
    resolved = [{"labels": a["labels"], "annotations": a["annotations"], "startsAt": stamp(now),
                 "endsAt": stamp(datetime.now(timezone.utc))}
                for a in scenario if a["labels"].get("dependency") == "kafka"]
    post_alerts(api, resolved)

    def stale_notified():
        return [n for n in sink.snapshot()["webhook"] if n["groupLabels"].get("alertname") == "TickflowFairPriceStale"]
    wait_until(lambda: stale_notified(), 15)
    time.sleep(2)
    stale = stale_notified()
    if len(stale) != 1 or len(stale[0]["alerts"]) != 3:
        problems.append(f"after Kafka resolved: {len(stale)} TickflowFairPriceStale notifications "
                        f"({[len(n['alerts']) for n in stale]} alerts), expected 1 with the 3 instruments")
    if not problems:
        report("PASS", "alertmanager/live",
               f"{len(scenario)} alerts posted: {len(expected_inhibited)} inhibited as expected; "
               f"{len(groups)} notifications ({len(critical_groups)} pages), Kafka's 4 alerts in one page; "
               "the 3 stale instruments notified once together when Kafka resolved")
    return problems


def check_ansible_values(work):
    ansible = shutil.which("ansible-playbook", path=os.path.join(TOOLS, "venv", "bin"))
    if not ansible:
        report("SKIP", "alertmanager/ansible-values", "ansible-playbook not in the tools venv (run scripts/tools)")
        return
    # The task's own expression (ansible/roles/observability/tasks/main.yml), dumped as JSON.
    play = [{
        "name": "Render the observability values", "hosts": "localhost", "connection": "local",
        "gather_facts": False, "vars_files": [DEFAULTS],
        "tasks": [{
            "name": f"Render {case}",
            "vars": {**variables, "rendered": "{{ lookup('ansible.builtin.template', '%s') | from_yaml }}" % VALUES},
            "ansible.builtin.copy": {"content": "{{ rendered | to_json }}", "dest": os.path.join(work, f"{case}.json"),
                                     "mode": "0600"},
        } for case, variables in ANSIBLE_CASES.items()],
    }]
    play_path = os.path.join(work, "render.yml")
    with open(play_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(play, handle)
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "False",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"}
    result = subprocess.run([ansible, "-i", "localhost,", play_path,
                             "-e", json.dumps({**ANSIBLE_COMMON, "ansible_python_interpreter": sys.executable})], capture_output=True, text=True, timeout=180, env=env)
    if result.returncode != 0:
        report("FAIL", "alertmanager/ansible-values", "ansible could not render values.yaml.j2", result.stdout + result.stderr)
        return
    with open(CONFIG, encoding="utf-8") as handle:
        committed = yaml.safe_load(handle)
    problems = []
    for case in ANSIBLE_CASES:
        with open(os.path.join(work, f"{case}.json"), encoding="utf-8") as handle:
            values = json.load(handle)
        problems += ansible_case_problems(case, values.get("alertmanager", {}), committed, work)
    if problems:
        report("FAIL", "alertmanager/ansible-values", f"{len(problems)} problem(s)", "\n".join(problems))
    else:
        report("PASS", "alertmanager/ansible-values",
               "values.yaml.j2 renders the committed config and templates; Secret and mount only with the vault's secrets; "
               "amtool accepts every variant")


ANSIBLE_COMMON = {
    "tickflow_repo_root": ROOT, "tickflow_namespace": "tickflow", "grafana_admin_password": "x",
    "cassandra_username": "", "cassandra_password": "", "ui_host": "", "ui_tls": False,
}
ANSIBLE_CASES = {
    "with-secrets": {"vault_alertmanager_slack_api_url": "https://hooks.slack.test/T0/B0/xyz",
                     "vault_alertmanager_pagerduty_routing_key": "0123456789abcdef0123456789abcdef",
                     "observability_alertmanager_webhook_url": "http://incident-bot.example:8080/alerts"},
    "without-secrets": {},
}


def ansible_case_problems(case, am, committed, work):
    problems = []
    config = am.get("config", {})
    secret = am.get("extraSecret")
    mounts = am.get("alertmanagerSpec", {}).get("secrets", [])
    with open(os.path.join(AM_DIR, "tickflow.tmpl"), encoding="utf-8") as handle:
        if am.get("templateFiles", {}).get("tickflow.tmpl", "").rstrip() != handle.read().rstrip():
            problems.append(f"{case}: templateFiles.tickflow.tmpl differs from deploy/alertmanager/tickflow.tmpl")
    if case == "with-secrets":
        expected = json.loads(json.dumps(committed))
        for receiver in expected["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = "http://incident-bot.example:8080/alerts"
        if config != expected:
            problems.append(f"{case}: alertmanager.config is not deploy/alertmanager/alertmanager.yml (webhook URL set)")
        if not secret or set(secret.get("data", {})) != {"slack-api-url", "pagerduty-routing-key"}:
            problems.append(f"{case}: extraSecret should hold slack-api-url and pagerduty-routing-key, got {secret}")
        elif secret.get("name") not in mounts or not SECRETS_DIR.rstrip("/").endswith(secret["name"]):
            problems.append(f"{case}: Secret {secret.get('name')} not mounted where the config reads it ({mounts})")
    else:
        kinds = {k for r in config.get("receivers", []) for k in r if k.endswith("_configs")}
        if kinds:
            problems.append(f"{case}: integrations without their secret or URL kept: {sorted(kinds)}")
        if secret or mounts:
            problems.append(f"{case}: a Secret or mount without secrets: {secret} {mounts}")
        if config.get("route") != committed["route"] or config.get("inhibit_rules") != committed["inhibit_rules"]:
            problems.append(f"{case}: routes or inhibitions differ from the committed file")
    path = os.path.join(work, f"{case}-alertmanager.yml")
    config = json.loads(json.dumps(config))
    config["templates"] = [t.replace(TEMPLATES_DIR, AM_DIR + "/") for t in config.get("templates", [])]
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    result = amtool("check-config", path)
    if result.returncode != 0:
        problems.append(f"{case}: amtool check-config refuses the rendered config:\n{result.stdout}{result.stderr}")
    return problems


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-live", action="store_true", help="no Alertmanager process")
    parser.add_argument("--skip-ansible", action="store_true", help="do not render the Ansible values")
    args = parser.parse_args(argv)

    alerts = load_alerts()
    check_runbooks(alerts)
    error = install_alertmanager()
    if error:
        report("FAIL", "alertmanager/tools", f"prometheus-alertmanager={ALERTMANAGER_DEB_VERSION}", error)
        return 1
    work = tempfile.mkdtemp(prefix="tickflow-alertmanager-")
    try:
        check_config(work)
        check_routes(work, alerts)
        if args.skip_live:
            report("SKIP", "alertmanager/live", "--skip-live")
        elif not all(os.path.isfile(t) for t in DEBIAN_TEMPLATES):
            # Debian's build will not start without them; scripts/tools places them as root.
            report("SKIP", "alertmanager/live",
                   f"{' or '.join(DEBIAN_TEMPLATES)} missing (scripts/tools installs them when run as root)")
        else:
            os.makedirs(os.path.join(work, "live"))
            check_live(os.path.join(work, "live"), alerts)
        if args.skip_ansible:
            report("SKIP", "alertmanager/ansible-values", "--skip-ansible")
        else:
            os.makedirs(os.path.join(work, "ansible"))
            check_ansible_values(os.path.join(work, "ansible"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if "FAIL" in results else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
