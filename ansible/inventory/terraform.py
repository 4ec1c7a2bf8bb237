#!/usr/bin/env python3
"""Ansible dynamic inventory from the Terraform/OpenTofu outputs of ../terraform.

Runs `tofu output -json` (or `terraform output -json` when tofu is absent; TICKFLOW_TF_BIN
overrides) in the terraform directory (TICKFLOW_TF_DIR overrides) and returns one host,
`gke-<tickflow_environment>`, connected locally: the playbooks drive the cluster through its API (kubectl,
helm), so the "host" is the control machine, and the Terraform outputs are its variables
(project_id, region, cluster_name, cluster_location, image_repository, tickflow_environment, ...).
With TICKFLOW_TF_OUTPUTS=file.json the outputs are read from that file instead (CI, tests).
"""

import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TF_DIR = os.environ.get("TICKFLOW_TF_DIR", os.path.join(HERE, "..", "..", "terraform"))


def outputs():
    path = os.environ.get("TICKFLOW_TF_OUTPUTS")
    if path:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    binary = os.environ.get("TICKFLOW_TF_BIN") or shutil.which("tofu") or shutil.which("terraform")
    if not binary:
        sys.exit("inventory: neither tofu nor terraform is on PATH (or set TICKFLOW_TF_OUTPUTS)")
    result = subprocess.run([binary, "output", "-json"], cwd=TF_DIR, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"inventory: `{binary} output -json` failed in {TF_DIR}: {result.stderr.strip()}")
    return json.loads(result.stdout or "{}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        print("{}")
        return
    values = {name: item.get("value") for name, item in outputs().items()}
    if not values:
        sys.exit("inventory: the Terraform state has no outputs yet: run `tofu apply` in terraform/ first")
    # `environment` is a play keyword: as a variable it makes templating loop. The output is
    # named tickflow_environment; a state applied before the rename still has the old name.
    if "tickflow_environment" not in values:
        sys.exit("inventory: no `tickflow_environment` output (a state from before its rename from "
                 "`environment`): run `tofu apply` in terraform/ to update the outputs")
    values.pop("environment", None)
    host = f"gke-{values['tickflow_environment']}"
    hostvars = dict(values, ansible_connection="local", ansible_python_interpreter=sys.executable)
    print(json.dumps({
        "all": {"children": ["gke"]},
        "gke": {"hosts": [host]},
        "_meta": {"hostvars": {host: hostvars}},
    }, indent=2))


if __name__ == "__main__":
    main()
