"""The control API, under /_sandbox/: JSON in and out. Bad input answers 400 with a message."""

import json
import re
import urllib.parse

from . import accounting, accounts, ec2, seed
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
    _only(rule, {"match", "exit_code", "stdout", "stderr", "duration", "stdout_bytes", "stderr_bytes", "hang", "times",
                 "packages", "packages_generated", "kernel", "containers"}, "outcome")
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
    # What the instance holds after the command succeeds (inventory.py).
    if "packages" in rule:
        p = rule["packages"]
        if not isinstance(p, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in p.items()):
            raise BadRequest("packages must map package names to versions (or null to remove one)")
        out["packages"] = p
    if "packages_generated" in rule:
        if not isinstance(rule["packages_generated"], int) or isinstance(rule["packages_generated"], bool) or not 0 <= rule["packages_generated"] <= 100000:
            raise BadRequest("packages_generated must be a whole number up to 100000")
        out["packages_generated"] = rule["packages_generated"]
    if "kernel" in rule:
        if not isinstance(rule["kernel"], str) or not rule["kernel"]:
            raise BadRequest("kernel must be a string")
        out["kernel"] = rule["kernel"]
    if "containers" in rule:
        c = rule["containers"]
        if not isinstance(c, list) or not all(isinstance(x, list) and len(x) == 3 and all(isinstance(y, str) for y in x) for x in c):
            raise BadRequest("containers must be a list of [repository, tag, digest]")
        out["containers"] = c
    return out


def _fault(rule):
    import random

    if not isinstance(rule, dict):
        raise BadRequest("a fault is a JSON object")
    _only(rule, {"service", "action", "region", "rate", "kind", "latency_ms", "seed"}, "fault")
    service = rule.get("service", "*")
    if service not in ("*", "ec2", "ssm", "iam", "autoscaling", "sts", "sns", "elasticloadbalancing"):
        raise BadRequest(f"fault service {service!r} is not one of *, ec2, ssm, iam, autoscaling, sts, sns, elasticloadbalancing")
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
    calls = [c + (b,) for c, b in zip(STATE.calls, STATE.busy) if c[0] >= since]
    by_action = {}
    for _, service, action, _, _, _ in calls:
        key = f"{service}:{action}"
        by_action[key] = by_action.get(key, 0) + 1
    return {
        "now": STATE.now(),
        "count": len(calls),
        "by_action": dict(sorted(by_action.items())),
        "mutating": sorted({f"{s}:{a}" for _, s, a, _, _, _ in calls if MUTATING.match(a)}),
        "busy": round(sum(c[5] for c in calls), 3),
        "calls": [{"t": t, "service": s, "action": a, "region": r, "ids": ids, "busy": round(b, 4)} for t, s, a, r, ids, b in calls],
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
    return _json(200, {name: [_public(r) for r in getattr(STATE, name)]})


def _set(name, key, what, valid):
    """An endpoint holding a set of strings (AMI ids, regions): GET it, POST adds, DELETE empties."""
    def get(environ, query):
        return _json(200, {key: sorted(getattr(STATE, name))})

    def post(environ, query):
        data = _body(environ)
        _only(data, {key}, "body")
        items = data.get(key)
        if not isinstance(items, list) or not all(isinstance(i, str) and valid(i) for i in items):
            raise BadRequest(f"give `{key}`, a list of {what}")
        getattr(STATE, name).update(items)
        return get(environ, query)

    def delete(environ, query):
        setattr(STATE, name, set())
        return get(environ, query)

    return {"GET": get, "POST": post, "DELETE": delete}


def _health(environ, query):
    return _json(200, {"ok": True, "now": STATE.now()})


def _reset(environ, query):
    seed.reset_all()
    return _json(200, {"ok": True})


def _delays_get(environ, query):
    return _json(200, {"delays": STATE.delays, "time_scale": STATE.time_scale})


def _delays_post(environ, query):
    data = _body(environ)
    _only(data, DEFAULT_DELAYS, "delay")
    for k, v in data.items():
        STATE.delays[k] = _num(v, k)
    return _delays_get(environ, query)


def _time_scale(environ, query):
    data = _body(environ)
    _only(data, {"time_scale"}, "time_scale")
    STATE.time_scale = _num(data.get("time_scale"), "time_scale", 0)
    return _json(200, {"time_scale": STATE.time_scale})


def _scripts(environ, query):
    inst = query.get("instance", [None])[0]
    return _json(200, {"scripts": {k: v for k, v in STATE.scripts.items() if inst in (None, k)}})


def _clock_get(environ, query):
    return _json(200, {"now": STATE.now(), "skew": State.skew})


def _clock_post(environ, query):
    data = _body(environ)
    _only(data, {"advance"}, "body")
    State.skew += _num(data.get("advance"), "advance", 0)
    STATE.advance()
    return _clock_get(environ, query)


def _interrupt(environ, query):
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


def _calls_delete(environ, query):
    STATE.calls = []
    STATE.busy = []
    return _json(200, {"ok": True})


def _resources(environ, query):
    STATE.advance()
    res = accounting.live_resources()
    return _json(200, {"count": len(res), "resources": res})


def _refreshes(environ, query):
    group = query.get("group", [None])[0]
    out = []
    for (account, region, name), rs in STATE.refreshes.items():
        if group in (None, name):
            out += [{"id": r.id, "group": name, "region": region, "account": account, "status": r.status, "history": r.history,
                     "started": r.t_start, "ended": r.t_end}
                    for r in rs]
    return _json(200, {"refreshes": out})


def _canonical_publish(environ, query):
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


def _accounts(environ, query):
    data = _body(environ)
    _only(data, {"account", "role", "trust", "external_id"}, "body")
    try:
        return _json(200, accounts.create_account_role(data))
    except ValueError as e:
        raise BadRequest(str(e))


def _rule_list(name, parse):
    handler = lambda environ, query, method: _rules(environ, method, name, parse)  # noqa: E731
    return {m: (lambda environ, query, m=m: handler(environ, query, m)) for m in ("GET", "POST", "DELETE")}


def _is_ami(a):
    return a.startswith("ami-")


# Every control endpoint: path (under /_sandbox) -> method -> handler(environ, query). A known path
# asked with another method answers 405 naming the methods it takes; an unknown path 404. The
# endpoints are documented in tests/sandbox/README.md.
ROUTES = {
    "/health": {"GET": _health},
    "/reset": {"POST": _reset},
    "/delays": {"GET": _delays_get, "POST": _delays_post},
    "/time_scale": {"POST": _time_scale},
    "/ssm/outcomes": _rule_list("outcomes", _outcome),
    "/ssm/outputs": {"GET": lambda environ, query: _json(200, {"outputs": STATE.outputs})},
    "/ssm/scripts": {"GET": _scripts},
    "/unhealthy_amis": _set("unhealthy_amis", "amis", "AMI ids", _is_ami),
    # Instances from these pass EC2 status checks and fail load balancer (ELB) checks: a group
    # whose HealthCheckType is EC2 (the default) keeps them, as AWS does.
    "/elb_unhealthy_amis": _set("elb_unhealthy_amis", "amis", "AMI ids", _is_ami),
    "/failing_image_regions": _set("failing_image_regions", "regions", "region names", lambda r: True),
    "/clock": {"GET": _clock_get, "POST": _clock_post},
    "/interrupt": {"POST": _interrupt},
    "/launch_failures": {"GET": lambda environ, query: _json(200, {"failures": STATE.launch_failures})},
    "/faults": _rule_list("faults", _fault),
    "/calls": {"GET": lambda environ, query: _json(200, _calls(query)), "DELETE": _calls_delete},
    "/resources": {"GET": _resources},
    "/refreshes": {"GET": _refreshes},
    "/sns/messages": {"GET": lambda environ, query: _json(200, {"messages": STATE.published})},
    "/canonical/publish": {"POST": _canonical_publish},
    "/accounts": {"POST": _accounts},
    "/images": {"GET": lambda environ, query: _json(200, {"images": accounting.images(query.get("region", [None])[0])})},
}


def _route(method, path, query, environ):
    p = path[len("/_sandbox"):] or "/"
    methods = ROUTES.get(p)
    if methods is None:
        return _json(404, {"error": f"no control endpoint {method} {path} (see tests/sandbox/README.md)"})
    handler = methods.get(method)
    if handler is None:
        allowed = sorted(methods)
        said = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
        return _json(405, {"error": f"{path}: use {said}"})
    return handler(environ, query)
