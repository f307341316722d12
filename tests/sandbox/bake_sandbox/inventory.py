"""What is installed on instances and images, for bake's inventory step: the sandbox never runs a
script, so it keeps, per image and per instance, the Debian packages, the kernel and the container
images, and answers the inventory script as a machine holding them would.

- A public image (Canonical's) holds `BASE`: a small Ubuntu 22.04 package set.
- An instance holds what its image held; `CreateImage` records what the instance holds then, and
  `CopyImage` what the source held: a patch's image is its parent's plus the patch's changes.
- An SSM outcome rule may change what the instance holds when its command succeeds:
  `"packages": {"openssl": "3.0.13-0ubuntu3", "telnet": null}` (null removes),
  `"packages_generated": N` (N more packages, to make the listing large), `"kernel": "…"`,
  `"containers": [["nginx", "1.25", "sha256:…"], …]`.
- The inventory script (it writes `#bake-inventory v1` to /var/lib/bake/inventory.txt and prints
  `#size BYTES SHA256` and the first 20,000 bytes) and its page commands (`tail -c +N FILE | head
  -c M`) are answered from that state, byte for byte as the script would print them.
"""

import copy
import hashlib
import re

from .state import STATE

HEADER = "#bake-inventory v1"
FILE = "/var/lib/bake/inventory.txt"
PAGE = re.compile(r"^tail -c \+(\d+) " + re.escape(FILE) + r" \| head -c (\d+)$", re.M)

BASE = {
    "kernel": "6.5.0-1014-aws",
    "packages": {
        "apt": ("2.4.11", "amd64"), "base-files": ("12ubuntu4.6", "amd64"), "bash": ("5.1-6ubuntu1.1", "amd64"),
        "ca-certificates": ("20230311ubuntu0.22.04.1", "all"), "coreutils": ("8.32-4.1ubuntu1.2", "amd64"),
        "curl": ("7.81.0-1ubuntu1.15", "amd64"), "dpkg": ("1.21.1ubuntu2.3", "amd64"),
        "libc6": ("2.35-0ubuntu3.6", "amd64"), "libcurl4": ("7.81.0-1ubuntu1.15", "amd64"),
        "libssl3": ("3.0.2-0ubuntu1.15", "amd64"), "linux-aws": ("6.5.0.1014.14~22.04.1", "amd64"),
        "openssh-server": ("1:8.9p1-3ubuntu0.6", "amd64"), "openssl": ("3.0.2-0ubuntu1.15", "amd64"),
        "python3": ("3.10.6-1~22.04", "amd64"), "snapd": ("2.61.3+22.04", "amd64"),
        "sudo": ("1.9.9-1ubuntu2.4", "amd64"), "systemd": ("249.11-0ubuntu3.12", "amd64"),
        "tzdata": ("2024a-0ubuntu0.22.04", "all"), "zlib1g": ("1:1.2.11.dfsg-2ubuntu9.2", "amd64"),
    },
    "containers": [],
}


def _image_state(image_id):
    meta = STATE.image_meta.get(image_id, {})
    return meta.get("installed") or BASE


def of_instance(instance):
    """What `instance` (moto's) holds, set from its image on first use."""
    meta = STATE.instance_meta.setdefault(instance.id, {})
    if "installed" not in meta:
        meta["installed"] = copy.deepcopy(_image_state(instance.image_id))
    return meta["installed"]


def image_from_instance(image_id, instance):
    STATE.image_meta.setdefault(image_id, {})["installed"] = copy.deepcopy(of_instance(instance))


def image_from_image(image_id, source_id):
    STATE.image_meta.setdefault(image_id, {})["installed"] = copy.deepcopy(_image_state(source_id))


def change(instance, rule):
    """Applies an outcome rule's changes to what `instance` holds (its command succeeded)."""
    if not rule:
        return
    held = of_instance(instance)
    for name, version in (rule.get("packages") or {}).items():
        if version is None:
            held["packages"].pop(name, None)
        else:
            arch = held["packages"].get(name, (None, "amd64"))[1]
            held["packages"][name] = (version, arch)
    for n in range(int(rule.get("packages_generated") or 0)):
        held["packages"][f"sandbox-generated-package-{n:05d}"] = (f"1.0.{n}-0ubuntu1~22.04.1", "amd64")
    if rule.get("kernel"):
        held["kernel"] = rule["kernel"]
    if rule.get("containers") is not None:
        held["containers"] = [tuple(c) for c in rule["containers"]]


def document(instance):
    held = of_instance(instance)
    lines = [HEADER, f"#kernel {held['kernel']}", "#packages"]
    lines += [f"{n}\t{v}\t{a}" for n, (v, a) in sorted(held["packages"].items())]
    lines.append("#containers")
    lines += ["\t".join(c) for c in sorted(held["containers"])]
    return ("\n".join(lines) + "\n").encode()


def kind(script):
    """("first",) for the inventory script, ("page", offset, count) for a page command, or None."""
    if HEADER in script and FILE in script:
        return ("first",)
    m = PAGE.search(script)
    if m:
        return ("page", int(m.group(1)) - 1, int(m.group(2)))
    return None


def answer(instance, k):
    """What the script `k` prints on `instance`."""
    if k[0] == "first":
        doc = document(instance)
        STATE.instance_meta.setdefault(instance.id, {})["inventory_doc"] = doc
        return f"#size {len(doc)} {hashlib.sha256(doc).hexdigest()}\n" + doc[:20000].decode("utf-8", "replace")
    doc = STATE.instance_meta.get(instance.id, {}).get("inventory_doc", b"")
    _, offset, count = k
    return doc[offset:offset + count].decode("utf-8", "replace")
