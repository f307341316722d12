"""EC2, closer to AWS: instances, images and stops take time; CreateImage tags snapshots and checks
the name; CopyImage tags and encrypts copies; ClientToken makes RunInstances and CopyImage
idempotent; DisableImageDeprecation (the rest of images: images.py); CreateLaunchTemplateVersion
copies its SourceVersion; a new instance profile takes a moment to be usable (iam.py); a security
group in use can't be deleted; a Spot instance can be interrupted (ssm.instance_lost)."""

import copy
import re

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ec2.responses.security_groups import SecurityGroups

from . import iam, images, inventory, ssm
from .state import err, ACCOUNT, STATE




# -- instance states ---------------------------------------------------------------------------

def set_state(inst, name, code):
    inst._state.name = name
    inst._state.code = code


def launched(inst, region):
    """A new instance: pending for `instance_pending` seconds, then running; invisible to calls that
    name it for `visibility_lag` seconds (consistency.py)."""
    STATE.bear(inst.id)
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
    b = ec2_backends[self.current_account][self.region]
    token = self._get_param("ClientToken")
    if token:
        rid = STATE.client_tokens.get((self.region, "RunInstances", token))
        if rid and rid in b.reservations:
            return ActionResult(b.reservations[rid])
    name = self._get_param("IamInstanceProfile.Name")
    arn = self._get_param("IamInstanceProfile.Arn")
    if name or arn:
        profile = name or arn.rsplit("/", 1)[-1]
        if not iam.profile_usable(profile):
            what = f"name ({name})" if name else f"arn ({arn})"
            raise err("InvalidParameterValue", f"Value {what} for parameter iamInstanceProfile is invalid. Invalid IAM Instance Profile {what.split(' ')[0]}")
    refused = images.launchable(self.region, self._get_param("ImageId"), self._get_param("InstanceType"), self.current_account)
    if refused:
        raise err(*refused)
    result = _orig_run(self)
    reservation = result.result
    if token:
        STATE.client_tokens[(self.region, "RunInstances", token)] = reservation.id
    for inst in reservation.instances:
        launched(inst, self.region)
    return result


def _ids(self):
    return self._get_param("InstanceIds") or []


def _linger(self, delay_key, final, transient, transient_code, final_code, ids=None, region=None):
    """moto moves an instance to its final state at once; show `transient` for the
    configured delay first, as EC2 does, so waiters have something to wait for."""
    # `self` is None when the sandbox itself acts (an interruption): the home account's instance.
    b = ec2_backends[self.current_account if self is not None else ACCOUNT][region or self.region]
    delay = STATE.delays[delay_key]
    for iid in ids if ids is not None else _ids(self):
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
    for iid in _ids(self):
        ssm.instance_lost(iid, "stopped")
    return result


def start_instances(self):
    result = _orig_start(self)
    for iid in _ids(self):
        ssm.meta(iid)["running_since"] = STATE.now()
    return result


def terminate_instances(self):
    result = _orig_terminate(self)
    _linger(self, "instance_shutting_down", "terminated", "shutting-down", 32, 48)
    for iid in _ids(self):
        ssm.instance_lost(iid, "terminated")
    return result


SPOT_REASONS = {
    "terminate": ("Server.SpotInstanceTermination", "Server.SpotInstanceTermination: Spot instance termination"),
    "stop": ("Server.SpotInstanceShutdown", "Server.SpotInstanceShutdown: Spot instance shutdown"),
}


def interrupt(region, instance_id, action="terminate"):
    """EC2 reclaims a Spot instance (POST /_sandbox/interrupt): it is terminated or stopped, with the
    state reason EC2 gives, and whatever its agent was running is lost (ssm.instance_lost)."""
    from moto.ec2.models.instances import StateReason

    b = ec2_backends[ACCOUNT][region]
    inst = b.get_instance(instance_id)
    if inst.state in ("terminated", "shutting-down"):
        raise ValueError(f"{instance_id} is already {inst.state}")
    code, message = SPOT_REASONS[action]
    if action == "terminate":
        b.terminate_instances([instance_id])
        _linger(None, "instance_shutting_down", "terminated", "shutting-down", 32, 48, [instance_id], region)
    else:
        b.stop_instances([instance_id])
        _linger(None, "instance_stopping", "stopped", "stopping", 64, 80, [instance_id], region)
    inst._reason = message
    inst.state_reason = StateReason(message, code)
    ssm.instance_lost(instance_id, "interrupted")
    return inst.state


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


IMAGE_NAME = re.compile(r"[A-Za-z0-9()\[\] ./\-'@_]{3,128}")


def check_image_name(name, description):
    """CreateImage / CopyImage: "Constraints: 3-128 alphanumeric characters, parentheses (()), square
    brackets ([]), spaces ( ), periods (.), slashes (/), dashes (-), single quotes ('), at-signs (@),
    or underscores(_)"; a description of at most 255 characters (EC2 API reference)."""
    if not isinstance(name, str) or not IMAGE_NAME.fullmatch(name):
        raise err("InvalidAMIName.Malformed", f"AMI names must be between 3 and 128 characters long, and may contain "
                  f"letters, numbers, '(', ')', '.', '-', '/', '[', ']', ' ', \"'\", '@' and '_' (got {name!r})")
    if len(description or "") > 255:
        raise err("InvalidParameterValue", "Value for parameter description is invalid: it is longer than 255 characters.")


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
    b = ec2_backends[self.current_account][region]
    instance_id = self._get_param("InstanceId")
    name = self._get_param("Name")
    description = self._get_param("Description", "")
    check_image_name(name, description)
    tags = _tag_specs(self._get_param("TagSpecifications", []), {"image", "snapshot"})
    inst = b.get_instance(instance_id)
    if inst.state not in ("running", "stopped"):
        raise err("IncorrectState", f"Instance '{instance_id}' is not in a state from which it can be imaged.")
    if any(a.name == name and a.owner_id == self.current_account for a in b.amis.values()):
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
    inventory.image_from_instance(ami.id, inst)
    STATE.bear(ami.id)
    STATE.bear(ami.ebs_snapshot.id)
    image_pending(b, ami, region)
    return ActionResult({"ImageId": ami.id})


def copy_image(self):
    region = self.region
    b = ec2_backends[self.current_account][region]
    token = self._get_param("ClientToken")
    if token:
        existing = STATE.client_tokens.get((region, "CopyImage", token))
        if existing and existing in b.amis:
            return ActionResult({"ImageId": existing})
    source_id = self._get_param("SourceImageId")
    source_region = self._get_param("SourceRegion")
    name = self._get_param("Name")
    check_image_name(name, self._get_param("Description") or "")
    src_backend = ec2_backends[self.current_account][source_region]
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
    # KMS keys are regional: a copy to another region without KmsKeyId is encrypted with that
    # region's default key ("The default KMS key for Amazon EBS is used unless you specify a
    # non-default KMS key using KmsKeyId"); only a copy within the region can keep the source's key.
    same_region = source_region == region
    kms = self._get_param("KmsKeyId") or (getattr(src.ebs_snapshot, "kms_key_id", None) if encrypted and same_region else None)
    _set_snapshot_encryption(b, ami, encrypted, kms, getattr(src.ebs_snapshot.volume, "size", None))
    ami.root_device_name = src.root_device_name
    inventory.image_from_image(ami.id, source_id)
    STATE.bear(ami.id)
    STATE.bear(ami.ebs_snapshot.id)
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
    b = ec2_backends[self.current_account][self.region]
    ami = b.amis.get(image_id)
    if ami is None:
        raise err("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
    return ami


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
    b = ec2_backends[self.current_account][self.region]
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
            "CreatedBy": f"arn:aws:iam::{self.current_account}:root",
            "DefaultVersion": template.is_default(version),
            "LaunchTemplateData": version.data,
            "LaunchTemplateId": template.id,
            "LaunchTemplateName": template.name,
            "VersionDescription": version.description,
            "VersionNumber": version.number,
        }
    })


def delete_security_group(self):
    """As AWS: a group still used by an instance (any state but terminated: a shutting-down
    instance still holds its network interface) can't be deleted (DependencyViolation)."""
    b = ec2_backends[self.current_account][self.region]
    gid = self._get_param("GroupId")
    group = b.get_security_group_by_name_or_id(gid or self._get_param("GroupName") or "")
    if group is not None:
        for res in b.reservations.values():
            for inst in res.instances:
                if inst.state != "terminated" and any(getattr(g, "id", g) == group.id for g in inst.security_groups):
                    raise err("DependencyViolation", f"resource {group.id} has a dependent object")
    return _orig_delete_sg(self)


_orig_delete_sg = SecurityGroups.delete_security_group
SecurityGroups.delete_security_group = delete_security_group
InstanceResponse.run_instances = run_instances
InstanceResponse.stop_instances = stop_instances
InstanceResponse.start_instances = start_instances
InstanceResponse.terminate_instances = terminate_instances
InstanceResponse.reboot_instances = reboot_instances
AmisResponse.create_image = create_image
AmisResponse.copy_image = copy_image
AmisResponse.disable_image_deprecation = disable_image_deprecation
LaunchTemplates.create_launch_template_version = create_launch_template_version
