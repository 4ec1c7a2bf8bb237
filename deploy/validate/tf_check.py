#!/usr/bin/env python3
"""Structural checks of terraform/ with python-hcl2, for what `tofu validate` would catch when
the google provider cannot be installed (no provider registry from here).

    tf_check.py [DIR]

One line, PASS or FAIL with every problem:
- every .tf file parses (HCL2);
- every variable has a description and a type, every output a description;
- every var.X, local.X, module.X and <resource_type>.<name> / data.<type>.<name> reference
  names something declared; every declared variable is used;
- the backend is "gcs" and the google provider has a version constraint;
- terraform.tfvars.example sets only declared variables, and every variable without a
  default;
What it cannot check without the provider's schema: argument names and types of the google_*
resources (checkov, run beside it, reads them as a policy engine does).
"""

import glob
import os
import re
import sys

import hcl2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def strip_interp(value):
    """hcl2 returns expressions as strings like ${var.x}; collect all strings in a structure."""
    if isinstance(value, dict):
        for item in value.values():
            yield from strip_interp(item)
    elif isinstance(value, list):
        for item in value:
            yield from strip_interp(item)
    elif isinstance(value, str):
        yield value


def main(argv):
    directory = argv[1] if len(argv) > 1 else os.path.join(ROOT, "terraform")
    problems = []
    variables, outputs, locals_, resources, data, modules = {}, {}, set(), set(), set(), set()
    blobs = []
    backend, google_version = None, None
    files = sorted(glob.glob(os.path.join(directory, "*.tf")))
    if not files:
        print(f"FAIL terraform/structure: no .tf files in {directory}")
        return 1
    for path in files:
        name = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as handle:
                doc = hcl2.load(handle)
        except Exception as error:  # the parser's own exception types vary by version
            problems.append(f"{name}: does not parse: {error}")
            continue
        for block in doc.get("variable", []):
            for var, body in block.items():
                variables[var] = body
                blobs.append(("variable " + var, body))
        for block in doc.get("output", []):
            for out, body in block.items():
                outputs[out] = body
                blobs.append(("output " + out, body))
        for block in doc.get("locals", []):
            locals_.update(block.keys())
            blobs.append(("locals", block))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for rname, body in named.items():
                    resources.add(f"{rtype}.{rname}")
                    blobs.append((f"{rtype}.{rname}", body))
        for block in doc.get("data", []):
            for dtype, named in block.items():
                for dname, body in named.items():
                    data.add(f"data.{dtype}.{dname}")
                    blobs.append((f"data.{dtype}.{dname}", body))
        for block in doc.get("module", []):
            modules.update(block.keys())
            blobs.append(("module", block))
        for block in doc.get("provider", []):
            blobs.append(("provider", block))
        for block in doc.get("terraform", []):
            for backend_block in block.get("backend", []):
                backend = next(iter(backend_block))
            for providers in block.get("required_providers", []):
                google = providers.get("google")
                google = google[0] if isinstance(google, list) and google else google
                if isinstance(google, dict):
                    google_version = google.get("version")
                    google_version = google_version[0] if isinstance(google_version, list) else google_version

    for var, body in sorted(variables.items()):
        if not body.get("description"):
            problems.append(f"variable {var}: no description")
        if "type" not in body:
            problems.append(f"variable {var}: no type")
    for out, body in sorted(outputs.items()):
        if not body.get("description"):
            problems.append(f"output {out}: no description")

    used_vars = set()
    resource_types = {r.split(".")[0] for r in resources}
    for where, body in blobs:
        for text in strip_interp(body):
            for ref in re.findall(r"\bvar\.([A-Za-z_][\w-]*)", text):
                used_vars.add(ref)
                if ref not in variables:
                    problems.append(f"{where}: var.{ref} is not declared")
            for ref in re.findall(r"\blocal\.([A-Za-z_][\w-]*)", text):
                if ref not in locals_:
                    problems.append(f"{where}: local.{ref} is not declared")
            for ref in re.findall(r"\bmodule\.([A-Za-z_][\w-]*)", text):
                if ref not in modules:
                    problems.append(f"{where}: module.{ref} is not declared")
            for ref in re.findall(r"\b(data\.[a-z0-9_]+\.[A-Za-z_][\w-]*)", text):
                if ref not in data:
                    problems.append(f"{where}: {ref} is not declared")
            for rtype, rname in re.findall(r"(?<![\w.])(google_[a-z0-9_]+)\.([A-Za-z_][\w-]*)", text):
                if f"{rtype}.{rname}" not in resources and rtype in resource_types | {rtype}:
                    problems.append(f"{where}: {rtype}.{rname} is not declared")
    for var in sorted(set(variables) - used_vars):
        problems.append(f"variable {var} is declared but never used")

    if backend != "gcs":
        problems.append(f"backend is {backend!r}, expected \"gcs\" (remote state in a GCS bucket)")
    if not google_version:
        problems.append("required_providers.google has no version constraint")

    example = os.path.join(directory, "terraform.tfvars.example")
    if os.path.exists(example):
        with open(example, encoding="utf-8") as handle:
            values = hcl2.load(handle)
        for key in sorted(values):
            if key not in variables:
                problems.append(f"terraform.tfvars.example sets undeclared variable {key}")
        for var, body in sorted(variables.items()):
            if "default" not in body and var not in values:
                problems.append(f"terraform.tfvars.example lacks required variable {var}")
    else:
        problems.append("no terraform.tfvars.example")

    if problems:
        print("FAIL terraform/structure: " + " | ".join(problems))
        return 1
    print(f"PASS terraform/structure: {len(files)} files parse; {len(variables)} variables (typed, described, used), "
          f"{len(outputs)} outputs, {len(resources)} resources, every reference declared; gcs backend; "
          f"google provider {google_version}; tfvars example complete")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
