"""The leak counter: every live resource carrying the tag bake:managed, in every region."""

import re

from moto.autoscaling.models import autoscaling_backends
from moto.ec2.models import ec2_backends
from moto.iam.models import iam_backends
from moto.ssm.models import ssm_backends

from .state import ACCOUNT

TAG = "bake:managed"
# Launch configurations cannot carry tags: bake names its own `<group>-<ami>-<bake id>`.
BAKE_LC = re.compile(r"-b-[0-9a-f]{12}$")


def _managed(tags):
    """IAM keeps tags as a list of {Key, Value} or a dict of key -> {Key, Value}."""
    if isinstance(tags, dict):
        return TAG in tags or any(isinstance(v, dict) and v.get("Key") == TAG for v in tags.values())
    return any(isinstance(t, dict) and (t.get("Key") or t.get("key")) == TAG for t in tags or [])


def _each(backends):
    """(account, key, backend) for every account the sandbox has seen, the home account first."""
    accounts = sorted(backends.keys(), key=lambda a: (a != ACCOUNT, a))
    return [(acct, k, b) for acct in accounts for k, b in list(backends[acct].items())]


def live_resources():
    """Every account's: a resource in another account is marked with `account`."""
    out = []
    for acct, region, b in _each(ec2_backends):
        start = len(out)
        tags = b.tags  # resource id -> {key: value}
        for res in b.reservations.values():
            for i in res.instances:
                if i.state != "terminated" and TAG in tags.get(i.id, {}):
                    out.append({"type": "instance", "id": i.id, "region": region, "state": i.state})
        for ami in b.amis.values():
            if ami.owner_id == acct and TAG in tags.get(ami.id, {}):
                out.append({"type": "image", "id": ami.id, "region": region, "state": ami.state})
        for snap in b.snapshots.values():
            if snap.owner_id == acct and TAG in tags.get(snap.id, {}):
                out.append({"type": "snapshot", "id": snap.id, "region": region})
        for vol in b.volumes.values():
            if TAG in tags.get(vol.id, {}):
                out.append({"type": "volume", "id": vol.id, "region": region, "state": vol.status})
        for groups in b.groups.values():
            for sg in groups.values():
                if TAG in tags.get(sg.id, {}):
                    out.append({"type": "security-group", "id": sg.id, "region": region})
        for lt in b.launch_templates.values():
            if TAG in tags.get(lt.id, {}):
                out.append({"type": "launch-template", "id": lt.id, "region": region, "name": lt.name})
        _mark(out, start, acct)
    for acct, region, a in _each(autoscaling_backends):
        start = len(out)
        for name in a.launch_configurations:
            if BAKE_LC.search(name):
                out.append({"type": "launch-configuration", "id": name, "region": region})
        _mark(out, start, acct)
    for acct, part, iam in _each(iam_backends):
        start = len(out)
        for role in iam.roles.values():
            if _managed(role.tags):
                out.append({"type": "iam-role", "id": role.name, "path": role.path})
        for prof in iam.instance_profiles.values():
            if _managed(prof.tags):
                out.append({"type": "instance-profile", "id": prof.name, "path": prof.path,
                            "roles": [r.name for r in prof.roles]})
        _mark(out, start, acct)
    for acct, region, s in _each(ssm_backends):
        start = len(out)
        for name in list(s._parameters.keys()):
            tags = s._resource_tags.get("Parameter", {}).get(name, {}) if hasattr(s, "_resource_tags") else {}
            if TAG in tags:
                out.append({"type": "ssm-parameter", "id": name, "region": region})
        _mark(out, start, acct)
    return out


def _mark(out, start, acct):
    if acct != ACCOUNT:
        for r in out[start:]:
            r["account"] = acct


def images(region=None):
    out = []
    for r, b in list(ec2_backends[ACCOUNT].items()):
        if region and r != region:
            continue
        for ami in b.amis.values():
            if ami.owner_id != ACCOUNT:
                continue
            out.append({"id": ami.id, "region": r, "name": ami.name, "state": ami.state,
                        "architecture": getattr(ami, "architecture", None),
                        "tags": dict(b.tags.get(ami.id, {})), "snapshot": ami.ebs_snapshot.id,
                        "snapshot_tags": dict(b.tags.get(ami.ebs_snapshot.id, {})),
                        "snapshot_encrypted": bool(getattr(ami.ebs_snapshot, "encrypted", False)),
                        "launch_permissions": ami.launch_permissions,
                        "deprecation_time": getattr(ami, "deprecation_time", None),
                        "deregistration_protection": getattr(ami, "deregistration_protection", "disabled")})
    return out
