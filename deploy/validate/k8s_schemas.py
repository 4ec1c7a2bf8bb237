#!/usr/bin/env python3
"""Lays out the Kubernetes JSON schemas bundled in kubernetes-validate (PyPI) for kubeconform.

    k8s_schemas.py SRC_DIR DEST_DIR VERSION

kubernetes-validate ships, per Kubernetes version, one JSON schema per kind
(`deployment-apps-v1.json`, the naming kubeconform expects) whose references point at a shared
`_definitions.json` through absolute URLs under https://kubernetes.io/api/. kubeconform would
try to fetch those over the network; this rewrites them to the local file and drops the `$id`s,
writing DEST_DIR/<version>-standalone-strict/ (and -standalone/), so that

    -schema-location 'DEST_DIR/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json'

validates offline.
"""

import json
import os
import sys

PREFIX = "/api/_definitions.json#"


def localize(node):
    if isinstance(node, dict):
        node.pop("$id", None)
        ref = node.get("$ref")
        if isinstance(ref, str):
            for prefix in (PREFIX, "https://kubernetes.io" + PREFIX):
                if ref.startswith(prefix):
                    node["$ref"] = "_definitions.json#" + ref[len(prefix):]
        for value in node.values():
            localize(value)
    elif isinstance(node, list):
        for value in node:
            localize(value)
    return node


def main(argv):
    if len(argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    src, dest, version = argv[1:]
    version = version if version.startswith("v") else "v" + version
    for suffix in ("-strict", ""):
        src_dir = os.path.join(src, f"{version}-local{suffix}")
        dest_dir = os.path.join(dest, f"{version}-standalone{suffix}")
        if not os.path.isdir(src_dir):
            sys.stderr.write(f"no schemas for Kubernetes {version} in {src}\n")
            return 1
        os.makedirs(dest_dir, exist_ok=True)
        for name in os.listdir(src_dir):
            if not name.endswith(".json"):
                continue
            with open(os.path.join(src_dir, name), encoding="utf-8") as handle:
                schema = localize(json.load(handle))
            with open(os.path.join(dest_dir, name), "w", encoding="utf-8") as out:
                json.dump(schema, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
