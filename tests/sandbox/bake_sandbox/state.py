"""The sandbox's own state: settings tests change through the control API, the clock that drives
every timed transition, and the records tests read back (calls, scripts)."""

import heapq
import itertools
import random
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

ACCOUNT = "123456789012"
CANONICAL = "099720109477"
REGIONS = ["us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-central-1"]

# Every request and every timed transition runs under this lock: moto is not thread-safe, and
# one lock keeps the sandbox's own state consistent with moto's.
LOCK = threading.RLock()

DEFAULT_DELAYS = {
    # seconds; a negative value means "never" where that makes sense
    "instance_pending": 0.0,      # RunInstances: pending -> running
    "instance_stopping": 0.0,     # StopInstances: stopping -> stopped
    "instance_shutting_down": 0.0,  # TerminateInstances: shutting-down -> terminated
    "image_pending": 0.0,         # CreateImage / CopyImage: pending -> available (-1: never)
    "agent_registration": 0.0,    # running -> SSM agent Online
    "reboot": 0.0,                # RebootInstances: agent offline this long, then registers again
    "command_pending": 0.0,       # SendCommand: Pending -> InProgress
    "command_duration": 0.0,      # InProgress -> done, unless an outcome says otherwise
    "invocation_lag": 0.0,        # GetCommandInvocation answers InvocationDoesNotExist this long
    # Eventual consistency, ON by default (AWS documents it; small values keep tests fast):
    "iam_propagation": 0.5,       # a new instance profile, a role newly added to one, or a role's new
                                  # policy is not usable by RunInstances / the SSM agent this long
    "visibility_lag": 0.3,        # a new image, snapshot, instance, security group, launch template or
                                  # Auto Scaling group answers *.NotFound (and is left out of lists) this long
    "block_public_access": 0.3,   # Enable/DisableImageBlockPublicAccess: Get… reports the old state this long
}


def mono():
    """The sandbox's monotonic clock: the process's, moved forward by POST /_sandbox/clock."""
    return time.monotonic() + State.skew


def utcnow():
    """Wall-clock time (moved forward like mono()), or the moment the clock is pinned at (see State.at)."""
    now = datetime.now(timezone.utc) + timedelta(seconds=State.skew)
    if State.pinned is not None:
        now -= timedelta(seconds=max(0.0, mono() - State.pinned))
    return now


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.delays = dict(DEFAULT_DELAYS)
        # Instance refresh: warmups, checkpoint delays and health-check waits are multiplied by this.
        self.time_scale = 0.01
        self.outcomes = []          # SSM outcome rules, first match wins
        self.unhealthy_amis = set()  # instances launched from these never become healthy
        self.failing_image_regions = set()  # images created or copied there end up `failed`
        self.faults = []            # fault rules
        self.rng = random.Random(0)
        self.calls = []             # (monotonic seconds, service, action, region, ids)
        self.busy = []              # per call: seconds it held LOCK
        self.scripts = {}           # instance id -> [record]
        self.outputs = []           # whole command output sent to S3 / CloudWatch Logs
        self.commands = {}          # command id -> Command (ssm.py)
        self.timers = []            # heap of (due, seq, fn)
        self.seq = itertools.count()
        self.instance_meta = {}     # instance id -> dict (online_at, boot_at, launched_from, ...)
        self.image_meta = {}        # image id -> dict
        self.refreshes = {}         # (region, group) -> [Refresh]
        self.client_tokens = {}     # (region, action, token) -> result id
        self.profile_created = {}   # instance profile name -> when it was created or last got a role
        self.role_policy_changed = {}  # role name -> when a policy was last put or attached
        self.born = {}              # resource id (or ("asg", region, name)) -> when it was created
        self.elb_unhealthy_amis = set()  # instances from these fail ELB health checks only
        self.image_bpa = {}         # region -> {"state", "previous", "since"} (block public access)
        self.lost = {}              # instance id -> (when, how): stopped / terminated / interrupted
        self.launch_failures = []   # Auto Scaling launches that failed: {"group", "image", "why", "at"}
        self.published = []         # SNS messages: {"topic", "subject", "message"}

    # -- the clock -----------------------------------------------------------------------------
    pinned = None  # a past moment the clock reads while events due then are played
    skew = 0.0     # seconds the clock was moved forward (POST /_sandbox/clock); survives /reset

    @staticmethod
    def now():
        return State.pinned if State.pinned is not None else mono()

    def fresh(self, key):
        """True while `key` (an id, or ("asg", region, name)) is younger than `visibility_lag`:
        AWS's eventual consistency, where a just-created resource still answers NotFound."""
        born = self.born.get(key)
        return born is not None and self.now() - born < self.delays["visibility_lag"]

    def bear(self, key):
        self.born[key] = self.now()

    @staticmethod
    @contextmanager
    def at(t):
        """Reads the clock as `t` (a moment already past) while an event due then is played, so
        what it starts is timed from when it was due, not from the request that noticed it."""
        State.pinned = t
        try:
            yield
        finally:
            State.pinned = None

    def after(self, delay, fn):
        """Runs `fn` once `delay` seconds have passed (at the next request after that)."""
        heapq.heappush(self.timers, (self.now() + max(0.0, delay), next(self.seq), fn))

    def advance(self):
        """Plays, in time order, every timer and every instance refresh event that fell due since
        the last request, each with the clock reading the moment it was due. Called under LOCK
        before each request: lazy, yet nothing's timing depends on how often anyone calls."""
        from . import autoscaling  # late: autoscaling imports state

        now = mono()
        stalled = set()
        for _ in range(100_000):
            timer = self.timers[0][0] if self.timers and self.timers[0][0] <= now else None
            refresh, due = autoscaling.next_due(self, now, stalled)
            if timer is None and refresh is None:
                break
            if timer is not None and (refresh is None or timer <= due):
                _, _, fn = heapq.heappop(self.timers)
                with self.at(timer):
                    fn()
            elif not autoscaling.play(refresh, due):
                stalled.add(refresh.id)  # waits on something no clock moves; next request
        autoscaling.tick(self, now)

    # -- records -------------------------------------------------------------------------------
    def record_call(self, service, action, region, ids=()):
        """Logs a request; returns its index, for `record_busy`."""
        self.calls.append((self.now(), service, action, region, list(ids)))
        self.busy.append(0.0)
        return len(self.calls) - 1

    def record_busy(self, index, seconds):
        """How long the request at `index` held the sandbox (benchmarks: is the sandbox the bottleneck?)."""
        if index < len(self.busy):
            self.busy[index] = seconds


STATE = State()


from moto.core.exceptions import ServiceException  # noqa: E402


class SandboxError(ServiceException):
    """An AWS error the sandbox raises; serialized in the protocol of the service called.
    (Defined outside moto's package so moto looks its code up in the called service's model.)"""


def err(code, message):
    return SandboxError(code, message)
