"""EC2, closer to AWS: instances, images and stops take time; CreateImage tags snapshots;
CopyImage tags and encrypts copies; ClientToken makes RunInstances and CopyImage idempotent;
image deprecation; CreateLaunchTemplateVersion copies its SourceVersion; a new instance profile
takes a moment to be usable (eventual consistency)."""

import copy
from datetime import datetime, timezone

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.launch_templates import LaunchTemplates

from . import ssm
from .state import err, ACCOUNT, STATE




# -- instance states ---------------------------------------------------------------------------

def set_state(inst, name, code):
    inst._state.name = name
    inst._state.code = code


def launched(inst, region):
    """A new instance: pending for `instance_pending` seconds, then running."""
    m = ssm.meta(inst.id)
    m["region"] = region
    delay = STATE.delays["instance_pending"]
    if delay > 0:
        set_state(inst, "pending", 0)
        m["running_since"] = STATE.now() + delay

        def run():
            if inst.state == "pending":
                set_state(inst, "running", 16)
        STATE.after(delay, run)
    else:
        m["running_since"] = STATE.now()


_orig_run = InstanceResponse.run_instances
_orig_stop = InstanceResponse.stop_instances
_orig_terminate = InstanceResponse.terminate_instances
_orig_reboot = InstanceResponse.reboot_instances
_orig_start = InstanceResponse.start_instances


def run_instances(self):
    b = ec2_backends[ACCOUNT][self.region]
    token = self._get_param("ClientToken")
    if token:
        rid = STATE.client_tokens.get((self.region, "RunInstances", token))
        if rid and rid in b.reservations:
            return ActionResult(b.reservations[rid])
    name = self._get_param("IamInstanceProfile.Name")
    arn = self._get_param("IamInstanceProfile.Arn")
    if name or arn:
        profile = name or arn.rsplit("/", 1)[-1]
        created = STATE.profile_created.get(profile)
        if created is not None and STATE.now() - created < STATE.delays["iam_propagation"]:
            what = f"name ({name})" if name else f"arn ({arn})"
            raise err("InvalidParameterValue", f"Value {what} for parameter iamInstanceProfile is invalid. Invalid IAM Instance Profile {what.split(' ')[0]}")
    result = _orig_run(self)
    reservation = result.result
    if token:
        STATE.client_tokens[(self.region, "RunInstances", token)] = reservation.id
    for inst in reservation.instances:
        launched(inst, self.region)
    return result


def _ids(self):
    return self._get_param("InstanceIds") or []


def _linger(self, delay_key, final, transient, transient_code, final_code):
    """moto moves an instance to its final state at once; show `transient` for the
    configured delay first, as EC2 does, so waiters have something to wait for."""
    b = ec2_backends[ACCOUNT][self.region]
    delay = STATE.delays[delay_key]
    for iid in _ids(self):
        inst = b.get_instance(iid)
        ssm.meta(iid)["running_since"] = None
        if delay > 0 and inst.state == final:
            set_state(inst, transient, transient_code)

            def settle(inst=inst):
                if inst.state == transient:
                    set_state(inst, final, final_code)
            STATE.after(delay, settle)


def stop_instances(self):
    result = _orig_stop(self)
    _linger(self, "instance_stopping", "stopped", "stopping", 64, 80)
    return result


def start_instances(self):
    result = _orig_start(self)
    for iid in _ids(self):
        ssm.meta(iid)["running_since"] = STATE.now()
    return result


def terminate_instances(self):
    result = _orig_terminate(self)
    _linger(self, "instance_shutting_down", "terminated", "shutting-down", 32, 48)
    return result


def reboot_instances(self):
    result = _orig_reboot(self)
    for iid in _ids(self):
        ssm.on_reboot(iid)
    return result


# -- images ------------------------------------------------------------------------------------

def _tag_specs(specs, allowed):
    out = {}
    for spec in specs or []:
        rtype = spec.get("ResourceType")
        if rtype not in allowed:
            raise err("InvalidParameterValue", f"'{rtype}' is not a valid taggable resource type for this operation.")
        for t in spec.get("Tags") or []:
            out.setdefault(rtype, {})[t["Key"]] = t.get("Value", "")
    return out


def image_pending(b, ami, region):
    """An image is pending for `image_pending` seconds, then available (or failed where asked)."""
    ami.state = "pending"
    delay = STATE.delays["image_pending"]

    def done():
        if ami.id not in b.amis:
            return
        if region in STATE.failing_image_regions:
            ami.state = "failed"
            ami.state_reason = {"Code": "Client.InternalError", "Message": "Copy failed (sandbox: failing region)"}
        else:
            ami.state = "available"
    if delay >= 0:
        STATE.after(delay, done)


def _set_snapshot_encryption(b, ami, encrypted, kms_key_id, size=None):
    snap = ami.ebs_snapshot
    snap.encrypted = bool(encrypted)
    snap.kms_key_id = kms_key_id if encrypted else None
    if size:
        snap.volume.size = size


def create_image(self):
    region = self.region
    b = ec2_backends[ACCOUNT][region]
    instance_id = self._get_param("InstanceId")
    name = self._get_param("Name")
    description = self._get_param("Description", "")
    tags = _tag_specs(self._get_param("TagSpecifications", []), {"image", "snapshot"})
    inst = b.get_instance(instance_id)
    if inst.state not in ("running", "stopped"):
        raise err("IncorrectState", f"Instance '{instance_id}' is not in a state from which it can be imaged.")
    if any(a.name == name and a.owner_id == ACCOUNT for a in b.amis.values()):
        raise err("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI "
                  f"{next(a.id for a in b.amis.values() if a.name == name)}")
    self.error_on_dryrun()
    ami = b.create_image(instance_id, name, description, tag_specifications=[])
    for k, v in tags.get("image", {}).items():
        ami.add_tag(k, v)
    for k, v in tags.get("snapshot", {}).items():
        b.create_tags([ami.ebs_snapshot.id], {k: v})
    root = next((d for n, d in inst.block_device_mapping.items() if n == inst.root_device_name), None)
    if root is None and inst.block_device_mapping:
        root = list(inst.block_device_mapping.values())[0]
    if root is not None:
        vol = b.get_volume(root.volume_id)
        _set_snapshot_encryption(b, ami, vol.encrypted, vol.kms_key_id, vol.size)
    ami.root_device_name = inst.root_device_name
    STATE.image_meta[ami.id] = {"source_instance": instance_id}
    image_pending(b, ami, region)
    return ActionResult({"ImageId": ami.id})


def copy_image(self):
    region = self.region
    b = ec2_backends[ACCOUNT][region]
    token = self._get_param("ClientToken")
    if token:
        existing = STATE.client_tokens.get((region, "CopyImage", token))
        if existing and existing in b.amis:
            return ActionResult({"ImageId": existing})
    source_id = self._get_param("SourceImageId")
    source_region = self._get_param("SourceRegion")
    name = self._get_param("Name")
    src_backend = ec2_backends[ACCOUNT][source_region]
    src = src_backend.amis.get(source_id)
    if src is None:
        raise err("InvalidAMIID.NotFound", f"The image id '[{source_id}]' does not exist")
    if src.state != "available":
        raise err("IncorrectState", f"Image {source_id} is not in the available state ({src.state}).")
    tags = _tag_specs(self._get_param("TagSpecifications", []), {"image", "snapshot"})
    self.error_on_dryrun()
    ami = b.copy_image(source_id, source_region, name, self._get_param("Description"))
    if self._get_param("CopyImageTags"):
        for k, v in src_backend.tags.get(source_id, {}).items():
            ami.add_tag(k, v)
    for k, v in tags.get("image", {}).items():
        ami.add_tag(k, v)
    for k, v in tags.get("snapshot", {}).items():
        b.create_tags([ami.ebs_snapshot.id], {k: v})
    encrypted = bool(self._get_param("Encrypted")) or bool(getattr(src.ebs_snapshot, "encrypted", False))
    kms = self._get_param("KmsKeyId") or (getattr(src.ebs_snapshot, "kms_key_id", None) if encrypted else None)
    _set_snapshot_encryption(b, ami, encrypted, kms, getattr(src.ebs_snapshot.volume, "size", None))
    ami.root_device_name = src.root_device_name
    if token:
        STATE.client_tokens[(region, "CopyImage", token)] = ami.id
    image_pending(b, ami, region)
    return ActionResult({"ImageId": ami.id})


def _bdm(self):
    snap = self.ebs_snapshot
    ebs = {
        "SnapshotId": snap.id,
        "VolumeSize": getattr(snap.volume, "size", 8),
        "DeleteOnTermination": True,
        "VolumeType": "gp3",
        "Encrypted": bool(getattr(snap, "encrypted", False)),
    }
    if getattr(snap, "kms_key_id", None):
        ebs["KmsKeyId"] = snap.kms_key_id
    return [{"DeviceName": self.root_device_name, "Ebs": ebs}]


Ami.block_device_mappings = property(_bdm)


def _ami(self, image_id):
    b = ec2_backends[ACCOUNT][self.region]
    ami = b.amis.get(image_id)
    if ami is None:
        raise err("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
    return ami


def enable_image_deprecation(self):
    ami = _ami(self, self._get_param("ImageId"))
    when = self._get_param("DeprecateAt")
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when is None:
        raise err("MissingParameter", "The request must contain the parameter DeprecateAt")
    when = when.replace(second=0, microsecond=0)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    ami.deprecation_time = when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return ActionResult({"Return": True})


def disable_image_deprecation(self):
    ami = _ami(self, self._get_param("ImageId"))
    ami.deprecation_time = None
    return ActionResult({"Return": True})


Ami.deprecation_time = None


# -- launch templates --------------------------------------------------------------------------

def _merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def create_launch_template_version(self):
    b = ec2_backends[ACCOUNT][self.region]
    name = self._get_param("LaunchTemplateName")
    tmpl_id = self._get_param("LaunchTemplateId")
    template = b.get_launch_template_by_name(name) if name else b.get_launch_template(tmpl_id)
    data = self._get_param("LaunchTemplateData", {})
    source = self._get_param("SourceVersion")
    if source:
        data = _merge(template.get_version(source).data, data)
    self.error_on_dryrun()
    version = template.create_version(data, self._get_param("VersionDescription"))
    return ActionResult({
        "LaunchTemplateVersion": {
            "CreateTime": version.create_time,
            "CreatedBy": f"arn:aws:iam::{ACCOUNT}:root",
            "DefaultVersion": template.is_default(version),
            "LaunchTemplateData": version.data,
            "LaunchTemplateId": template.id,
            "LaunchTemplateName": template.name,
            "VersionDescription": version.description,
            "VersionNumber": version.number,
        }
    })


InstanceResponse.run_instances = run_instances
InstanceResponse.stop_instances = stop_instances
InstanceResponse.start_instances = start_instances
InstanceResponse.terminate_instances = terminate_instances
InstanceResponse.reboot_instances = reboot_instances
AmisResponse.create_image = create_image
AmisResponse.copy_image = copy_image
AmisResponse.enable_image_deprecation = enable_image_deprecation
AmisResponse.disable_image_deprecation = disable_image_deprecation
LaunchTemplates.create_launch_template_version = create_launch_template_version
