"""What a real account has before bake touches it: default VPCs with subnets in several AZs (moto
makes them), Canonical's Ubuntu images and public SSM parameters, the AWS managed policy the
builder needs."""

import json
from datetime import datetime, timedelta, timezone

from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.utils import random_ami_id
from moto.iam.aws_managed_policies import aws_managed_policies_data
from moto.iam.models import AWSManagedPolicy, iam_backends
from moto.ssm.models import Parameter, ssm_backends

from . import images
from .state import ACCOUNT, CANONICAL, REGIONS, STATE

RELEASES = {"22.04": "jammy", "24.04": "noble"}
# Canonical publishes a build about weekly; the newest is what the `current` parameter names.
BUILDS = ["20261031", "20261107", "20261114"]
MANAGED_POLICIES = ["AmazonSSMManagedInstanceCore"]


def parameter_name(release, arch="amd64"):
    return f"/aws/service/canonical/ubuntu/server/{release}/stable/current/{arch}/hvm/ebs-gp3/ami-id"


def image_name(release, build, arch="amd64"):
    return f"ubuntu/images/hvm-ssd-gp3/ubuntu-{RELEASES[release]}-{release}-{arch}-server-{build}"


def _register(b, release, build, arch):
    ami_id = random_ami_id()
    created = datetime.strptime(build, "%Y%m%d").replace(tzinfo=timezone.utc) + timedelta(hours=6)
    ami = Ami(
        b,
        ami_id,
        name=image_name(release, build, arch),
        description=f"Canonical, Ubuntu, {release} LTS, {arch} {RELEASES[release]} image build on {build}",
        owner_id=CANONICAL,
        public=True,
        virtualization_type="hvm",
        architecture="x86_64" if arch == "amd64" else "arm64",
        root_device_type="ebs",
        root_device_name="/dev/sda1",
        creation_date=created,
        region_name=b.region_name + "a",
        boot_mode="uefi-preferred",
    )
    ami.owner_alias = None
    b.amis[ami_id] = ami
    return ami


def _set_parameter(region, name, value):
    s = ssm_backends[ACCOUNT][region]
    versions = s._parameters[name]
    versions.append(
        Parameter(
            account_id=ACCOUNT,
            name=name,
            value=value,
            parameter_type="String",
            description=None,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=datetime.now(timezone.utc),
            version=len(versions) + 1,
            data_type="aws:ec2:image",
        )
    )


def publish(region, release, build, arch="amd64"):
    """Canonical publishes a new build: a new image, and the `current` parameter moves to it."""
    b = ec2_backends[ACCOUNT][region]
    ami = _register(b, release, build, arch)
    _set_parameter(region, parameter_name(release, arch), ami.id)
    for account in list(ec2_backends.keys()):
        if account != ACCOUNT:
            other = ec2_backends[account][region]
            other.amis[ami.id] = images.view_of(ami, other)
    return ami.id


def join(account):
    """Another account sees what every account sees: Canonical's public images and the public
    parameters naming them (one list of versions, so a new build shows everywhere)."""
    for region in REGIONS:
        home, other = ec2_backends[ACCOUNT][region], ec2_backends[account][region]
        for ami in list(home.amis.values()):
            if ami.owner_id == CANONICAL and ami.id not in other.amis:
                other.amis[ami.id] = images.view_of(ami, other)
        s, o = ssm_backends[ACCOUNT][region], ssm_backends[account][region]
        for name in list(s._parameters.keys()):
            if name.startswith("/aws/service/"):
                o._parameters[name] = s._parameters[name]


def seed():
    for region in REGIONS:
        b = ec2_backends[ACCOUNT][region]  # creates the default VPC and a subnet per AZ
        for release in RELEASES:
            for arch in ("amd64", "arm64"):
                newest = None
                for build in BUILDS:
                    newest = _register(b, release, build, arch)
                _set_parameter(region, parameter_name(release, arch), newest.id)
    iam = iam_backends[ACCOUNT]["aws"]
    data = json.loads(aws_managed_policies_data)
    for name in MANAGED_POLICIES:
        policy = AWSManagedPolicy.from_data(name, ACCOUNT, iam.region_name, data[name])
        iam.managed_policies[policy.arn] = policy


def reset_all():
    from moto.moto_api._internal.models import moto_api_backend

    moto_api_backend.reset()
    STATE.reset()
    seed()
