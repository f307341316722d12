"""IAM policy evaluation, as AWS documents it. Pure: no moto, no sandbox state, so it can be tested
on its own (tests/sandbox/test_authz.py).

- Statements: Effect, Action/NotAction, Resource/NotResource, Condition; Sid optional.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements.html
- Actions match case-insensitively with `*` and `?`. Resource ARNs match case-sensitively; a `*`
  that ends an ARN segment may expand beyond colons, any other `*` or `?` stays inside its segment.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html
- Conditions: operators AND'ed, keys of one operator AND'ed, values of one key OR'ed (NOR for
  negated operators); context key names are case-insensitive, including the tag key of
  `.../ResourceTag/<key>`; a key that matches two context keys differing only in case fails the
  condition. A key absent from the request makes a condition false, except for negated operators
  (true), `...IfExists` (true), `Null`, and `ForAllValues:` (true); `ForAnyValue:` is false.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition.html
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html
- Policy variables: `${aws:PrincipalAccount}` is substituted from the request context in
  condition values and resources; any other variable makes a statement that uses it refused
  (Unsupported) rather than silently matched literally.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
"""

import fnmatch
import ipaddress
import json
import re
from datetime import datetime, timezone


class Unsupported(Exception):
    """The sandbox cannot evaluate this faithfully (a condition key AWS supplies that the sandbox
    does not compute, an operator it does not know, a policy variable). The caller denies and
    says why: never a silent guess."""


class Context:
    """The request context of one authorization request.

    values: context key -> list of strings (multivalued), a string, or None (known to be absent).
    families: lowercase key prefixes (`aws:resourcetag/`) the sandbox computes completely, so a
        tag key missing from `values` is absent, not unknown.
    supplied: lowercase key names or prefixes (ending in `/` or `:`) that AWS supplies for this
        action and resource (from the authorization table); a condition on one of these that the
        sandbox did not compute raises Unsupported.
    known: keys AWS defines for other actions (every key of the table): absent here. Any other
        `aws:` key is a global key the sandbox does not model: Unsupported.
    """

    def __init__(self, values, families=(), supplied=(), known=()):
        self.values = {}
        for k, v in values.items():
            if v is None:
                self.values.setdefault(k.lower(), []).append((k, None))
            else:
                vs = [v] if isinstance(v, str) else [str(x) for x in v]
                self.values.setdefault(k.lower(), []).append((k, vs))
        self.families = tuple(f.lower() for f in families)
        self.supplied = tuple(s.lower() for s in supplied)
        # Keys (and `prefix/` families) AWS defines but supplies only with some actions: absent here.
        self.known = tuple(k.lower() for k in known)

    def lookup(self, key):
        """(present, values). values is a list (empty when absent). Raises Unsupported."""
        kl = key.lower()
        found = self.values.get(kl)
        if found:
            real = [vs for _, vs in found if vs is not None]
            if len(real) > 1:
                return "ambiguous", []
            if not real:
                return False, []
            return (True, real[0]) if real[0] else (False, [])
        if any(kl.startswith(f) for f in self.families):
            return False, []
        for s in self.supplied:
            if kl == s or ((s.endswith("/") or s.endswith(":")) and kl.startswith(s)):
                raise Unsupported(f"condition key {key} is supplied by AWS for this request, "
                                  f"but the sandbox does not compute it")
        for k in self.known:
            if kl == k or ((k.endswith("/") or k.endswith(":")) and kl.startswith(k)):
                return False, []
        if kl.startswith("aws:"):
            raise Unsupported(f"global condition key {key} is not modelled by the sandbox")
        return False, []

    def public(self):
        out = {}
        for entries in self.values.values():
            for k, vs in entries:
                if vs is not None:
                    out[k] = vs if len(vs) != 1 else vs[0]
        return out


# -- matching ----------------------------------------------------------------------------------

def _listify(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def action_matches(pattern, action):
    return fnmatch.fnmatchcase(action.lower(), pattern.lower()) if "[" not in pattern else pattern.lower() == action.lower()


def _arn_regex(pattern):
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            nxt = pattern[i + 1] if i + 1 < len(pattern) else ":"
            out.append(".*" if nxt == ":" else "[^:]*")
        elif c == "?":
            out.append("[^:]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.S)


_ARN_CACHE = {}


VARIABLES = ("aws:PrincipalAccount",)


def substitute(value, ctx):
    """Replaces the policy variables the sandbox knows (from `ctx`); Unsupported for others."""
    if not isinstance(value, str) or "${" not in value:
        return value
    out = value
    for name in VARIABLES:
        token = "${" + name + "}"
        if token in out:
            present, values = ctx.lookup(name) if ctx is not None else (False, [])
            if not present or len(values) != 1:
                raise Unsupported(f"policy variable {token} has no single value in this request")
            out = out.replace(token, values[0])
    if "${" in out:
        raise Unsupported(f"policy variables other than {', '.join(VARIABLES)} are not substituted by the sandbox: {value}")
    return out


def resource_matches(pattern, resource, ctx=None):
    pattern = substitute(pattern, ctx)
    if pattern == "*":
        return True
    rx = _ARN_CACHE.get(pattern)
    if rx is None:
        rx = _ARN_CACHE[pattern] = _arn_regex(pattern)
    return rx.fullmatch(resource) is not None


# -- condition operators -----------------------------------------------------------------------

def _num(s):
    return float(s)


def _date(s):
    s = str(s)
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return datetime.fromtimestamp(float(s), timezone.utc)
    s = s.replace("Z", "+00:00")
    d = datetime.fromisoformat(s)
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def _ip(v, p):
    return ipaddress.ip_address(v) in ipaddress.ip_network(p, strict=False)


def _bool(v, p):
    return str(v).lower() == str(p).lower()


def _like(v, p):
    return fnmatch.fnmatchcase(v, p) if "[" not in p else v == p


# base operator -> (per-value test(value, policy_value), negated)
OPERATORS = {
    "StringEquals": (lambda v, p: v == p, False),
    "StringNotEquals": (lambda v, p: v == p, True),
    "StringEqualsIgnoreCase": (lambda v, p: v.lower() == p.lower(), False),
    "StringNotEqualsIgnoreCase": (lambda v, p: v.lower() == p.lower(), True),
    "StringLike": (_like, False),
    "StringNotLike": (_like, True),
    "NumericEquals": (lambda v, p: _num(v) == _num(p), False),
    "NumericNotEquals": (lambda v, p: _num(v) == _num(p), True),
    "NumericLessThan": (lambda v, p: _num(v) < _num(p), False),
    "NumericLessThanEquals": (lambda v, p: _num(v) <= _num(p), False),
    "NumericGreaterThan": (lambda v, p: _num(v) > _num(p), False),
    "NumericGreaterThanEquals": (lambda v, p: _num(v) >= _num(p), False),
    "DateEquals": (lambda v, p: _date(v) == _date(p), False),
    "DateNotEquals": (lambda v, p: _date(v) == _date(p), True),
    "DateLessThan": (lambda v, p: _date(v) < _date(p), False),
    "DateLessThanEquals": (lambda v, p: _date(v) <= _date(p), False),
    "DateGreaterThan": (lambda v, p: _date(v) > _date(p), False),
    "DateGreaterThanEquals": (lambda v, p: _date(v) >= _date(p), False),
    "Bool": (_bool, False),
    "BinaryEquals": (lambda v, p: v == p, False),
    "IpAddress": (_ip, False),
    "NotIpAddress": (_ip, True),
    "ArnEquals": (lambda v, p: v == p, False),
    "ArnLike": (lambda v, p: resource_matches(p, v), False),
    "ArnNotEquals": (lambda v, p: v == p, True),
    "ArnNotLike": (lambda v, p: resource_matches(p, v), True),
}
_OPS_LOWER = {k.lower(): k for k in OPERATORS}


def parse_operator(name):
    """(qualifier or None, base operator, if_exists) for a condition operator name."""
    qualifier = None
    rest = name
    for q in ("ForAllValues:", "ForAnyValue:"):
        if rest.lower().startswith(q.lower()):
            qualifier, rest = q[:-1], rest[len(q):]
    if_exists = False
    if rest.lower().endswith("ifexists") and rest.lower() != "ifexists":
        if_exists, rest = True, rest[: -len("IfExists")]
    if rest.lower() == "null":
        if qualifier or if_exists:
            raise Unsupported(f"condition operator {name} is not valid")
        return None, "Null", False
    base = _OPS_LOWER.get(rest.lower())
    if base is None:
        raise Unsupported(f"condition operator {name} is not known to the sandbox")
    return qualifier, base, if_exists


def _value_test(test, negated, v, policy_values):
    try:
        hit = any(test(v, str(p) if not isinstance(p, bool) else str(p).lower()) for p in policy_values)
    except (ValueError, TypeError):
        hit = False  # a value that does not parse as the operator's type never matches
    return not hit if negated else hit


def condition_key_holds(operator, key, policy_values, ctx):
    qualifier, base, if_exists = parse_operator(operator)
    policy_values = [substitute(p, ctx) for p in _listify(policy_values)]
    present, values = ctx.lookup(key)
    if present == "ambiguous":
        if base == "Null":
            present = True
        else:
            return False  # AWS: the key name matches two tags differing in case -> the condition fails
    if base == "Null":
        want_absent = any(str(p).lower() == "true" for p in policy_values)
        want_present = any(str(p).lower() == "false" for p in policy_values)
        return (want_absent and not present) or (want_present and present)
    test, negated = OPERATORS[base]
    if not present or not values:
        if if_exists:
            return True
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return negated
    if qualifier == "ForAllValues":
        return all(_value_test(test, negated, v, policy_values) for v in values)
    if qualifier == "ForAnyValue":
        return any(_value_test(test, negated, v, policy_values) for v in values)
    # No set operator. A single-valued key has one value; for a multivalued key this is the
    # reading AWS's policy simulator applies (any value matches; negated: none matches).
    hits = [_value_test(test, False, v, policy_values) for v in values]
    return not any(hits) if negated else any(hits)


def conditions_hold(condition, ctx):
    if not condition:
        return True
    if not isinstance(condition, dict):
        raise Unsupported("a Condition element must be an object")
    for operator, keys in condition.items():
        if not isinstance(keys, dict):
            raise Unsupported(f"condition operator {operator} must map keys to values")
        for key, values in keys.items():
            if not condition_key_holds(operator, key, values, ctx):
                return False
    return True


# -- statements and policies -------------------------------------------------------------------

def statements(doc):
    if isinstance(doc, str):
        doc = json.loads(doc)
    st = doc.get("Statement", [])
    return st if isinstance(st, list) else [st]


def statement_applies(stmt, action, resource, ctx):
    """True when this statement's action, resource and condition all match the request."""
    if "Action" in stmt:
        if not any(action_matches(p, action) for p in _listify(stmt["Action"])):
            return False
    elif "NotAction" in stmt:
        if any(action_matches(p, action) for p in _listify(stmt["NotAction"])):
            return False
    else:
        return False
    if "Resource" in stmt:
        if not any(resource_matches(p, resource, ctx) for p in _listify(stmt["Resource"])):
            return False
    elif "NotResource" in stmt:
        if any(resource_matches(p, resource, ctx) for p in _listify(stmt["NotResource"])):
            return False
    else:
        return False
    return conditions_hold(stmt.get("Condition"), ctx)


def evaluate(policies, action, resource, ctx):
    """Matches every statement of `policies` ([(label, document)]) against one request.
    Returns (allows, denies): lists of {"policy": label, "sid": sid-or-#index}.
    Raises Unsupported when a statement that matches action and resource cannot be judged."""
    allows, denies = [], []
    for label, doc in policies:
        for i, stmt in enumerate(statements(doc)):
            if not statement_applies(stmt, action, resource, ctx):
                continue
            ref = {"policy": label, "sid": stmt.get("Sid") or f"#{i}"}
            (denies if stmt.get("Effect") == "Deny" else allows if stmt.get("Effect") == "Allow" else []).append(ref)
    return allows, denies


def principal_matches(principal_elem, principal):
    """Resource-based policies (role trust policies): does `Principal` name this caller?
    principal: {"arn", "account", "user_arn" or "role_arn"}. Returns "exact" when the element names
    the caller's own ARN (user ARN, role ARN or session ARN), "account" when it names the account,
    else None."""
    if principal_elem == "*":
        return "account"
    if not isinstance(principal_elem, dict):
        return None
    best = None
    for value in _listify(principal_elem.get("AWS")):
        if value == "*":
            best = best or "account"
        elif value in (principal["account"], f"arn:aws:iam::{principal['account']}:root"):
            best = best or "account"
        elif value in (principal.get("arn"), principal.get("identity_arn")):
            best = "exact"
    return best
