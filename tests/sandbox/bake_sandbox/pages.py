"""Pages at AWS's documented sizes wherever moto does not already, with opaque tokens that are
refused when forged or reused for another query, and page-size limits checked as AWS checks them.

| call | page (default / limit) | source |
|---|---|---|
| autoscaling DescribeAutoScalingGroups, DescribeLaunchConfigurations, DescribeInstanceRefreshes | MaxRecords 50 / 100 | API reference, MaxRecords: "The default value is 50 and the maximum value is 100" |
| iam ListRoles, ListInstanceProfiles | MaxItems 100 / 1000, PathPrefix honoured; at most 100 a page ("IAM might return fewer results, even when there are more results available") | IAM API reference, MaxItems |
| ssm ListCommands, ListCommandInvocations | MaxResults 50 / 50 | SSM API reference (1-50) |
| ec2 DescribeImages | all, or MaxResults 1-1000 | EC2 API reference (Pagination) |
| ec2 DescribeSecurityGroups | all, or MaxResults 5-1000 | "This value can be between 5 and 1000. If this parameter is not specified, then all items are returned." |
| ec2 DescribeSnapshots | all, or MaxResults 5-1000 | EC2 API reference |
| ec2 DescribeInstances | 100 (moto's), or MaxResults 5-1000; not with InstanceIds | EC2 API reference |
| ec2 DescribeLaunchTemplates, DescribeLaunchTemplateVersions | 15 (moto's; AWS documents none), or MaxResults 1-200 | "This value can be between 1 and 200." |

moto answers an unknown token with a Python error (HTML 500) and DescribeLaunchTemplate(Version)s
truncated at 15 without a token; both are replaced here."""

import base64
import hashlib
import json

from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ec2.responses.security_groups import SecurityGroups
from moto.iam.responses import IamResponse

from .state import STATE, err

# The code each service answers a bad token with.
TOKEN_ERROR = {"ec2": "InvalidParameterValue", "autoscaling": "InvalidNextToken", "ssm": "InvalidNextToken",
               "iam": "ValidationError"}


def _digest(action, key):
    return hashlib.sha256(json.dumps([action, key], default=str).encode()).hexdigest()[:16]


def token(action, key, offset):
    raw = json.dumps({"a": action, "q": _digest(action, key), "o": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def page(items, tok, size, action, key, service="ec2", ec2=False):
    """(this page of `items`, the next token or None). `size` None: everything from the token on."""
    if ec2:
        service = "ec2"
    start = 0
    if tok:
        try:
            data = json.loads(base64.urlsafe_b64decode(tok.encode()))
            start = int(data["o"])
            ok = data["a"] == action and data["q"] == _digest(action, key) and start >= 0
        except Exception:  # noqa: BLE001 - any undecodable token is invalid
            ok = False
        if not ok:
            raise err(TOKEN_ERROR[service], f"The token '{tok[:40]}' is invalid (the sandbox's tokens are opaque and "
                      "belong to the query that returned them).")
    end = len(items) if size is None else start + size
    nxt = token(action, key, end) if end < len(items) else None
    return items[start:end], nxt


def query_key(resp, skip=("NextToken", "MaxResults", "MaxRecords", "Marker", "MaxItems")):
    """What identifies a query apart from its paging: its parameters (a JSON body's members, or
    the query string's)."""
    body = getattr(resp, "body", None)
    if isinstance(body, (str, bytes)) and body.strip()[:1] in ("{", b"{"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in data.items() if k not in skip)
    qs = getattr(resp, "querystring", None) or {}
    return sorted((k, tuple(v)) for k, v in qs.items() if k not in skip + ("Action", "Version"))


def limit(value, lo, hi, name, service, cap=False):
    """Checks a page size as AWS does: a validation error outside [lo, hi] (or capped at hi)."""
    if value is None:
        return None
    if value < lo or (value > hi and not cap):
        if service == "ec2":
            raise err("InvalidParameterValue", f"Value ( {value} ) for parameter {name} is invalid. "
                      f"Expecting a value between {lo} and {hi}.")
        bound = f"greater than or equal to {lo}" if value < lo else f"less than or equal to {hi}"
        code = "ValidationError" if service in ("autoscaling", "iam") else "ValidationException"
        raise err(code, f"1 validation error detected: Value '{value}' at '{name}' failed to satisfy "
                  f"constraint: Member must have value {bound}")
    return min(value, hi)


# -- Auto Scaling --------------------------------------------------------------------------------

def describe_auto_scaling_groups(self):
    names = self._get_param("AutoScalingGroupNames", [])
    filters = self._get_param("Filters", [])
    size = limit(self._get_int_param("MaxRecords"), 1, 100, "maxRecords", "autoscaling") or 50
    groups = self.autoscaling_backend.describe_auto_scaling_groups(names, filters=filters)
    groups = sorted((g for g in groups if not STATE.fresh(("asg", self.region, g.name))), key=lambda g: g.name)
    chunk, nxt = page(groups, self._get_param("NextToken"), size, "DescribeAutoScalingGroups", query_key(self),
                      "autoscaling")
    return ActionResult({"AutoScalingGroups": chunk, "NextToken": nxt})


def describe_launch_configurations(self):
    names = self._get_param("LaunchConfigurationNames", [])
    size = limit(self._get_int_param("MaxRecords"), 1, 100, "maxRecords", "autoscaling") or 50
    lcs = sorted(self.autoscaling_backend.describe_launch_configurations(names), key=lambda c: c.name)
    chunk, nxt = page(lcs, self._get_param("NextToken"), size, "DescribeLaunchConfigurations", query_key(self),
                      "autoscaling")
    return ActionResult({"LaunchConfigurations": chunk, "NextToken": nxt})


# -- IAM -----------------------------------------------------------------------------------------

IAM_PAGE = 100  # "IAM might return fewer results, even when there are more results available"


def _iam_list(self, items, key, action):
    prefix = self._get_param("PathPrefix") or "/"
    if not prefix.startswith("/") or len(prefix) > 512 or any(not 0x21 <= ord(c) <= 0x7F for c in prefix):
        raise err("ValidationError", f"1 validation error detected: Value '{prefix}' at 'pathPrefix' failed to "
                  "satisfy constraint: Member must satisfy regular expression pattern: \\u002F[\\u0021-\\u007F]*")
    raw = self._get_param("MaxItems")
    size = limit(int(raw), 1, 1000, "maxItems", "iam") if raw not in (None, "") else 100
    chosen = sorted((i for i in items if i.path.startswith(prefix)), key=lambda i: i.name)
    chunk, nxt = page(chosen, self._get_param("Marker"), min(size, IAM_PAGE), action, query_key(self), "iam")
    out = {key: chunk, "IsTruncated": nxt is not None}
    if nxt:
        out["Marker"] = nxt
    return ActionResult(out)


def list_roles(self):
    return _iam_list(self, self.backend.roles.values(), "Roles", "ListRoles")


def list_instance_profiles(self):
    return _iam_list(self, self.backend.get_instance_profiles(), "InstanceProfiles", "ListInstanceProfiles")


# -- EC2 -----------------------------------------------------------------------------------------

class _Reservation:
    """A reservation as DescribeInstances shows it: without instances still invisible."""

    def __init__(self, reservation, instances):
        self._r = reservation
        self.instances = instances

    def __getattr__(self, name):
        return getattr(self._r, name)


def describe_instances(self):
    self.error_on_dryrun()
    ids = self._get_param("InstanceIds", [])
    if ids and self._get_param("MaxResults") is not None:
        raise err("InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults")
    size = limit(self._get_int_param("MaxResults"), 5, 1000, "maxResults", "ec2") or 100
    filters = self._filters_from_querystring()
    if ids:
        reservations = self.ec2_backend.get_reservations_by_instance_ids(ids, filters=filters)
    else:
        reservations = self.ec2_backend.describe_instances(filters=filters)
    shown = []
    for r in reservations:
        visible = [i for i in r.instances if not STATE.fresh(i.id)]
        if visible:
            shown.append(_Reservation(r, visible) if len(visible) != len(r.instances) else r)
    chunk, nxt = page(shown, self._get_param("NextToken"), size, "DescribeInstances", query_key(self), ec2=True)
    return ActionResult({"Reservations": chunk, "NextToken": nxt})


def describe_snapshots(self):
    size = limit(self._get_int_param("MaxResults"), 5, 1000, "maxResults", "ec2", cap=True)
    me = self.current_account
    # The account's own snapshots and, from other accounts in the region, those shared with it
    # (moto keeps each account's apart and finds only its own by id).
    from moto.ec2.models import ec2_backends
    from moto.ec2.utils import generic_filter
    ids = self._get_param("SnapshotIds", []) or []
    snaps = list(self.ec2_backend.snapshots.values())
    for acct in list(ec2_backends.keys()):
        if acct != me:
            snaps += [s for s in ec2_backends[acct][self.region].snapshots.values()
                      if "all" in s.create_volume_permission_groups or me in s.create_volume_permission_userids]
    if ids:
        snaps = [s for s in snaps if s.id in ids]
        missing = [i for i in ids if i not in {s.id for s in snaps}]
        if missing:
            raise err("InvalidSnapshot.NotFound", f"The snapshot '{missing[0]}' does not exist.")
    filters = self._filters_from_querystring()
    if filters:
        snaps = generic_filter(filters, snaps)
    owners = {me if o == "self" else o for o in self._get_param("OwnerIds", []) or []}

    def visible(snap):
        # "Describes ... snapshots available to you": yours, public ones, and ones shared with you;
        # OwnerIds narrows to those owners (moto ignores it and shows every owner's).
        if owners:
            return snap.owner_id in owners
        return snap.owner_id == me or "all" in snap.create_volume_permission_groups \
            or me in snap.create_volume_permission_userids
    snaps = sorted((s for s in snaps if visible(s) and not STATE.fresh(s.id)), key=lambda s: s.id)
    chunk, nxt = page(snaps, self._get_param("NextToken"), size, "DescribeSnapshots", query_key(self), ec2=True)
    return ActionResult({"Snapshots": chunk, "NextToken": nxt})


def describe_security_groups(self):
    size = limit(self._get_int_param("MaxResults"), 5, 1000, "maxResults", "ec2")
    groups = self.ec2_backend.describe_security_groups(group_ids=self._get_param("GroupIds", []),
                                                       groupnames=self._get_param("GroupNames", []),
                                                       filters=self._filters_from_querystring())
    groups = sorted((g for g in groups if not STATE.fresh(g.id)), key=lambda g: g.id)
    chunk, nxt = page(groups, self._get_param("NextToken"), size, "DescribeSecurityGroups", query_key(self), ec2=True)
    return ActionResult({"SecurityGroups": chunk, "NextToken": nxt})


def _lt_size(self):
    return limit(self._get_int_param("MaxResults"), 1, 200, "maxResults", "ec2") or 15


def describe_launch_templates(self):
    size = _lt_size(self)
    self.error_on_dryrun()
    templates = self.ec2_backend.describe_launch_templates(template_names=self._get_param("LaunchTemplateNames", []),
                                                           template_ids=self._get_param("LaunchTemplateIds", []),
                                                           filters=self._filters_from_querystring())
    templates = [t for t in templates if not STATE.fresh(t.id)]
    chunk, nxt = page(templates, self._get_param("NextToken"), size, "DescribeLaunchTemplates", query_key(self), ec2=True)
    out = [{
        "CreateTime": t.create_time,
        "CreatedBy": f"arn:{self.partition}:iam::{self.current_account}:root",
        "DefaultVersionNumber": t.default_version_number,
        "LatestVersionNumber": t.latest_version_number,
        "LaunchTemplateId": t.id,
        "LaunchTemplateName": t.name,
        "Tags": t.tags,
    } for t in chunk]
    return ActionResult({"LaunchTemplates": out, "NextToken": nxt})


def describe_launch_template_versions(self):
    size = _lt_size(self)
    self.error_on_dryrun()
    versions = self.ec2_backend.describe_launch_template_versions(
        template_name=self._get_param("LaunchTemplateName"),
        template_id=self._get_param("LaunchTemplateId"),
        versions=self._get_param("Versions", []),
        min_version=self._get_int_param("MinVersion"),
        max_version=self._get_int_param("MaxVersion"),
        max_results=10 ** 9,
    )
    chunk, nxt = page(list(versions), self._get_param("NextToken"), size, "DescribeLaunchTemplateVersions",
                      query_key(self), ec2=True)
    out = [{
        "CreateTime": v.create_time,
        "CreatedBy": f"arn:{self.partition}:iam::{self.current_account}:root",
        "DefaultVersion": t.is_default(v),
        "LaunchTemplateData": v.data,
        "LaunchTemplateId": t.id,
        "LaunchTemplateName": t.name,
        "VersionDescription": v.description,
        "VersionNumber": v.number,
    } for t, v in chunk]
    return ActionResult({"LaunchTemplateVersions": out, "NextToken": nxt})


for _cls, _fns in {
    AutoScalingResponse: {"describe_auto_scaling_groups": describe_auto_scaling_groups,
                          "describe_launch_configurations": describe_launch_configurations},
    IamResponse: {"list_roles": list_roles, "list_instance_profiles": list_instance_profiles},
    InstanceResponse: {"describe_instances": describe_instances},
    ElasticBlockStore: {"describe_snapshots": describe_snapshots},
    SecurityGroups: {"describe_security_groups": describe_security_groups},
    LaunchTemplates: {"describe_launch_templates": describe_launch_templates,
                      "describe_launch_template_versions": describe_launch_template_versions},
}.items():
    for _name, _fn in _fns.items():
        setattr(_cls, _name, _fn)
