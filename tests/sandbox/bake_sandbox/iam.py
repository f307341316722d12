"""IAM propagation, as AWS has it ("Changes that I make are not always immediately visible", IAM
troubleshooting guide; Packer #9810 and #12303 report minutes): for `iam_propagation` seconds
- an instance profile that was just created, or that just got a role (AddRoleToInstanceProfile), is
  refused by RunInstances (InvalidParameterValue "Invalid IAM Instance Profile name");
- a policy just attached to or put on a role does not yet grant anything to the instances using it
  (the SSM agent of an instance whose role just got AmazonSSMManagedInstanceCore registers only
  once that policy has propagated).
And what moto answers with a crash, AWS's error: RemoveRoleFromInstanceProfile of a role the
profile does not hold is NoSuchEntity."""

from moto.iam.exceptions import NotFoundException
from moto.iam.models import IAMBackend

from .state import STATE

_orig_create = IAMBackend.create_instance_profile
_orig_add = IAMBackend.add_role_to_instance_profile
_orig_put = IAMBackend.put_role_policy
_orig_attach = IAMBackend.attach_role_policy


def create_instance_profile(self, name, path, role_names, tags=None):
    profile = _orig_create(self, name, path, role_names, tags)
    STATE.profile_created[name] = STATE.now()
    return profile


def add_role_to_instance_profile(self, profile_name, role_name):
    _orig_add(self, profile_name, role_name)
    STATE.profile_created[profile_name] = STATE.now()


def put_role_policy(self, role_name, policy_name, policy_json):
    _orig_put(self, role_name, policy_name, policy_json)
    STATE.role_policy_changed[(role_name, policy_name)] = STATE.now()


def attach_role_policy(self, policy_arn, role_name):
    _orig_attach(self, policy_arn, role_name)
    STATE.role_policy_changed[(role_name, policy_arn)] = STATE.now()


def remove_role_from_instance_profile(self, profile_name, role_name):
    profile = self.get_instance_profile(profile_name)
    role = self.get_role(role_name)
    if role not in profile.roles:
        raise NotFoundException(f"Role {role_name} is not in instance profile {profile_name}.")
    profile.roles.remove(role)


def profile_usable(name):
    """False while a profile (or the role just added to it) has not propagated to EC2."""
    changed = STATE.profile_created.get(name)
    return changed is None or STATE.now() - changed >= STATE.delays["iam_propagation"]


def effective_at(role_name, policy):
    """When `policy` (an ARN or an inline name) of `role_name` took effect for its instances."""
    changed = STATE.role_policy_changed.get((role_name, policy))
    return -1e18 if changed is None else changed + STATE.delays["iam_propagation"]


IAMBackend.create_instance_profile = create_instance_profile
IAMBackend.add_role_to_instance_profile = add_role_to_instance_profile
IAMBackend.put_role_policy = put_role_policy
IAMBackend.attach_role_policy = attach_role_policy
IAMBackend.remove_role_from_instance_profile = remove_role_from_instance_profile
