"""Auto Scaling, closer to AWS: instances launched from a launch template get its instance
profile and metadata options, and Start/Describe/Cancel/RollbackInstanceRefresh really replace a
group's instances over time, in batches that honour Min/MaxHealthyPercentage, InstanceWarmup
(multiplied by the sandbox's time_scale), CheckpointPercentages and CheckpointDelay, SkipMatching,
DesiredConfiguration and AutoRollback. Instances launched from an AMI a test declared unhealthy
never pass their health check, so a refresh onto that AMI fails (and rolls back when asked)."""

import math
import random
import uuid

from moto.autoscaling.models import ASG_NAME_TAG, FakeAutoScalingGroup, InstanceState, autoscaling_backends
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult

from . import ec2 as ec2_patch
from . import ssm
from .state import err, ACCOUNT, STATE, utcnow

ACTIVE = {"Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"}
DEFAULT_WARMUP = 300




# -- where an instance comes from --------------------------------------------------------------

def group_source(group, desired=None):
    """What new instances of `group` launch from: ("lt", template, version number) or ("lc", lc)."""
    if desired and desired.get("LaunchTemplate"):
        spec = desired["LaunchTemplate"]
        b = group.ec2_backend
        lt = b.get_launch_template(spec["LaunchTemplateId"]) if spec.get("LaunchTemplateId") \
            else b.get_launch_template_by_name(spec["LaunchTemplateName"])
        return ("lt", lt, lt.get_version(spec.get("Version") or "$Default").number)
    if group.ec2_launch_template is not None:
        lt = group.ec2_launch_template
        return ("lt", lt, lt.get_version(group.launch_template_version).number)
    return ("lc", group.launch_config)


def source_key(src):
    return ("lt", src[1].id, src[2]) if src[0] == "lt" else ("lc", src[1].name)


def source_image(src):
    return src[1].get_version(src[2]).image_id if src[0] == "lt" else src[1].image_id


def launch_into(group, count, src=None, warmup=0.0):
    """Launches `count` instances into `group` from `src` (default: the group's own source)."""
    src = src or group_source(group)
    b = group.ec2_backend
    tags = group.get_propagated_tags()
    tags[ASG_NAME_TAG] = group.name
    subnet_id = group.vpc_zone_identifier.split(",")[0] if group.vpc_zone_identifier else None
    kwargs = dict(tags={"instance": tags}, placement=random.choice(group.availability_zones),
                  is_instance_type_default=False, subnet_id=subnet_id, region_name=group.region)
    if src[0] == "lt":
        lt, n = src[1], src[2]
        data = lt.get_version(n).data
        image = data.get("ImageId")
        kwargs.update(instance_type=data.get("InstanceType") or "t3.micro",
                      launch_template={"LaunchTemplateId": lt.id, "Version": str(n)},
                      metadata_options=data.get("MetadataOptions") or {})
        profile = data.get("IamInstanceProfile") or {}
        user_data = data.get("UserData")
        sgs = data.get("SecurityGroups") or []
        if data.get("SecurityGroupIds"):
            kwargs["security_group_ids"] = data["SecurityGroupIds"]
        tag_data = {}
        for spec in data.get("TagSpecifications") or []:
            if spec.get("ResourceType") == "instance":
                tag_data.update({t["Key"]: t["Value"] for t in spec.get("Tags", [])})
        kwargs["tags"]["instance"].update(tag_data)
    else:
        lc = src[1]
        image = lc.image_id
        kwargs.update(instance_type=lc.instance_type, launch_config=lc,
                      metadata_options=lc.metadata_options or {},
                      associate_public_ip=lc.associate_public_ip_address)
        profile = {"Name": lc.iam_instance_profile} if lc.iam_instance_profile else {}
        user_data = lc.user_data
        sgs = lc.security_groups
    reservation = b.run_instances(image, count, user_data, sgs, **kwargs)
    now = STATE.now()
    for inst in reservation.instances:
        if profile.get("Arn") or profile.get("Name"):
            arn = profile.get("Arn")
            b.associate_iam_instance_profile(
                instance_id=inst.id,
                iam_instance_profile_name=None if arn else profile.get("Name"),
                iam_instance_profile_arn=arn,
            )
        inst.autoscaling_group = group
        state = InstanceState(inst, lifecycle_state="Pending" if warmup > 0 else "InService",
                              protected_from_scale_in=group.new_instances_protected_from_scale_in)
        group.instance_states.append(state)
        m = ssm.meta(inst.id)
        m.update(source=source_key(src), image=image, ready_at=now + warmup, group=group.name)
        ec2_patch.launched(inst, group.region)
    return reservation.instances


def replace_autoscaling_group_instances(self, count_needed, propagated_tags):
    """moto's scale-out, through launch_into so instances get the template's profile and IMDS."""
    warmup = (self.health_check_grace_period or 0) * STATE.time_scale
    launch_into(self, count_needed, warmup=warmup)


FakeAutoScalingGroup.replace_autoscaling_group_instances = replace_autoscaling_group_instances


def _state_launch_template(self):
    m = STATE.instance_meta.get(self.instance.id, {})
    src = m.get("source")
    if not src or src[0] != "lt":
        if self.auto_scaling_group is None or self.auto_scaling_group.ec2_launch_template is None:
            return None
        lt = self.auto_scaling_group.ec2_launch_template
        return {"LaunchTemplateId": lt.id, "LaunchTemplateName": lt.name,
                "Version": str(lt.get_version(self.auto_scaling_group.launch_template_version).number)}
    lt = self.auto_scaling_group.ec2_backend.get_launch_template(src[1])
    return {"LaunchTemplateId": lt.id, "LaunchTemplateName": lt.name, "Version": str(src[2])}


def _state_launch_configuration_name(self):
    m = STATE.instance_meta.get(self.instance.id, {})
    src = m.get("source")
    if src and src[0] == "lc":
        return src[1]
    if src and src[0] == "lt":
        return None
    return self.auto_scaling_group.launch_configuration_name if self.auto_scaling_group else None


InstanceState.launch_template = property(_state_launch_template)
InstanceState.launch_configuration_name = property(_state_launch_configuration_name)


def _health(state, now):
    """Updates an instance's lifecycle and health from the clock; True when it is healthy."""
    m = STATE.instance_meta.get(state.instance.id, {})
    if state.instance.state in ("pending",):
        return False
    if now < m.get("ready_at", 0):
        state.lifecycle_state = "Pending"
        return False
    if m.get("image") in STATE.unhealthy_amis:
        state.health_status = "Unhealthy"
        state.lifecycle_state = "InService"
        return False
    state.lifecycle_state = "InService"
    state.health_status = "Healthy"
    return True


# -- instance refresh --------------------------------------------------------------------------

class Refresh:
    def __init__(self, group, prefs, desired, strategy):
        self.id = str(uuid.uuid4())
        self.group = group
        self.prefs = prefs
        self.desired = desired
        self.strategy = strategy
        self.status = "Pending"
        self.reason = ""
        self.start_time = utcnow()
        self.t_end = None
        self.end_time = None
        self.previous = group_source(group)
        self.target = group_source(group, desired)
        self.rollback = None  # dict once rolling back
        self.history = []     # [{"terminate": [...], "launch": [...], "at": t}]
        self.in_flight = []   # new instance ids warming up
        self.doomed = []      # old instance ids still to replace
        self.done = 0
        self.total = 0
        self.paused_until = None
        self.checkpoints = sorted(prefs.get("CheckpointPercentages") or [])
        self.cancel_requested = False
        self.t_start = STATE.now()
        self.t_last = self.t_start
        self._plan(self.target, initial=True)

    def _plan(self, target, initial=False):
        key = source_key(target)
        skip = self.prefs.get("SkipMatching", False)
        olds = []
        for st in self.group.instance_states:
            m = STATE.instance_meta.get(st.instance.id, {})
            if skip and m.get("source") == key:
                continue
            olds.append(st.instance.id)
        self.doomed = olds
        self.total = len(olds)
        self.done = 0
        self.in_flight = []

    @property
    def warmup(self):
        w = self.prefs.get("InstanceWarmup")
        if w is None:
            w = self.group.health_check_grace_period or DEFAULT_WARMUP
        return float(w) * STATE.time_scale

    def batch_size(self):
        cap = max(1, len(self.group.instance_states) or self.group.desired_capacity or 1)
        mn = self.prefs.get("MinHealthyPercentage", 90)
        mx = self.prefs.get("MaxHealthyPercentage", 100)
        return max(1, math.floor(cap * (mx - mn) / 100.0))

    def percentage(self):
        if self.total == 0:
            return 100
        return int(100 * self.done / self.total)

    def describe(self):
        out = {
            "InstanceRefreshId": self.id,
            "AutoScalingGroupName": self.group.name,
            "Status": self.status,
            "StatusReason": self.reason,
            "StartTime": self.start_time,
            "PercentageComplete": self.percentage() if not self.rollback else self.rollback["pct_at_start"],
            "InstancesToUpdate": max(0, self.total - self.done) if not self.rollback else 0,
            "ProgressDetails": {"LivePoolProgress": {"PercentageComplete": self.percentage(),
                                                     "InstancesToUpdate": max(0, self.total - self.done)}},
            "Preferences": self.prefs,
            "Strategy": self.strategy,
        }
        if self.end_time:
            out["EndTime"] = self.end_time
        if self.desired:
            out["DesiredConfiguration"] = self.desired
        if self.rollback:
            out["RollbackDetails"] = {
                "RollbackReason": self.rollback["reason"],
                "RollbackStartTime": self.rollback["start"],
                "PercentageCompleteOnRollback": self.rollback["pct_at_start"],
                "InstancesToUpdateOnRollback": self.rollback["to_update"],
            }
        return out

    def due(self, now):
        """When the next step falls due: None when ended; `now` or earlier to step at once."""
        if self.status not in ACTIVE:
            return None
        if self.status in ("Pending", "Cancelling") or self.cancel_requested:
            return self.t_last
        if self.in_flight:
            live = {st.instance.id for st in self.group.instance_states}
            ready, failing = [], []
            for iid in self.in_flight:
                if iid not in live:
                    continue
                m = STATE.instance_meta.get(iid, {})
                t = max(m.get("ready_at", 0), m.get("running_since") or 0)
                ready.append(t)
                if m.get("image") in STATE.unhealthy_amis:
                    failing.append(m.get("ready_at", 0))
            if failing:
                return max(self.t_last, min(failing))
            return max([self.t_last] + ready)
        if self.paused_until is not None:
            return max(self.t_last, self.paused_until)
        return self.t_last

    def progress_key(self):
        return (self.status, self.done, len(self.doomed), tuple(self.in_flight), self.paused_until,
                self.rollback is None)

    # one step of the state machine
    @property
    def end_time(self):
        return self._end_time

    @end_time.setter
    def end_time(self, value):
        self._end_time = value
        self.t_end = STATE.now() if value is not None else None

    def step(self, now):
        if self.status not in ACTIVE:
            return
        self.t_last = now
        if self.status == "Pending":
            self.status = "InProgress"
        if self.cancel_requested and self.status == "InProgress":
            self.status, self.reason, self.end_time = "Cancelled", "Cancelled by request", utcnow()
            return
        if self.status == "Cancelling":
            self.status, self.end_time = "Cancelled", utcnow()
            return
        # wait for the batch in flight
        if self.in_flight:
            states = {st.instance.id: st for st in self.group.instance_states}
            ready = True
            for iid in self.in_flight:
                st = states.get(iid)
                if st is None:
                    continue
                m = STATE.instance_meta.get(iid, {})
                if not _health(st, now):
                    ready = False
                    if now >= m.get("ready_at", 0) and m.get("image") in STATE.unhealthy_amis:
                        return self._fail(f"Instance {iid} failed its health check (image {m.get('image')}).")
            if not ready:
                return
            if self.prefs.get("MaxHealthyPercentage", 100) > 100 and self.pending_terminate:
                self._terminate(self.pending_terminate)
            self.done += len(self.in_flight)
            self.in_flight = []
            self.pending_terminate = []
            if self.rollback is None and self.checkpoints and self.checkpoints[0] <= self.percentage() < 100:
                while self.checkpoints and self.checkpoints[0] <= self.percentage():
                    self.checkpoints.pop(0)
                delay = self.prefs.get("CheckpointDelay", 3600)
                self.paused_until = now + float(delay) * STATE.time_scale
                self.reason = f"Waiting at checkpoint ({self.percentage()}% complete)"
        if self.paused_until is not None:
            if now < self.paused_until:
                return
            self.paused_until = None
            self.reason = ""
        if not self.doomed:
            return self._finish()
        n = min(self.batch_size(), len(self.doomed))
        batch, self.doomed = self.doomed[:n], self.doomed[n:]
        src = self.rollback["source"] if self.rollback else self.target
        if self.prefs.get("MaxHealthyPercentage", 100) > 100:
            new = launch_into(self.group, len(batch), src, warmup=self.warmup)
            self.pending_terminate = batch
        else:
            self._terminate(batch)
            new = launch_into(self.group, len(batch), src, warmup=self.warmup)
            self.pending_terminate = []
        self.in_flight = [i.id for i in new]
        self.history.append({"terminate": batch, "launch": self.in_flight, "rollback": bool(self.rollback),
                             "capacity": len(self.group.instance_states)})

    pending_terminate = []

    def _terminate(self, ids):
        keep = [st for st in self.group.instance_states if st.instance.id not in ids]
        self.group.instance_states = keep
        live = [i for i in ids if self.group.ec2_backend.get_instance(i).state != "terminated"]
        if live:
            self.group.ec2_backend.terminate_instances(live)
        for i in live:
            ssm.meta(i)["running_since"] = None

    def _fail(self, reason):
        if self.rollback is not None:
            self.status, self.reason, self.end_time = "RollbackFailed", reason, utcnow()
            return
        if self.prefs.get("AutoRollback"):
            return self._start_rollback(reason)
        self.status, self.reason, self.end_time = "Failed", reason, utcnow()

    def _start_rollback(self, reason):
        pct = self.percentage()
        # Instances launched by this refresh go back to the previous configuration.
        new_key = source_key(self.target)
        to_replace = [st.instance.id for st in self.group.instance_states
                      if STATE.instance_meta.get(st.instance.id, {}).get("source") == new_key]
        self.rollback = {"reason": reason, "start": utcnow(), "pct_at_start": pct,
                         "to_update": len(to_replace), "source": self.previous}
        self.status = "RollbackInProgress"
        self.reason = reason
        self.doomed = to_replace
        self.in_flight, self.pending_terminate = [], []
        self.total, self.done = len(to_replace), 0
        self.paused_until = None
        self._restore_group()

    def _restore_group(self):
        prev = self.previous
        if prev[0] == "lt":
            self.group.ec2_launch_template = prev[1]
            self.group.launch_template_version = str(prev[2])
            self.group.provided_launch_template_version = str(prev[2])

    def _finish(self):
        if self.rollback is not None:
            self.status, self.end_time = "RollbackSuccessful", utcnow()
            return
        self.status, self.end_time = "Successful", utcnow()
        if self.desired and self.target[0] == "lt":
            self.group.ec2_launch_template = self.target[1]
            self.group.launch_template_version = str(self.target[2])
            self.group.provided_launch_template_version = str(self.target[2])


def _refreshes(group_name, region):
    return STATE.refreshes.setdefault((region, group_name), [])


def _group(self, name):
    groups = self.autoscaling_backend.autoscaling_groups
    if name not in groups:
        raise err("ValidationError", f"AutoScalingGroup name not found - AutoScalingGroup {name} not found")
    return groups[name]


def start_instance_refresh(self):
    name = self._get_param("AutoScalingGroupName")
    group = _group(self, name)
    refreshes = _refreshes(name, self.region)
    if any(r.status in ACTIVE for r in refreshes):
        raise err("InstanceRefreshInProgress",
                  "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.")
    prefs = self._get_param("Preferences") or {}
    desired = self._get_param("DesiredConfiguration") or None
    strategy = self._get_param("Strategy") or "Rolling"
    mn = prefs.get("MinHealthyPercentage", 90)
    mx = prefs.get("MaxHealthyPercentage", 100)
    if not 0 <= mn <= 100 or not 100 <= mx <= 200 or mx - mn > 100:
        raise err("ValidationError", "MinHealthyPercentage must be 0-100, MaxHealthyPercentage 100-200, "
                  "and their difference at most 100.")
    cps = prefs.get("CheckpointPercentages") or []
    if any(not 1 <= c <= 100 for c in cps) or cps != sorted(set(cps)):
        raise err("ValidationError", "CheckpointPercentages must rise strictly, each between 1 and 100.")
    if prefs.get("AutoRollback") and group.ec2_launch_template is None and not (desired or {}).get("LaunchTemplate"):
        raise err("ValidationError", "AutoRollback is not supported for Auto Scaling groups that use a launch configuration.")
    if desired and desired.get("LaunchTemplate"):
        spec = desired["LaunchTemplate"]
        if str(spec.get("Version", "")).lower() in ("$latest",) and prefs.get("AutoRollback"):
            pass
    prefs = dict(prefs)
    prefs.setdefault("MinHealthyPercentage", 90)
    prefs.setdefault("SkipMatching", False)
    prefs.setdefault("AutoRollback", False)
    r = Refresh(group, prefs, desired, strategy)
    refreshes.append(r)
    return ActionResult({"InstanceRefreshId": r.id})


def describe_instance_refreshes(self):
    name = self._get_param("AutoScalingGroupName")
    _group(self, name)
    ids = self._get_param("InstanceRefreshIds") or []
    rs = [r for r in reversed(_refreshes(name, self.region)) if not ids or r.id in ids]
    return ActionResult({"InstanceRefreshes": [r.describe() for r in rs]})


def cancel_instance_refresh(self):
    name = self._get_param("AutoScalingGroupName")
    _group(self, name)
    active = [r for r in _refreshes(name, self.region) if r.status in ACTIVE]
    if not active:
        raise err("ActiveInstanceRefreshNotFound", "No in progress or pending Instance Refresh found for Auto Scaling group " + name)
    r = active[-1]
    if r.status == "RollbackInProgress":
        raise err("ActiveInstanceRefreshNotFound", "The Instance Refresh is rolling back and cannot be cancelled.")
    r.status = "Cancelling"
    r.reason = "Cancellation requested"
    r.t_last = STATE.now()
    return ActionResult({"InstanceRefreshId": r.id})


def rollback_instance_refresh(self):
    name = self._get_param("AutoScalingGroupName")
    _group(self, name)
    active = [r for r in _refreshes(name, self.region) if r.status in ACTIVE]
    if not active:
        raise err("ActiveInstanceRefreshNotFound", "No in progress Instance Refresh found for Auto Scaling group " + name)
    r = active[-1]
    if r.rollback is not None:
        raise err("IrreversibleInstanceRefresh", "The Instance Refresh is already rolling back.")
    if not r.desired:
        raise err("IrreversibleInstanceRefresh", "Only an Instance Refresh started with a DesiredConfiguration can be rolled back.")
    r.t_last = STATE.now()
    r._start_rollback("Rollback requested by the caller")
    return ActionResult({"InstanceRefreshId": r.id})


def next_due(state, now, stalled):
    """The refresh whose next event is due first (at or before `now`), and when; (None, None)."""
    best, when = None, None
    for refreshes in state.refreshes.values():
        for r in refreshes:
            if r.id in stalled:
                continue
            due = r.due(now)
            if due is not None and due <= now and (when is None or due < when):
                best, when = r, due
    return best, when


def play(r, due):
    """Plays refresh `r`'s event due at `due`; False when that changed nothing."""
    before = r.progress_key()
    with STATE.at(due):
        r.step(due)
    return r.progress_key() != before


def tick(state, now):
    # Keep group members' health current for Describe calls outside a refresh.
    for region, a in list(autoscaling_backends[ACCOUNT].items()):
        for g in a.autoscaling_groups.values():
            for st in g.instance_states:
                _health(st, now)


for _name, _fn in {
    "start_instance_refresh": start_instance_refresh,
    "describe_instance_refreshes": describe_instance_refreshes,
    "cancel_instance_refresh": cancel_instance_refresh,
    "rollback_instance_refresh": rollback_instance_refresh,
}.items():
    setattr(AutoScalingResponse, _name, _fn)


_orig_set_launch = FakeAutoScalingGroup._set_launch_configuration


def _set_launch_configuration(self, launch_config_name, launch_template, mixed_instances_policy):
    """As AWS: a group uses a launch template or a launch configuration, never both (moto keeps the
    old one when UpdateAutoScalingGroup switches)."""
    _orig_set_launch(self, launch_config_name, launch_template, mixed_instances_policy)
    if launch_template or mixed_instances_policy:
        if not launch_config_name:
            self.launch_config = None
            self.launch_configuration_name = None
    elif launch_config_name:
        self.ec2_launch_template = None


FakeAutoScalingGroup._set_launch_configuration = _set_launch_configuration
