"""AMIs, as strict as AWS documents them: DescribeImages pages (MaxResults/NextToken) and leaves out
disabled images unless asked; DisableImage / EnableImage; deregistration protection with its 24-hour
cooldown; block public access for AMIs (per region, on for a new account) refusing to make an image
public; deprecation dates refused in the past or more than 10 years ahead, rounded to the minute.

Sources (each behaviour's test in tests/sandbox.rs cites the same):
- DescribeImages: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeImages.html
- Disable an AMI: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/disable-an-ami.html
- Deregistration protection: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ami-deregistration-protection.html
- Block public access: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-public-access-to-amis.html
- Deprecation: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_EnableImageDeprecation.html
"""

from datetime import datetime, timedelta, timezone

from dateutil.relativedelta import relativedelta
from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse

from . import pages
from .state import ACCOUNT, STATE, err, utcnow

COOLDOWN = 24 * 3600  # "enforces deregistration protection for 24 hours after it is disabled"
BLOCKED, UNBLOCKED = "block-new-sharing", "unblocked"
# What a new account has (the user guide's "Default settings": new accounts, enabled).
DEFAULT_BPA = BLOCKED


def _meta(ami_id):
    return STATE.image_meta.setdefault(ami_id, {})


def _ami(self, image_id, owned=False):
    b = ec2_backends[self.current_account][self.region]
    ami = b.amis.get(image_id)
    if ami is None:
        raise err("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
    if owned and ami.owner_id != self.current_account:
        raise err("AuthFailure", f"Not authorized for image:{image_id}")
    return ami


# -- images shared with other accounts ---------------------------------------------------------
# moto keeps images per account and region, and another account never sees them. On AWS an account
# named in an image's launch permissions finds it by id (and with ExecutableUsers), launches from
# it, and sees its own tags on it, not the owner's; only the owner can change or deregister it.
# The sandbox puts a *view* of the image into each such account's backend: the same object state
# (one shared __dict__: a state change, a new launch permission, a deregistration show at once)
# read through that account's backend for tags.

_VIEW_CLASSES = {}


def view_of(ami, backend):
    key = (backend.account_id, backend.region_name)
    cls = _VIEW_CLASSES.get(key)
    if cls is None or cls.viewer is not backend:  # a reset makes new backends
        cls = type("SharedAmi", (Ami,), {"ec2_backend": property(lambda self, b=backend: b), "shared_view": True, "viewer": backend})
        _VIEW_CLASSES[key] = cls
    view = object.__new__(cls)
    view.__dict__ = ami.__dict__
    return view


def sync_shares(owner_account, region, ami):
    """Every account in the image's launch permissions (by account id) sees it; no other does."""
    wanted = set()
    if ami.state != "disabled" and ami.id in ec2_backends[owner_account][region].amis:
        wanted = {lp.get("UserId") for lp in ami.launch_permissions if lp.get("UserId")} - {owner_account}
    for account in list(ec2_backends.keys()):
        if account == owner_account:
            continue
        b = ec2_backends[account][region]
        present = ami.id in b.amis and getattr(b.amis[ami.id], "shared_view", False)
        if account in wanted and not present:
            b.amis[ami.id] = view_of(ami, b)
        elif account not in wanted and present:
            del b.amis[ami.id]
    for account in wanted - set(ec2_backends.keys()):
        b = ec2_backends[account][region]
        b.amis[ami.id] = view_of(ami, b)


def _iso(mono_t):
    return (utcnow() + timedelta(seconds=mono_t - STATE.now())).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# -- deregistration protection ------------------------------------------------------------------

def protection(ami_id):
    """The DeregistrationProtection value DescribeImages shows, and whether it blocks a deregistration."""
    p = STATE.image_meta.get(ami_id, {}).get("protection")
    if not p:
        return "disabled", False
    if p["enabled"]:
        return ("enabled-with-cooldown" if p["cooldown"] else "enabled-without-cooldown"), True
    until = p.get("until")
    if until is not None and STATE.now() < until:
        return f"disabled after {_iso(until)}", True
    return "disabled", False


Ami.deregistration_protection = property(lambda self: protection(self.id)[0])


def enable_image_deregistration_protection(self):
    ami = _ami(self, self._get_param("ImageId"), owned=True)
    cooldown = bool(self._get_bool_param("WithCooldown", False))
    self.error_on_dryrun()
    _meta(ami.id)["protection"] = {"enabled": True, "cooldown": cooldown, "until": None}
    return ActionResult({"Return": protection(ami.id)[0]})


def disable_image_deregistration_protection(self):
    ami = _ami(self, self._get_param("ImageId"), owned=True)
    self.error_on_dryrun()
    p = _meta(ami.id).get("protection")
    if p and p["enabled"]:
        p["enabled"] = False
        # With the cooldown, protection stays in force for 24 hours after it is turned off.
        p["until"] = STATE.now() + COOLDOWN if p["cooldown"] else None
    return ActionResult({"Return": protection(ami.id)[0]})


_orig_deregister = AmisResponse.deregister_image


def deregister_image(self):
    image_id = self._get_param("ImageId")
    b = ec2_backends[self.current_account][self.region]
    ami = b.amis.get(image_id)
    if ami is not None and ami.owner_id != self.current_account:
        raise err("AuthFailure", f"Not authorized for image:{image_id}")
    if ami is not None:
        value, blocked = protection(image_id)
        if blocked:
            # The error code is not documented; the sandbox's choice (EC2's code for a refused change).
            raise err("OperationNotPermitted",
                      f"The image {image_id} can't be deregistered because deregistration protection is "
                      f"on ({value}). Disable it first with DisableImageDeregistrationProtection.")
    result = _orig_deregister(self)
    if ami is not None:
        ami.launch_permissions = []
        sync_shares(self.current_account, self.region, ami)
    return result


# -- disabled images ----------------------------------------------------------------------------

def disable_image(self):
    ami = _ami(self, self._get_param("ImageId"), owned=True)
    if ami.state not in ("available", "disabled"):
        raise err("IncorrectState", f"The image {ami.id} is in state {ami.state} and can't be disabled.")
    self.error_on_dryrun()
    # "Sets the AMI state to disabled and removes all launch permissions from the AMI."
    ami.state = "disabled"
    ami.launch_permissions = []
    sync_shares(self.current_account, self.region, ami)
    return ActionResult({"Return": True})


def enable_image(self):
    ami = _ami(self, self._get_param("ImageId"), owned=True)
    if ami.state != "disabled":
        raise err("IncorrectState", f"The image {ami.id} is in state {ami.state}, not disabled.")
    self.error_on_dryrun()
    # Accounts that lost access do not regain it: launch permissions stay empty.
    ami.state = "available"
    return ActionResult({"Return": True})


def launchable(region, image_id, instance_type=None, account=ACCOUNT):
    """None when `account` may launch an instance (of `instance_type`, when known) from `image_id`,
    else (code, message). The type must run the image's architecture, as EC2 checks."""
    ami = ec2_backends[account][region].amis.get(image_id)
    if ami is None:
        # Deregistered (or never there): RunInstances answers InvalidAMIID.NotFound, and an Auto
        # Scaling launch from it fails.
        return "InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist"
    snap = getattr(ami, "ebs_snapshot", None)
    if ami.owner_id != account and snap is not None and getattr(snap, "encrypted", False) \
            and default_key(ami.owner_id, region, getattr(snap, "kms_key_id", None)):
        # The owner's AWS managed key can't be used by another account (and such a snapshot can't be shared).
        return ("InvalidParameterValue",
                f"The image {image_id} is encrypted with the AWS managed key of account {ami.owner_id}, which account {account} can't use")
    if ami.state == "disabled":
        # Not documented which code; the sandbox answers as for an image that can't be used.
        return "InvalidAMIID.Unavailable", f"The image id '[{image_id}]' is disabled and can't be used to launch instances"
    if instance_type:
        from moto.ec2.models.instance_types import INSTANCE_TYPES
        runs = (INSTANCE_TYPES.get(instance_type) or {}).get("ProcessorInfo", {}).get("SupportedArchitectures") or []
        arch = getattr(ami, "architecture", None)
        if runs and arch and arch not in runs:
            return ("InvalidParameterValue",
                    f"The architecture '{runs[0]}' of the specified instance type does not match the architecture '{arch}' "
                    "of the specified AMI. Specify an instance type and an AMI that have matching architectures, and try again. "
                    "You can use 'describe-instance-types' or 'describe-images' to discover the architecture of the instance type or AMI.")
    return None


# -- block public access for AMIs --------------------------------------------------------------

def _bpa(region):
    return STATE.image_bpa.setdefault(region, {"state": DEFAULT_BPA, "previous": DEFAULT_BPA, "since": -1e18})


def bpa_reported(region):
    """What GetImageBlockPublicAccessState answers: the old state until the change has propagated
    ("can take up to 10 minutes to configure this setting"), the `block_public_access` delay."""
    s = _bpa(region)
    if STATE.now() - s["since"] < STATE.delays["block_public_access"]:
        return s["previous"]
    return s["state"]


def bpa_blocks(region):
    """Whether making an image public is refused now: blocked as soon as the block is asked for, and
    until the unblock has propagated (the stricter reading of the documented transition)."""
    s = _bpa(region)
    if s["state"] == BLOCKED:
        return True
    return STATE.now() - s["since"] < STATE.delays["block_public_access"] and s["previous"] == BLOCKED


def _set_bpa(region, state):
    s = _bpa(region)
    now_reported = bpa_reported(region)
    if s["state"] != state:
        s["previous"], s["state"], s["since"] = now_reported, state, STATE.now()


def get_image_block_public_access_state(self):
    self.error_on_dryrun()
    return ActionResult({"ImageBlockPublicAccessState": bpa_reported(self.region), "ManagedBy": "account"})


def enable_image_block_public_access(self):
    state = self._get_param("ImageBlockPublicAccessState")
    if state != BLOCKED:
        raise err("InvalidParameterValue",
                  f"Value ({state}) for parameter ImageBlockPublicAccessState is invalid. Valid value: {BLOCKED}")
    self.error_on_dryrun()
    _set_bpa(self.region, BLOCKED)
    return ActionResult({"ImageBlockPublicAccessState": BLOCKED})


def disable_image_block_public_access(self):
    self.error_on_dryrun()
    _set_bpa(self.region, UNBLOCKED)
    return ActionResult({"ImageBlockPublicAccessState": UNBLOCKED})


_orig_modify = AmisResponse.modify_image_attribute


# ImdsSupport: "Set to v2.0 to indicate that IMDSv2 is specified in the AMI [...] After you set the
# value to v2.0, you can't undo it." (ModifyImageAttribute; DescribeImages shows it as ImdsSupport.)
Ami.imds_support = property(lambda self: STATE.image_meta.get(self.id, {}).get("imds_support"))


def modify_image_attribute(self):
    ami = _ami(self, self._get_param("ImageId"), owned=True)
    imds = self._get_param("ImdsSupport.Value") or self._get_param("ImdsSupport")
    if isinstance(imds, dict):
        imds = imds.get("Value")
    if imds is not None:
        if imds != "v2.0":
            raise err("InvalidParameterValue", f"Value ({imds}) for parameter imdsSupport is invalid. The only valid value is v2.0.")
        self.error_on_dryrun()
        _meta(ami.id)["imds_support"] = "v2.0"
        return EmptyResult()
    lp = self._get_param("LaunchPermission", {}) or {}
    adds = list(lp.get("Add", []) or [])
    if self._get_param("OperationType") == "add":
        adds += [{"Group": g} for g in self._get_param("UserGroups", []) or []]
        adds += [{"UserId": u} for u in self._get_param("UserIds", []) or []]
    if adds and ami.state == "disabled":
        raise err("IncorrectState", f"The image {ami.id} is disabled; a disabled AMI can't be shared.")
    if any(a.get("Group") == "all" for a in adds) and bpa_blocks(self.region):
        # The message AWS answers (seen in EC2 Image Builder and CLI reports).
        raise err("OperationNotPermitted",
                  "You can't publicly share this image because block public access for AMIs is enabled for "
                  "this account. To publicly share the image, you must call the DisableImageBlockPublicAccess API.")
    for a in adds:
        u = a.get("UserId")
        if u is not None and not (len(u) == 12 and u.isdigit()):
            raise err("InvalidAMIAttributeItemValue", f"Invalid attribute item value \"{u}\" for userId item type.")
    result = _orig_modify(self)
    sync_shares(self.current_account, self.region, ami)
    return result


# -- snapshot permissions ----------------------------------------------------------------------
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifySnapshotAttribute.html: "You may
# add or remove specified Amazon Web Services account IDs from a snapshot's list of create volume
# permissions, but you cannot do both in a single operation. [...] Encrypted snapshots [...] cannot
# be made public. Snapshots encrypted with your default KMS key cannot be shared with other
# accounts." (moto reads only UserIds/GroupNames and ignores CreateVolumePermission.)

def default_key(account, region, kms_key_id):
    """Whether an encrypted snapshot's key is the account's AWS managed key for EBS (aws/ebs,
    which moto creates on first use, as AWS does)."""
    if not kms_key_id or kms_key_id.endswith("alias/aws/ebs"):
        return True
    from moto.kms.models import kms_backends
    kms = kms_backends[account][region]
    if not kms.alias_exists("alias/aws/ebs"):
        return False
    managed = kms.describe_key("alias/aws/ebs")
    return kms_key_id in (managed.id, managed.arn)


def modify_snapshot_attribute(self):
    b = ec2_backends[self.current_account][self.region]
    snap_id = self._get_param("SnapshotId")
    snap = b.snapshots.get(snap_id)
    if snap is None:
        raise err("InvalidSnapshot.NotFound", f"The snapshot '{snap_id}' does not exist.")
    if snap.owner_id != self.current_account:
        raise err("AuthFailure", f"Not authorized for snapshot:{snap_id}")
    attribute = self._get_param("Attribute")
    if attribute not in (None, "createVolumePermission"):
        raise err("InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid. Only createVolumePermission can be modified.")
    cvp = self._get_param("CreateVolumePermission", {}) or {}
    add = [dict(x) for x in cvp.get("Add", []) or []]
    remove = [dict(x) for x in cvp.get("Remove", []) or []]
    op = self._get_param("OperationType")
    legacy = [{"UserId": u} for u in self._get_param("UserIds", []) or []] + [{"Group": g} for g in self._get_param("GroupNames", []) or []]
    if legacy:
        if op not in ("add", "remove"):
            raise err("MissingParameter", "The request must contain the parameter operationType")
        (add if op == "add" else remove).extend(legacy)
    if add and remove:
        raise err("InvalidParameterCombination",
                  "You may add or remove create volume permissions, but you cannot do both in a single operation.")
    if len(add) + len(remove) > 500:
        raise err("InvalidParameterValue", "You can make up to 500 modifications to a snapshot in a single operation.")
    for p in add + remove:
        u, g = p.get("UserId"), p.get("Group")
        if g is not None and g != "all":
            raise err("InvalidAMIAttributeItemValue", f"Invalid attribute item value \"{g}\" for UserGroup item type.")
        if u is not None and not (len(u) == 12 and u.isdigit()):
            raise err("InvalidAMIAttributeItemValue", f"Invalid attribute item value \"{u}\" for userId item type.")
    if add and getattr(snap, "encrypted", False):
        if any(p.get("Group") == "all" for p in add):
            raise err("InvalidParameter", "Encrypted snapshots cannot be made public.")
        if default_key(self.current_account, self.region, getattr(snap, "kms_key_id", None)):
            raise err("InvalidParameter", "Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another snapshot.")
    self.error_on_dryrun()
    for p in add:
        if p.get("UserId"):
            snap.create_volume_permission_userids.add(p["UserId"])
        if p.get("Group"):
            snap.create_volume_permission_groups.add(p["Group"])
    for p in remove:
        snap.create_volume_permission_userids.discard(p.get("UserId"))
        snap.create_volume_permission_groups.discard(p.get("Group"))
    return EmptyResult()


# -- deprecation --------------------------------------------------------------------------------

def enable_image_deprecation(self):
    ami = _ami(self, self._get_param("ImageId"), owned=True)
    when = self._get_param("DeprecateAt")
    if when is None:
        raise err("MissingParameter", "The request must contain the parameter DeprecateAt")
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = utcnow()
    # "If you specify a value for seconds, Amazon EC2 rounds the seconds to the nearest minute."
    rounded = (when + timedelta(seconds=30)).replace(second=0, microsecond=0)
    # "You can't specify a date in the past. The upper limit for DeprecateAt is 10 years from now,
    # except for public AMIs, where the upper limit is 2 years from the creation date."
    if when < now:
        raise err("InvalidParameterValue", f"The DeprecateAt value {when.isoformat()} is in the past.")
    limit, what = now + relativedelta(years=10), "10 years from now"
    if ami.is_public:
        created = ami.creation_date
        if isinstance(created, str):
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        limit, what = created + relativedelta(years=2), "2 years from the creation date of a public AMI"
    if rounded > limit:
        raise err("InvalidParameterValue",
                  f"The DeprecateAt value {when.isoformat()} is more than {what} ({limit.isoformat()}).")
    self.error_on_dryrun()
    ami.deprecation_time = rounded.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return ActionResult({"Return": True})


# -- DescribeImages ------------------------------------------------------------------------------

_orig_describe = AmisResponse.describe_images


def describe_images(self):
    include_disabled = bool(self._get_bool_param("IncludeDisabled", False))
    max_results = self._get_int_param("MaxResults")
    token = self._get_param("NextToken")
    if max_results is not None and not 1 <= max_results <= 1000:
        raise err("InvalidParameterValue", f"Value ({max_results}) for parameter maxResults is invalid. "
                  "Expecting a value between 1 and 1000.")
    images = list(_orig_describe(self).result["Images"])
    images = [i for i in images if (include_disabled or i.state != "disabled") and not STATE.fresh(i.id)]
    images.sort(key=lambda i: i.id)
    page, nxt = pages.page(images, token, max_results, "DescribeImages", pages.query_key(self), ec2=True)
    out = {"Images": page}
    if nxt:
        out["NextToken"] = nxt
    return ActionResult(out)


from moto.ec2.responses.elastic_block_store import ElasticBlockStore as _EBS  # noqa: E402

_EBS.modify_snapshot_attribute = modify_snapshot_attribute

for _name, _fn in {
    "enable_image_deregistration_protection": enable_image_deregistration_protection,
    "disable_image_deregistration_protection": disable_image_deregistration_protection,
    "deregister_image": deregister_image,
    "disable_image": disable_image,
    "enable_image": enable_image,
    "get_image_block_public_access_state": get_image_block_public_access_state,
    "enable_image_block_public_access": enable_image_block_public_access,
    "disable_image_block_public_access": disable_image_block_public_access,
    "modify_image_attribute": modify_image_attribute,
    "enable_image_deprecation": enable_image_deprecation,
    "describe_images": describe_images,
}.items():
    setattr(AmisResponse, _name, _fn)
