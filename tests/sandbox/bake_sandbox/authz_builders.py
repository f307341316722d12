"""One function per AWS action: the authorization requests AWS makes for a call. See
authz_requests.py for the helpers and authz_actions.toml for the table they follow."""

from . import authz_requests as R
from .authz_requests import CallError, Req, existing, new
from .policy import Unsupported
from .state import ACCOUNT

BUILDERS = {}


def builds(*actions):
    def deco(fn):
        for a in actions:
            BUILDERS[a.lower()] = fn
        return fn
    return deco


def _first(*vals):
    for v in vals:
        if v not in (None, "", [], {}):
            return v
    return None


def _str(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# -- EC2: RunInstances and what else launches instances ------------------------------------------

RUN_TAG_TYPES = {"instance", "volume", "network-interface"}


def run_instances(c, p, lt=None, data=None, create_action="RunInstances", subnet_ids=None, note=None):
    """The authorization requests of a RunInstances call with parameters `p`, or of the launch that
    launch template `lt` (version data `data`) describes (Auto Scaling's check)."""
    region = c.region
    data = data or {}
    lt_arn = R.ec2_arn(region, "launch-template", lt.id) if lt is not None else None

    def pick(key):
        if p.get(key) not in (None, "", [], {}):
            return p[key], False
        if data.get(key) not in (None, "", [], {}):
            return data[key], True
        return None, None

    def lt_keys(from_lt):
        return {"ec2:LaunchTemplate": lt_arn, "ec2:IsLaunchTemplateResource": _str(bool(from_lt)) if lt is not None else None}

    for unsupported in ("ElasticGpuSpecification", "ElasticInferenceAccelerators", "LicenseSpecifications"):
        if pick(unsupported)[0]:
            raise Unsupported(f"RunInstances with {unsupported} is not modelled by the sandbox")
    placement = pick("Placement")[0] or {}
    if placement.get("GroupName") or placement.get("GroupId"):
        raise Unsupported("RunInstances into a placement group is not modelled by the sandbox")
    crs = pick("CapacityReservationSpecification")[0] or {}
    if crs.get("CapacityReservationTarget"):
        raise Unsupported("RunInstances into a capacity reservation is not modelled by the sandbox")
    nics, nics_from_lt = pick("NetworkInterfaces")
    nics = nics or []
    if any(n.get("NetworkInterfaceId") for n in nics):
        raise Unsupported("RunInstances with an existing network interface is not modelled by the sandbox")

    # Tags: the template's specifications, then the request's (which win for a resource type).
    specs = {}
    for source in (data.get("TagSpecifications") or [], p.get("TagSpecifications") or []):
        for spec in source:
            rtype = spec.get("ResourceType")
            if rtype == "launch-template" and source is not p.get("TagSpecifications"):
                continue  # moto keeps CreateLaunchTemplate's own tags in the version data; EC2 does not
            if rtype not in RUN_TAG_TYPES:
                raise Unsupported(f"RunInstances TagSpecification for {rtype!r} is not modelled by the sandbox")
            specs.setdefault(rtype, {}).update({t.get("Key"): t.get("Value") or "" for t in spec.get("Tags") or []})

    out, implicit = [], []
    # The image.
    image_id, image_from_lt = pick("ImageId")
    if isinstance(image_id, str) and image_id.startswith("resolve:ssm:"):
        pname = image_id[len("resolve:ssm:"):]
        implicit.append(_with(R.parameter_req("ssm:GetParameters", region, pname), note="the image is an SSM parameter"))
        try:
            image_id = R.ssm_backends[ACCOUNT][region].get_parameter(pname.split(":")[0]).value
        except Exception:
            raise CallError(400, "InvalidParameterValue", f"Parameter {pname} not found")
    if not image_id:
        raise CallError(400, "MissingParameter", "The request must contain the parameter ImageId")
    arn, vals, fam = R.image_values(region, image_id)
    vals.update(lt_keys(image_from_lt))
    out.append(Req("ec2:RunInstances", arn, "image", vals, fam))
    ami = R.ec2b(region).amis.get(image_id)

    # Subnet, VPC, availability zone.
    subnet_id = _first(p.get("SubnetId"), nics[0].get("SubnetId") if nics else None)
    subnet_from_lt = False
    if not subnet_id and data.get("NetworkInterfaces"):
        subnet_id, subnet_from_lt = data["NetworkInterfaces"][0].get("SubnetId"), True
    if not subnet_id and subnet_ids:
        subnet_id = subnet_ids[0]
    b = R.ec2b(region)
    if not subnet_id:
        zone = placement.get("AvailabilityZone") or region + "a"
        default = b.get_default_subnets().get(zone) or next(iter(b.get_default_subnets().values()), None)
        if default is None:
            raise CallError(400, "MissingInput", "No subnets found for the default VPC. Please specify a subnet.")
        subnet_id = default.id
    s_arn, s_vals, s_fam, subnet = R.subnet_values(region, subnet_id)
    s_vals.update(lt_keys(subnet_from_lt))
    zone = subnet.availability_zone if subnet is not None else placement.get("AvailabilityZone")
    zone_id = R._zone_id(region, zone) if zone else None
    vpc_id = subnet.vpc_id if subnet is not None else None
    vpc_arn = R.ec2_arn(region, "vpc", vpc_id) if vpc_id else None

    # The instance.
    profile_spec, profile_from_lt = pick("IamInstanceProfile")
    profile, profile_arn = R.profile_from(profile_spec)
    if profile_spec and profile is None:
        what = "name" if profile_spec.get("Name") else "arn"
        raise CallError(400, "InvalidParameterValue", f"Value ({profile_spec.get('Name') or profile_spec.get('Arn')}) for "
                                                      f"parameter iamInstanceProfile.{what} is invalid. Invalid IAM Instance Profile {what}")
    mo = pick("MetadataOptions")[0] or {}
    market = pick("InstanceMarketOptions")[0] or {}
    inst_type, type_from_lt = pick("InstanceType")
    ivals = {
        "ec2:InstanceType": inst_type or "m1.small",
        "ec2:InstanceProfile": profile_arn,
        "ec2:AvailabilityZone": zone,
        "ec2:AvailabilityZoneId": zone_id,
        "ec2:Tenancy": placement.get("Tenancy") or "default",
        "ec2:RootDeviceType": getattr(ami, "root_device_type", None) or "ebs",
        "ec2:EbsOptimized": _str(bool(pick("EbsOptimized")[0])),
        "ec2:InstanceMarketType": market.get("MarketType") or "on-demand",
        "ec2:MetadataHttpTokens": mo.get("HttpTokens") or "optional",
        "ec2:MetadataHttpPutResponseHopLimit": _str(mo.get("HttpPutResponseHopLimit") or 1),
        "ec2:MetadataHttpEndpoint": mo.get("HttpEndpoint") or "enabled",
        "ec2:InstanceMetadataTags": mo.get("InstanceMetadataTags") or "disabled",
        "ec2:InstanceID": None,
        "ec2:PlacementGroup": None,
        "ec2:ProductCode": None,
    }
    ivals.update(lt_keys(type_from_lt))
    v, f = new(ivals, specs.get("instance"))
    inst_arn = R.ec2_arn(region, "instance", "*")
    out.insert(0, Req("ec2:RunInstances", inst_arn, "instance", v, f))

    # The network interface created with the instance (it gets only network-interface tags).
    nic = nics[0] if nics else {}
    assoc = nic.get("AssociatePublicIpAddress")
    if assoc is None and subnet is not None:
        assoc = bool(getattr(subnet, "map_public_ip_on_launch", False) in (True, "true"))
    nvals = {"ec2:Subnet": s_arn, "ec2:Vpc": vpc_arn, "ec2:AvailabilityZone": zone,
             "ec2:AssociatePublicIpAddress": _str(bool(assoc)), "ec2:NetworkInterfaceID": None}
    nvals.update(lt_keys(nics_from_lt))
    v, f = new(nvals, specs.get("network-interface"))
    out.append(Req("ec2:RunInstances", R.ec2_arn(region, "network-interface", "*"), "network-interface", v, f))

    # Security groups: given ids, given names (default VPC), the interface's, or the VPC's default.
    sg_ids, sg_from_lt = pick("SecurityGroupIds")
    sg_ids = list(sg_ids or [])
    names, names_from_lt = pick("SecurityGroups")
    for name in names or []:
        g = b.get_security_group_from_name(name, vpc_id) if hasattr(b, "get_security_group_from_name") else None
        if g is None:
            raise CallError(400, "InvalidGroup.NotFound", f"The security group '{name}' does not exist in VPC '{vpc_id}'")
        sg_ids.append(g.id)
        sg_from_lt = names_from_lt
    if not sg_ids and nic.get("Groups"):
        sg_ids, sg_from_lt = list(nic["Groups"]), nics_from_lt
    if not sg_ids and vpc_id:
        g = b.get_default_security_group(vpc_id)
        if g is not None:
            sg_ids, sg_from_lt = [g.id], False
    for sg in sg_ids:
        arn, vals, fam = R.sg_values(region, sg)
        vals.update(lt_keys(sg_from_lt))
        out.append(Req("ec2:RunInstances", arn, "security-group", vals, fam))
    s_req = Req("ec2:RunInstances", s_arn, "subnet", s_vals, s_fam)
    out.append(s_req)

    # Volumes: the image's block devices, overridden or extended by the request's / template's.
    devices = {}
    for bdm in (getattr(ami, "block_device_mappings", None) or []) if ami is not None else []:
        devices[bdm.get("DeviceName")] = (dict(bdm.get("Ebs") or {}), False, True)
    bdms, bdm_from_lt = pick("BlockDeviceMappings")
    for bdm in bdms or []:
        if bdm.get("NoDevice") is not None:
            devices.pop(bdm.get("DeviceName"), None)
            continue
        if bdm.get("Ebs") is None:
            continue
        base = devices.get(bdm.get("DeviceName"), ({}, False, False))[0]
        merged = dict(base)
        merged.update({k: v for k, v in bdm["Ebs"].items() if v is not None})
        # A snapshot the image brings is not one the request names.
        devices[bdm.get("DeviceName")] = (merged, bdm_from_lt, not bdm["Ebs"].get("SnapshotId"))
    kms_keys = []
    for dev, (ebs, from_lt, from_image) in devices.items():
        snap_id = ebs.get("SnapshotId")
        snap = b.snapshots.get(snap_id) if snap_id else None
        encrypted = str(ebs.get("Encrypted")).lower() == "true" or bool(getattr(snap, "encrypted", False))
        key = ebs.get("KmsKeyId") or (getattr(snap, "kms_key_id", None) if snap is not None and not ebs.get("KmsKeyId") else None)
        if encrypted and key:
            kms_keys.append(key)
        vvals = {
            "ec2:VolumeSize": _str(ebs.get("VolumeSize") or getattr(getattr(snap, "volume", None), "size", None) or 8),
            "ec2:VolumeType": ebs.get("VolumeType") or "gp2",
            "ec2:Encrypted": _str(encrypted),
            "ec2:ParentSnapshot": R.ec2_arn(region, "snapshot", snap_id) if snap_id else None,
            "ec2:VolumeIops": _str(ebs.get("Iops")),
            "ec2:VolumeThroughput": _str(ebs.get("Throughput")),
            "ec2:AvailabilityZone": zone,
            "ec2:AvailabilityZoneId": zone_id,
            "ec2:VolumeID": None,
        }
        vvals.update(lt_keys(from_lt))
        v, f = new(vvals, specs.get("volume"))
        out.append(Req("ec2:RunInstances", R.ec2_arn(region, "volume", "*"), "volume", v, f, note=f"volume {dev}"))
        if snap_id and not from_image:
            arn, vals, fam = R.snapshot_values(region, snap_id)
            vals.update(lt_keys(from_lt))
            out.append(Req("ec2:RunInstances", arn, "snapshot", vals, fam))

    key_name, key_from_lt = pick("KeyName")
    if key_name:
        arn, vals, fam = R.keypair_values(region, key_name)
        vals.update(lt_keys(key_from_lt))
        out.append(Req("ec2:RunInstances", arn, "key-pair", vals, fam))
    if lt is not None:
        arn, vals, fam = R.lt_values(region, lt)
        vals.update(lt_keys(True))
        out.append(Req("ec2:RunInstances", arn, "launch-template", vals, fam))

    # ec2:CreateTags on each new resource the request tags.
    by_type = {r.rtype: r for r in out if r.rtype in RUN_TAG_TYPES}
    for rtype, tags in specs.items():
        if not tags:
            continue
        base = by_type[rtype]
        vals = dict(base.values)
        vals["ec2:CreateAction"] = create_action
        implicit.append(Req("ec2:CreateTags", base.resource, rtype, vals, base.families,
                            note=f"tags on the new {rtype} (ec2:CreateAction={create_action})"))
    if profile is not None:
        implicit += R.passrole(profile, "ec2.amazonaws.com", note=f"instance profile {profile.name}")
    for key in dict.fromkeys(kms_keys):
        implicit += R.kms_via_ec2(region, key, note="volume encryption")
    reqs = out + implicit
    if note:
        for r in reqs:
            r.note = f"{note}: {r.note}" if r.note else note
    return reqs


def _with(req, note=None):
    req.note = note
    return req


@builds("ec2:RunInstances")
def ec2_run_instances(c):
    p = c.params
    lt = None
    data = {}
    spec = p.get("LaunchTemplate")
    if spec:
        lt = R.lt_lookup(c.region, spec.get("LaunchTemplateId"), spec.get("LaunchTemplateName"))
        if lt is None:
            raise CallError(400, "InvalidLaunchTemplateId.NotFound",
                            f"The specified launch template, with template ID {spec.get('LaunchTemplateId') or spec.get('LaunchTemplateName')}, does not exist.")
        try:
            data = lt.get_version(spec.get("Version") or "$Default").data
        except Exception:
            raise CallError(400, "InvalidLaunchTemplateId.VersionNotFound", "Could not find launch template version")
    return run_instances(c, p, lt, data)


# -- EC2: images and snapshots -------------------------------------------------------------------

def _tag_types(specs, allowed, action):
    for spec in specs or []:
        if spec.get("ResourceType") not in allowed:
            raise Unsupported(f"{action} TagSpecification for {spec.get('ResourceType')!r} is not modelled by the sandbox")


def _create_tags(reqs, create_action):
    out = []
    for r in reqs:
        if r.values.get("aws:TagKeys"):
            vals = dict(r.values)
            vals["ec2:CreateAction"] = create_action
            out.append(Req("ec2:CreateTags", r.resource, r.rtype, vals, r.families,
                           note=f"tags on the new {r.rtype} (ec2:CreateAction={create_action})"))
    return out


@builds("ec2:CreateImage")
def ec2_create_image(c):
    p, region = c.params, c.region
    specs = p.get("TagSpecifications")
    _tag_types(specs, {"image", "snapshot"}, "CreateImage")
    iid = p.get("InstanceId")
    arn, vals, fam = R.instance_values(region, iid)
    reqs = [Req("ec2:CreateImage", arn, "instance", vals, fam)]
    v, f = new({"ec2:ImageID": None, "ec2:Owner": ACCOUNT}, R.tags_of_spec(specs, "image"))
    new_reqs = [Req("ec2:CreateImage", R.ec2_arn(region, "image", "*"), "image", v, f)]
    b = R.ec2b(region)
    volumes = []
    try:
        inst = b.get_instance(iid)
        volumes = [bdm.volume_id for _, bdm in inst.block_device_mapping.items()]
    except Exception:
        pass
    for vol_id in volumes or [None]:
        vol = b.volumes.get(vol_id) if vol_id else None
        v, f = new({"ec2:ParentVolume": R.ec2_arn(region, "volume", vol_id) if vol_id else None,
                    "ec2:VolumeSize": _str(getattr(vol, "size", None)), "ec2:SnapshotID": None,
                    "ec2:SnapshotTime": None, "ec2:OutpostArn": None, "ec2:SourceOutpostArn": None},
                   R.tags_of_spec(specs, "snapshot"))
        new_reqs.append(Req("ec2:CreateImage", R.ec2_arn(region, "snapshot", "*"), "snapshot", v, f,
                            note=f"snapshot of {vol_id}" if vol_id else None))
    return reqs + new_reqs + _create_tags(new_reqs, "CreateImage")


@builds("ec2:CopyImage")
def ec2_copy_image(c):
    p, region = c.params, c.region
    specs = p.get("TagSpecifications")
    _tag_types(specs, {"image", "snapshot"}, "CopyImage")
    src_region = p.get("SourceRegion") or region
    src_id = p.get("SourceImageId")
    image_tags = R.tags_of_spec(specs, "image")
    src_arn, src_vals, src_fam = R.image_values(src_region, src_id)
    # The source image is an existing resource (resource-level permissions on it since October
    # 2024, "Grant permissions to copy Amazon EC2 AMIs"): it is authorized with its own tags
    # (aws:ResourceTag), as RunInstances authorizes an image; the request's tags are those of the
    # new image and snapshots only (EC2's tag-on-create: aws:RequestTag applies to the resources
    # the request creates and tags, as AWS's RunInstances examples show by conditioning only the
    # instance and volume statements on it).
    reqs = [Req("ec2:CopyImage", src_arn, "image", src_vals, src_fam, note=f"source image in {src_region}")]
    v, f = new({"ec2:ImageID": None, "ec2:Owner": ACCOUNT}, image_tags)
    new_reqs = [Req("ec2:CopyImage", R.ec2_arn(region, "image", "*"), "image", v, f, note="new image")]
    src = R.ec2b(src_region).amis.get(src_id)
    snaps = [bdm.get("Ebs", {}).get("SnapshotId") for bdm in (getattr(src, "block_device_mappings", None) or [])] if src else []
    for _ in snaps or [None]:
        v, f = new({}, R.tags_of_spec(specs, "snapshot"))
        new_reqs.append(Req("ec2:CopyImage", R.ec2_arn(region, "snapshot", "*"), "snapshot", v, f, note="new snapshot"))
    out = reqs + new_reqs + _create_tags(new_reqs, "CopyImage")
    keys = []
    if p.get("KmsKeyId"):
        keys.append((region, p["KmsKeyId"]))
    for sid in snaps:
        snap = R.ec2b(src_region).snapshots.get(sid) if sid else None
        if snap is not None and getattr(snap, "kms_key_id", None):
            keys.append((src_region, snap.kms_key_id))
    for key_region, key in dict.fromkeys(keys):
        out += R.kms_via_ec2(key_region, key, note="image encryption")
    return out


def _image_action(c):
    arn, vals, fam = R.image_values(c.region, c.params.get("ImageId"))
    return [Req(c.full, arn, "image", vals, fam)]


for _a in ("DeregisterImage", "EnableImageDeprecation", "DisableImageDeprecation", "EnableImageDeregistrationProtection",
           "DisableImageDeregistrationProtection", "DisableImage", "EnableImage", "DescribeImageAttribute",
           "ModifyImageAttribute"):
    BUILDERS[f"ec2:{_a}".lower()] = _image_action


@builds("ec2:DeleteSnapshot", "ec2:DescribeSnapshotAttribute")
def ec2_snapshot_action(c):
    arn, vals, fam = R.snapshot_values(c.region, c.params.get("SnapshotId"))
    return [Req(c.full, arn, "snapshot", vals, fam)]


@builds("ec2:ModifySnapshotAttribute")
def ec2_modify_snapshot_attribute(c):
    p = c.params
    arn, vals, fam = R.snapshot_values(c.region, p.get("SnapshotId"))
    add_groups, add_users, rm_groups, rm_users = [], [], [], []
    cvp = p.get("CreateVolumePermission") or {}
    for perm in cvp.get("Add") or []:
        (add_groups if perm.get("Group") else add_users).append(perm.get("Group") or perm.get("UserId"))
    for perm in cvp.get("Remove") or []:
        (rm_groups if perm.get("Group") else rm_users).append(perm.get("Group") or perm.get("UserId"))
    op = (p.get("OperationType") or "").lower()
    if op in ("add", "remove"):
        (add_groups if op == "add" else rm_groups).extend(p.get("GroupNames") or [])
        (add_users if op == "add" else rm_users).extend(p.get("UserIds") or [])
    vals.update({"ec2:Add/group": add_groups or None, "ec2:Add/userId": add_users or None,
                 "ec2:Remove/group": rm_groups or None, "ec2:Remove/userId": rm_users or None})
    return [Req(c.full, arn, "snapshot", vals, fam)]


# -- EC2: instances, groups, templates, tags -------------------------------------------------------

@builds("ec2:StopInstances", "ec2:StartInstances", "ec2:TerminateInstances", "ec2:RebootInstances",
        "ec2:DescribeInstanceAttribute")
def ec2_instance_action(c):
    ids = c.params.get("InstanceIds") or ([c.params["InstanceId"]] if c.params.get("InstanceId") else [])
    out = []
    for iid in ids:
        arn, vals, fam = R.instance_values(c.region, iid)
        out.append(Req(c.full, arn, "instance", vals, fam))
    return out


@builds("ec2:CreateSecurityGroup")
def ec2_create_security_group(c):
    p, region = c.params, c.region
    specs = p.get("TagSpecifications")
    _tag_types(specs, {"security-group"}, "CreateSecurityGroup")
    vpc_id = p.get("VpcId")
    if not vpc_id:
        vpc = R.ec2b(region).get_default_vpc() if hasattr(R.ec2b(region), "get_default_vpc") else None
        vpc_id = vpc.id if vpc is not None else None
    v, f = new({"ec2:SecurityGroupID": None, "ec2:Vpc": R.ec2_arn(region, "vpc", vpc_id) if vpc_id else None},
               R.tags_of_spec(specs, "security-group"))
    new_req = Req("ec2:CreateSecurityGroup", R.ec2_arn(region, "security-group", "*"), "security-group", v, f)
    out = [new_req]
    if vpc_id:
        arn, vals, fam = R.vpc_values(region, vpc_id)
        out.append(Req("ec2:CreateSecurityGroup", arn, "vpc", vals, fam))
    return out + _create_tags([new_req], "CreateSecurityGroup")


@builds("ec2:DeleteSecurityGroup")
def ec2_delete_security_group(c):
    p = c.params
    sg = p.get("GroupId")
    if not sg and p.get("GroupName"):
        b = R.ec2b(c.region)
        g = b.get_security_group_from_name(p["GroupName"], None) if hasattr(b, "get_security_group_from_name") else None
        sg = g.id if g is not None else p["GroupName"]
    arn, vals, fam = R.sg_values(c.region, sg)
    return [Req(c.full, arn, "security-group", vals, fam)]


def _lt_from(c):
    p = c.params
    lt = R.lt_lookup(c.region, p.get("LaunchTemplateId"), p.get("LaunchTemplateName"))
    if lt is None:
        raise CallError(400, "InvalidLaunchTemplateName.NotFoundException" if p.get("LaunchTemplateName") else "InvalidLaunchTemplateId.NotFound",
                        "At least one of the launch templates specified in the request does not exist.")
    return lt


@builds("ec2:CreateLaunchTemplate")
def ec2_create_launch_template(c):
    p, region = c.params, c.region
    specs = p.get("TagSpecifications")
    _tag_types(specs, {"launch-template"}, "CreateLaunchTemplate")
    v, f = new({}, R.tags_of_spec(specs, "launch-template"))
    req = Req("ec2:CreateLaunchTemplate", R.ec2_arn(region, "launch-template", "*"), "launch-template", v, f)
    out = [req] + _create_tags([req], "CreateLaunchTemplate")
    image = (p.get("LaunchTemplateData") or {}).get("ImageId") or ""
    if image.startswith("resolve:ssm:"):
        out.append(_with(R.parameter_req("ssm:GetParameters", region, image[len("resolve:ssm:"):]),
                         note="the image is an SSM parameter"))
    return out


@builds("ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate", "ec2:DeleteLaunchTemplate")
def ec2_launch_template_action(c):
    lt = _lt_from(c)
    arn, vals, fam = R.lt_values(c.region, lt)
    out = [Req(c.full, arn, "launch-template", vals, fam)]
    image = (c.params.get("LaunchTemplateData") or {}).get("ImageId") or ""
    if image.startswith("resolve:ssm:"):
        out.append(_with(R.parameter_req("ssm:GetParameters", c.region, image[len("resolve:ssm:"):]),
                         note="the image is an SSM parameter"))
    return out


@builds("ec2:CreateTags", "ec2:DeleteTags")
def ec2_tags(c):
    p = c.params
    deleting = c.action == "DeleteTags"
    tags = {}
    keys = []
    for t in p.get("Tags") or []:
        keys.append(t.get("Key"))
        if not deleting or t.get("Value") is not None:
            tags[t.get("Key")] = t.get("Value") or ""
    out = []
    for rid in p.get("Resources") or []:
        rtype, arn, vals, fam = R.ec2_resource(c.region, rid)
        vals.update({k: v for k, v in R.request_tag_values(tags).items() if k != "aws:TagKeys"})
        vals["aws:TagKeys"] = sorted(set(keys)) or None
        if not deleting:
            vals["ec2:CreateAction"] = None  # only present when tagging on create
        out.append(Req(c.full, arn, rtype, vals, fam))
    return out


# -- IAM -----------------------------------------------------------------------------------------

_BOUNDARY_ACTIONS = {"iam:attachrolepolicy", "iam:deleterole", "iam:deleterolepolicy", "iam:detachrolepolicy",
                     "iam:getrole", "iam:putrolepolicy", "iam:deleterolepermissionsboundary"}


@builds("iam:GetRole", "iam:DeleteRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:AttachRolePolicy",
        "iam:DetachRolePolicy", "iam:ListRolePolicies", "iam:ListAttachedRolePolicies", "iam:GetRolePolicy",
        "iam:ListInstanceProfilesForRole", "iam:PutRolePermissionsBoundary", "iam:DeleteRolePermissionsBoundary",
        "iam:TagRole", "iam:UntagRole", "iam:ListRoleTags")
def iam_role_action(c):
    p = c.params
    role = R.role_by_name(p.get("RoleName"))
    vals = {}
    if c.full.lower() in _BOUNDARY_ACTIONS:
        # The role's boundary as it is (AWS: "the specified policy is attached as permissions boundary
        # on the IAM principal resource").
        vals["iam:PermissionsBoundary"] = getattr(role, "permissions_boundary_arn", None) or None
    if c.action == "PutRolePermissionsBoundary":
        vals["iam:PermissionsBoundary"] = p.get("PermissionsBoundary")  # the boundary being set
    if c.action in ("AttachRolePolicy", "DetachRolePolicy"):
        vals["iam:PolicyARN"] = p.get("PolicyArn")
    if c.action == "TagRole":
        vals.update(R.request_tag_values({t["Key"]: t.get("Value", "") for t in p.get("Tags") or []}))
    if c.action == "UntagRole":
        vals["aws:TagKeys"] = p.get("TagKeys") or None
    req, _ = R.role_req(c.full, p.get("RoleName"), vals)
    return [req]


@builds("iam:CreateRole")
def iam_create_role(c):
    p = c.params
    path = p.get("Path") or "/"
    arn = f"arn:{R.PARTITION}:iam::{ACCOUNT}:role{path}{p.get('RoleName')}"
    v, f = new({"iam:PermissionsBoundary": p.get("PermissionsBoundary")},
               {t["Key"]: t.get("Value", "") for t in p.get("Tags") or []})
    return [Req(c.full, arn, "role", v, f)]


@builds("iam:CreateInstanceProfile")
def iam_create_instance_profile(c):
    p = c.params
    path = p.get("Path") or "/"
    arn = f"arn:{R.PARTITION}:iam::{ACCOUNT}:instance-profile{path}{p.get('InstanceProfileName')}"
    v, f = new({}, {t["Key"]: t.get("Value", "") for t in p.get("Tags") or []})
    return [Req(c.full, arn, "instance-profile", v, f)]


@builds("iam:GetInstanceProfile", "iam:DeleteInstanceProfile", "iam:AddRoleToInstanceProfile",
        "iam:RemoveRoleFromInstanceProfile", "iam:TagInstanceProfile", "iam:UntagInstanceProfile",
        "iam:ListInstanceProfileTags")
def iam_profile_action(c):
    p = c.params
    name = p.get("InstanceProfileName")
    prof = R.profile_by_name(name)
    arn = prof.arn if prof is not None else f"arn:{R.PARTITION}:iam::{ACCOUNT}:instance-profile/{name}"
    vals = {}
    if c.action == "TagInstanceProfile":
        vals.update(R.request_tag_values({t["Key"]: t.get("Value", "") for t in p.get("Tags") or []}))
    if c.action == "UntagInstanceProfile":
        vals["aws:TagKeys"] = p.get("TagKeys") or None
    v, f = existing("instance-profile", arn, vals, R.profile_tags(prof), ("aws",))
    out = [Req(c.full, arn, "instance-profile", v, f)]
    if c.action == "AddRoleToInstanceProfile":
        # "The caller of this operation must be granted the PassRole permission on the IAM role"; with
        # iam:AssociatedResourceArn "arn:aws:ec2:*:CallerAccountId:instance/*" (IAM API reference).
        role = R.role_by_name(p.get("RoleName"))
        if role is not None:
            class _P:
                roles = [role]
            out += R.passrole(_P, "ec2.amazonaws.com", note="role added to an instance profile",
                              associated=f"arn:{R.PARTITION}:ec2:*:{ACCOUNT}:instance/*")
    return out


@builds("iam:CreatePolicy")
def iam_create_policy(c):
    p = c.params
    path = p.get("Path") or "/"
    arn = f"arn:{R.PARTITION}:iam::{ACCOUNT}:policy{path}{p.get('PolicyName')}"
    v, f = new({}, {t["Key"]: t.get("Value", "") for t in p.get("Tags") or []})
    return [Req(c.full, arn, "policy", v, f)]


@builds("iam:GetPolicy", "iam:GetPolicyVersion", "iam:CreatePolicyVersion", "iam:ListPolicyVersions",
        "iam:DeletePolicyVersion", "iam:DeletePolicy", "iam:SetDefaultPolicyVersion")
def iam_policy_action(c):
    return [R.policy_req(c.full, c.params.get("PolicyArn"))]


# -- SSM -----------------------------------------------------------------------------------------

@builds("ssm:GetParameter", "ssm:DeleteParameter")
def ssm_parameter(c):
    return [R.parameter_req(c.full, c.region, c.params.get("Name") or "")]


@builds("ssm:GetParameters")
def ssm_parameters(c):
    return [R.parameter_req(c.full, c.region, n) for n in c.params.get("Names") or []]


@builds("ssm:GetParametersByPath")
def ssm_parameters_by_path(c):
    req = R.parameter_req(c.full, c.region, c.params.get("Path") or "/")
    req.values["ssm:Recursive"] = _str(bool(c.params.get("Recursive")))
    return [req]


@builds("ssm:PutParameter")
def ssm_put_parameter(c):
    p = c.params
    name = p.get("Name") or ""
    req = R.parameter_req(c.full, c.region, name)
    tags = {t["Key"]: t.get("Value", "") for t in p.get("Tags") or []}
    req.values.update(R.request_tag_values(tags))
    req.values["ssm:Overwrite"] = _str(p["Overwrite"]) if p.get("Overwrite") is not None else None
    if p.get("Policies"):
        req.values.pop("ssm:Policies", None)  # not computed: a condition on it is refused
    out = [req]
    if tags:
        # Creating a tagged parameter also authorizes ssm:AddTagsToResource (CloudFormation's
        # AWS::SSM::Parameter reference: "you must have ... ssm:PutParameter and ssm:AddTagsToResource").
        out.append(_tag_parameter_req("ssm:AddTagsToResource", c.region, name, tags, note="tags on the new parameter"))
    return out


def _tag_parameter_req(action, region, name, tags=None, keys=None, note=None):
    # AWS names the resource of the tagging calls "parameter/" + the id as given, so a name with a
    # leading slash gives "parameter//name" (an AccessDenied AWS returned for ssm:AddTagsToResource,
    # quoted in pepperize/cdk-ssm-parameters-cross-region#442).
    arn = f"arn:{R.PARTITION}:ssm:{region}:{ACCOUNT}:parameter/{name}" if not name.startswith("arn:") else name
    v, f = existing("parameter", arn, {}, R.parameter_tags(region, name), ("aws", "ssm"))
    if tags is not None:
        v.update(R.request_tag_values(tags))
    if keys is not None:
        v["aws:TagKeys"] = sorted(keys) or None
    return Req(action, arn, "parameter", v, f, note=note)


@builds("ssm:AddTagsToResource", "ssm:RemoveTagsFromResource", "ssm:ListTagsForResource")
def ssm_tag_action(c):
    p = c.params
    if p.get("ResourceType") != "Parameter":
        raise Unsupported(f"{c.full} on {p.get('ResourceType')} is not modelled by the sandbox")
    if c.action == "AddTagsToResource":
        return [_tag_parameter_req(c.full, c.region, p.get("ResourceId") or "",
                                   tags={t["Key"]: t.get("Value", "") for t in p.get("Tags") or []})]
    if c.action == "RemoveTagsFromResource":
        return [_tag_parameter_req(c.full, c.region, p.get("ResourceId") or "", keys=p.get("TagKeys") or [])]
    return [_tag_parameter_req(c.full, c.region, p.get("ResourceId") or "")]


@builds("ssm:SendCommand")
def ssm_send_command(c):
    p, region = c.params, c.region
    if p.get("Targets"):
        raise Unsupported("SendCommand with Targets is not modelled by the sandbox (InstanceIds only)")
    doc = p.get("DocumentName") or ""
    if doc.startswith("arn:"):
        doc_arn = doc
    elif doc.startswith("AWS-") or doc.startswith("AWSSupport-") or doc.startswith("Amazon"):
        doc_arn = f"arn:{R.PARTITION}:ssm:{region}::document/{doc}"  # owned by AWS: no account
    else:
        doc_arn = f"arn:{R.PARTITION}:ssm:{region}:{ACCOUNT}:document/{doc}"
    v, f = existing("document", doc_arn, {}, {}, ("aws", "ssm"))
    out = [Req(c.full, doc_arn, "document", v, f)]
    for iid in p.get("InstanceIds") or []:
        if iid.startswith("mi-"):
            arn = f"arn:{R.PARTITION}:ssm:{region}:{ACCOUNT}:managed-instance/{iid}"
            v, f = existing("managed-instance", arn, {}, {}, ("aws", "ssm"))
            out.append(Req(c.full, arn, "managed-instance", v, f))
            continue
        arn = R.ec2_arn(region, "instance", iid)
        v, f = existing("instance", arn, {}, R._ec2_tags(region, iid), ("aws", "ssm"))
        out.append(Req(c.full, arn, "instance", v, f))
    if p.get("OutputS3BucketName"):
        out.append(Req(c.full, f"arn:{R.PARTITION}:s3:::{p['OutputS3BucketName']}", "bucket", {}, R.TAG_FAMILIES))
    if p.get("ServiceRoleArn"):
        raise Unsupported("SendCommand with ServiceRoleArn (notifications) is not modelled by the sandbox")
    return out


# -- Auto Scaling --------------------------------------------------------------------------------

def _lt_spec_check(c, spec, subnet_ids, why):
    """What Auto Scaling checks on the caller when a group is given launch template `spec`."""
    if not spec:
        return []
    lt = R.lt_lookup(c.region, spec.get("LaunchTemplateId"), spec.get("LaunchTemplateName"))
    if lt is None:
        raise CallError(400, "ValidationError", f"The specified launch template, with template ID "
                        f"{spec.get('LaunchTemplateId') or spec.get('LaunchTemplateName')}, does not exist.")
    try:
        data = lt.get_version(spec.get("Version") or "$Default").data
    except Exception:
        raise CallError(400, "ValidationError", "The specified launch template version does not exist.")
    reqs = run_instances(c, {}, lt, data, subnet_ids=subnet_ids, note=why)
    for r in reqs:
        r.launch_template = spec.get("LaunchTemplateName") or spec.get("LaunchTemplateId")
    return reqs


def _group_lt_spec(p):
    if p.get("LaunchTemplate"):
        return p["LaunchTemplate"]
    mip = p.get("MixedInstancesPolicy") or {}
    return (mip.get("LaunchTemplate") or {}).get("LaunchTemplateSpecification")


def _asg_values(c, p, group):
    spec = _group_lt_spec(p)
    lc_name = p.get("LaunchConfigurationName")
    image = None
    if lc_name:
        _, lc = R.lc_arn(c.region, lc_name)
        image = getattr(lc, "image_id", None)
    version = (spec or {}).get("Version")
    vals = {
        "autoscaling:LaunchConfigurationName": lc_name,
        "autoscaling:LaunchTemplateVersionSpecified": (_str(bool(version) and version not in ("$Latest", "$Default"))
                                                       if spec else None),
        "autoscaling:MinSize": _str(p.get("MinSize")),
        "autoscaling:MaxSize": _str(p.get("MaxSize")),
        "autoscaling:VPCZoneIdentifiers": [s.strip() for s in p["VPCZoneIdentifier"].split(",")] if p.get("VPCZoneIdentifier") else None,
        "autoscaling:ImageId": image,
        "autoscaling:InstanceTypes": None,
        "autoscaling:CapacityReservationIds": None,
        "autoscaling:CapacityReservationResourceGroupArns": None,
    }
    if spec:
        vals.pop("autoscaling:ImageId")  # the template's image? not documented: a condition on it is refused
    mip = p.get("MixedInstancesPolicy") or {}
    overrides = (mip.get("LaunchTemplate") or {}).get("Overrides") or []
    if overrides:
        vals["autoscaling:InstanceTypes"] = [o.get("InstanceType") for o in overrides if o.get("InstanceType")] or None
    return vals


def _subnets(p, group):
    z = p.get("VPCZoneIdentifier") or (group.vpc_zone_identifier if group is not None else None)
    return [s.strip() for s in z.split(",") if s.strip()] if z else None


@builds("autoscaling:UpdateAutoScalingGroup")
def asg_update(c):
    p = c.params
    req, group = R.group_req(c.full, c.region, p.get("AutoScalingGroupName"), _asg_values(c, p, None))
    return [req] + _lt_spec_check(c, _group_lt_spec(p), _subnets(p, group),
                                  "Auto Scaling checks the launch template given to UpdateAutoScalingGroup")


@builds("autoscaling:CreateAutoScalingGroup")
def asg_create(c):
    p, region = c.params, c.region
    name = p.get("AutoScalingGroupName")
    arn = f"arn:{R.PARTITION}:autoscaling:{region}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/{name}"
    vals = _asg_values(c, p, None)
    vals.update({"autoscaling:LoadBalancerNames": p.get("LoadBalancerNames") or None,
                 "autoscaling:TargetGroupARNs": p.get("TargetGroupARNs") or None,
                 "autoscaling:TrafficSourceIdentifiers": [t.get("Identifier") for t in p.get("TrafficSources") or []] or None})
    v, f = new(vals, {t["Key"]: t.get("Value", "") for t in p.get("Tags") or []})
    return [Req(c.full, arn, "autoScalingGroup", v, f)] + _lt_spec_check(
        c, _group_lt_spec(p), _subnets(p, None), "Auto Scaling checks the launch template given to CreateAutoScalingGroup")


@builds("autoscaling:StartInstanceRefresh")
def asg_start_refresh(c):
    p = c.params
    desired = p.get("DesiredConfiguration") or {}
    req, group = R.group_req(c.full, c.region, p.get("AutoScalingGroupName"))
    # autoscaling:ImageId is left uncomputed here: a policy conditioning on it is refused.
    return [req] + _lt_spec_check(c, _group_lt_spec(desired), _subnets({}, group),
                                  "Auto Scaling checks the launch template of StartInstanceRefresh's DesiredConfiguration")


@builds("autoscaling:CancelInstanceRefresh", "autoscaling:RollbackInstanceRefresh", "autoscaling:DeleteAutoScalingGroup")
def asg_group_action(c):
    vals = {}
    if c.action == "DeleteAutoScalingGroup":
        vals["autoscaling:ForceDelete"] = _str(bool(c.params.get("ForceDelete")))
    req, _ = R.group_req(c.full, c.region, c.params.get("AutoScalingGroupName"), vals)
    return [req]


@builds("autoscaling:CreateOrUpdateTags", "autoscaling:DeleteTags")
def asg_tags(c):
    by_group = {}
    for t in c.params.get("Tags") or []:
        if t.get("ResourceType", "auto-scaling-group") != "auto-scaling-group":
            raise Unsupported(f"tags on {t.get('ResourceType')} are not modelled by the sandbox")
        by_group.setdefault(t.get("ResourceId"), []).append(t)
    out = []
    for name, tags in by_group.items():
        keys = sorted({t.get("Key") for t in tags})
        values = {t.get("Key"): t.get("Value") or "" for t in tags
                  if c.action == "CreateOrUpdateTags" or t.get("Value") is not None}
        vals = R.request_tag_values(values)
        vals["aws:TagKeys"] = keys
        req, _ = R.group_req(c.full, c.region, name, vals)
        out.append(req)
    return out


@builds("autoscaling:CreateLaunchConfiguration")
def asg_create_lc(c):
    p = c.params
    arn, _ = R.lc_arn(c.region, p.get("LaunchConfigurationName"))
    mo = p.get("MetadataOptions") or {}
    vals = {
        "autoscaling:ImageId": p.get("ImageId"),
        "autoscaling:InstanceType": p.get("InstanceType"),
        "autoscaling:SpotPrice": p.get("SpotPrice"),
        "autoscaling:MetadataHttpTokens": mo.get("HttpTokens"),
        "autoscaling:MetadataHttpPutResponseHopLimit": _str(mo.get("HttpPutResponseHopLimit")),
        "autoscaling:MetadataHttpEndpoint": mo.get("HttpEndpoint"),
    }
    out = [Req(c.full, arn, "launchConfiguration", vals, R.TAG_FAMILIES)]
    prof_name = p.get("IamInstanceProfile")
    if prof_name:
        prof = R.profile_by_name(prof_name.rsplit("/", 1)[-1])
        if prof is None:
            raise CallError(400, "ValidationError", f"Invalid IamInstanceProfile: {prof_name}")
        out += R.passrole(prof, "ec2.amazonaws.com", note=f"the launch configuration's instance profile {prof.name}")
    return out


@builds("autoscaling:DeleteLaunchConfiguration")
def asg_delete_lc(c):
    arn, _ = R.lc_arn(c.region, c.params.get("LaunchConfigurationName"))
    return [Req(c.full, arn, "launchConfiguration", {}, R.TAG_FAMILIES)]


# -- STS, SNS, KMS -------------------------------------------------------------------------------

@builds("sts:AssumeRole")
def sts_assume_role(c):
    p = c.params
    if p.get("PolicyArns"):
        raise Unsupported("AssumeRole with PolicyArns (managed session policies) is not modelled by the sandbox")
    role_arn = p.get("RoleArn") or ""
    role = None
    try:
        role = R.iamb().get_role_by_arn(role_arn)
    except Exception:
        pass
    tags = {t["Key"]: t.get("Value", "") for t in p.get("Tags") or []}
    vals = {"sts:RoleSessionName": p.get("RoleSessionName"), "sts:ExternalId": p.get("ExternalId"),
            "sts:SourceIdentity": p.get("SourceIdentity"), "sts:TransitiveTagKeys": p.get("TransitiveTagKeys") or None}
    v, f = existing("role", role_arn, vals, R.role_tags(role), ("aws", "iam"))
    v.update(R.request_tag_values(tags))
    req = Req(c.full, role_arn, "role", v, f)
    req.role = role
    return [req]


def _topic(c, arn):
    tags = {}
    try:
        b = R.sns_backends[ACCOUNT][arn.split(":")[3]]
        tags = dict(b.topics[arn]._tags)
    except Exception:
        pass
    v, f = existing("topic", arn, {}, tags, ("aws",))
    return Req(c.full, arn, "topic", v, f)


@builds("sns:Publish")
def sns_publish(c):
    arn = c.params.get("TopicArn") or c.params.get("TargetArn")
    if not arn:
        raise Unsupported("sns:Publish to a phone number is not modelled by the sandbox")
    return [_topic(c, arn)]


@builds("sns:GetTopicAttributes", "sns:Subscribe")
def sns_topic_action(c):
    req = _topic(c, c.params.get("TopicArn") or "")
    if c.action == "Subscribe":
        req.values.update({"sns:Endpoint": c.params.get("Endpoint"), "sns:Protocol": c.params.get("Protocol")})
    return [req]


@builds("sns:CreateTopic")
def sns_create_topic(c):
    arn = f"arn:{R.PARTITION}:sns:{c.region}:{ACCOUNT}:{c.params.get('Name')}"
    v, f = new({}, {t["Key"]: t.get("Value", "") for t in c.params.get("Tags") or []})
    return [Req(c.full, arn, "topic", v, f)]


@builds("kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
        "kms:ReEncryptFrom", "kms:ReEncryptTo")
def kms_direct(c):
    key = c.params.get("KeyId") or c.params.get("DestinationKeyId")
    if not key:
        raise Unsupported(f"{c.full} without a KeyId is not modelled by the sandbox")
    k = R.kms_key(c.region, key)
    if k is None:
        raise Unsupported(f"{c.full} on an AWS managed key is not modelled by the sandbox")
    arn, aliases, _ = k
    vals = {"kms:CallerAccount": ACCOUNT, "kms:ViaService": None, "kms:ResourceAliases": aliases or None,
            "kms:RequestAlias": key if key.startswith("alias/") else None}
    return [Req(c.full, arn, "key", vals, R.TAG_FAMILIES)]
