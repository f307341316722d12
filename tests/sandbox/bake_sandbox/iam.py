"""IAM: remember when each instance profile was created, so RunInstances can refuse a profile that
has not propagated yet (as AWS does for a few seconds)."""

from moto.iam.models import IAMBackend

from .state import STATE

_orig = IAMBackend.create_instance_profile


def create_instance_profile(self, name, path, role_names, tags=None):
    profile = _orig(self, name, path, role_names, tags)
    STATE.profile_created[name] = STATE.now()
    return profile


IAMBackend.create_instance_profile = create_instance_profile
