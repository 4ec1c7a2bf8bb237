#!/usr/bin/env python3
"""Project rules for a rendered kustomize overlay, beyond what the schemas say.

    k8s_policy.py OVERLAY_NAME RENDERED.yaml

One line, PASS or FAIL with every problem:
- the four services and the migration Job: pod runs as non-root with a seccomp profile; each
  container has readOnlyRootFilesystem, no privilege escalation, capabilities drop ALL, CPU and
  memory requests and a memory limit; the services probe /readyz (readiness) and /healthz
  (liveness) on their own port;
- the gateway's TICKFLOW_GATEWAY__REPLICA_COUNT equals its StatefulSet's replicas, and its
  TICKFLOW_GATEWAY__REPLICA_INDEX comes from the pod-index label;
- PodMonitors, ServiceMonitors and PrometheusRules carry release: kube-prometheus-stack;
- no Secret with data is committed (Secrets are referenced only);
- Cassandra authenticates: its StatefulSet turns PasswordAuthenticator on, every pod labelled
  tickflow.io/cassandra-client reads TICKFLOW_CASSANDRA__USERNAME/PASSWORD from Secret
  tickflow-cassandra-credentials (required, not optional), and the migration Job sets up the
  roles (init container cassandra-auth) before it migrates;
- Gateways: every HTTPS listener terminates TLS with a certificate reference and the Gateway
  names its cert-manager issuer; a route that sends traffic to a backend attaches only to HTTPS
  listeners (plain HTTP may only redirect);
- every consumer (normalizer, trade-aggregator, fair-price) runs at least 2 replicas, and an
  HPA that scales one never goes below 2;
- every ConfigMap or Secret a pod mounts or reads exists in the overlay, or is a Secret marked
  optional / created by Ansible; every Service, PDB and HPA points at a workload that exists.
"""

import sys

import yaml

CONSUMERS = ("normalizer", "trade-aggregator", "fair-price")
SERVICES = {"ingest-gateway": 9101, "normalizer": 9102, "trade-aggregator": 9103, "fair-price": 9104}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
# Secrets Ansible creates before it applies the overlay (ansible/roles/tickflow_deploy).
CASSANDRA_SECRET = "tickflow-cassandra-credentials"
EXTERNAL_SECRETS = {"kafdrop-basic-auth", CASSANDRA_SECRET, "tickflow-cassandra-admin"}


def env_value(container, name):
    for env in container.get("env", []):
        if env.get("name") == name:
            return env
    return None


def cassandra_client_problems(name, pod):
    """A CQL client logs in with the services' role; without the Secret it must not start."""
    problems = []
    for container in pod.get("containers", []):
        for key, var in (("username", "TICKFLOW_CASSANDRA__USERNAME"), ("password", "TICKFLOW_CASSANDRA__PASSWORD")):
            ref = ((env_value(container, var) or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
            if ref.get("name") != CASSANDRA_SECRET or ref.get("key") != key:
                problems.append(f"{name}/{container['name']}: {var} does not come from Secret {CASSANDRA_SECRET} key {key}")
            elif ref.get("optional"):
                problems.append(f"{name}/{container['name']}: {var} is optional, but Cassandra refuses anonymous clients")
    return problems


def cassandra_auth_problems(by_kind):
    problems = []
    cassandra = by_kind.get("StatefulSet", {}).get("cassandra")
    if cassandra is not None:
        container = cassandra["spec"]["template"]["spec"]["containers"][0]
        opts = str((env_value(container, "JVM_EXTRA_OPTS") or {}).get("value", ""))
        if "cassandra.config.allow_system_properties=true" not in opts or \
                "authenticator.class_name=org.apache.cassandra.auth.PasswordAuthenticator" not in opts:
            problems.append("cassandra: PasswordAuthenticator is not turned on (JVM_EXTRA_OPTS)")
    job = by_kind.get("Job", {}).get("tickflow-migrate")
    if job is not None:
        inits = [c["name"] for c in job["spec"]["template"]["spec"].get("initContainers", [])]
        if "cassandra-auth" not in inits:
            problems.append("tickflow-migrate: no cassandra-auth init container: nobody replaces cassandra/cassandra")
    return problems


def gateway_problems(by_kind):
    problems = []
    listeners = {}
    for name, gateway in by_kind.get("Gateway", {}).items():
        namespace = gateway["metadata"].get("namespace")
        if not gateway["metadata"].get("annotations", {}).get("cert-manager.io/cluster-issuer"):
            problems.append(f"Gateway {name}: no cert-manager.io/cluster-issuer annotation")
        for listener in gateway["spec"].get("listeners", []):
            listeners[(namespace, name, listener["name"])] = listener["protocol"]
            if listener["protocol"] == "HTTPS" and not listener.get("tls", {}).get("certificateRefs"):
                problems.append(f"Gateway {name}: HTTPS listener {listener['name']} has no certificateRefs")
    for name, route in by_kind.get("HTTPRoute", {}).items():
        serves = any(rule.get("backendRefs") for rule in route["spec"].get("rules", []))
        for parent in route["spec"].get("parentRefs", []):
            key = (parent.get("namespace", route["metadata"].get("namespace")), parent["name"], parent.get("sectionName"))
            protocol = listeners.get(key)
            if protocol is None:
                problems.append(f"HTTPRoute {name}: no listener {key[2]} on Gateway {key[0]}/{key[1]} (name a sectionName)")
            elif serves and protocol != "HTTPS":
                problems.append(f"HTTPRoute {name}: serves a backend on the {protocol} listener {key[2]}: HTTPS only")
    return problems


def main(argv):
    overlay, path = argv[1], argv[2]
    with open(path, encoding="utf-8") as handle:
        docs = [d for d in yaml.safe_load_all(handle) if d]
    problems = []
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    configmaps = set(by_kind.get("ConfigMap", {}))
    secrets = set(by_kind.get("Secret", {}))
    workloads = {name: doc for kind in WORKLOAD_KINDS for name, doc in by_kind.get(kind, {}).items()}

    for name, secret in by_kind.get("Secret", {}).items():
        if secret.get("data") or secret.get("stringData"):
            problems.append(f"Secret {name} carries values: secrets must not be committed")

    for name, doc in workloads.items():
        pod = doc["spec"]["template"]["spec"]
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        ours = labels.get("app.kubernetes.io/part-of") == "tickflow" and \
            labels.get("app.kubernetes.io/component") in ("ingest", "pipeline", "migration")
        for volume in pod.get("volumes", []):
            cm = volume.get("configMap", {}).get("name")
            if cm and cm not in configmaps:
                problems.append(f"{name}: mounts ConfigMap {cm}, which the overlay does not define")
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in secrets and not ref.get("optional") \
                        and ref["name"] not in EXTERNAL_SECRETS:
                    problems.append(f"{name}: reads Secret {ref['name']} that nobody creates (mark it optional or create it in Ansible)")
        if labels.get("tickflow.io/cassandra-client") == "true":
            problems += cassandra_client_problems(name, pod)
        if not ours:
            continue
        psc = pod.get("securityContext", {})
        if not psc.get("runAsNonRoot"):
            problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: automountServiceAccountToken is not false")
        for container in pod.get("containers", []):
            where = f"{name}/{container['name']}"
            csc = container.get("securityContext", {})
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in csc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities do not drop ALL")
            res = container.get("resources", {})
            if not res.get("requests", {}).get("cpu") or not res.get("requests", {}).get("memory"):
                problems.append(f"{where}: no CPU and memory requests")
            if not res.get("limits", {}).get("memory"):
                problems.append(f"{where}: no memory limit")
            if name in SERVICES:
                port = SERVICES[name]
                ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
                if ports.get("http") != port:
                    problems.append(f"{where}: port http is {ports.get('http')}, expected {port}")
                for probe, path_ in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                    got = container.get(probe, {}).get("httpGet", {}).get("path")
                    if got != path_:
                        problems.append(f"{where}: {probe} path is {got}, expected {path_}")

    gateway = by_kind.get("StatefulSet", {}).get("ingest-gateway")
    if gateway is None:
        problems.append("no ingest-gateway StatefulSet")
    else:
        container = gateway["spec"]["template"]["spec"]["containers"][0]
        count = env_value(container, "TICKFLOW_GATEWAY__REPLICA_COUNT")
        replicas = gateway["spec"].get("replicas", 1)
        if count is None or str(count.get("value")) != str(replicas):
            problems.append(f"ingest-gateway: TICKFLOW_GATEWAY__REPLICA_COUNT={count and count.get('value')} "
                            f"but the StatefulSet has {replicas} replicas")
        index = env_value(container, "TICKFLOW_GATEWAY__REPLICA_INDEX")
        field = (index or {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
        if "apps.kubernetes.io/pod-index" not in field:
            problems.append("ingest-gateway: TICKFLOW_GATEWAY__REPLICA_INDEX does not come from the pod-index label")

    problems += cassandra_auth_problems(by_kind)
    problems += gateway_problems(by_kind)

    for kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
        for name, doc in by_kind.get(kind, {}).items():
            if doc["metadata"].get("labels", {}).get("release") != "kube-prometheus-stack":
                problems.append(f"{kind} {name}: lacks label release: kube-prometheus-stack")
    if not by_kind.get("PrometheusRule"):
        problems.append("no PrometheusRule")

    def selects(selector, doc):
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        return all(labels.get(k) == v for k, v in (selector or {}).items())

    for name, svc in by_kind.get("Service", {}).items():
        selector = svc["spec"].get("selector")
        if selector and not any(selects(selector, w) for w in workloads.values()):
            problems.append(f"Service {name}: selects no workload")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        selector = pdb["spec"]["selector"].get("matchLabels")
        if not any(selects(selector, w) for w in workloads.values()):
            problems.append(f"PodDisruptionBudget {name}: selects no workload")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            problems.append(f"HorizontalPodAutoscaler {name}: no {ref['kind']} {ref['name']}")

    for name in CONSUMERS:
        workload = workloads.get(name)
        if workload is None:
            problems.append(f"no {name} workload")
        elif workload["spec"].get("replicas", 1) < 2:
            problems.append(f"{name}: {workload['spec'].get('replicas', 1)} replica(s); every consumer runs at least 2")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        if hpa["spec"]["scaleTargetRef"]["name"] in CONSUMERS and hpa["spec"].get("minReplicas", 1) < 2:
            problems.append(f"HorizontalPodAutoscaler {name}: minReplicas below 2")
    autoscaled = sorted(h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", {}).values())

    if problems:
        print(f"FAIL k8s/policy/{overlay}: " + " | ".join(problems))
        return 1
    print(f"PASS k8s/policy/{overlay}: hardened pods, probes, resources, gateway shards = replicas "
          f"({gateway['spec'].get('replicas', 1)}), monitoring labels, no committed secret values, references resolve, "
          f"Cassandra authentication, HTTPS-only routes ({len(by_kind.get('HTTPRoute', {}))}), "
          f"consumers with 2+ replicas, autoscaled: {', '.join(autoscaled) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
