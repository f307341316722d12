"""The control API, under /_sandbox/: JSON in and out. Bad input answers 400 with a message."""

import json
import re
import urllib.parse

from . import accounting, ec2, seed
from .state import DEFAULT_DELAYS, STATE, State


class BadRequest(Exception):
    pass


def _throttle(service):
    if service == "ec2":
        return 503, "RequestLimitExceeded", "Request limit exceeded."
    if service == "ssm":
        return 400, "ThrottlingException", "Rate exceeded"
    return 400, "Throttling", "Rate exceeded"


FAULT_KINDS = {
    "throttle": _throttle,
    "500": lambda s: (500, "InternalError" if s == "ec2" else "InternalFailure", "We encountered an internal error. Please try again."),
    "503": lambda s: (503, "Unavailable" if s == "ec2" else "ServiceUnavailable", "The service is unavailable. Please try again shortly."),
    # Not retried by SDKs: a permission missing (in one region, say).
    "denied": lambda s: (403, "UnauthorizedOperation" if s == "ec2" else "AccessDeniedException" if s == "ssm" else "AccessDenied",
                         "You are not authorized to perform this operation."),
}

MUTATING = re.compile(r"^(Create|Delete|Put|Run|Start|Stop|Terminate|Reboot|Modify|Update|Register|Deregister|Copy|"
                      r"Attach|Detach|Add|Remove|Enable|Disable|Send|Cancel|Rollback|Tag|Untag|Set|Associate|"
                      r"Disassociate|Authorize|Revoke|Reset|Import|Export|Replace|Suspend|Resume|Execute|Complete)")


def pick_fault(service, action, region):
    """The fault to play for this call, if any (throttling, 5xx, latency), by seeded chance."""
    for rule in STATE.faults:
        if rule["service"] not in ("*", service):
            continue
        if rule["action"] not in ("*", action):
            continue
        if rule.get("region") not in (None, region):
            continue
        if rule["rng"].random() < rule["rate"]:
            return rule
    return None


def _json(status, obj):
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
    body = json.dumps(obj, default=str).encode()
    return f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


def _body(environ):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise BadRequest(f"the body is not JSON: {e}")
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _num(v, what, minimum=None):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(f"{what} must be a number, not {v!r}")
    if minimum is not None and v < minimum:
        raise BadRequest(f"{what} must be at least {minimum}")
    return float(v)


def _only(data, allowed, what):
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown {what} key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")


def _outcome(rule):
    if not isinstance(rule, dict):
        raise BadRequest("an outcome is a JSON object")
    _only(rule, {"match", "exit_code", "stdout", "stderr", "duration", "stdout_bytes", "stderr_bytes", "hang", "times"}, "outcome")
    if not isinstance(rule.get("match"), str) or not rule["match"]:
        raise BadRequest("an outcome needs `match`, a regular expression matched against the script")
    try:
        compiled = re.compile(rule["match"], re.M)
    except re.error as e:
        raise BadRequest(f"outcome match {rule['match']!r} is not a regular expression: {e}")
    out = {"match": rule["match"], "re": compiled, "exit_code": 0, "stdout": None, "stderr": "", "duration": None,
           "stdout_bytes": None, "stderr_bytes": None, "hang": False, "times": None, "used": 0}
    if "exit_code" in rule:
        if not isinstance(rule["exit_code"], int) or isinstance(rule["exit_code"], bool) or not 0 <= rule["exit_code"] <= 255:
            raise BadRequest("exit_code must be an integer 0-255")
        out["exit_code"] = rule["exit_code"]
    for k in ("stdout", "stderr"):
        if k in rule:
            if not isinstance(rule[k], str):
                raise BadRequest(f"{k} must be a string")
            out[k] = rule[k]
    for k in ("duration",):
        if k in rule:
            out[k] = _num(rule[k], k, 0)
    for k in ("stdout_bytes", "stderr_bytes", "times"):
        if k in rule:
            if not isinstance(rule[k], int) or isinstance(rule[k], bool) or rule[k] < 0:
                raise BadRequest(f"{k} must be a whole number")
            out[k] = rule[k]
    if "hang" in rule:
        if not isinstance(rule["hang"], bool):
            raise BadRequest("hang must be true or false")
        out["hang"] = rule["hang"]
    return out


def _fault(rule):
    import random

    if not isinstance(rule, dict):
        raise BadRequest("a fault is a JSON object")
    _only(rule, {"service", "action", "region", "rate", "kind", "latency_ms", "seed"}, "fault")
    service = rule.get("service", "*")
    if service not in ("*", "ec2", "ssm", "iam", "autoscaling", "sts", "sns"):
        raise BadRequest(f"fault service {service!r} is not one of *, ec2, ssm, iam, autoscaling, sts, sns")
    kind = rule.get("kind")
    if kind is not None and kind not in FAULT_KINDS:
        raise BadRequest(f"fault kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
    rate = _num(rule.get("rate", 1.0), "rate", 0)
    if rate > 1:
        raise BadRequest("rate is a probability, 0 to 1")
    latency = _num(rule.get("latency_ms", 0), "latency_ms", 0)
    if kind is None and not latency:
        raise BadRequest("a fault needs a kind (throttle, 500, 503) or latency_ms")
    seed_value = rule.get("seed", 0)
    if not isinstance(seed_value, int):
        raise BadRequest("seed must be an integer")
    action = rule.get("action", "*")
    if not isinstance(action, str):
        raise BadRequest("action must be a string")
    return {"service": service, "action": action, "region": rule.get("region"), "rate": rate, "kind": kind,
            "latency_ms": latency, "seed": seed_value, "rng": random.Random(seed_value)}


def _public(rule):
    return {k: v for k, v in rule.items() if k not in ("re", "rng")}


def _calls(query):
    since = float(query.get("since", ["0"])[0] or 0)
    calls = [c for c in STATE.calls if c[0] >= since]
    by_action = {}
    for _, service, action, _ in calls:
        key = f"{service}:{action}"
        by_action[key] = by_action.get(key, 0) + 1
    return {
        "now": STATE.now(),
        "count": len(calls),
        "by_action": dict(sorted(by_action.items())),
        "mutating": sorted({f"{s}:{a}" for _, s, a, _ in calls if MUTATING.match(a)}),
        "calls": [{"t": t, "service": s, "action": a, "region": r} for t, s, a, r in calls],
    }


def handle(environ):
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "").rstrip("/")
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    try:
        return _route(method, path, query, environ)
    except BadRequest as e:
        return _json(400, {"error": str(e)})


def _rules(environ, method, name, parse):
    """GET, POST (replace or extend) or DELETE one of the sandbox's rule lists."""
    if method == "POST":
        data = _body(environ)
        _only(data, {name, "replace"}, "body")
        rules = data.get(name)
        if not isinstance(rules, list):
            raise BadRequest(f"give `{name}`, a list of rules")
        parsed = [parse(r) for r in rules]
        if data.get("replace", True):
            setattr(STATE, name, parsed)
        else:
            getattr(STATE, name).extend(parsed)
    elif method == "DELETE":
        setattr(STATE, name, [])
    elif method != "GET":
        return _json(405, {"error": "use GET, POST or DELETE"})
    return _json(200, {name: [_public(r) for r in getattr(STATE, name)]})


def _route(method, path, query, environ):
    p = path[len("/_sandbox"):] or "/"
    if p == "/health" and method == "GET":
        return _json(200, {"ok": True, "now": STATE.now()})
    if p == "/reset" and method == "POST":
        seed.reset_all()
        return _json(200, {"ok": True})
    if p == "/delays":
        if method == "POST":
            data = _body(environ)
            _only(data, DEFAULT_DELAYS, "delay")
            for k, v in data.items():
                STATE.delays[k] = _num(v, k)
        elif method != "GET":
            return _json(405, {"error": "use GET or POST"})
        return _json(200, {"delays": STATE.delays, "time_scale": STATE.time_scale})
    if p == "/time_scale" and method == "POST":
        data = _body(environ)
        _only(data, {"time_scale"}, "time_scale")
        STATE.time_scale = _num(data.get("time_scale"), "time_scale", 0)
        return _json(200, {"time_scale": STATE.time_scale})
    if p == "/ssm/outcomes":
        return _rules(environ, method, "outcomes", _outcome)
    if p == "/ssm/outputs" and method == "GET":
        return _json(200, {"outputs": STATE.outputs})
    if p == "/ssm/scripts" and method == "GET":
        inst = query.get("instance", [None])[0]
        data = {k: v for k, v in STATE.scripts.items() if inst in (None, k)}
        return _json(200, {"scripts": data})
    if p == "/unhealthy_amis":
        if method == "POST":
            data = _body(environ)
            _only(data, {"amis"}, "body")
            amis = data.get("amis")
            if not isinstance(amis, list) or not all(isinstance(a, str) and a.startswith("ami-") for a in amis):
                raise BadRequest("give `amis`, a list of AMI ids")
            STATE.unhealthy_amis |= set(amis)
        elif method == "DELETE":
            STATE.unhealthy_amis = set()
        elif method != "GET":
            return _json(405, {"error": "use GET, POST or DELETE"})
        return _json(200, {"amis": sorted(STATE.unhealthy_amis)})
    if p == "/elb_unhealthy_amis":
        # Instances from these pass EC2 status checks and fail load balancer (ELB) checks: a group
        # whose HealthCheckType is EC2 (the default) keeps them, as AWS does.
        if method == "POST":
            data = _body(environ)
            _only(data, {"amis"}, "body")
            amis = data.get("amis")
            if not isinstance(amis, list) or not all(isinstance(a, str) and a.startswith("ami-") for a in amis):
                raise BadRequest("give `amis`, a list of AMI ids")
            STATE.elb_unhealthy_amis |= set(amis)
        elif method == "DELETE":
            STATE.elb_unhealthy_amis = set()
        elif method != "GET":
            return _json(405, {"error": "use GET, POST or DELETE"})
        return _json(200, {"amis": sorted(STATE.elb_unhealthy_amis)})
    if p == "/clock":
        if method == "POST":
            data = _body(environ)
            _only(data, {"advance"}, "body")
            State.skew += _num(data.get("advance"), "advance", 0)
            STATE.advance()
        elif method != "GET":
            return _json(405, {"error": "use GET or POST"})
        return _json(200, {"now": STATE.now(), "skew": State.skew})
    if p == "/interrupt" and method == "POST":
        data = _body(environ)
        _only(data, {"instance", "region", "action"}, "body")
        instance, region = data.get("instance"), data.get("region", "us-east-1")
        action = data.get("action", "terminate")
        if not isinstance(instance, str) or not instance.startswith("i-"):
            raise BadRequest("give `instance`, an instance id")
        if action not in ec2.SPOT_REASONS:
            raise BadRequest(f"action must be one of {', '.join(ec2.SPOT_REASONS)}")
        STATE.advance()
        try:
            state = ec2.interrupt(region, instance, action)
        except Exception as e:  # noqa: BLE001 - unknown instance, already gone
            raise BadRequest(f"can't interrupt {instance} in {region}: {e}")
        return _json(200, {"instance": instance, "state": state})
    if p == "/launch_failures" and method == "GET":
        return _json(200, {"failures": STATE.launch_failures})
    if p == "/failing_image_regions":
        if method == "POST":
            data = _body(environ)
            _only(data, {"regions"}, "body")
            regions = data.get("regions")
            if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
                raise BadRequest("give `regions`, a list of region names")
            STATE.failing_image_regions = set(regions)
        elif method == "DELETE":
            STATE.failing_image_regions = set()
        return _json(200, {"regions": sorted(STATE.failing_image_regions)})
    if p == "/faults":
        return _rules(environ, method, "faults", _fault)
    if p == "/calls":
        if method == "DELETE":
            STATE.calls = []
            return _json(200, {"ok": True})
        return _json(200, _calls(query))
    if p == "/resources" and method == "GET":
        STATE.advance()
        res = accounting.live_resources()
        return _json(200, {"count": len(res), "resources": res})
    if p == "/refreshes" and method == "GET":
        group = query.get("group", [None])[0]
        out = []
        for (region, name), rs in STATE.refreshes.items():
            if group in (None, name):
                out += [{"id": r.id, "group": name, "region": region, "status": r.status, "history": r.history,
                         "started": r.t_start, "ended": r.t_end}
                        for r in rs]
        return _json(200, {"refreshes": out})
    if p == "/sns/messages" and method == "GET":
        return _json(200, {"messages": STATE.published})
    if p == "/canonical/publish" and method == "POST":
        data = _body(environ)
        _only(data, {"region", "release", "build"}, "body")
        release = data.get("release", "24.04")
        if release not in seed.RELEASES:
            raise BadRequest(f"release must be one of {', '.join(seed.RELEASES)}")
        build = data.get("build")
        if not isinstance(build, str) or not re.fullmatch(r"\d{8}", build):
            raise BadRequest("build must be a date such as 20261121")
        region = data.get("region", "us-east-1")
        if region not in seed.REGIONS:
            raise BadRequest(f"region must be one of {', '.join(seed.REGIONS)}")
        ami = seed.publish(region, release, build)
        return _json(200, {"ami": ami, "parameter": seed.parameter_name(release)})
    if p == "/images" and method == "GET":
        return _json(200, {"images": accounting.images(query.get("region", [None])[0])})
    return _json(404, {"error": f"no control endpoint {method} {path} (see tests/sandbox/README.md)"})
