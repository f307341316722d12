"""From an AWS request to the authorization requests AWS makes for it: (action, resource ARN,
resource type, context keys) for every resource the call touches, plus the other authorizations
AWS makes on the caller (ec2:CreateTags on tagged new resources, iam:PassRole, KMS through EC2,
RunInstances behind an Auto Scaling launch template). Which resource types and which keys each
action has comes from authz_actions.toml; this module computes their values from the request and
from moto's state. Values it cannot compute are left out, so a policy that depends on one is
refused with a reason (policy.Unsupported), never guessed.

Sources for what is checked beyond the SAR's rows are in authz_actions.toml (`also`)."""

import json
import urllib.parse

import botocore.session
from moto.autoscaling.models import autoscaling_backends
from moto.ec2.models import ec2_backends
from moto.iam.models import iam_backends
from moto.kms.models import kms_backends
from moto.sns.models import sns_backends
from moto.ssm.models import ssm_backends

from .policy import Unsupported
from .state import ACCOUNT

PARTITION = "aws"
_SESSION = botocore.session.get_session()
_MODELS = {}
TAG_FAMILIES = ("aws:resourcetag/", "ec2:resourcetag/", "autoscaling:resourcetag/", "ssm:resourcetag/",
                "iam:resourcetag/")
REQUEST_FAMILIES = ("aws:requesttag/",)


class CallError(Exception):
    """The request is invalid in a way AWS reports before (or instead of) authorizing it."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Req:
    """One authorization request."""

    def __init__(self, action, resource, rtype=None, values=None, families=(), note=None, via=None, launch_template=None):
        self.action = action
        self.resource = resource
        self.rtype = rtype
        self.values = dict(values or {})
        self.families = set(families)
        self.note = note
        self.via = via  # service principal making the call on the caller's behalf (kms via ec2)
        self.launch_template = launch_template  # Auto Scaling: the template the check is for


# -- request parsing ---------------------------------------------------------------------------

def _model(service):
    m = _MODELS.get(service)
    if m is None:
        m = _MODELS[service] = _SESSION.get_service_model(service)
    return m


class _Flat:
    def __init__(self, flat):
        self.flat = flat
        self.prefixes = set()
        for k in flat:
            parts = k.split(".")
            for i in range(1, len(parts) + 1):
                self.prefixes.add(".".join(parts[:i]))


def _decode(shape, prefix, f, ec2):
    t = shape.type_name
    if t == "structure":
        out = {}
        for name, member in shape.members.items():
            if ec2:
                ser = member.serialization
                key = ser.get("queryName") or (ser["name"][0].upper() + ser["name"][1:] if ser.get("name") else name)
            else:
                key = member.serialization.get("name", name)
            p = f"{prefix}.{key}" if prefix else key
            if p in f.prefixes:
                out[name] = _decode(member, p, f, ec2)
        return out
    if t == "list":
        if ec2:
            base = prefix
        elif shape.serialization.get("flattened"):
            base = prefix
        else:
            base = f"{prefix}.{shape.member.serialization.get('name', 'member')}"
        items, i = [], 1
        while f"{base}.{i}" in f.prefixes:
            items.append(_decode(shape.member, f"{base}.{i}", f, ec2))
            i += 1
        return items
    if t == "map":
        entry = prefix if shape.serialization.get("flattened") else f"{prefix}.entry"
        kname = shape.key.serialization.get("name", "key")
        vname = shape.value.serialization.get("name", "value")
        out, i = {}, 1
        while f"{entry}.{i}" in f.prefixes:
            out[f.flat.get(f"{entry}.{i}.{kname}")] = _decode(shape.value, f"{entry}.{i}.{vname}", f, ec2)
            i += 1
        return out
    v = f.flat.get(prefix)
    if v is None:
        return None
    if t in ("integer", "long"):
        try:
            return int(v)
        except ValueError:
            return v
    if t == "boolean":
        return v.lower() == "true"
    return v


def parse_params(service, action, body, query, headers):
    """The request's parameters, structured as in the API model (boto3's shapes)."""
    if service in ("ssm", "kms"):
        try:
            return json.loads(body or b"{}") or {}
        except ValueError:
            return {}
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True) if body else {}
    if not form:
        form = urllib.parse.parse_qs(query, keep_blank_values=True)
    flat = {k: v[0] for k, v in form.items()}
    try:
        model = _model(service)
        op = model.operation_model(action)
    except Exception:
        return flat
    if op.input_shape is None:
        return {}
    return _decode(op.input_shape, "", _Flat(flat), model.protocol == "ec2")


# -- shared helpers ----------------------------------------------------------------------------

def tags_of_spec(specs, rtype):
    """{key: value} of the TagSpecifications for `rtype` (None when there is none)."""
    out = None
    for spec in specs or []:
        if spec.get("ResourceType") == rtype:
            out = out or {}
            for t in spec.get("Tags") or []:
                out[t.get("Key")] = t.get("Value") or ""
    return out


def request_tag_values(tags):
    """aws:RequestTag/* and aws:TagKeys for a create or tag request ({} when no tags)."""
    vals = {"aws:TagKeys": None}
    if tags:
        vals["aws:TagKeys"] = sorted(tags)
        for k, v in tags.items():
            vals[f"aws:RequestTag/{k}"] = v
    return vals


def resource_tag_values(tags, prefixes=("aws", "ec2")):
    vals = {}
    for k, v in (tags or {}).items():
        for p in prefixes:
            vals[f"{p}:ResourceTag/{k}"] = v
    return vals


def _bool(v):
    return None if v is None else ("true" if v else "false")


def _arn_account(arn):
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4] else None


# -- EC2 resources -----------------------------------------------------------------------------

def ec2b(region):
    return ec2_backends[ACCOUNT][region]


def _ec2_tags(region, rid):
    return dict(ec2b(region).tags.get(rid, {}))


def _zone_id(region, zone):
    try:
        z = ec2b(region).get_zone_by_name(zone)
        return z.zone_id if z else None
    except Exception:
        return None


def ec2_arn(region, rtype, rid, account=ACCOUNT):
    if rtype in ("image", "snapshot"):
        return f"arn:{PARTITION}:ec2:{region}::{rtype}/{rid}"
    return f"arn:{PARTITION}:ec2:{region}:{account}:{rtype}/{rid}"


def existing(rtype, arn, values, tags, prefixes=("aws", "ec2")):
    """An authorization request's parts for a resource that exists: its tags, no request tags."""
    v = dict(values)
    v.update(resource_tag_values(tags, prefixes))
    v.setdefault("aws:TagKeys", None)
    v.setdefault("aws:ResourceAccount", _arn_account(arn))
    return v, set(TAG_FAMILIES) | set(REQUEST_FAMILIES)


def new(values, tags):
    """... for a resource the request creates: its request tags, no resource tags."""
    v = dict(values)
    v.update(request_tag_values(tags))
    v.setdefault("aws:ResourceAccount", ACCOUNT)
    return v, set(TAG_FAMILIES) | set(REQUEST_FAMILIES)


def image_values(region, image_id):
    b = ec2b(region)
    ami = b.amis.get(image_id)
    arn = ec2_arn(region, "image", image_id)
    if ami is None:
        # Unknown image: AWS answers InvalidAMIID.NotFound; authorize on the ARN with no facts.
        return arn, *existing("image", arn, {"ec2:ImageID": image_id, "ec2:Owner": None, "ec2:Public": None,
                                             "ec2:ImageType": "machine", "ec2:RootDeviceType": None}, {})
    owner = ami.owner_id
    alias = getattr(ami, "owner_alias", None)
    vals = {
        "ec2:ImageID": image_id,
        "ec2:Owner": alias if alias in ("amazon", "aws-marketplace") else owner,
        "ec2:Public": _bool({"Group": "all"} in getattr(ami, "launch_permissions", [])),
        "ec2:ImageType": "machine",
        "ec2:RootDeviceType": "ebs" if getattr(ami, "ebs_snapshot", None) is not None else (ami.root_device_type or "ebs"),
        "aws:ResourceAccount": owner,
    }
    # Tags on an image owned by another account are not visible to this account.
    tags = _ec2_tags(region, image_id) if owner == ACCOUNT else {}
    return (arn, *existing("image", arn, vals, tags))


def instance_values(region, instance_id):
    b = ec2b(region)
    arn = ec2_arn(region, "instance", instance_id)
    try:
        inst = b.get_instance(instance_id)
    except Exception:
        return arn, *existing("instance", arn, {"ec2:InstanceID": instance_id}, {})
    assoc = b.iam_instance_profile_associations.get(instance_id)
    profile = assoc.iam_instance_profile.arn if assoc is not None else None
    zone = inst._placement.zone
    mo = inst.metadata_options
    vals = {
        "ec2:InstanceID": instance_id,
        "ec2:InstanceType": inst.instance_type,
        "ec2:InstanceProfile": profile,
        "ec2:AvailabilityZone": zone,
        "ec2:AvailabilityZoneId": _zone_id(region, zone),
        "ec2:Tenancy": "default",
        "ec2:RootDeviceType": inst.root_device_type,
        "ec2:EbsOptimized": _bool(bool(inst.ebs_optimized)),
        "ec2:InstanceMarketType": "on-demand",
        "ec2:MetadataHttpTokens": mo.http_tokens,
        "ec2:MetadataHttpPutResponseHopLimit": str(mo.http_put_response_hop_limit),
        "ec2:MetadataHttpEndpoint": mo.http_endpoint,
        "ec2:InstanceMetadataTags": mo.instance_metadata_tags,
        "ec2:PlacementGroup": None,
        "ec2:ProductCode": None,
    }
    return (arn, *existing("instance", arn, vals, _ec2_tags(region, instance_id)))


def snapshot_values(region, snap_id):
    b = ec2b(region)
    arn = ec2_arn(region, "snapshot", snap_id)
    snap = b.snapshots.get(snap_id)
    if snap is None:
        return arn, *existing("snapshot", arn, {"ec2:SnapshotID": snap_id}, {})
    vol = getattr(snap, "volume", None)
    vals = {
        "ec2:SnapshotID": snap_id,
        "ec2:Owner": snap.owner_id,
        "ec2:VolumeSize": str(getattr(vol, "size", 8)),
        "ec2:ParentVolume": ec2_arn(region, "volume", vol.id) if vol is not None else None,
        "ec2:Encrypted": _bool(bool(snap.encrypted)),
        "ec2:OutpostArn": None,
        "ec2:SourceOutpostArn": None,
        "aws:ResourceAccount": snap.owner_id,
    }
    tags = _ec2_tags(region, snap_id) if snap.owner_id == ACCOUNT else {}
    return (arn, *existing("snapshot", arn, vals, tags))


def subnet_values(region, subnet_id):
    b = ec2b(region)
    arn = ec2_arn(region, "subnet", subnet_id)
    try:
        s = b.get_subnet(subnet_id)
    except Exception:
        return arn, *existing("subnet", arn, {"ec2:SubnetID": subnet_id}, {}), None
    vals = {
        "ec2:SubnetID": subnet_id,
        "ec2:Vpc": ec2_arn(region, "vpc", s.vpc_id),
        "ec2:AvailabilityZone": s.availability_zone,
        "ec2:AvailabilityZoneId": _zone_id(region, s.availability_zone),
    }
    return (arn, *existing("subnet", arn, vals, _ec2_tags(region, subnet_id)), s)


def vpc_values(region, vpc_id):
    arn = ec2_arn(region, "vpc", vpc_id)
    vals = {"ec2:VpcID": vpc_id, "ec2:Tenancy": "default"}
    return (arn, *existing("vpc", arn, vals, _ec2_tags(region, vpc_id)))


def sg_values(region, sg_id):
    b = ec2b(region)
    arn = ec2_arn(region, "security-group", sg_id)
    g = b.get_security_group_from_id(sg_id)
    vals = {"ec2:SecurityGroupID": sg_id, "ec2:Vpc": ec2_arn(region, "vpc", g.vpc_id) if g is not None else None}
    return (arn, *existing("security-group", arn, vals, _ec2_tags(region, sg_id)))


def lt_lookup(region, lt_id=None, name=None):
    b = ec2b(region)
    try:
        return b.get_launch_template(lt_id) if lt_id else b.get_launch_template_by_name(name)
    except Exception:
        return None


def lt_values(region, lt):
    arn = ec2_arn(region, "launch-template", lt.id)
    return (arn, *existing("launch-template", arn, {}, _ec2_tags(region, lt.id)))


def keypair_values(region, name):
    arn = ec2_arn(region, "key-pair", name)
    kp = ec2b(region).key_pairs.get(name)
    kid = getattr(kp, "id", None)
    vals = {"ec2:KeyPairName": name, "ec2:KeyPairType": getattr(kp, "key_type", None) or "rsa"}
    return (arn, *existing("key-pair", arn, vals, _ec2_tags(region, kid) if kid else {}))


def ec2_resource(region, rid):
    """(rtype, arn, values, families) of an existing EC2 resource named by id (CreateTags)."""
    prefix = rid.split("-", 1)[0]
    if prefix == "i":
        return ("instance", *instance_values(region, rid))
    if prefix == "ami":
        return ("image", *image_values(region, rid))
    if prefix == "snap":
        return ("snapshot", *snapshot_values(region, rid))
    if prefix == "sg":
        return ("security-group", *sg_values(region, rid))
    if prefix == "lt":
        lt = lt_lookup(region, rid)
        if lt is None:
            arn = ec2_arn(region, "launch-template", rid)
            return ("launch-template", arn, *existing("launch-template", arn, {}, {}))
        return ("launch-template", *lt_values(region, lt))
    if prefix == "vol":
        arn = ec2_arn(region, "volume", rid)
        vol = ec2b(region).volumes.get(rid)
        vals = {"ec2:VolumeID": rid}
        if vol is not None:
            vals.update({"ec2:VolumeSize": str(vol.size), "ec2:Encrypted": _bool(bool(vol.encrypted)),
                         "ec2:AvailabilityZone": vol.zone.name if hasattr(vol.zone, "name") else str(vol.zone)})
        return ("volume", arn, *existing("volume", arn, vals, _ec2_tags(region, rid)))
    if prefix == "eni":
        arn = ec2_arn(region, "network-interface", rid)
        return ("network-interface", arn, *existing("network-interface", arn, {"ec2:NetworkInterfaceID": rid},
                                                    _ec2_tags(region, rid)))
    raise Unsupported(f"the sandbox does not model the resource type of {rid}")


# -- KMS through EC2 ---------------------------------------------------------------------------

KMS_VIA_EC2 = ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
               "kms:ReEncryptFrom", "kms:ReEncryptTo"]


def kms_key(region, key_id):
    """(key ARN, aliases, customer managed?) for a key id, key ARN, alias name or alias ARN."""
    if not key_id:
        return None
    if key_id.startswith("arn:") and ":key/" in key_id:
        region = key_id.split(":")[3]
    kb = kms_backends[ACCOUNT][region]
    try:
        kid = kb.any_id_to_key_id(key_id)
        key = kb.keys[kid]
    except Exception:
        if key_id.startswith("arn:") and ":key/" in key_id:
            return key_id, [], True
        if key_id.startswith("alias/aws/") or ":alias/aws/" in key_id:
            return None  # an AWS managed key: its key policy, not the caller's, governs its use by EC2
        if key_id.startswith("arn:"):
            return key_id, [key_id.split(":", 5)[-1]], True
        if key_id.startswith("alias/"):
            return f"arn:{PARTITION}:kms:{region}:{ACCOUNT}:{key_id}", [key_id], True
        return f"arn:{PARTITION}:kms:{region}:{ACCOUNT}:key/{key_id}", [], True
    aliases = sorted(getattr(key, "aliases", {}).keys()) if isinstance(getattr(key, "aliases", None), dict) else []
    if getattr(key, "key_manager", "CUSTOMER") == "AWS" or any(a.startswith("alias/aws/") for a in aliases):
        return None
    return key.arn, aliases, True


def kms_via_ec2(region, key_id, note):
    k = kms_key(region, key_id)
    if k is None:
        return []
    arn, aliases, _ = k
    key_region = arn.split(":")[3]
    out = []
    for action in KMS_VIA_EC2:
        vals = {
            "kms:ViaService": f"ec2.{key_region}.amazonaws.com",
            "kms:CallerAccount": ACCOUNT,
            "kms:ResourceAliases": aliases or None,
            "aws:ResourceAccount": _arn_account(arn),
        }
        if action == "kms:CreateGrant":
            vals["kms:GrantIsForAWSResource"] = "true"
        out.append(Req(action, arn, "key", vals, TAG_FAMILIES, note=note, via="ec2.amazonaws.com"))
    return out


# -- IAM ---------------------------------------------------------------------------------------

def iamb():
    return iam_backends[ACCOUNT][PARTITION]


def role_by_name(name):
    try:
        return iamb().get_role(name)
    except Exception:
        return None


def role_tags(role):
    return {t["Key"]: t.get("Value", "") for t in (role.tags or [])} if role is not None else {}


def role_req(action, name, values=None, note=None):
    role = role_by_name(name)
    arn = role.arn if role is not None else f"arn:{PARTITION}:iam::{ACCOUNT}:role/{name}"
    v, fam = existing("role", arn, values or {}, role_tags(role), ("aws", "iam"))
    return Req(action, arn, "role", v, fam, note=note), role


def profile_by_name(name):
    try:
        return iamb().get_instance_profile(name)
    except Exception:
        return None


def profile_tags(p):
    if p is None:
        return {}
    tags = p.tags or []
    if isinstance(tags, dict):
        return {k: (v.get("Value") if isinstance(v, dict) else v) for k, v in tags.items()}
    return {t["Key"]: t.get("Value", "") for t in tags}


def profile_from(spec):
    """The instance profile an IamInstanceProfile {Arn|Name} names (or None), and its ARN."""
    if not spec:
        return None, None
    name = spec.get("Name")
    arn = spec.get("Arn")
    if arn and not name:
        name = arn.rsplit("/", 1)[-1]
    p = profile_by_name(name) if name else None
    return p, (p.arn if p is not None else arn)


def passrole(profile, service, note, associated=None):
    out = []
    for role in profile.roles:
        vals = {"iam:PassedToService": service, "iam:AssociatedResourceArn": associated}
        if associated is None:
            vals.pop("iam:AssociatedResourceArn")  # not computed: a condition on it is refused
        v, fam = existing("role", role.arn, vals, role_tags(role), ("aws", "iam"))
        out.append(Req("iam:PassRole", role.arn, "role", v, fam, note=note))
    return out


def policy_tags(p):
    tags = getattr(p, "tags", None) or {}
    if isinstance(tags, dict):
        return {k: (v.get("Value") if isinstance(v, dict) else v) for k, v in tags.items()}
    return {t["Key"]: t.get("Value", "") for t in tags}


def policy_req(action, arn, values=None):
    p = iamb().managed_policies.get(arn)
    v, fam = existing("policy", arn, values or {}, policy_tags(p), ("aws",))
    return Req(action, arn, "policy", v, fam)


# -- SSM ---------------------------------------------------------------------------------------

def parameter_arn(region, name):
    if name.startswith("arn:"):
        return name
    name = name.split(":", 1)[0]  # name:version and name:label select a version of `name`
    stripped = name.lstrip("/")
    if stripped.startswith("aws/service/") or stripped == "aws/service":
        return f"arn:{PARTITION}:ssm:{region}::parameter/{stripped}"  # public: owned by AWS, no account
    return f"arn:{PARTITION}:ssm:{region}:{ACCOUNT}:parameter/{stripped}"


def parameter_tags(region, name):
    try:
        b = ssm_backends[ACCOUNT][region]
        return dict(b._resource_tags.get("Parameter", {}).get(b._parameters.normalize_name(name), {}))
    except Exception:
        return {}


def parameter_req(action, region, name, values=None):
    if name.startswith("arn:"):
        arn = name
        name = "/" + name.split(":parameter/", 1)[-1]
    else:
        name = name.split(":", 1)[0]
        arn = parameter_arn(region, name)
    public = ":ssm:" in arn and arn.split(":")[4] == ""
    tags = {} if public else parameter_tags(region, name)
    v, fam = existing("parameter", arn, values or {}, tags, ("aws", "ssm"))
    return Req(action, arn, "parameter", v, fam)


# -- Auto Scaling ------------------------------------------------------------------------------

def asgb(region):
    return autoscaling_backends[ACCOUNT][region]


def group_req(action, region, name, values=None):
    g = asgb(region).autoscaling_groups.get(name)
    if g is not None:
        arn = g.arn
        tags = {t["Key"]: t.get("Value", "") for t in g.tags}
    else:
        arn = f"arn:{PARTITION}:autoscaling:{region}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/{name}"
        tags = {}
    v, fam = existing("autoScalingGroup", arn, values or {}, tags, ("aws", "autoscaling"))
    return Req(action, arn, "autoScalingGroup", v, fam), g


def lc_arn(region, name):
    lc = asgb(region).launch_configurations.get(name)
    if lc is not None:
        return lc.arn, lc
    return f"arn:{PARTITION}:autoscaling:{region}:{ACCOUNT}:launchConfiguration:*:launchConfigurationName/{name}", None
