"""The SSM agent, emulated. It never executes a script: it checks each with `bash -n`, records it,
and plays the outcome a test programmed (exit code, output, duration, or never finishing).

Command statuses follow "Understanding command statuses" (Systems Manager user guide,
https://docs.aws.amazon.com/systems-manager/latest/userguide/monitor-commands.html):
- Pending until the agent receives the command; Delayed while the instance is unreachable (stopped,
  rebooting) -- "The system attempted to send the command ... but wasn't successful. The system
  retries again."; a command not started by TimeoutSeconds never starts ("If this time is reached and
  the command hasn't already started running, it won't run", API reference) and turns Delivery Timed
  Out when TimeoutSeconds + executionTimeout have passed ("the sum of the Timeout (seconds) parameter
  and the Execution timeout parameter");
- Undeliverable (Status Failed) when the instance is terminated before the command reached it ("The
  command can't be delivered to the instance. The instance might not exist");
- a command whose instance stops, is terminated or is interrupted while it runs never gets a terminal
  report from its agent: it "remains at In Progress" and ends Delivery Timed Out at the total timeout
  ("If Run Command doesn't receive a document terminal response from SSM Agent, the command invocation
  is marked as deliveryTimeout").

Differences from AWS worth knowing: output is empty until an invocation ends (as AWS's
GetCommandInvocation), only AWS-RunShellScript and InstanceIds (not Targets) are supported."""

import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import uuid
from datetime import datetime, timedelta, timezone

from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ssm.responses import SimpleSystemManagerResponse

from . import iam, inventory, pages
from .state import err, ACCOUNT, STATE, utcnow

STDOUT_LIMIT = 24_000
STDERR_LIMIT = 8_000
# "The content of the document must not exceed 64KB. This quota also includes the content specified
# for input parameters at runtime." (SSM API reference, CreateDocument Content; SendCommand answers
# MaxDocumentSizeExceeded, "The size limit of a document is 64 KB."). The sandbox reads KB as 1,000
# bytes (the stricter reading) and counts AWS-RunShellScript's own content plus the parameters as JSON.
DOCUMENT_LIMIT = 64_000
RUN_SHELL_SCRIPT = json.dumps({
    "schemaVersion": "1.2",
    "description": "Run a shell script or specify the commands to run.",
    "parameters": {
        "commands": {"type": "StringList", "description": "(Required) Specify a shell script or a command to run.",
                     "minItems": 1, "displayType": "textarea"},
        "workingDirectory": {"type": "String", "default": "", "description": "(Optional) The path to the working "
                             "directory on your instance.", "maxChars": 4096},
        "executionTimeout": {"type": "String", "default": "3600", "description": "(Optional) The time in seconds for "
                             "a command to complete before it is considered to have failed. Default is 3600 (1 hour). "
                             "Maximum is 172800 (48 hours).",
                             "allowedPattern": "([1-9][0-9]{0,4})|(1[0-6][0-9]{4})|(17[0-1][0-9]{3})|(172[0-7][0-9]{2})|(172800)"},
    },
    "runtimeConfig": {"aws:runShellScript": {"properties": [{"id": "0.aws:runShellScript", "runCommand": "{{ commands }}",
                                                              "workingDirectory": "{{ workingDirectory }}",
                                                              "timeoutSeconds": "{{ executionTimeout }}"}]}},
}, indent=2)
EXECUTION_TIMEOUT = re.compile(r"([1-9][0-9]{0,4})|(1[0-6][0-9]{4})|(17[0-1][0-9]{3})|(172[0-7][0-9]{2})|(172800)")
SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}


class CURRENT:
    region = "us-east-1"




# -- the agent ---------------------------------------------------------------------------------

def meta(instance_id):
    return STATE.instance_meta.setdefault(instance_id, {"running_since": STATE.now(), "registered": False})


def _ssm_granted_at(b, instance):
    """When the instance's role lets its agent register (a policy granting it has propagated,
    iam.py); None when no policy of its role grants it."""
    assoc = b.iam_instance_profile_associations.get(instance.id)
    profile = getattr(assoc, "iam_instance_profile", None) if assoc else None
    if profile is None:
        return None
    times = []
    for role in profile.roles:
        if SSM_CORE in role.managed_policies:
            times.append(iam.effective_at(role.name, SSM_CORE))
        for name, doc in role.policies.items():
            if "ssm:UpdateInstanceInformation" in str(doc):
                times.append(iam.effective_at(role.name, name))
    return min(times) if times else None


def online_at(b, instance):
    """Monotonic time at which the agent is (or will be) online; None while it cannot be."""
    granted = _ssm_granted_at(b, instance) if instance.state == "running" else None
    if granted is None:
        return None
    m = meta(instance.id)
    if m["running_since"] is None:
        return None
    return max(m["running_since"], granted) + max(0.0, STATE.delays["agent_registration"])


def ping_status(b, instance):
    at = online_at(b, instance)
    m = meta(instance.id)
    now = STATE.now()
    if at is not None and now >= at:
        if not m["registered"]:
            m["registered"] = True
            m["last_ping"] = utcnow()
        return "Online"
    if m.get("registered"):
        return "ConnectionLost"
    return None  # never registered: not a managed instance


def _instance(region, instance_id):
    b = ec2_backends[ACCOUNT][region]
    for res in b.reservations.values():
        for i in res.instances:
            if i.id == instance_id:
                return b, i
    return b, None


# -- commands ----------------------------------------------------------------------------------

def _syntax_error(script, command_id, instance_id):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "_script.sh")
        with open(path, "w") as f:
            f.write(script)
        p = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=30)
        if p.returncode == 0:
            return None
        shown = f"/var/lib/amazon/ssm/{instance_id}/document/orchestration/{command_id}/awsrunShellScript/0.awsrunShellScript/_script.sh"
        return p.stderr.replace(path, shown) or "syntax error"


def _generated(n, what):
    line = f"{what} line of sandbox output, {n} bytes in all\n"
    reps = n // len(line) + 1
    return (line * reps)[:n]


def _outcome(script):
    for rule in STATE.outcomes:
        if rule["times"] is not None and rule["used"] >= rule["times"]:
            continue
        if rule["re"].search(script):
            rule["used"] += 1
            return rule
    return None


class Invocation:
    def __init__(self, command, instance_id, script):
        self.command = command
        self.instance_id = instance_id
        self.script = script
        self.sent_at = STATE.now()
        self.start = None
        self.cancelled_at = None
        self.lost_at = None          # the instance went away while this ran: no terminal report comes
        self.undeliverable_at = None  # the instance was terminated before this reached it
        self.final = None  # (status, details, code, stdout, stderr, end)
        self.delivered = False
        self.syntax = _syntax_error(script, command["id"], instance_id)
        rule = None if self.syntax else _outcome(script)
        self.rule = rule
        # bake's inventory script and its pages: answered from what the instance holds when the
        # command ends (unless a rule says what it prints).
        self.inventory = None if self.syntax or (rule and rule.get("stdout") is not None) else inventory.kind(script)
        if self.syntax:
            self.exit_code, self.stdout, self.stderr = 2, "", self.syntax
            self.duration = max(0.0, STATE.delays["command_duration"])
        else:
            r = rule or {}
            self.exit_code = r.get("exit_code", 0)
            if r.get("stdout") is not None:
                self.stdout = r["stdout"]
            elif r.get("stdout_bytes") is not None:
                self.stdout = _generated(r["stdout_bytes"], "stdout")
            else:
                self.stdout = f"[sandbox] {command['comment'] or command['id']}: done\n"
            if r.get("stderr_bytes") is not None:
                self.stderr = _generated(r["stderr_bytes"], "stderr")
            else:
                self.stderr = r.get("stderr") or ""
            if r.get("hang"):
                self.duration = math.inf
            elif r.get("duration") is not None:
                self.duration = r["duration"]
            else:
                self.duration = max(0.0, STATE.delays["command_duration"])

    def state(self):
        """(Status, StatusDetails, ResponseCode, stdout, stderr, start, end) at this moment."""
        st = self._state()
        if self.final and not self.delivered:
            self.delivered = True
            _deliver(self)
        return st

    @property
    def total_timeout(self):
        """When the command expires: TimeoutSeconds plus executionTimeout after it was sent."""
        return self.sent_at + self.command["timeout_seconds"] + self.command["execution_timeout"]

    def _state(self):
        if self.final:
            return self.final
        now = STATE.now()
        region = self.command["region"]
        b, inst = _instance(region, self.instance_id)
        if self.start is None and self.undeliverable_at is None:
            at = online_at(b, inst) if inst else None
            if at is not None:
                start = max(self.sent_at, at) + max(0.0, STATE.delays["command_pending"])
                # "If this time is reached and the command hasn't already started running, it won't run."
                if start <= self.sent_at + self.command["timeout_seconds"]:
                    self.start = start
        if self.cancelled_at is not None and (self.start is None or self.cancelled_at < self._end()):
            started = self.start is not None and self.start <= self.cancelled_at
            self.final = ("Cancelled", "Cancelled", 137 if started else -1, "", "", self.start, self.cancelled_at)
            return self.final
        if self.start is None or now < self.start:
            if self.undeliverable_at is not None:
                self.final = ("Failed", "Undeliverable", -1, "", "", None, self.undeliverable_at)
                return self.final
            if now >= self.total_timeout:
                self.final = ("TimedOut", "DeliveryTimedOut", -1, "", "", None, self.total_timeout)
                return self.final
            if inst is not None and meta(inst.id).get("registered") and ping_status(b, inst) != "Online":
                return ("Delayed", "Delayed", -1, "", "", None, None)
            return ("Pending", "Pending", -1, "", "", None, None)
        end = self._end()
        if self.lost_at is not None and self.lost_at < end:
            # The agent died with the instance: it never reports, so the command stays In Progress
            # until it expires, then Delivery Timed Out.
            if now >= self.total_timeout:
                self.final = ("TimedOut", "DeliveryTimedOut", -1, "", "", self.start, self.total_timeout)
                return self.final
            return ("InProgress", "InProgress", -1, "", "", self.start, None)
        if now < end:
            return ("InProgress", "InProgress", -1, "", "", self.start, None)
        if self.duration >= self.command["execution_timeout"]:
            self.final = ("TimedOut", "ExecutionTimedOut", 137, self.stdout if not math.isinf(self.duration) else "",
                          "", self.start, end)
        elif self.exit_code == 0:
            if inst is not None:
                inventory.change(inst, self.rule)
                if self.inventory:
                    self.stdout = inventory.answer(inst, self.inventory)
            self.final = ("Success", "Success", 0, self.stdout, self.stderr, self.start, end)
        else:
            self.final = ("Failed", "Failed", self.exit_code, self.stdout, self.stderr, self.start, end)
        return self.final

    def _end(self):
        if self.start is None:
            return math.inf
        return self.start + min(self.duration, self.command["execution_timeout"])


def _s3_key(cmd, instance_id, stream):
    prefix = cmd["s3_prefix"].strip("/")
    key = f"{cmd['id']}/{instance_id}/awsrunShellScript/0.awsrunShellScript/{stream}"
    return f"{prefix}/{key}" if prefix else key


def _s3_url(cmd, instance_id, stream):
    if not cmd["s3_bucket"]:
        return ""
    return f"https://s3.{cmd['region']}.amazonaws.com/{cmd['s3_bucket']}/{_s3_key(cmd, instance_id, stream)}"


def _deliver(inv):
    """What the agent does when a command ends with OutputS3BucketName / CloudWatchOutputConfig:
    sends the whole stdout and stderr (not the API's first 24,000/8,000 characters) there. The
    bucket must exist (it is not created); a log group is created when missing. Each delivery is
    recorded for tests, stored or not."""
    cmd = inv.command
    _, _, _, out, errout, _, _ = inv.final
    targets = []  # (url, store(text))
    if cmd["s3_bucket"]:
        from moto.s3.models import s3_backends

        def to_s3(stream):
            key = _s3_key(cmd, inv.instance_id, stream)
            return lambda text: s3_backends[ACCOUNT]["aws"].put_object(cmd["s3_bucket"], key, text.encode())
        targets += [(stream, _s3_url(cmd, inv.instance_id, stream), to_s3(stream)) for stream in ("stdout", "stderr")]
    if cmd["log_group"]:
        from moto.logs.models import logs_backends
        logs = logs_backends[ACCOUNT][cmd["region"]]
        group = cmd["log_group"]

        def to_logs(name):
            def store(text):
                if group not in logs.groups:
                    logs.create_log_group(group, {})
                logs.create_log_stream(group, name)
                if text:
                    logs.put_log_events(group, name, [{"timestamp": int(utcnow().timestamp() * 1000), "message": text}])
            return store
        for stream in ("stdout", "stderr"):
            name = f"{cmd['id']}/{inv.instance_id}/aws-runShellScript/{stream}"
            targets.append((stream, f"cloudwatch-logs://{group}/{name}", to_logs(name)))
    for stream, url, store in targets:
        text = out if stream == "stdout" else errout
        stored, why = True, ""
        try:
            store(text)
        except Exception as e:  # noqa: BLE001 - the agent logs a failed upload and carries on
            stored, why = False, f"{type(e).__name__}: {e}"
        STATE.outputs.append({"command_id": cmd["id"], "instance": inv.instance_id, "stream": stream, "url": url,
                              "bytes": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                              "stored": stored, "why": why})


def _cloudwatch(cmd):
    return {"CloudWatchLogGroupName": cmd["log_group"] or "", "CloudWatchOutputEnabled": bool(cmd["log_group"])}


def _wall(mono):
    if mono is None:
        return None
    return utcnow() - timedelta(seconds=STATE.now() - mono)


def _fmt(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if dt else ""


def instance_lost(instance_id, how):
    """The instance stopped (`how` "stopped") or went away ("terminated", "interrupted"): a command
    not yet delivered waits (Delayed) or becomes Undeliverable; one running never reports again."""
    STATE.lost[instance_id] = (STATE.now(), how)
    now = STATE.now()
    for cmd in STATE.commands.values():
        inv = cmd["invocations"].get(instance_id)
        if inv is None or inv._state()[0] in TERMINAL:
            continue
        if inv.start is not None and inv.start <= now:
            if inv.lost_at is None and now < inv._end():
                inv.lost_at = now
        else:
            inv.start = None
            if how != "stopped":
                inv.undeliverable_at = now


def _command_status(cmd):
    states = [inv.state() for inv in cmd["invocations"].values()]
    statuses = [s[0] for s in states]
    if any(s not in TERMINAL for s in statuses):
        return "Pending" if all(s == "Pending" for s in statuses) else "InProgress"
    # "if all invocations in a command have the status Undeliverable, then the command status
    # returned is Failed. However, if ... four of which return Undeliverable and one Success, then
    # the parent command's status is Success."
    statuses = [s[0] for s in states if s[1] != "Undeliverable"]
    if not statuses:
        return "Failed"
    if all(s == "Success" for s in statuses):
        return "Success"
    if "Cancelled" in statuses:
        return "Cancelled"
    if "TimedOut" in statuses:
        return "TimedOut"
    return "Failed"


def _command_object(cmd):
    states = [inv.state() for inv in cmd["invocations"].values()]
    status = _command_status(cmd)
    return {
        "CommandId": cmd["id"],
        "DocumentName": cmd["document"],
        "DocumentVersion": "$DEFAULT",
        "Comment": cmd["comment"],
        # "ExpiresAfter is calculated based on the total timeout for the overall command."
        "ExpiresAfter": cmd["requested"] + timedelta(seconds=cmd["timeout_seconds"] + cmd["execution_timeout"]),
        "Parameters": cmd["parameters"],
        "InstanceIds": list(cmd["invocations"]),
        "Targets": [],
        "RequestedDateTime": cmd["requested"],
        "Status": status,
        "StatusDetails": status,
        "OutputS3Region": cmd["region"],
        "OutputS3BucketName": cmd["s3_bucket"],
        "OutputS3KeyPrefix": cmd["s3_prefix"],
        "MaxConcurrency": "50",
        "MaxErrors": "0",
        "TargetCount": len(states),
        "CompletedCount": sum(1 for s in states if s[0] in TERMINAL),
        # "The number of targets for which the status is Failed or Execution Timed Out."
        "ErrorCount": sum(1 for s in states if (s[0] == "Failed" and s[1] != "Undeliverable") or s[1] == "ExecutionTimedOut"),
        "DeliveryTimedOutCount": sum(1 for s in states if s[1] == "DeliveryTimedOut"),
        "ServiceRole": "",
        "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
        "CloudWatchOutputConfig": _cloudwatch(cmd),
        "TimeoutSeconds": cmd["timeout_seconds"],
    }


def send_command(self):
    region = self.region
    document = self._get_param("DocumentName")
    if document != "AWS-RunShellScript":
        raise err("InvalidDocument", f"Document with name {document} does not exist (the sandbox runs AWS-RunShellScript only).")
    instance_ids = self._get_param("InstanceIds") or []
    if self._get_param("Targets"):
        raise err("InvalidParameters", "The sandbox supports InstanceIds, not Targets.")
    if not instance_ids:
        raise err("InvalidParameters", "Specify InstanceIds.")
    if len(instance_ids) > 50:
        raise err("ValidationException", "Member must have length less than or equal to 50 (InstanceIds).")
    comment = self._get_param("Comment") or ""
    if len(comment) > 100:
        raise err("ValidationException", f"1 validation error detected: Value '{comment}' at 'comment' failed to satisfy constraint: Member must have length less than or equal to 100")
    params = self._get_param("Parameters") or {}
    unknown = set(params) - {"commands", "executionTimeout", "workingDirectory"}
    if unknown:
        raise err("InvalidParameters", f"Parameter(s) {', '.join(sorted(unknown))} are not defined in the document.")
    commands = params.get("commands")
    if not commands:
        raise err("InvalidParameters", "Parameter \"commands\" is required.")
    size = document_size(params)
    if size > DOCUMENT_LIMIT:
        raise err("MaxDocumentSizeExceeded", f"The size limit of a document is 64 KB. (The document with its parameters is "
                  f"{size} bytes; the sandbox allows {DOCUMENT_LIMIT}.)")
    if len((params.get("workingDirectory") or [""])[0]) > 4096:
        raise err("InvalidParameters", "Parameter \"workingDirectory\" is longer than its maxChars, 4096.")
    execution_timeout = 3600
    if "executionTimeout" in params:
        raw = (params["executionTimeout"] or [""])[0]
        if not EXECUTION_TIMEOUT.fullmatch(raw):
            raise err("InvalidParameters", f"Parameter \"executionTimeout\" \"{raw}\" is not valid: it must be 1 to 172800 seconds.")
        execution_timeout = int(raw)
    timeout_seconds = self._get_int_param("TimeoutSeconds")
    if timeout_seconds is None:
        timeout_seconds = 3600  # "The default for Timeout (seconds) is 3600 seconds."
    elif not 30 <= timeout_seconds <= 2592000:
        bound = "greater than or equal to 30" if timeout_seconds < 30 else "less than or equal to 2592000"
        raise err("ValidationException", f"1 validation error detected: Value '{timeout_seconds}' at 'timeoutSeconds' "
                  f"failed to satisfy constraint: Member must have value {bound}")
    s3_bucket = self._get_param("OutputS3BucketName") or ""
    s3_prefix = self._get_param("OutputS3KeyPrefix") or ""
    if s3_bucket and not 3 <= len(s3_bucket) <= 63:
        raise err("ValidationException", f"1 validation error detected: Value '{s3_bucket}' at 'outputS3BucketName' failed to satisfy constraint: Member must have length between 3 and 63")
    if len(s3_prefix) > 500:
        raise err("ValidationException", "1 validation error detected: Value at 'outputS3KeyPrefix' failed to satisfy constraint: Member must have length less than or equal to 500")
    cw = self._get_param("CloudWatchOutputConfig") or {}
    log_group = cw.get("CloudWatchLogGroupName") or "" if cw.get("CloudWatchOutputEnabled") else ""
    if log_group and not re.fullmatch(r"[.\-_/#A-Za-z0-9]{1,512}", log_group):
        raise err("ValidationException", f"1 validation error detected: Value '{log_group}' at 'cloudWatchOutputConfig.cloudWatchLogGroupName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\.\\-_/#A-Za-z0-9]+")
    missing = []
    for iid in instance_ids:
        b, inst = _instance(region, iid)
        if inst is None or inst.state == "terminated" or ping_status(b, inst) is None:
            missing.append(iid)
    if missing:
        raise err("InvalidInstanceId", f"Instances [[{', '.join(missing)}]] not in a valid state for account {ACCOUNT}")

    command_id = str(uuid.uuid4())
    script = "\n".join(commands)
    cmd = {
        "id": command_id,
        "region": region,
        "document": document,
        "comment": comment,
        "parameters": params,
        "requested": utcnow(),
        "timeout_seconds": timeout_seconds,
        "execution_timeout": execution_timeout,
        "s3_bucket": s3_bucket,
        "s3_prefix": s3_prefix,
        "log_group": log_group,
        "invocations": {},
    }
    for iid in instance_ids:
        inv = Invocation(cmd, iid, script)
        cmd["invocations"][iid] = inv
        STATE.scripts.setdefault(iid, []).append({
            "command_id": command_id,
            "comment": comment,
            "script": script,
            "sha256": hashlib.sha256(script.encode()).hexdigest(),
            "execution_timeout": execution_timeout,
            "syntax_error": inv.syntax,
            "at": _fmt(utcnow()),
        })
    STATE.commands[command_id] = cmd
    return ActionResult({"Command": _command_object(cmd)})


def document_size(params):
    """Bytes the service counts against the 64 KB document quota: the document's content plus the
    parameters given at runtime (as JSON, UTF-8)."""
    return len(RUN_SHELL_SCRIPT.encode()) + len(json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode())


def _find(command_id, instance_id=None):
    cmd = STATE.commands.get(command_id)
    if cmd is None:
        return None, None
    if instance_id is None:
        return cmd, None
    return cmd, cmd["invocations"].get(instance_id)


def get_command_invocation(self):
    command_id = self._get_param("CommandId")
    instance_id = self._get_param("InstanceId")
    cmd, inv = _find(command_id, instance_id)
    lag = STATE.delays["invocation_lag"]
    if inv is None or (lag > 0 and STATE.now() - inv.sent_at < lag):
        raise err("InvocationDoesNotExist", "")
    status, details, code, out, errout, start, end = inv.state()
    result = {
        "CommandId": command_id,
        "InstanceId": instance_id,
        "Comment": cmd["comment"],
        "DocumentName": cmd["document"],
        "DocumentVersion": "$DEFAULT",
        "PluginName": "aws:runShellScript",
        "ResponseCode": code,
        "ExecutionStartDateTime": _fmt(_wall(start)),
        "ExecutionElapsedTime": "" if start is None else f"PT{((end or STATE.now()) - start):.3f}S",
        "ExecutionEndDateTime": _fmt(_wall(end)),
        "Status": status,
        "StatusDetails": details,
        "StandardOutputContent": out[:STDOUT_LIMIT],
        "StandardOutputUrl": _s3_url(cmd, instance_id, "stdout") if status in TERMINAL else "",
        "StandardErrorContent": errout[:STDERR_LIMIT],
        "StandardErrorUrl": _s3_url(cmd, instance_id, "stderr") if status in TERMINAL else "",
        "CloudWatchOutputConfig": _cloudwatch(cmd),
    }
    return ActionResult(result)


# ListCommandInvocations' filters (SSM API reference, CommandFilter): at most 5; ExecutionStage
# only for ListCommands; the times are ISO 8601 such as 2024-07-07T00:00:00Z.
INVOCATION_STATUSES = {"Pending", "InProgress", "Delayed", "Success", "Cancelled", "Failed", "TimedOut", "Cancelling"}


def _command_filters(self):
    filters = self._get_param("Filters") or []
    if len(filters) > 5:
        raise err("ValidationException", "1 validation error detected: Value at 'filters' failed to satisfy constraint: "
                                         "Member must have length less than or equal to 5")
    tests = []
    for f in filters:
        key, value = f.get("key"), f.get("value")
        if key not in ("InvokedAfter", "InvokedBefore", "Status", "DocumentName"):
            raise err("InvalidFilterKey", f"{key} is not a filter key ListCommandInvocations takes.")
        if not isinstance(value, str) or not value:
            raise err("InvalidFilterValue", f"The filter {key} needs a value.")
        if key in ("InvokedAfter", "InvokedBefore"):
            try:
                t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise err("InvalidFilterValue", f"{value} is not a timestamp such as 2024-07-07T00:00:00Z.")
            if t.tzinfo is None:
                t = t.replace(tzinfo=timezone.utc)
            if key == "InvokedAfter":
                tests.append(lambda cmd, inv, t=t: cmd["requested"] >= t)
            else:
                tests.append(lambda cmd, inv, t=t: cmd["requested"] < t)
        elif key == "Status":
            if value not in INVOCATION_STATUSES:
                raise err("InvalidFilterValue", f"{value} is not a command invocation status.")
            tests.append(lambda cmd, inv, v=value: inv.state()[0] == v)
        else:
            tests.append(lambda cmd, inv, v=value: cmd["document"] == v)
    return tests


def list_command_invocations(self):
    command_id = self._get_param("CommandId")
    instance_id = self._get_param("InstanceId")
    details = bool(self._get_param("Details"))
    tests = _command_filters(self)
    out = []
    for cid, cmd in STATE.commands.items():
        if command_id and cid != command_id:
            continue
        if cmd["region"] != self.region:
            continue
        for iid, inv in cmd["invocations"].items():
            if instance_id and iid != instance_id:
                continue
            if not all(t(cmd, inv) for t in tests):
                continue
            status, sd, code, stdout, stderr, start, end = inv.state()
            item = {
                "CommandId": cid,
                "InstanceId": iid,
                "InstanceName": "",
                "Comment": cmd["comment"],
                "DocumentName": cmd["document"],
                "DocumentVersion": "$DEFAULT",
                "RequestedDateTime": cmd["requested"],
                "Status": status,
                "StatusDetails": sd,
                "TraceOutput": "",
                "StandardOutputUrl": "",
                "StandardErrorUrl": "",
                "CommandPlugins": [],
                "ServiceRole": "",
                "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
                "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
            }
            if details:
                item["CommandPlugins"] = [{
                    "Name": "aws:runShellScript",
                    "Status": status,
                    "StatusDetails": sd,
                    "ResponseCode": code,
                    "ResponseStartDateTime": _wall(start),
                    "ResponseFinishDateTime": _wall(end),
                    "Output": (stdout + stderr)[:2500],
                    "StandardOutputUrl": "",
                    "StandardErrorUrl": "",
                    "OutputS3Region": cmd["region"],
                    "OutputS3BucketName": "",
                    "OutputS3KeyPrefix": "",
                }]
            out.append(item)
    if command_id and command_id not in STATE.commands:
        raise err("InvalidCommandId", "")
    chunk, nxt = pages.page(out, self._get_param("NextToken"), _page_size(self), "ListCommandInvocations",
                            pages.query_key(self), "ssm")
    return ActionResult({"CommandInvocations": chunk, "NextToken": nxt})


def _page_size(self):
    """ListCommands / ListCommandInvocations MaxResults: 1 to 50 (API reference); 50 when not given."""
    return pages.limit(self._get_int_param("MaxResults"), 1, 50, "maxResults", "ssm") or 50


def list_commands(self):
    command_id = self._get_param("CommandId")
    instance_id = self._get_param("InstanceId")
    if command_id and command_id not in STATE.commands:
        raise err("InvalidCommandId", "")
    out = [_command_object(c) for cid, c in STATE.commands.items()
           if (not command_id or cid == command_id) and (not instance_id or instance_id in c["invocations"])
           and c["region"] == self.region]
    chunk, nxt = pages.page(out, self._get_param("NextToken"), _page_size(self), "ListCommands",
                            pages.query_key(self), "ssm")
    return ActionResult({"Commands": chunk, "NextToken": nxt})


def cancel_command(self):
    command_id = self._get_param("CommandId")
    instance_ids = self._get_param("InstanceIds") or []
    cmd = STATE.commands.get(command_id)
    if cmd is None:
        raise err("InvalidCommandId", "")
    now = STATE.now()
    for iid, inv in cmd["invocations"].items():
        if instance_ids and iid not in instance_ids:
            continue
        if inv.state()[0] not in TERMINAL:
            inv.cancelled_at = now
    return ActionResult({})


def describe_instance_information(self):
    region = self.region
    wanted_ids = set()
    wanted_ping = set()
    for f in self._get_param("InstanceInformationFilterList") or []:
        key, values = f.get("key"), f.get("valueSet") or []
        if key == "InstanceIds":
            wanted_ids |= set(values)
        elif key == "PingStatus":
            wanted_ping |= set(values)
        else:
            raise err("InvalidInstanceInformationFilterValue", f"The sandbox filters by InstanceIds and PingStatus, not {key}.")
    for f in self._get_param("Filters") or []:
        key, values = f.get("Key"), f.get("Values") or []
        if key == "InstanceIds":
            wanted_ids |= set(values)
        elif key == "PingStatus":
            wanted_ping |= set(values)
        else:
            raise err("InvalidFilterKey", f"The sandbox filters by InstanceIds and PingStatus, not {key}.")
    for f in (self._get_param("Filters") or []):
        if len(f.get("Values") or []) > 100:
            raise err("ValidationException", "1 validation error detected: Value at 'filters.member.values' failed to satisfy "
                                             "constraint: Member must have length less than or equal to 100")
    for iid in wanted_ids:
        if not re.fullmatch(r"(i|mi)-[0-9a-f]{8,17}", iid):
            raise err("InvalidInstanceId", f"Instance id {iid} is not valid.")
    max_results = self._get_int_param("MaxResults")
    if max_results is not None and not 5 <= max_results <= 50:
        raise err("ValidationException", "MaxResults must be between 5 and 50.")
    b = ec2_backends[ACCOUNT][region]
    infos = []
    for res in b.reservations.values():
        for inst in res.instances:
            if wanted_ids and inst.id not in wanted_ids:
                continue
            if inst.state == "terminated":
                continue
            ping = ping_status(b, inst)
            if ping is None or (wanted_ping and ping not in wanted_ping):
                continue
            m = meta(inst.id)
            infos.append({
                "InstanceId": inst.id,
                "PingStatus": ping,
                "LastPingDateTime": m.get("last_ping") or utcnow(),
                "AgentVersion": "3.3.1142.0",
                "IsLatestVersion": True,
                "PlatformType": "Linux",
                "PlatformName": "Ubuntu",
                "PlatformVersion": "24.04",
                "ResourceType": "EC2Instance",
                "IPAddress": inst.private_ip or "",
                "ComputerName": f"ip-{(inst.private_ip or '0.0.0.0').replace('.', '-')}",
                "AssociationStatus": "Success",
                "SourceId": inst.id,
                "SourceType": "AWS::EC2::Instance",
            })
    infos.sort(key=lambda i: i["InstanceId"])
    return ActionResult({"InstanceInformationList": infos})


def on_reboot(instance_id):
    """RebootInstances: the agent drops for `reboot` seconds, then registers again."""
    m = meta(instance_id)
    m["running_since"] = STATE.now() + max(0.0, STATE.delays["reboot"])
    m["rebooted"] = m.get("rebooted", 0) + 1
    m["registered_before_reboot"] = m.get("registered", False)

    def registered_again():
        m["last_ping"] = utcnow()
    STATE.after(max(0.0, STATE.delays["reboot"]) + max(0.0, STATE.delays["agent_registration"]), registered_again)


for _name, _fn in {
    "send_command": send_command,
    "get_command_invocation": get_command_invocation,
    "list_command_invocations": list_command_invocations,
    "list_commands": list_commands,
    "cancel_command": cancel_command,
    "describe_instance_information": describe_instance_information,
}.items():
    setattr(SimpleSystemManagerResponse, _name, _fn)
