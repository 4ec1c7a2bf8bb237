#!/usr/bin/env python3
"""Writes the Kubernetes PrometheusRule from deploy/prometheus/alerts.yml (the source of truth).

    gen-prometheusrule.py           rewrite deploy/k8s/base/monitoring/prometheusrule.yaml
    gen-prometheusrule.py --check   exit 1 (and say so) when that file is out of date

The rule groups are copied as they are; only the wrapper (apiVersion, kind, metadata with the
label kube-prometheus-stack selects rules by) is added.
"""

import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
TARGET = os.path.join(ROOT, "deploy", "k8s", "base", "monitoring", "prometheusrule.yaml")

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/prometheus/gen-prometheusrule.py:
# edit alerts.yml and run the script; scripts/validate-deploy fails when this file is stale.
"""


class Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks, keys in their source order."""


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, _str)


def render():
    with open(SOURCE, encoding="utf-8") as handle:
        rules = yaml.safe_load(handle)
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "tickflow-alerts",
            "labels": {"release": "kube-prometheus-stack", "app.kubernetes.io/part-of": "tickflow"},
        },
        "spec": {"groups": rules["groups"]},
    }
    body = yaml.dump(resource, Dumper=Dumper, sort_keys=False, width=100000, allow_unicode=True)
    return HEADER + body


def main(argv):
    text = render()
    if "--check" in argv:
        try:
            with open(TARGET, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{os.path.relpath(TARGET, ROOT)} is out of date with deploy/prometheus/alerts.yml:"
                  " run deploy/prometheus/gen-prometheusrule.py")
            return 1
        return 0
    with open(TARGET, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {os.path.relpath(TARGET, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
