"""Auto Scaling, closer to AWS: instances launched from a launch template get its instance
profile and metadata options, and Start/Describe/Cancel/RollbackInstanceRefresh really replace a
group's instances over time, in batches that honour Min/MaxHealthyPercentage, InstanceWarmup
(multiplied by the sandbox's time_scale), CheckpointPercentages and CheckpointDelay, SkipMatching,
DesiredConfiguration and AutoRollback. Instances launched from an AMI a test declared unhealthy
never pass their health check, so a refresh onto that AMI fails (and rolls back when asked).

As strict as AWS documents (sources in the README and at each check):
- a refresh whose last checkpoint is below 100 stops there, Successful (a partial refresh);
- AutoRollback needs a DesiredConfiguration and a group on a numbered launch template version;
- SkipMatching needs a launch template (not a launch configuration) in the desired configuration;
- ScaleInProtectedInstances (Refresh / Ignore / Wait) and StandbyInstances (Terminate / Ignore /
  Wait); Wait, the default, waits an hour (times time_scale) for the instances, then fails;
- health: the group's HealthCheckType (EC2 by default; ELB checks count only when enabled) and
  HealthCheckGracePeriod (0 by default through the API); images can fail EC2 checks (both) or ELB
  checks only;
- a MixedInstancesPolicy in the desired configuration is the group's whole policy once the refresh
  succeeds (and the old one again after a rollback); its instances launch from the policy's own
  launch template (not, as on AWS, also from overrides' templates);
- a warm pool (PutWarmPool) holds MaxGroupPreparedCapacity (default MaxSize) minus the desired
  capacity, at least MinSize, instances launched from the group's source and stopped (PoolState
  Stopped or Hibernated); DescribeWarmPool lists them (Warmed:Stopped / Warmed:Running), the group
  reports WarmPoolSize; an instance refresh replaces them after the instances in service and
  reports WarmPoolProgress (a rollback puts them back too); DeleteWarmPool terminates them;
- a refresh whose preferences name alarms (AlarmSpecification) fails when one of them (a CloudWatch
  alarm of its region) is in ALARM, and rolls back with AutoRollback; with BakeTime (0-172800 s,
  times time_scale) it stays `Baking` that long after the last instance, its alarms still watched."""

import copy

import math
import random
import uuid

from moto.autoscaling.models import ASG_NAME_TAG, FakeAutoScalingGroup, InstanceState, autoscaling_backends
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult
from moto.elbv2.models import FakeHealthStatus, FakeTargetGroup

from . import ec2 as ec2_patch
from . import images, pages, ssm
from .state import err, ACCOUNT, STATE, utcnow

ACTIVE = {"Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"}
# "Wait (default): Amazon EC2 Auto Scaling waits one hour ... Otherwise, the instance refresh will fail."
WAIT_LIMIT = 3600




# -- where an instance comes from --------------------------------------------------------------

def group_source(group, desired=None):
    """What new instances of `group` launch from: ("lt", template, version number) or ("lc", lc)."""
    spec = (desired or {}).get("LaunchTemplate") or (((desired or {}).get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}).get(
        "LaunchTemplateSpecification")
    if spec:
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
    refused = images.launchable(group.region, image, kwargs.get("instance_type"), b.account_id)
    if refused:
        # The launch fails (a failed scaling activity on AWS); nothing is launched.
        STATE.launch_failures.append({"group": group.name, "image": image, "why": refused[1], "at": STATE.now()})
        return []
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
    if group.target_group_arns:
        # Auto Scaling registers the instances it launches with the group's target groups.
        group.autoscaling_backend.update_attached_target_groups(group.name)
    return reservation.instances


_CREATING = {"grace": None}  # the grace period of the group being created (moto assumes 300)


def replace_autoscaling_group_instances(self, count_needed, propagated_tags):
    """moto's scale-out, through launch_into so instances get the template's profile and IMDS."""
    if _CREATING["grace"] is not None:
        self.health_check_grace_period = _CREATING["grace"]
    warmup = (self.health_check_grace_period or 0) * STATE.time_scale
    launch_into(self, count_needed, warmup=warmup)


def active_instances(self):
    """The instances that count toward the desired capacity: launching (Pending) or InService, not
    Standby nor leaving (moto counts only InService, so it over-launches while instances start)."""
    return [x for x in self.instance_states if x.lifecycle_state in
            ("Pending", "Pending:Wait", "Pending:Proceed", "InService")]


FakeAutoScalingGroup.replace_autoscaling_group_instances = replace_autoscaling_group_instances
FakeAutoScalingGroup.active_instances = active_instances


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


def leave_target_groups(group, ids):
    """Auto Scaling deregisters instances it terminates from the group's target groups (they drain)."""
    if not group.target_group_arns:
        return
    for tg in group.autoscaling_backend.elbv2_backend.describe_target_groups(
            load_balancer_arn=None, target_group_arns=group.target_group_arns, names=None):
        tg.deregister_terminated_instances(ids)


def target_health(self, target, ec2_backend):
    """A registered instance from an image whose instances fail load balancer checks is
    `unhealthy` (Target.FailedHealthChecks) once ready, `initial` until then (Elb.RegistrationInProgress),
    whatever the group's own HealthCheckType: the target group checks it either way."""
    h = _moto_health_for(self, target, ec2_backend)
    if h.status != "healthy" or not target["Id"].startswith("i-"):
        return h
    m = STATE.instance_meta.get(target["Id"], {})
    if STATE.now() < m.get("ready_at", 0):
        return FakeHealthStatus(h.instance_id, h.port, h.health_check_port, "initial", "Elb.RegistrationInProgress",
                                "Target registration is in progress")
    if m.get("image") in STATE.elb_unhealthy_amis or m.get("image") in STATE.unhealthy_amis:
        return FakeHealthStatus(h.instance_id, h.port, h.health_check_port, "unhealthy", "Target.FailedHealthChecks",
                                "Health checks failed")
    return h


_moto_health_for = FakeTargetGroup.health_for
FakeTargetGroup.health_for = target_health


def failing_check(group, image):
    """The health check an instance from `image` fails in `group`: "EC2" (status checks: every group),
    "ELB" (only where the group's HealthCheckType enables ELB checks), or None.
    Source: "Health checks for instances in an Auto Scaling group" -- EC2 status checks are the
    default and can't be disabled; load balancer checks count only when turned on."""
    if image in STATE.unhealthy_amis:
        return "EC2"
    types = {t.strip().upper() for t in (group.health_check_type or "EC2").split(",")}
    if image in STATE.elb_unhealthy_amis and "ELB" in types:
        return "ELB"
    return None


def unhealthy_at(group, m):
    """When a failing instance is found unhealthy: not before it is ready, nor before the group's
    HealthCheckGracePeriod (times time_scale) has passed since it came into service."""
    since = m.get("running_since") or 0
    grace = float(group.health_check_grace_period or 0) * STATE.time_scale
    return max(m.get("ready_at", 0), since + grace)


def _health(state, now):
    """Updates an instance's lifecycle and health from the clock; True when it is healthy."""
    if state.lifecycle_state in ("Standby", "EnteringStandby", "Terminating", "Detaching", "Detached"):
        return False
    m = STATE.instance_meta.get(state.instance.id, {})
    if state.instance.state in ("pending",):
        return False
    if now < m.get("ready_at", 0):
        state.lifecycle_state = "Pending"
        return False
    state.lifecycle_state = "InService"
    group = state.auto_scaling_group
    if group is not None and failing_check(group, m.get("image")) and now >= unhealthy_at(group, m):
        state.health_status = "Unhealthy"
        return False
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
        self.previous_policy = copy.deepcopy(group.mixed_instances_policy)
        self.warm_done = False
        self.baking_until = None
        self.previous_version = group.launch_template_version if group.ec2_launch_template is not None else None
        self.target = group_source(group, desired)
        self.rollback = None  # dict once rolling back
        self.history = []     # [{"terminate": [...], "launch": [...], "at": t}]
        self.in_flight = []   # new instance ids warming up
        self.doomed = []      # old instance ids still to replace
        self.done = 0
        self.total = 0
        self.paused_until = None
        self.checkpoints = sorted(prefs.get("CheckpointPercentages") or [])
        # "The last value ... describes the percentage of the Auto Scaling group that needs to be
        # successfully replaced. The operation transitions to Successful after this percentage is
        # successfully replaced" (user guide, "Add checkpoints to an instance refresh").
        self.last_checkpoint = self.checkpoints[-1] if self.checkpoints else 100
        self.wait_since = None  # waiting on scale-in-protected or Standby instances (Wait)
        self.cancel_requested = False
        self.t_start = STATE.now()
        self.t_last = self.t_start
        self._plan(self.target, initial=True)

    def _plan(self, target, initial=False):
        key = source_key(target)
        skip = self.prefs.get("SkipMatching", False)
        olds, waits = [], []
        for st in self.group.instance_states:
            m = STATE.instance_meta.get(st.instance.id, {})
            if skip and m.get("source") == key:
                continue
            handling = self._handling(st)
            if handling == "Ignore":
                continue
            # Instances the refresh may have to wait for go last, so the others are replaced first.
            (waits if handling == "Wait" else olds).append(st.instance.id)
        self.doomed = olds + waits
        self.total = len(self.doomed)
        self.done = 0
        self.in_flight = []

    def _handling(self, st):
        """What this refresh does with an instance: None (replace it), "Ignore", "Wait" or
        "Terminate" (Standby only), from ScaleInProtectedInstances / StandbyInstances."""
        if st.lifecycle_state in ("Standby", "EnteringStandby"):
            return self.prefs.get("StandbyInstances", "Wait")
        if st.protected_from_scale_in:
            pref = self.prefs.get("ScaleInProtectedInstances", "Wait")
            return None if pref == "Refresh" else pref
        return None

    def _state_of(self, iid):
        return next((st for st in self.group.instance_states if st.instance.id == iid), None)

    def _blocked(self):
        """The first instance to replace, when the refresh must wait for it (Wait)."""
        if self.rollback is not None or not self.doomed:
            return None
        st = self._state_of(self.doomed[0])
        return st if st is not None and self._handling(st) == "Wait" else None

    @property
    def warmup(self):
        # "If you do not specify this property, the instance warmup by default is the value of the
        # DefaultInstanceWarmup property, if defined ..., or the HealthCheckGracePeriod property otherwise."
        w = self.prefs.get("InstanceWarmup")
        if w is None:
            w = getattr(self.group, "default_instance_warmup", None)
        if w is None:
            w = self.group.health_check_grace_period or 0
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
        if getattr(self.group, "warm_pool", None) is not None:
            warm = warm_instances(self.group)
            key = source_key(self.rollback["source"] if self.rollback else self.target)
            left = 0 if self.warm_done else sum(1 for i in warm if STATE.instance_meta.get(i, {}).get("source") != key)
            pct = 100 if not warm else int(100 * (len(warm) - left) / len(warm))
            out["ProgressDetails"]["WarmPoolProgress"] = {"PercentageComplete": pct, "InstancesToUpdate": left}
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
                if failing_check(self.group, m.get("image")):
                    failing.append(unhealthy_at(self.group, m))
            if failing:
                return max(self.t_last, min(failing))
            return max([self.t_last] + ready)
        if self.paused_until is not None:
            return max(self.t_last, self.paused_until)
        if self.status == "Baking" and self.baking_until is not None:
            return max(self.t_last, self.baking_until)
        if self._blocked() is not None and self.wait_since is not None:
            return max(self.t_last, self.wait_since + WAIT_LIMIT * STATE.time_scale)
        return self.t_last

    def progress_key(self):
        return (self.status, self.done, len(self.doomed), tuple(self.in_flight), self.paused_until,
                self.rollback is None, self.wait_since)

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
        if self.cancel_requested and self.status in ("InProgress", "Baking"):
            self.status, self.reason, self.end_time = "Cancelled", "Cancelled by request", utcnow()
            return
        if self.status == "Cancelling":
            self.status, self.end_time = "Cancelled", utcnow()
            return
        # "If any of the alarms go into the ALARM state, the instance refresh fails" (and rolls back
        # with AutoRollback): Auto Scaling user guide, "Add alarms to an instance refresh".
        if self.rollback is None:
            fired = firing_alarm(self.group.region, self.prefs, self.group.ec2_backend.account_id)
            if fired:
                return self._fail(f"Alarm {fired} is in the ALARM state.")
        if self.status == "Baking":
            if now < self.baking_until:
                return
            return self._finish()
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
                    check = failing_check(self.group, m.get("image"))
                    if check and now >= unhealthy_at(self.group, m):
                        return self._fail(f"Instance {iid} failed its {check} health check (image {m.get('image')}).")
            if not ready:
                return
            if self.prefs.get("MaxHealthyPercentage", 100) > 100 and self.pending_terminate:
                self._terminate(self.pending_terminate)
            self.done += len(self.in_flight)
            self.in_flight = []
            self.pending_terminate = []
            if self.rollback is None and self.last_checkpoint < 100 and self.percentage() >= self.last_checkpoint:
                # A partial refresh: it ends at its last checkpoint, Successful, the rest untouched.
                self.doomed = []
                return self._finish()
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
        # Instances gone meanwhile, and those to ignore now, are not replaced.
        live = {st.instance.id: st for st in self.group.instance_states}
        for iid in list(self.doomed):
            if iid not in live or (self.rollback is None and self._handling(live[iid]) == "Ignore"):
                self.doomed.remove(iid)
                self.total -= 1
        if not self.doomed:
            failed = self._refresh_warm_pool()
            if failed:
                return self._fail(failed)
            bake = float(self.prefs.get("BakeTime") or 0) * STATE.time_scale
            if self.rollback is None and bake > 0:
                self.status, self.baking_until = "Baking", now + bake
                return
            return self._finish()
        blocked = self._blocked()
        if blocked is not None:
            what = "in Standby" if blocked.lifecycle_state in ("Standby", "EnteringStandby") else "protected from scale in"
            if self.wait_since is None:
                self.wait_since = now
                self.reason = f"Waiting for instance {blocked.instance.id} ({what}) for up to an hour."
            if now >= self.wait_since + WAIT_LIMIT * STATE.time_scale:
                self.wait_since = None
                return self._fail(f"Instance {blocked.instance.id} is {what}; the instance refresh waited an hour "
                                  "for it (ScaleInProtectedInstances / StandbyInstances: Wait).")
            return
        if self.wait_since is not None:
            self.wait_since, self.reason = None, ""
        n = min(self.batch_size(), len(self.doomed))
        if self.rollback is None and self.checkpoints:
            # "Amazon EC2 Auto Scaling sometimes replaces fewer instances than the minimum healthy
            # percentage allows ... but never more" to meet a checkpoint.
            needed = math.ceil(self.total * self.checkpoints[0] / 100.0) - self.done
            if needed > 0:
                n = min(n, needed)
        batch = []
        while self.doomed and len(batch) < n:
            st = live.get(self.doomed[0])
            if st is not None and self.rollback is None and self._handling(st) == "Wait":
                break
            batch.append(self.doomed.pop(0))
        # StandbyInstances=Terminate: "terminates instances that are in Standby" (no replacement).
        standby = [i for i in batch if self.rollback is None and self._handling(live[i]) == "Terminate"]
        if standby:
            self._terminate(standby)
            self.done += len(standby)
            batch = [i for i in batch if i not in standby]
            if not batch:
                self.history.append({"terminate": standby, "launch": [], "rollback": False,
                                     "capacity": len(self.group.instance_states)})
                return
        src = self.rollback["source"] if self.rollback else self.target
        if self.prefs.get("MaxHealthyPercentage", 100) > 100:
            new = launch_into(self.group, len(batch), src, warmup=self.warmup)
            self.pending_terminate = batch
        else:
            self._terminate(batch)
            new = launch_into(self.group, len(batch), src, warmup=self.warmup)
            self.pending_terminate = []
        if len(new) < len(batch):
            failure = STATE.launch_failures[-1]["why"] if STATE.launch_failures else "launch failed"
            return self._fail(f"Launching a new EC2 instance failed: {failure}")
        self.in_flight = [i.id for i in new]
        self.history.append({"terminate": standby + batch, "launch": self.in_flight, "rollback": bool(self.rollback),
                             "capacity": len(self.group.instance_states)})

    pending_terminate = []

    def _refresh_warm_pool(self):
        """Replaces the warm pool's instances not on the refresh's source (once): a reason when a launch failed."""
        if self.warm_done or getattr(self.group, "warm_pool", None) is None:
            return None
        self.warm_done = True
        src = self.rollback["source"] if self.rollback else self.target
        key = source_key(src)
        stale = [i for i in warm_instances(self.group) if STATE.instance_meta.get(i, {}).get("source") != key]
        if not stale:
            return None
        self.group.ec2_backend.terminate_instances(stale)
        self.group.warm_instances = [i for i in warm_instances(self.group) if i not in stale]
        if launch_warm(self.group, len(stale), src) < len(stale):
            failure = STATE.launch_failures[-1]["why"] if STATE.launch_failures else "launch failed"
            return f"Launching a new EC2 instance into the warm pool failed: {failure}"
        return None

    def _terminate(self, ids):
        leave_target_groups(self.group, ids)
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
        self.warm_done = False
        self.baking_until = None
        self.paused_until = None
        self.wait_since = None
        self._restore_group()

    def _restore_group(self):
        prev = self.previous
        if prev[0] == "lt":
            self.group.ec2_launch_template = prev[1]
            self.group.launch_template_version = str(prev[2])
            self.group.provided_launch_template_version = str(prev[2])
        self.group.mixed_instances_policy = copy.deepcopy(self.previous_policy)

    def _finish(self):
        if self.rollback is not None:
            self.status, self.end_time = "RollbackSuccessful", utcnow()
            return
        self.status, self.end_time = "Successful", utcnow()
        policy = (self.desired or {}).get("MixedInstancesPolicy")
        if policy and self.target[0] == "lt":
            # The whole policy, as given (every template at the version the refresh named).
            self.group.mixed_instances_policy = copy.deepcopy(policy)
            version = str(policy["LaunchTemplate"]["LaunchTemplateSpecification"].get("Version") or "$Default")
            self.group.ec2_launch_template = self.target[1]
            self.group.launch_template_version = version
            self.group.provided_launch_template_version = None
        elif self.desired and self.target[0] == "lt":
            # "Once the instance refresh succeeds, Amazon EC2 Auto Scaling updates the settings of the
            # Auto Scaling group to reflect the new desired configuration" -- as given: an alias stays one.
            version = str(self.desired["LaunchTemplate"].get("Version") or "$Default")
            self.group.ec2_launch_template = self.target[1]
            self.group.launch_template_version = version
            self.group.provided_launch_template_version = version
            self.group.launch_config = None
            self.group.launch_configuration_name = None


def _refreshes(group_name, region, account=ACCOUNT):
    return STATE.refreshes.setdefault((account, region, group_name), [])


def _group(self, name):
    groups = self.autoscaling_backend.autoscaling_groups
    if name not in groups:
        raise err("ValidationError", f"AutoScalingGroup name not found - AutoScalingGroup {name} not found")
    return groups[name]


def start_instance_refresh(self):
    name = self._get_param("AutoScalingGroupName")
    group = _group(self, name)
    refreshes = _refreshes(name, self.region, self.current_account)
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
    if "MaxHealthyPercentage" in prefs and "MinHealthyPercentage" not in prefs:
        # "If you specify MaxHealthyPercentage, you must also specify MinHealthyPercentage."
        raise err("ValidationError", "You must specify MinHealthyPercentage when you specify MaxHealthyPercentage.")
    if not 0 <= int(prefs.get("BakeTime") or 0) <= 172800:
        raise err("ValidationError", "BakeTime must be between 0 and 172800 seconds.")
    cps = prefs.get("CheckpointPercentages") or []
    if any(not 1 <= c <= 100 for c in cps) or cps != sorted(set(cps)):
        raise err("ValidationError", "CheckpointPercentages must rise strictly, each between 1 and 100.")
    if "CheckpointDelay" in prefs and not cps:
        # "if you specify a value for it, you must also specify a value for CheckpointPercentages"
        raise err("ValidationError", "CheckpointDelay requires CheckpointPercentages.")
    for key, allowed in (("ScaleInProtectedInstances", ("Refresh", "Ignore", "Wait")),
                         ("StandbyInstances", ("Terminate", "Ignore", "Wait"))):
        if key in prefs and prefs[key] not in allowed:
            raise err("ValidationError", f"1 validation error detected: Value '{prefs[key]}' at 'preferences.{key[0].lower() + key[1:]}' "
                      f"failed to satisfy constraint: Member must satisfy enum value set: [{', '.join(allowed)}]")
    desired_lt = (desired or {}).get("LaunchTemplate") or ((desired or {}).get("MixedInstancesPolicy") or {}).get("LaunchTemplate")
    if prefs.get("AutoRollback"):
        # "A rollback is not supported in the following situations: There is no desired configuration
        # specified for the instance refresh. ... The Auto Scaling group uses the launch template's
        # $Latest or $Default version." (RefreshPreferences; "Undo changes with a rollback")
        if not desired:
            raise err("ValidationError", "AutoRollback requires a DesiredConfiguration: a rollback is not supported "
                      "when there is no desired configuration for the instance refresh.")
        if group.ec2_launch_template is None and not desired_lt:
            raise err("ValidationError", "AutoRollback is not supported for Auto Scaling groups that use a launch configuration.")
        if group.ec2_launch_template is not None and _alias(group.launch_template_version):
            raise err("ValidationError", "AutoRollback is not supported when the Auto Scaling group uses the launch "
                      f"template's {group.launch_template_version} version; roll back needs a numbered version.")
    if prefs.get("SkipMatching") and not desired_lt and group.ec2_launch_template is None:
        # "You can't use skip matching with a new launch configuration." ("Use skip matching")
        raise err("ValidationError", "SkipMatching is not supported for an Auto Scaling group that uses a launch "
                  "configuration unless the desired configuration specifies a launch template.")
    prefs = dict(prefs)
    prefs.setdefault("MinHealthyPercentage", 90)
    prefs.setdefault("SkipMatching", False)
    prefs.setdefault("AutoRollback", False)
    prefs.setdefault("ScaleInProtectedInstances", "Wait")
    prefs.setdefault("StandbyInstances", "Wait")
    r = Refresh(group, prefs, desired, strategy)
    refreshes.append(r)
    return ActionResult({"InstanceRefreshId": r.id})


def _alias(version):
    return str(version or "$Default").lower() in ("$latest", "$default")


def describe_instance_refreshes(self):
    name = self._get_param("AutoScalingGroupName")
    _group(self, name)
    ids = self._get_param("InstanceRefreshIds") or []
    # MaxRecords: "The default value is 50 and the maximum value is 100."
    size = pages.limit(self._get_int_param("MaxRecords"), 1, 100, "maxRecords", "autoscaling") or 50
    rs = [r for r in reversed(_refreshes(name, self.region, self.current_account)) if not ids or r.id in ids]
    chunk, nxt = pages.page(rs, self._get_param("NextToken"), size, "DescribeInstanceRefreshes",
                            pages.query_key(self), "autoscaling")
    return ActionResult({"InstanceRefreshes": [r.describe() for r in chunk], "NextToken": nxt})


def cancel_instance_refresh(self):
    name = self._get_param("AutoScalingGroupName")
    _group(self, name)
    active = [r for r in _refreshes(name, self.region, self.current_account) if r.status in ACTIVE]
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
    active = [r for r in _refreshes(name, self.region, self.current_account) if r.status in ACTIVE]
    if not active:
        raise err("ActiveInstanceRefreshNotFound", "No in progress Instance Refresh found for Auto Scaling group " + name)
    r = active[-1]
    if r.rollback is not None:
        raise err("IrreversibleInstanceRefresh", "The Instance Refresh is already rolling back.")
    if not r.desired:
        raise err("IrreversibleInstanceRefresh", "Only an Instance Refresh started with a DesiredConfiguration can be rolled back.")
    if r.previous[0] == "lt" and _alias(r.previous_version):
        raise err("IrreversibleInstanceRefresh", "A rollback is not supported when the Auto Scaling group uses the "
                  "launch template's $Latest or $Default version.")
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
    for region, a in [(r, a) for acct in list(autoscaling_backends.keys()) for r, a in list(autoscaling_backends[acct].items())]:
        for g in a.autoscaling_groups.values():
            for st in g.instance_states:
                _health(st, now)


_orig_create_group = AutoScalingResponse.create_auto_scaling_group
_orig_update_group = AutoScalingResponse.update_auto_scaling_group


def _timing(self, group, creating):
    grace = self._get_int_param("HealthCheckGracePeriod")
    if grace is not None or creating:
        # "HealthCheckGracePeriod ... Default: 0 seconds" (moto makes it 300).
        group.health_check_grace_period = grace or 0
    warm = self._get_int_param("DefaultInstanceWarmup")
    if warm is not None:
        group.default_instance_warmup = warm
    elif creating:
        group.default_instance_warmup = None


def create_auto_scaling_group(self):
    _CREATING["grace"] = self._get_int_param("HealthCheckGracePeriod") or 0
    try:
        result = _orig_create_group(self)
    finally:
        _CREATING["grace"] = None
    group = self.autoscaling_backend.autoscaling_groups.get(self._get_param("AutoScalingGroupName"))
    if group is not None:
        _timing(self, group, True)
    return result


def update_auto_scaling_group(self):
    result = _orig_update_group(self)
    group = self.autoscaling_backend.autoscaling_groups.get(self._get_param("AutoScalingGroupName"))
    if group is not None:
        _timing(self, group, False)
    return result


FakeAutoScalingGroup.default_instance_warmup = None

for _name, _fn in {
    "create_auto_scaling_group": create_auto_scaling_group,
    "update_auto_scaling_group": update_auto_scaling_group,
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

_orig_launch_template = FakeAutoScalingGroup.launch_template


def _launch_template(self):
    """As AWS describes a group: a mixed-instances group names its templates in its policy only
    (moto keeps the policy's template as the group's own)."""
    if getattr(self, "mixed_instances_policy", None):
        return None
    try:
        return _orig_launch_template.fget(self)
    except AttributeError:
        return None


FakeAutoScalingGroup.launch_template = property(_launch_template)


# -- warm pools --------------------------------------------------------------------------------

def warm_instances(group):
    return getattr(group, "warm_instances", None) or []


def launch_warm(group, count, src=None):
    """Launches `count` instances into `group`'s warm pool (stopped unless PoolState is Running):
    how many it launched."""
    new = launch_into(group, count, src)
    ids = [i.id for i in new]
    group.instance_states = [st for st in group.instance_states if st.instance.id not in ids]
    if ids and (group.warm_pool.pool_state or "Stopped") in ("Stopped", "Hibernated"):
        group.ec2_backend.stop_instances(ids)
    group.warm_instances = warm_instances(group) + ids
    for i in ids:
        ssm.meta(i)["warm"] = True
    return len(ids)


def _warm_size(group):
    pool = group.warm_pool
    prepared = pool.max_group_prepared_capacity
    if prepared is None or prepared < 0:
        prepared = group.max_size
    return max(int(pool.min_size or 0), int(prepared) - int(group.desired_capacity or 0))


_orig_put_warm_pool = FakeAutoScalingGroup.put_warm_pool


def _put_warm_pool(self, *args, **kwargs):
    _orig_put_warm_pool(self, *args, **kwargs)
    missing = _warm_size(self) - len(warm_instances(self))
    if missing > 0:
        launch_warm(self, missing)


def describe_warm_pool(self):
    group = _group(self, self._get_param("AutoScalingGroupName"))
    pool = group.warm_pool
    state = "Warmed:Running" if pool is not None and pool.pool_state == "Running" else "Warmed:Stopped"
    instances = []
    for iid in warm_instances(group):
        inst = group.ec2_backend.get_instance(iid)
        item = {"InstanceId": iid, "InstanceType": inst.instance_type, "AvailabilityZone": inst.placement,
                "LifecycleState": state, "HealthStatus": "Healthy"}
        instances.append(item)
    return ActionResult({"WarmPoolConfiguration": pool, "Instances": instances})


_orig_delete_warm_pool = AutoScalingResponse.delete_warm_pool


def delete_warm_pool(self):
    group = _group(self, self._get_param("AutoScalingGroupName"))
    ids = warm_instances(group)
    if ids:
        group.ec2_backend.terminate_instances(ids)
    group.warm_instances = []
    return _orig_delete_warm_pool(self)


FakeAutoScalingGroup.put_warm_pool = _put_warm_pool
FakeAutoScalingGroup.warm_pool_configuration = property(lambda self: self.warm_pool)
FakeAutoScalingGroup.warm_pool_size = property(lambda self: len(warm_instances(self)) if self.warm_pool is not None else None)
AutoScalingResponse.describe_warm_pool = describe_warm_pool
AutoScalingResponse.delete_warm_pool = delete_warm_pool


# -- alarms ------------------------------------------------------------------------------------

def firing_alarm(region, prefs, account=ACCOUNT):
    """The first alarm of the refresh's AlarmSpecification that is in ALARM, if any."""
    names = (prefs.get("AlarmSpecification") or {}).get("Alarms") or []
    if not names:
        return None
    from moto.cloudwatch.models import cloudwatch_backends
    alarms = cloudwatch_backends[account][region].alarms
    for n in names:
        a = alarms.get(n)
        if a is not None and a.state_value == "ALARM":
            return n
    return None
