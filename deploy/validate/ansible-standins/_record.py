"""Shared by the recording stand-ins for gcloud, kubectl, helm and kustomize.

Each call is appended to $TICKFLOW_STANDIN_LOG/calls.jsonl (argv, the KUBECONFIG and
HELM_NAMESPACE it ran with, files it read); what a call read from stdin or a values file is
kept beside it, so deploy/validate/ansible_e2e.py can assert on the calls and validate what
would have been applied. Standard library only.
"""

import fcntl
import json
import os
import shutil
import sys

LOG_DIR = os.environ.get("TICKFLOW_STANDIN_LOG")

# A stand-in's identity, written by the gcloud stand-in into the kubeconfig: kubectl and helm
# refuse to "reach the cluster" without it, as the real ones would without credentials.
KUBECONFIG_MARKER = "# tickflow stand-in credentials"


def _require_log_dir():
    if not LOG_DIR:
        sys.exit(f"{os.path.basename(sys.argv[0])}: this is a recording stand-in for "
                 "deploy/validate/ansible_e2e.py (TICKFLOW_STANDIN_LOG is not set), not the real tool")
    os.makedirs(LOG_DIR, exist_ok=True)


def record(tool, argv, stdin_text=None, files=()):
    """Appends one call; returns its sequence number. `files` are copied into the log."""
    _require_log_dir()
    with open(os.path.join(LOG_DIR, "calls.jsonl"), "a+", encoding="utf-8") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.seek(0)
        seq = sum(1 for _ in log) + 1
        entry = {
            "seq": seq,
            "tool": tool,
            "argv": argv,
            "kubeconfig": os.environ.get("KUBECONFIG"),
            "helm_namespace": os.environ.get("HELM_NAMESPACE"),
        }
        if stdin_text is not None:
            name = f"{seq:04d}-{tool}-stdin.txt"
            with open(os.path.join(LOG_DIR, name), "w", encoding="utf-8") as out:
                out.write(stdin_text)
            entry["stdin"] = name
        saved = []
        for index, path in enumerate(files):
            name = f"{seq:04d}-{tool}-file{index}{os.path.splitext(path)[1]}"
            shutil.copyfile(path, os.path.join(LOG_DIR, name))
            saved.append(name)
        if saved:
            entry["files"] = saved
        log.seek(0, os.SEEK_END)
        log.write(json.dumps(entry) + "\n")
    return seq


def state_path(name):
    _require_log_dir()
    return os.path.join(LOG_DIR, name)


def credentials_ok():
    """True when KUBECONFIG (or ~/.kube/config) holds what the gcloud stand-in wrote."""
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        with open(path, encoding="utf-8") as handle:
            return KUBECONFIG_MARKER in handle.read()
    except OSError:
        return False


def unsupported(tool, argv):
    """A call with no canned answer fails loudly: the check must learn it, not guess."""
    sys.stderr.write(f"{tool} stand-in: no canned answer for `{tool} {' '.join(argv)}`; "
                     f"teach deploy/validate/ansible-standins/{tool} what it should print\n")
    sys.exit(2)
