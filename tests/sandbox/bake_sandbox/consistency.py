"""Eventual consistency, as AWS documents it: for `visibility_lag` seconds after it is created, an
image (and its snapshot), an instance, a security group, a launch template or an Auto Scaling group
answers NotFound when a call names it, and is left out of lists.

Source: "Eventual consistency in the Amazon EC2 API",
https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html ("If you try to use a
resource immediately after it is created ... you might get an error such as InvalidAMIID.NotFound").
Real-world: Packer and Ansible issues about InvalidAMIID.NotFound right after CreateImage.

EC2 calls are checked by scanning every id-shaped request value (except launch template data, tag
specifications and filters: AWS accepts a launch template version naming an unknown image with a
warning, and a filter just matches nothing). Lists leave the resource out (pages.py, images.py).
Auto Scaling: a group name, or a launch template id in a group's configuration, that is still new
answers ValidationError. Imported last (after every other module has patched moto)."""

import re

import botocore.session
from botocore import xform_name
from moto.autoscaling.responses import AutoScalingResponse
from moto.ec2.responses import EC2Response

from .state import STATE, err

ID = re.compile(r"^(ami|i|sg|lt|snap)-[0-9a-f]{8,17}$")
SKIP = ("LaunchTemplateData", "TagSpecification", "Filter", "ClientToken", "Description", "Name")

NOT_FOUND = {
    "ami": ("InvalidAMIID.NotFound", "The image id '[{id}]' does not exist"),
    "i": ("InvalidInstanceID.NotFound", "The instance ID '{id}' does not exist"),
    "sg": ("InvalidGroup.NotFound", "The security group '{id}' does not exist"),
    "lt": ("InvalidLaunchTemplateId.NotFound", "The specified launch template, with template ID {id}, does not exist."),
    "snap": ("InvalidSnapshot.NotFound", "The snapshot '{id}' does not exist."),
}


def _ec2_check(resp, action):
    for key, values in (resp.querystring or {}).items():
        if key.startswith(SKIP):
            continue
        for v in values:
            if isinstance(v, str) and ID.match(v) and STATE.fresh(v):
                code, msg = NOT_FOUND[v.split("-", 1)[0]]
                raise err(code, msg.format(id=v))
            if key.startswith(("LaunchTemplateName", "LaunchTemplateNames")) and action != "create_launch_template" \
                    and STATE.fresh(("lt-name", resp.region, v)):
                raise err("InvalidLaunchTemplateName.NotFoundException",
                          f"The specified launch template, with template name {v}, does not exist.")


def _ec2_born(resp, action, result):
    data = getattr(result, "result", None)
    if not isinstance(data, dict):
        return
    if action == "create_security_group" and data.get("GroupId"):
        STATE.bear(data["GroupId"])
    elif action == "create_launch_template" and data.get("LaunchTemplate"):
        lt = data["LaunchTemplate"]
        STATE.bear(lt["LaunchTemplateId"])
        STATE.bear(("lt-name", resp.region, lt["LaunchTemplateName"]))


def _wrap_ec2(name):
    def action(self):
        _ec2_check(self, name)
        result = getattr(super(EC2Response, self), name)()
        _ec2_born(self, name, result)
        return result
    action.__name__ = name
    return action


for _op in botocore.session.get_session().get_service_model("ec2").operation_names:
    _name = xform_name(_op)
    if hasattr(EC2Response, _name) and _name not in vars(EC2Response):
        setattr(EC2Response, _name, _wrap_ec2(_name))


# -- Auto Scaling --------------------------------------------------------------------------------

def _asg_check(resp, action):
    for key, values in (resp.querystring or {}).items():
        for v in values:
            if not isinstance(v, str):
                continue
            if key == "AutoScalingGroupName" and STATE.fresh(("asg", resp.region, v)) \
                    and action != "create_auto_scaling_group":
                raise err("ValidationError", f"AutoScalingGroup name not found - AutoScalingGroup {v} not found")
            if ID.match(v) and v.startswith("lt-") and STATE.fresh(v):
                raise err("ValidationError", "You must use a valid fully-formed launch template. The specified "
                          f"launch template, with template ID {v}, does not exist.")
            if key.endswith("LaunchTemplateName") and STATE.fresh(("lt-name", resp.region, v)):
                raise err("ValidationError", "You must use a valid fully-formed launch template. The specified "
                          f"launch template, with template name {v}, does not exist.")


def _wrap_asg(name, inner):
    def action(self):
        _asg_check(self, name)
        result = inner(self)
        if name == "create_auto_scaling_group":
            STATE.bear(("asg", self.region, self._get_param("AutoScalingGroupName")))
        return result
    action.__name__ = name
    return action


for _op in botocore.session.get_session().get_service_model("autoscaling").operation_names:
    _name = xform_name(_op)
    _inner = vars(AutoScalingResponse).get(_name)
    if callable(_inner) and _name not in ("describe_auto_scaling_groups",):
        setattr(AutoScalingResponse, _name, _wrap_asg(_name, _inner))
