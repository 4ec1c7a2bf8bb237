#!/usr/bin/env python3
"""Third-party images of a rendered overlay: pinned by digest, or said not to be.

    k8s_images.py OVERLAY RENDERED.yaml

A tag can be moved to other content; a digest cannot. tickflow's own images (tickflow/<service>)
are left out: Ansible sets their registry and release tag at deploy time. For the others:
- FAIL when an image has no tag, uses `latest`, carries a malformed digest, or one image is
  pinned to two different digests in the overlay;
- PASS listing the images pinned as `name:tag@sha256:<64 hex>`;
- SKIP, one line per image, for a third-party image pinned by tag only: a digest is written
  here only when its source can be named (see deploy/k8s/README.md, Images), never guessed.
Images the operators run (Strimzi's Kafka, the exporters) come from the operators' own pins and
are not in the overlay.
"""

import re
import sys

import yaml

OWN = re.compile(r"^tickflow/")
REFERENCE = re.compile(r"^(?P<name>[^@:]+(?::\d+/[^@:]+)?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>.+))?$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def images(docs):
    """Yields (workload, container, image) for every container and init container."""
    for doc in docs:
        spec = doc.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}) \
            .get("template", {}).get("spec")
        if not pod:
            continue
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            yield f"{doc['kind']}/{doc['metadata']['name']}", container["name"], container["image"]


def main(argv):
    overlay, path = argv[1], argv[2]
    with open(path, encoding="utf-8") as handle:
        docs = [d for d in yaml.safe_load_all(handle) if d]
    problems, pinned, unpinned, digests = [], {}, {}, {}
    for where, container, image in images(docs):
        if OWN.match(image):
            continue
        match = REFERENCE.match(image)
        if not match:
            problems.append(f"{where}/{container}: cannot read image reference {image!r}")
            continue
        name, tag, digest = match.group("name", "tag", "digest")
        if not tag or tag == "latest":
            problems.append(f"{where}/{container}: {image} has no version tag")
        if digest is None:
            unpinned.setdefault(image, []).append(f"{where}/{container}")
            continue
        if not DIGEST.match(digest):
            problems.append(f"{where}/{container}: {image} has a malformed digest (sha256: and 64 hex digits)")
            continue
        if digests.setdefault(name, digest) != digest:
            problems.append(f"{where}/{container}: {name} pinned to {digest}, elsewhere to {digests[name]}")
        pinned.setdefault(f"{name}:{tag}", []).append(where)

    if problems:
        print(f"FAIL k8s/images/{overlay}: " + " | ".join(problems))
        return 1
    print(f"PASS k8s/images/{overlay}: pinned by digest: "
          + (", ".join(f"{image} ({len(users)} pods)" for image, users in sorted(pinned.items())) or "none"))
    for image, users in sorted(unpinned.items()):
        print(f"SKIP k8s/images/{overlay}/{image.split(':')[0]}: {image} pinned by tag only (no digest with a "
              f"source we can name yet; used by {', '.join(users)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
