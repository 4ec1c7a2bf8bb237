#!/usr/bin/env python3
"""Turns CustomResourceDefinition YAML into the JSON schemas kubeconform reads offline.

    crd2jsonschema.py OUT_DIR CRD.yaml [CRD.yaml ...]

For every served version of every CRD it writes OUT_DIR/<group>/<kind>_<version>.json (kind in
lower case), which kubeconform finds with

    -schema-location 'OUT_DIR/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'

The schema is the CRD's openAPIV3Schema, adapted to JSON Schema:
- objects that list their properties refuse unknown ones (additionalProperties: false), unless
  the CRD marks them x-kubernetes-preserve-unknown-fields: a typo in a field name fails, as
  `kubectl apply --validate=strict` would;
- x-kubernetes-int-or-string becomes "string or integer", nullable adds "null";
- apiVersion and kind are pinned to the CRD's group/version and kind.
"""

import json
import os
import sys

import yaml


def adapt(node):
    """Returns a JSON-Schema copy of one OpenAPI v3 (Kubernetes structural) schema node."""
    if isinstance(node, list):
        return [adapt(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: adapt(value) for key, value in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "string"}, {"type": "integer"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def convert(crd):
    """Yields (group, kind, version, schema) for each served version of one CRD."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        raw = (version.get("schema") or {}).get("openAPIV3Schema")
        if raw is None:
            continue
        schema = adapt(raw)
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props.setdefault("metadata", {"type": "object"})
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schema["description"] = (
            f"{kind} {group}/{version['name']} (from the CRD by crd2jsonschema.py)"
        )
        yield group, kind, version["name"], schema


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    out_dir = argv[1]
    written = 0
    for path in argv[2:]:
        with open(path, encoding="utf-8") as handle:
            for doc in yaml.safe_load_all(handle):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                for group, kind, version, schema in convert(doc):
                    target = os.path.join(out_dir, group, f"{kind.lower()}_{version}.json")
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "w", encoding="utf-8") as out:
                        json.dump(schema, out, indent=1, sort_keys=True)
                        out.write("\n")
                    written += 1
                    print(f"{target}")
    if written == 0:
        sys.stderr.write("no CustomResourceDefinition with a schema found\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
