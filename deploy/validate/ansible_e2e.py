#!/usr/bin/env python3
"""Runs ansible/playbooks/site.yml end to end against recording stand-ins, without a cluster.

gcloud, kubectl, helm and kustomize are replaced by the scripts in ansible-standins/ (kustomize
runs the real pinned one, so the manifests are the real render). Each environment runs in its
own HOME: dev from ansible/inventory/example-outputs.json with the smallest vault (the four
Cassandra values, which every environment needs); prod from the same outputs with prod's names
(and cert-manager's DNS service account), a UI host with TLS, source ranges and every vault
value; prod-gateway the same through GKE's Gateway API. A throwaway vars file of dummy secrets
stands in for the vault. Then the recorded calls are checked: credentials fetched for the
outputs' cluster, every Helm release at its pinned version, the Secrets (the two Cassandra ones
always, and every required secretKeyRef of the overlay resolved), namespace, migration Job,
apply and waits of deploy.yml, the ACME solver, GKE's policies on the Gateway, and kubeconform
-strict (the schemas scripts/validate-deploy uses) on everything that would be applied but
those GKE policies (no schema published). no-vault runs site.yml with no vault at all: it must
stop before any call, naming the missing keys. One PASS/FAIL line per check; exit 1 when any
fails.

    deploy/validate/ansible_e2e.py [--env dev|prod|prod-gateway|no-vault ...] [--keep DIR] [--root DIR]
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
STANDINS = os.path.join(HERE, "ansible-standins")
# --root points it at another copy of the repository (to try a change without touching this one).
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.environ.get("TICKFLOW_TOOLS_HOME") or os.path.expanduser("~/.cache/tickflow/tools")

# The Helm releases every run installs: release -> (namespace, chart, group_vars version key).
RELEASES = {
    "strimzi": ("strimzi", "oci://quay.io/strimzi-helm/strimzi-kafka-operator", "strimzi_chart_version"),
    "kube-prometheus-stack": ("monitoring", "prometheus-community/kube-prometheus-stack",
                              "kube_prometheus_stack_chart_version"),
    "ingress-nginx": ("ingress-nginx", "ingress-nginx/ingress-nginx", "ingress_nginx_chart_version"),
}
# Only with ui_tls.
TLS_RELEASES = {"cert-manager": ("cert-manager", "jetstack/cert-manager", "cert_manager_chart_version")}
# Built by the project; every other image is third-party.
SERVICE_IMAGES = ["ingest-gateway", "normalizer", "trade-aggregator", "fair-price", "tickflow-admin"]
IMAGE_TAG = "0.0.0-e2e"
# dev: only the required vault values, UIs closed; prod: ingress-nginx with TLS (DNS-01) and
# source ranges; prod-gateway: prod through GKE's Gateway API (ui_entry gke-gateway); no-vault:
# dev without a vault, which must stop before touching the cluster.
ENVIRONMENTS = ["dev", "prod", "prod-gateway", "no-vault"]
# The vault keys deploy.yml cannot do without (the workloads' Cassandra references are required).
REQUIRED_VAULT = ["vault_cassandra_username", "vault_cassandra_password",
                  "vault_cassandra_admin_username", "vault_cassandra_admin_password"]
# GKE's policies for Grafana's backend (ingress role, gke-gateway). Their CRDs are published in no
# package registry reachable here, so deploy/k8s/schemas has no schema for them: kubeconform
# skips these two kinds only, and check_gke_policies checks what the role sets.
GKE_POLICY_KINDS = ["GCPBackendPolicy", "HealthCheckPolicy"]

failures = 0


def report(ok, name, detail, output=""):
    global failures
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures += 1
        for line in output.rstrip().splitlines()[-40:]:
            print(f"    {line}")


def kubernetes_version():
    with open(os.path.join(ROOT, "scripts", "tools"), encoding="utf-8") as handle:
        return re.search(r"^KUBERNETES_VERSION=([0-9.]+)", handle.read(), re.M).group(1)


def dummy_secrets(env):
    """Recognisable values, so the run can tell where each one went (and that none is logged).
    dev has only what every deploy needs (the optional Secrets are then not created); no-vault
    has nothing."""
    cassandra = {
        "vault_cassandra_username": f"e2e_{env}_cassandra_user",
        "vault_cassandra_password": f"e2e-{env}-cassandra-pw",
        "vault_cassandra_admin_username": f"e2e_{env}_cassandra_admin",
        "vault_cassandra_admin_password": f"e2e-{env}-cassandra-admin-pw",
    }
    if env == "no-vault":
        return {}
    if env == "dev":
        return cassandra
    return {
        **cassandra,
        "vault_grafana_admin_password": f"e2e-{env}-grafana-admin-pw",
        "vault_kafdrop_htpasswd": f"admin:$2y$05$e2e{env}kafdrophtpasswdhash",
        "vault_finnhub_token": f"e2e-{env}-finnhub-token",
        "vault_gateway_admin_token": f"e2e-{env}-gateway-admin-token",
        "vault_alertmanager_slack_api_url": f"https://hooks.slack.com/services/e2e-{env}-slack",
        "vault_alertmanager_pagerduty_routing_key": f"e2e-{env}-pagerduty-key",
    }


def scenario(env, work):
    """Terraform outputs and extra vars for one environment."""
    with open(os.path.join(ROOT, "ansible", "inventory", "example-outputs.json"), encoding="utf-8") as handle:
        outputs = json.load(handle)
    extra = {"tickflow_image_tag": IMAGE_TAG}
    if env.startswith("prod"):
        outputs = json.loads(json.dumps(outputs).replace("tickflow-dev", "tickflow-prod"))
        outputs["tickflow_environment"]["value"] = "prod"
        extra.update(ui_host="tickflow.example.com", ui_tls=True, ui_tls_email="ops@example.com",
                     ui_source_ranges=["198.51.100.0/24"])
    if env == "prod":
        # ingress-nginx limited to the ranges: Let's Encrypt cannot reach port 80, so DNS-01, with
        # the project and service account from the Terraform outputs (cert_manager_dns_project).
        outputs["cert_manager_dns_project"]["value"] = "my-dns-project"
        outputs["cert_manager_dns_service_account"]["value"] = \
            "tickflow-prod-cert-manager@my-tickflow-project.iam.gserviceaccount.com"
        extra.update(ui_tls_acme_solver="dns01")
    if env == "prod-gateway":
        extra.update(ui_entry="gke-gateway")
    path = os.path.join(work, "outputs.json")
    with open(path, "w", encoding="utf-8") as out:
        json.dump(outputs, out)
    return path, {name: item["value"] for name, item in outputs.items()}, extra


def run_site(env, work):
    """Runs site.yml; returns (returncode, output, log dir, outputs, extra vars, secrets)."""
    home, log = os.path.join(work, "home"), os.path.join(work, "calls")
    os.makedirs(home)
    outputs_file, outputs, extra = scenario(env, work)
    secrets = dummy_secrets(env)
    # A throwaway vars file stands in for the encrypted vault (never a real secret).
    vars_file = os.path.join(work, "test-vault.yml")
    with open(vars_file, "w", encoding="utf-8") as out:
        yaml.safe_dump({**secrets, **extra}, out)
    venv = os.path.join(TOOLS, "venv", "bin")
    env_vars = {
        # Stand-ins first; the venv's python3 runs the inventory (and so the modules: it has
        # PyYAML for kubernetes.core.helm). No other tools directory: the real kustomize is
        # reached only through its stand-in.
        "PATH": os.pathsep.join([STANDINS, venv, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": home,
        "TICKFLOW_TF_OUTPUTS": outputs_file,
        "TICKFLOW_STANDIN_LOG": log,
        "TICKFLOW_REAL_KUSTOMIZE": os.path.join(TOOLS, "bin", "kustomize"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "LANG": "C.UTF-8",
    }
    for tool in ("gcloud", "kubectl", "helm", "kustomize"):
        found = shutil.which(tool, path=env_vars["PATH"])
        if found != os.path.join(STANDINS, tool):
            return 1, f"{tool} resolves to {found}, not the stand-in", log, outputs, extra, secrets
    result = subprocess.run(
        [os.path.join(venv, "ansible-playbook"), "playbooks/site.yml", "-e", f"@{vars_file}"],
        cwd=os.path.join(ROOT, "ansible"), env=env_vars, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    with open(os.path.join(work, "ansible.log"), "w", encoding="utf-8") as out:
        out.write(output)
    return result.returncode, output, log, outputs, extra, secrets


def load_calls(log):
    path = os.path.join(log, "calls.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def words(call):
    return [arg for arg in call["argv"] if not arg.startswith("-")]


def sent(log, call):
    """The objects a kubectl call read from stdin (the roles send a JSON List)."""
    with open(os.path.join(log, call["stdin"]), encoding="utf-8") as handle:
        doc = json.load(handle)
    return doc["items"] if doc.get("kind") == "List" else [doc]


def group_vars():
    with open(os.path.join(ROOT, "ansible", "inventory", "group_vars", "all", "main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def check_cluster_access(name, calls, outputs, kubeconfig):
    problems = []
    argvs = [(c["tool"], c["argv"]) for c in calls]
    for expected in [("gcloud", ["--version"]), ("kubectl", ["version", "--client"]),
                     ("helm", ["version", "--short"]), ("kustomize", ["version"])]:
        if expected not in argvs:
            problems.append(f"tool check not run: {' '.join([expected[0], *expected[1]])}")
    wanted = ["container", "clusters", "get-credentials", outputs["cluster_name"],
              f"--location={outputs['cluster_location']}", f"--project={outputs['project_id']}"]
    creds = [c for c in calls if c["tool"] == "gcloud" and c["argv"] == wanted]
    if len(creds) != 1:
        problems.append(f"expected one `gcloud {' '.join(wanted)}`, got "
                        f"{[c['argv'] for c in calls if c['tool'] == 'gcloud']}")
    elif creds[0]["kubeconfig"] != kubeconfig:
        problems.append(f"get-credentials wrote KUBECONFIG={creds[0]['kubeconfig']}, expected {kubeconfig}")
    # Every call that reaches the cluster comes after the credentials and uses them.
    first = creds[0]["seq"] if creds else 0
    for call in calls:
        local = (call["tool"] in ("gcloud", "kustomize") or "--client" in call["argv"]
                 or words(call)[:1] == ["version"] or words(call)[:2] in (["repo", "add"], ["repo", "list"],
                                                                         ["show", "chart"], ["plugin", "list"]))
        if local:
            continue
        if call["seq"] < first or call["kubeconfig"] != kubeconfig:
            problems.append(f"#{call['seq']} {call['tool']} {' '.join(call['argv'])}: KUBECONFIG="
                            f"{call['kubeconfig']} (before the credentials or not {kubeconfig})")
    server = [c for c in calls if c["tool"] == "kubectl" and c["argv"][:2] == ["version", "--output=json"]]
    if not server:
        problems.append("the cluster's answer is never checked (kubectl version --output=json)")
    report(not problems, name, f"gcloud get-credentials {outputs['cluster_name']} --location="
           f"{outputs['cluster_location']} --project={outputs['project_id']} into {os.path.basename(kubeconfig)}; "
           "every kubectl/helm call after it, with that kubeconfig", "\n".join(problems))


def check_helm(name, calls, log, env, extra, secrets, namespace):
    pins = group_vars()
    expected = dict(RELEASES, **(TLS_RELEASES if extra.get("ui_tls") else {}))
    gateway = extra.get("ui_entry") == "gke-gateway"
    if gateway:
        del expected["ingress-nginx"]
    installs = {}
    problems = []
    for call in calls:
        if call["tool"] == "helm" and words(call)[:1] in (["upgrade"], ["install"]):
            installs.setdefault(words(call)[-2], []).append(call)
    for release, (release_ns, chart, pin_key) in expected.items():
        found = installs.get(release, [])
        if len(found) != 1:
            problems.append(f"{release}: {len(found)} installs, expected 1")
            continue
        call = found[0]
        if words(call)[-1] != chart:
            problems.append(f"{release}: chart {words(call)[-1]}, expected {chart}")
        if f"--version={pins[pin_key]}" not in call["argv"]:
            problems.append(f"{release}: not at the pinned {pin_key}={pins[pin_key]}: {' '.join(call['argv'])}")
        if call["helm_namespace"] != release_ns:
            problems.append(f"{release}: namespace {call['helm_namespace']}, expected {release_ns}")
        if "--wait" not in call["argv"]:
            problems.append(f"{release}: installed without --wait")
    # Any other release must be pinned too.
    pinned = {str(v) for k, v in pins.items() if k.endswith("_chart_version")}
    for release, found in installs.items():
        for call in found:
            versions = [a.split("=", 1)[1] for a in call["argv"] if a.startswith("--version=")]
            if not versions or versions[0] not in pinned:
                problems.append(f"{release}: version {versions or 'unpinned'} is not a *_chart_version in group_vars")
    # What the values carry from the vault and the outputs.
    values = {}
    for release, found in installs.items():
        files = found[0].get("files", []) if found else []
        if files:
            with open(os.path.join(log, files[0]), encoding="utf-8") as handle:
                values[release] = yaml.safe_load(handle)
    strimzi = values.get("strimzi", {})
    if strimzi.get("watchNamespaces") != [namespace]:
        problems.append(f"strimzi watches {strimzi.get('watchNamespaces')}, expected [{namespace}]")
    grafana = values.get("kube-prometheus-stack", {}).get("grafana", {})
    if grafana.get("adminPassword") != secrets.get("vault_grafana_admin_password", ""):
        problems.append("kube-prometheus-stack: grafana.adminPassword is not the vault's")
    # Behind the Gateway, Grafana's HTTPRoute serves it: no nginx Ingress (no controller for it).
    if grafana.get("ingress", {}).get("enabled") is not (not gateway):
        problems.append(f"kube-prometheus-stack: grafana.ingress.enabled is {grafana.get('ingress', {}).get('enabled')}"
                        f" with ui_entry {extra.get('ui_entry', 'ingress-nginx')}")
    # The UIs' load balancer admits only the configured source ranges.
    # None given: closed, no load balancer at all.
    lb = values.get("ingress-nginx", {}).get("controller", {}).get("service", {})
    ranges = extra.get("ui_source_ranges", pins["ui_source_ranges"])
    if gateway:
        pass  # Cloud Armor instead: check_ui_host
    elif ranges and lb.get("loadBalancerSourceRanges") != ranges:
        problems.append(f"ingress-nginx: loadBalancerSourceRanges {lb.get('loadBalancerSourceRanges')}, "
                        f"expected ui_source_ranges {ranges}")
    elif not ranges and lb.get("type") != "ClusterIP":
        problems.append(f"ingress-nginx: no ui_source_ranges, but the Service is {lb.get('type', 'LoadBalancer')}")
    summary = ", ".join(f"{r} {pins[k]}" for r, (_, _, k) in expected.items())
    report(not problems, name, f"helm upgrade --install --wait of {summary}, each pinned; "
           f"Strimzi watches {namespace}; Grafana's password from the vault, its Ingress "
           f"{'off' if gateway else 'on'}; the UIs' load balancer "
           + ("on the Gateway" if gateway else f"admits {ranges}" if ranges else "absent (no ui_source_ranges)"),
           "\n".join(problems))


def deploy_calls(calls):
    """The calls of deploy.yml: from its kustomize build on."""
    start = [c["seq"] for c in calls if c["tool"] == "kustomize" and words(c)[:1] == ["build"]]
    return [c for c in calls if start and c["seq"] >= start[0]]


def check_deploy(name, calls, log, outputs, secrets, namespace):
    """Namespace, Secrets, migration Job, apply and waits of deploy.yml, in that order."""
    problems = []
    steps = deploy_calls(calls)
    if not steps:
        report(False, name, "deploy.yml never ran kustomize build", "")
        return []
    applies = [c for c in steps if c["tool"] == "kubectl" and words(c)[:1] == ["apply"]]
    diffs = [c for c in steps if c["tool"] == "kubectl" and words(c)[:1] == ["diff"]]
    for apply in applies:
        for flag in ("--server-side", "--force-conflicts", "--field-manager=tickflow-ansible"):
            if flag not in apply["argv"]:
                problems.append(f"#{apply['seq']} apply without {flag}")
        before = [d for d in diffs if d["seq"] < apply["seq"]]
        if not before or sent(log, before[-1]) != sent(log, apply):
            problems.append(f"#{apply['seq']} apply is not preceded by a diff of the same objects")
    kinds = [sorted({o["kind"] for o in sent(log, a)}) for a in applies]
    # The Cassandra Secrets are required, so there is always a Secrets' apply.
    layout = [["Namespace"], ["Secret"], None]
    if len(applies) != len(layout) or any(want and got != want for want, got in zip(layout, kinds)):
        problems.append(f"expected applies of the Namespace, the Secrets, then the overlay; got kinds {kinds}")
        report(False, name, "deploy.yml's calls", "\n".join(problems))
        return applies
    ns_apply, secret_apply, overlay_apply = applies
    if [o["metadata"]["name"] for o in sent(log, ns_apply)] != [namespace]:
        problems.append(f"namespace applied: {sent(log, ns_apply)}")
    # Every Secret whose vault values are all given, and only those.
    expected_secrets = {}
    for secret, keys in {**VAULT_SECRETS_REQUIRED, **VAULT_SECRETS_OPTIONAL}.items():
        data = {key: secrets.get(vault_key, "") for key, vault_key in keys.items()}
        if all(data.values()):
            expected_secrets[secret] = data
    got_secrets = applied_secrets(log, secret_apply, namespace)
    if got_secrets != expected_secrets:
        problems.append(f"Secrets applied: {sorted(got_secrets)}, expected {sorted(expected_secrets)} "
                        "(names, keys or values differ from the vault's)")
    delete = [c for c in steps if c["tool"] == "kubectl" and words(c)[:2] == ["delete", "job/tickflow-migrate"]]
    if not delete or f"--namespace={namespace}" not in delete[0]["argv"] or not (
            secret_apply["seq"] < delete[0]["seq"] < overlay_apply["seq"]):
        problems.append("the migration Job is not deleted (in its namespace) between the Secrets and the apply")
    objects = sent(log, overlay_apply)
    if not any(o["kind"] == "Job" and o["metadata"]["name"] == "tickflow-migrate" for o in objects):
        problems.append("the overlay applied has no tickflow-migrate Job")
    # Waits, after the apply: Kafka, the migration, then every workload of the overlay.
    waits = [c for c in steps if c["tool"] == "kubectl" and c["seq"] > overlay_apply["seq"]]
    wanted = [["wait", "kafka.kafka.strimzi.io/tickflow", "--for=condition=Ready"],
              ["wait", "job/tickflow-migrate", "--for=condition=Complete"]]
    for argv in wanted:
        if not any(c["argv"][:3] == argv and f"--namespace={namespace}" in c["argv"] for c in waits):
            problems.append(f"no `kubectl {' '.join(argv)}` in {namespace} after the apply")
    workloads = {f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objects
                 if o["kind"] in ("Deployment", "StatefulSet")}
    rolled = {words(c)[2] for c in waits if words(c)[:2] == ["rollout", "status"]}
    if workloads - rolled:
        problems.append(f"workloads applied but not waited for: {sorted(workloads - rolled)}")
    report(not problems, name,
           f"namespace {namespace}, {len(got_secrets)} Secrets from the vault"
           f"{'' if len(got_secrets) > len(VAULT_SECRETS_REQUIRED) else ' (the required ones only)'}, "
           "migration Job deleted, "
           f"{len(objects)} objects server-side applied (each after a diff), waits for Kafka, the "
           f"migration and {len(rolled)} workloads", "\n".join(problems))
    return applies


# Secret -> {key: vault variable}. The Cassandra ones are required references of the workloads.
VAULT_SECRETS_REQUIRED = {
    "tickflow-cassandra-credentials": {"username": "vault_cassandra_username", "password": "vault_cassandra_password"},
    "tickflow-cassandra-admin": {"username": "vault_cassandra_admin_username",
                                 "password": "vault_cassandra_admin_password"},
}
VAULT_SECRETS_OPTIONAL = {
    "tickflow-provider-credentials": {"finnhub-token": "vault_finnhub_token"},
    "tickflow-gateway-admin": {"token": "vault_gateway_admin_token"},
    "kafdrop-basic-auth": {"auth": "vault_kafdrop_htpasswd"},
}


def applied_secrets(log, call, namespace):
    return {o["metadata"]["name"]: o.get("stringData") for o in sent(log, call)
            if o["kind"] == "Secret" and o["metadata"].get("namespace") == namespace}


def secret_key_refs(value):
    """Every secretKeyRef in an object, wherever it sits (env of containers and init containers)."""
    if isinstance(value, dict):
        if "secretKeyRef" in value:
            yield value["secretKeyRef"]
        for item in value.values():
            yield from secret_key_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from secret_key_refs(item)


def check_cassandra_secrets(name, applies, log, secrets, namespace):
    """Both Cassandra Secrets, with exactly their keys and the vault's values (never printed), and
    every required secretKeyRef of the overlay names a Secret and key that the run creates."""
    if len(applies) != 3:
        report(False, name, "no Secrets' apply to check (see the deploy check)", "")
        return
    got = applied_secrets(log, applies[1], namespace)
    problems = []
    for secret, keys in VAULT_SECRETS_REQUIRED.items():
        data = got.get(secret)
        if data is None:
            problems.append(f"{secret} not created")
        elif sorted(data) != sorted(keys):
            problems.append(f"{secret} has keys {sorted(data)}, expected {sorted(keys)}")
        else:
            problems += [f"{secret}: {key} is not {vault_key} of the vault"
                         for key, vault_key in keys.items() if data[key] != secrets.get(vault_key)]
    refs = [(o["kind"], o["metadata"]["name"], ref) for o in sent(log, applies[2])
            for ref in secret_key_refs(o) if not ref.get("optional")]
    for kind, obj, ref in refs:
        if ref["key"] not in (got.get(ref["name"]) or {}):
            problems.append(f"{kind}/{obj} requires {ref['name']}/{ref['key']}, which the run does not create")
    targets = sorted({f"{ref['name']}/{ref['key']}" for _, _, ref in refs})
    report(not problems and refs, name,
           ", ".join(f"{s} ({', '.join(sorted(k))})" for s, k in VAULT_SECRETS_REQUIRED.items())
           + f" created from the vault; the overlay's {len(refs)} required secretKeyRefs ({', '.join(targets)}) "
           "all resolve", "\n".join(problems) or "the overlay has no required secretKeyRef")


def check_acme(name, calls, log, outputs, extra, namespace):
    """ui_tls: the ClusterIssuer's solver as ui_entry and ui_tls_acme_solver choose; DNS-01 with
    the Terraform outputs' project and service account (Workload Identity on cert-manager's)."""
    issuers = [o for c in calls if c["tool"] == "kubectl" and words(c)[:1] == ["apply"]
               for o in sent(log, c) if o["kind"] == "ClusterIssuer" and o["metadata"]["name"] == "letsencrypt"]
    installs = [c for c in calls if c["tool"] == "helm" and words(c)[:1] in (["upgrade"], ["install"])
                and words(c)[-2] == "cert-manager"]
    problems = []
    values = {}
    if len(installs) == 1 and installs[0].get("files"):
        with open(os.path.join(log, installs[0]["files"][0]), encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    solvers = issuers[0]["spec"]["acme"]["solvers"] if len(issuers) == 1 else None
    annotations = values.get("serviceAccount", {}).get("annotations") or {}
    if extra.get("ui_tls_acme_solver") == "dns01":
        project, account = outputs["cert_manager_dns_project"], outputs["cert_manager_dns_service_account"]
        want = [{"dns01": {"cloudDNS": {"project": project}}}]
        if annotations != {"iam.gke.io/gcp-service-account": account}:
            problems.append(f"cert-manager's service account annotations {annotations}, expected Workload "
                            f"Identity to {account}")
        what = f"DNS-01 in {project} as {account} (Terraform outputs)"
    elif extra.get("ui_entry") == "gke-gateway":
        want = [{"http01": {"gatewayHTTPRoute": {"parentRefs": [
            {"name": "tickflow-ui", "namespace": namespace, "kind": "Gateway", "sectionName": "http"}]}}}]
        what = "HTTP-01 through the Gateway's port-80 listener"
        if values.get("config", {}).get("enableGatewayAPI") is not True:
            problems.append(f"cert-manager's enableGatewayAPI is {values.get('config', {}).get('enableGatewayAPI')}")
    else:
        want = [{"http01": {"ingress": {"ingressClassName": "nginx"}}}]
        what = "HTTP-01 through ingress-nginx"
    if solvers != want:
        problems.append(f"ClusterIssuer letsencrypt ({len(issuers)} applied) solvers {solvers}, expected {want}")
    report(not problems, name, f"ClusterIssuer letsencrypt solves {what}", "\n".join(problems))


def check_gke_policies(name, calls, log):
    """gke-gateway: GKE's GCPBackendPolicy and HealthCheckPolicy (no schema here, see
    GKE_POLICY_KINDS) target the Service Grafana's HTTPRoute sends to, the Service the
    kube-prometheus-stack release creates, with the Cloud Armor policy the run writes and a
    health check of a path that route serves."""
    applied = [o for c in calls if c["tool"] == "kubectl" and words(c)[:1] == ["apply"]
               for o in sent(log, c)]
    policies = {o["kind"]: o for o in applied if o["kind"] in GKE_POLICY_KINDS}
    routes = [o for o in applied if o["kind"] == "HTTPRoute" and o["metadata"]["name"] == "grafana"]
    releases = [words(c)[-2] for c in calls if c["tool"] == "helm" and words(c)[:1] in (["upgrade"], ["install"])
                and words(c)[-1].endswith("/kube-prometheus-stack")]
    armor = [c["argv"][3] for c in calls if c["tool"] == "gcloud" and c["argv"][:3] == ["compute", "security-policies", "describe"]]
    problems = []
    if sorted(policies) != sorted(GKE_POLICY_KINDS) or len(routes) != 1 or len(releases) != 1 or len(armor) != 1:
        report(False, name, "GKE's policies", f"applied {sorted(policies)}, HTTPRoutes grafana {len(routes)}, "
               f"kube-prometheus-stack releases {releases}, Cloud Armor policies looked up {armor}")
        return
    route = routes[0]
    backends = [b for rule in route["spec"]["rules"] for b in rule.get("backendRefs", [])]
    prefixes = [m["path"]["value"] for rule in route["spec"]["rules"] for m in rule.get("matches", [])
                if m.get("path", {}).get("type") == "PathPrefix"]
    service = f"{releases[0]}-grafana"  # the chart's name for Grafana's Service
    if [b["name"] for b in backends] != [service]:
        problems.append(f"HTTPRoute grafana sends to {[b['name'] for b in backends]}, not the release's {service}")
    target = {"group": "", "kind": "Service", "name": service}
    for kind, policy in policies.items():
        if policy["apiVersion"] != "networking.gke.io/v1":
            problems.append(f"{kind}: apiVersion {policy['apiVersion']}, expected networking.gke.io/v1")
        if policy["metadata"].get("namespace") != route["metadata"]["namespace"]:
            problems.append(f"{kind}: namespace {policy['metadata'].get('namespace')}, not the route's "
                            f"{route['metadata']['namespace']}")
        if sorted(policy["spec"]) != ["default", "targetRef"] or policy["spec"]["targetRef"] != target:
            problems.append(f"{kind}: spec keys {sorted(policy['spec'])}, targetRef {policy['spec'].get('targetRef')}, "
                            f"expected {target}")
    if policies["GCPBackendPolicy"]["spec"].get("default") != {"securityPolicy": armor[0]}:
        problems.append(f"GCPBackendPolicy default {policies['GCPBackendPolicy']['spec'].get('default')}, "
                        f"expected the Cloud Armor policy {armor[0]}")
    check = policies["HealthCheckPolicy"]["spec"].get("default", {}).get("config", {})
    path = check.get("httpHealthCheck", {}).get("requestPath", "")
    if check != {"type": "HTTP", "httpHealthCheck": {"requestPath": path}} or not any(
            path.startswith(prefix + "/") for prefix in prefixes):
        problems.append(f"HealthCheckPolicy config {check}: expected type HTTP and only a requestPath, under {prefixes}")
    report(not problems, name, f"GCPBackendPolicy (Cloud Armor {armor[0]}) and HealthCheckPolicy ({path}), "
           f"networking.gke.io/v1, target Service {route['metadata']['namespace']}/{service}, the backend of "
           "HTTPRoute grafana", "\n".join(problems))


def check_no_vault(name, env, work):
    """Without the vault, site.yml stops in its first play, naming the four keys, before any call."""
    code, output, log, _, _, _ = run_site(env, work)
    calls = load_calls(log)
    missing = [key for key in REQUIRED_VAULT if key not in output]
    ok = code != 0 and not missing and not calls and "Check the Cassandra credentials" in output
    report(ok, name, f"site.yml without a vault stops before any call to gcloud, kubectl or helm, naming "
           f"{', '.join(REQUIRED_VAULT)}",
           f"exit {code}; keys not named: {missing}; calls made: {[c['tool'] + ' ' + ' '.join(c['argv']) for c in calls]}"
           f"\n{output}")


def check_images(name, applies, log, outputs):
    problems, seen = [], set()
    if not applies:
        report(False, name, "nothing applied", "")
        return
    for obj in sent(log, applies[-1]):
        spec = obj.get("spec", {})
        pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            image = container.get("image", "")
            for service in SERVICE_IMAGES:
                if image.startswith(f"tickflow/{service}"):
                    problems.append(f"{obj['kind']}/{obj['metadata']['name']}: image {image} not replaced")
                if image.split(":")[0] == f"{outputs['image_repository']}/{service}":
                    seen.add(service)
                    if image != f"{outputs['image_repository']}/{service}:{IMAGE_TAG}":
                        problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {image}, expected tag {IMAGE_TAG}")
    # tickflow-admin runs as the migration Job.
    if set(SERVICE_IMAGES) - seen:
        problems.append(f"images never used: {sorted(set(SERVICE_IMAGES) - seen)}")
    report(not problems, name, f"the overlay runs {len(seen)} images from {outputs['image_repository']} "
           f"at tag {IMAGE_TAG}", "\n".join(problems))


def check_dashboards(name, calls, log):
    # lookup('file') drops the file's final newline.
    wanted = {os.path.basename(p): open(p, encoding="utf-8").read().rstrip("\n")
              for p in glob.glob(os.path.join(ROOT, "grafana", "dashboards", "*.json"))}
    got = {}
    for call in calls:
        if call["tool"] == "kubectl" and words(call)[:1] == ["apply"]:
            for obj in sent(log, call):
                if obj["kind"] == "ConfigMap" and obj["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
                    got.update(obj.get("data", {}))
    bad = sorted(n for n in wanted if got.get(n) != wanted[n])
    report(not bad and len(got) == len(wanted), name,
           f"{len(wanted)} dashboards applied as sidecar ConfigMaps, each equal to grafana/dashboards/",
           f"missing or different: {bad}; applied: {sorted(got)}")


def check_ui_host(name, applies, log, extra, calls):
    """prod with ui_host (and ui_tls): the generated overlay's patch sets Kafdrop's host and TLS;
    on the Gateway, the HTTPS listener's and Grafana's route's host, and Cloud Armor's ranges."""
    if extra.get("ui_entry") == "gke-gateway":
        check_gateway(name, applies, log, extra, calls)
        return
    ingresses = [o for o in (sent(log, applies[-1]) if applies else [])
                 if o["kind"] == "Ingress" and o["metadata"]["name"] == "kafdrop"]
    problems = []
    if len(ingresses) != 1:
        problems.append(f"{len(ingresses)} Ingress kafdrop applied, expected 1")
    else:
        spec, meta = ingresses[0]["spec"], ingresses[0]["metadata"]
        if spec["rules"][0].get("host") != extra["ui_host"]:
            problems.append(f"host {spec['rules'][0].get('host')}, expected {extra['ui_host']}")
        if extra.get("ui_tls") and (spec.get("tls") != [{"hosts": [extra["ui_host"]], "secretName": "kafdrop-tls"}]
                                    or meta.get("annotations", {}).get("cert-manager.io/cluster-issuer") != "letsencrypt"):
            problems.append(f"TLS not set up: tls={spec.get('tls')}, annotations={meta.get('annotations')}")
    report(not problems, name, f"Ingress kafdrop served at {extra['ui_host']}"
           + (" with a Let's Encrypt certificate (cert-manager)" if extra.get("ui_tls") else ""), "\n".join(problems))


def check_gateway(name, applies, log, extra, calls):
    objects = sent(log, applies[-1]) if applies else []
    problems = []
    gateways = [o for o in objects if o["kind"] == "Gateway"]
    routes = [o for o in objects if o["kind"] == "HTTPRoute" and o["metadata"]["name"] == "grafana"]
    https = [lst for g in gateways for lst in g["spec"]["listeners"] if lst["protocol"] == "HTTPS"]
    if not https or any(lst.get("hostname") != extra["ui_host"] for lst in https):
        problems.append(f"HTTPS listeners' hostnames: {[lst.get('hostname') for lst in https]}")
    if len(routes) != 1 or routes[0]["spec"].get("hostnames") != [extra["ui_host"]]:
        problems.append(f"HTTPRoute grafana hostnames: {[r['spec'].get('hostnames') for r in routes]}")
    if any(o["kind"] == "Ingress" for o in objects):
        problems.append("an Ingress is applied beside the Gateway")
    allow = [c for c in calls if c["tool"] == "gcloud" and c["argv"][:4] == ["compute", "security-policies", "rules", "create"]
             and f"--src-ip-ranges={','.join(extra['ui_source_ranges'])}" in c["argv"]]
    if not allow:
        problems.append("no Cloud Armor rule allows ui_source_ranges")
    report(not problems, name, f"Gateway and Grafana's HTTPRoute served at {extra['ui_host']} (prod-gateway "
           f"overlay); Cloud Armor allows {extra['ui_source_ranges']}", "\n".join(problems))


def check_no_leak(name, output, calls, secrets):
    argv_text = json.dumps([c["argv"] for c in calls])
    leaked = sorted(k for k, v in secrets.items() if v in output or v in argv_text)
    report(not leaked, name, "no vault value in the playbook output or on a command line (no_log, stdin)",
           f"leaked: {leaked}")


def check_kubeconform(name, calls, log, work):
    manifests = os.path.join(work, "applied")
    os.makedirs(manifests, exist_ok=True)
    count = 0
    for call in calls:
        if call["tool"] == "kubectl" and words(call)[:1] == ["apply"]:
            objects = sent(log, call)
            count += len(objects)
            with open(os.path.join(manifests, f"{call['seq']:04d}.yaml"), "w", encoding="utf-8") as out:
                yaml.safe_dump_all(objects, out, sort_keys=False)
    version = kubernetes_version()
    k8s = (f"{TOOLS}/kubernetes-json-schema/{{{{ .NormalizedKubernetesVersion }}}}-standalone"
           "{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json")
    crds = f"{ROOT}/deploy/k8s/schemas/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json"
    gke = sum(1 for c in calls if c["tool"] == "kubectl" and words(c)[:1] == ["apply"]
              for o in sent(log, c) if o["kind"] in GKE_POLICY_KINDS)
    result = subprocess.run(
        [os.path.join(TOOLS, "bin", "kubeconform"), "-strict", "-summary", "-kubernetes-version", version,
         "-schema-location", k8s, "-schema-location", crds, "-skip", ",".join(GKE_POLICY_KINDS), manifests],
        capture_output=True, text=True, check=False)
    # Only the GKE policies may be skipped (they have no schema: see GKE_POLICY_KINDS).
    skipped = re.search(r"Skipped: (\d+)", result.stdout)
    ok = result.returncode == 0 and count > 0 and skipped and int(skipped.group(1)) == gke
    report(ok, name, f"{count - gke} objects kubectl would apply valid (-strict) against Kubernetes {version} "
           "and the committed CRD schemas" + (f"; {gke} skipped ({', '.join(GKE_POLICY_KINDS)}: no schema "
                                              "published, see gke-policies)" if gke else ", none skipped"),
           result.stdout + result.stderr
           + (f"\nskipped {skipped.group(1) if skipped else '?'}, expected {gke}" if result.returncode == 0 else ""))


def run(env, base):
    work = os.path.join(base, env)
    os.makedirs(work)
    if env == "no-vault":
        check_no_vault(f"ansible/e2e/{env}/stops-early", env, work)
        return
    code, output, log, outputs, extra, secrets = run_site(env, work)
    recap = re.findall(r"^gke-\S+\s+:\s+(ok=\d+)\s+(changed=\d+).*?(failed=\d+)", output, re.M)
    report(code == 0, f"ansible/e2e/{env}/site.yml",
           f"every playbook of site.yml ran against the stand-ins ({' '.join(recap[-1]) if recap else '?'})"
           if code == 0 else f"ansible-playbook exited {code}", output)
    calls = load_calls(log)
    namespace = group_vars()["tickflow_namespaces"][outputs["tickflow_environment"]]
    kubeconfig = os.path.join(work, "home", ".kube", f"tickflow-{outputs['tickflow_environment']}.yaml")
    check_cluster_access(f"ansible/e2e/{env}/cluster-access", calls, outputs, kubeconfig)
    check_helm(f"ansible/e2e/{env}/helm-releases", calls, log, env, extra, secrets, namespace)
    check_dashboards(f"ansible/e2e/{env}/dashboards", calls, log)
    applies = check_deploy(f"ansible/e2e/{env}/deploy", calls, log, outputs, secrets, namespace)
    check_cassandra_secrets(f"ansible/e2e/{env}/cassandra-secrets", applies, log, secrets, namespace)
    check_images(f"ansible/e2e/{env}/images", applies, log, outputs)
    if extra.get("ui_host"):
        check_ui_host(f"ansible/e2e/{env}/ui-host", applies, log, extra, calls)
    if extra.get("ui_tls"):
        check_acme(f"ansible/e2e/{env}/acme", calls, log, outputs, extra, namespace)
    if extra.get("ui_entry") == "gke-gateway":
        check_gke_policies(f"ansible/e2e/{env}/gke-policies", calls, log)
    if secrets:
        check_no_leak(f"ansible/e2e/{env}/no-secret-leak", output, calls, secrets)
    check_kubeconform(f"ansible/e2e/{env}/kubeconform", calls, log, work)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", choices=ENVIRONMENTS,
                        help="environment to run (repeatable; default all)")
    parser.add_argument("--keep", metavar="DIR", help="keep the calls, manifests and logs in DIR")
    parser.add_argument("--root", metavar="DIR", help="the repository to run (default: this one)")
    args = parser.parse_args()
    if args.root:
        global ROOT
        ROOT = os.path.abspath(args.root)
    base = args.keep or tempfile.mkdtemp(prefix="tickflow-ansible-e2e-")
    if args.keep:
        os.makedirs(base, exist_ok=True)
    try:
        for env in args.env or ENVIRONMENTS:
            if os.path.exists(os.path.join(base, env)):
                shutil.rmtree(os.path.join(base, env))
            run(env, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
