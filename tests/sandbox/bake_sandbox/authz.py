"""IAM enforcing mode: every AWS call is authenticated and authorized as AWS does it.

- Who calls. The access key the sandbox prints (`testing`) is the account's root user: everything is
  allowed and its signature is not checked (test set-up, warm-up). Any other key must be an IAM
  user's access key (moto's CreateAccessKey, status Active) or the key of a session from moto's
  STS AssumeRole (with its session token, unexpired). Anything else is refused as AWS refuses an
  unknown key. Every non-root request's SigV4 signature is verified on the raw request (sigv4.py).
- What is allowed. For each authorization request of the call (authz_builders.py: the resources
  AWS checks and the keys it supplies, per authz_actions.toml): an explicit Deny in any identity
  policy, permissions boundary or session policy denies; otherwise the identity policies must
  allow, and so must the boundary (when the principal has one) and the session policy (when the
  session has one). Identity policies: a user's inline and attached policies and those of its
  groups; a role's inline and attached policies. sts:AssumeRole also needs the role's trust policy.
  sts:GetCallerIdentity is never denied.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html
- What is answered. A denial in the service's protocol with AWS's message; every evaluation is
  recorded for GET /_sandbox/iam/decisions.

Not modelled: resource-based policies other than role trust policies (S3 bucket policies, KMS key
policies: keys are taken to have the default key policy that delegates to IAM), SCPs and RCPs,
managed session policies (PolicyArns), permissions boundaries of IAM users (moto has none),
policy variables (a statement using one is refused, not matched literally)."""

import base64
import io
import json
import time
import traceback
import urllib.parse
from datetime import datetime, timezone
from xml.sax.saxutils import escape

from moto.iam.models import iam_backends
from moto.sts.models import sts_backends

from . import policy as pol
from . import authz_s3
from . import sigv4
from .authz_builders import BUILDERS
from .authz_requests import REQUEST_FAMILIES, TAG_FAMILIES, CallError, Req, parse_params
from .authz_table import table
from .state import ACCOUNT

ROOT_KEY = "testing"
ENFORCED = {"ec2", "iam", "ssm", "autoscaling", "sts", "sns", "kms", "s3"}
JSON_SERVICES = {"ssm", "kms"}


class Settings:
    enforcing = False


SETTINGS = Settings()
DECISIONS = []  # every evaluated authorization request, in order; cleared by DELETE and by reset


def clear():
    DECISIONS.clear()


# -- principals --------------------------------------------------------------------------------

class AuthFailure(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind, self.message = kind, message


def _iam():
    return iam_backends[ACCOUNT]["aws"]


def _managed_doc(arn):
    p = _iam().managed_policies.get(arn)
    if p is None:
        return None
    for v in p.versions:
        if v.is_default:
            return v.document
    return p.versions[0].document if p.versions else None


def _doc(text):
    if isinstance(text, dict):
        return text
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return json.loads(urllib.parse.unquote(text))


class Principal:
    def __init__(self, kind, arn, principal_arn, name, userid, tags=None, user=None, role_arn=None,
                 session_policy=None, issued=None):
        self.kind = kind                    # root | user | assumed-role
        self.arn = arn                      # as AWS names the caller in messages
        self.principal_arn = principal_arn  # aws:PrincipalArn (a session's role ARN)
        self.name = name
        self.userid = userid
        self.tags = tags or {}
        self.user = user
        self.role_arn = role_arn
        self.session_policy = session_policy
        self.issued = issued

    @property
    def ptype(self):
        return {"root": "Account", "user": "User", "assumed-role": "AssumedRole"}[self.kind]

    def role(self):
        if self.role_arn is None:
            return None
        try:
            return _iam().get_role_by_arn(self.role_arn)
        except Exception:
            return None

    def policy_sets(self):
        """(identity [(label, doc)], boundary (label, doc) or None, session (label, doc) or None)."""
        identity, boundary, session = [], None, None
        if self.kind == "user":
            u = self.user
            for name, doc in u.policies.items():
                identity.append((f"user/{u.name}/{name}", _doc(doc)))
            for arn in u.managed_policies:
                doc = _managed_doc(arn)
                if doc is not None:
                    identity.append((arn, _doc(doc)))
            for g in _iam().get_groups_for_user(u.name):
                for name, doc in g.policies.items():
                    identity.append((f"group/{g.name}/{name}", _doc(doc)))
                for arn in g.managed_policies:
                    doc = _managed_doc(arn)
                    if doc is not None:
                        identity.append((arn, _doc(doc)))
            b = getattr(u, "permissions_boundary_arn", None)
        else:
            role = self.role()
            b = None
            if role is not None:
                for name, doc in role.policies.items():
                    identity.append((f"role/{role.name}/{name}", _doc(doc)))
                for arn in role.managed_policies:
                    doc = _managed_doc(arn)
                    if doc is not None:
                        identity.append((arn, _doc(doc)))
                b = role.permissions_boundary_arn
            if self.session_policy:
                session = ("session-policy", _doc(self.session_policy))
        if b:
            doc = _managed_doc(b)
            # A boundary naming a policy that does not exist allows nothing.
            boundary = (b, _doc(doc) if doc is not None else {"Statement": []})
        return identity, boundary, session


ROOT = Principal("root", f"arn:aws:iam::{ACCOUNT}:root", f"arn:aws:iam::{ACCOUNT}:root", None, ACCOUNT)


def resolve(access_key, token):
    """(principal, secret) for an access key, or AuthFailure."""
    iam = _iam()
    for user in list(iam.users.values()):
        for key in user.access_keys:
            if key.access_key_id == access_key:
                if token is not None or key.status != "Active":
                    raise AuthFailure("invalid_key", "The security token included in the request is invalid.")
                tags = {t["Key"]: t.get("Value", "") for t in (user.tags or [])}
                p = Principal("user", user.arn, user.arn, user.name, user.id, tags, user=user)
                return p, key.secret_access_key
    for assumed in list(sts_backends[ACCOUNT]["aws"].assumed_roles):
        if assumed.access_key_id == access_key:
            if token != assumed.session_token:
                raise AuthFailure("invalid_key", "The security token included in the request is invalid.")
            exp = assumed.expiration
            if exp.tzinfo is None:
                exp = exp.replace(tzinfo=timezone.utc)
            if exp <= datetime.now(timezone.utc):
                raise AuthFailure("expired", "The security token included in the request is expired")
            role_name = assumed.role_arn.split("/")[-1]
            role = None
            try:
                role = _iam().get_role_by_arn(assumed.role_arn)
            except Exception:
                pass
            tags = {t["Key"]: t.get("Value", "") for t in (role.tags or [])} if role is not None else {}
            arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{assumed.session_name}"
            p = Principal("assumed-role", arn, assumed.role_arn, role_name,
                          f"{role.id if role is not None else 'AROA'}:{assumed.session_name}", tags,
                          role_arn=assumed.role_arn, session_policy=assumed.policy or None)
            return p, assumed.secret_access_key
    raise AuthFailure("invalid_key", "The security token included in the request is invalid.")


def _header(environ, name):
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


def authenticate(environ, body):
    auth = environ.get("HTTP_AUTHORIZATION")
    if not auth:
        if "X-Amz-Credential" in environ.get("QUERY_STRING", ""):
            raise AuthFailure("incomplete", "The sandbox does not accept query-string (presigned) authentication "
                                            "in IAM enforcing mode.")
        raise AuthFailure("missing", "Request is missing Authentication Token")
    try:
        cred = sigv4.parse_authorization(auth)
    except sigv4.SigV4Error as e:
        raise AuthFailure(e.kind, e.message)
    if cred.access_key == ROOT_KEY:
        return ROOT, cred
    principal, secret = resolve(cred.access_key, _header(environ, "x-amz-security-token"))
    try:
        sigv4.verify(environ, body, cred, secret)
    except sigv4.SigV4Error as e:
        raise AuthFailure({"mismatch": "signature"}.get(e.kind, e.kind), e.message)
    return principal, cred


# -- one call ----------------------------------------------------------------------------------

class Call:
    def __init__(self, service, action, region, params, principal, environ):
        self.service = service
        self.action = action
        self.full = f"{service}:{action}"
        self.region = region
        self.params = params
        self.principal = principal
        self.source_ip = environ.get("REMOTE_ADDR")
        self.user_agent = environ.get("HTTP_USER_AGENT")


GLOBAL_ABSENT = [
    "aws:CalledVia", "aws:CalledViaFirst", "aws:CalledViaLast", "aws:PrincipalServiceName",
    "aws:PrincipalServiceNamesList", "aws:MultiFactorAuthAge", "aws:SourceVpc", "aws:SourceVpce",
    "aws:VpcSourceIp", "aws:SourceVpcArn", "aws:PrincipalOrgID", "aws:PrincipalOrgPaths", "aws:ResourceOrgID",
    "aws:ResourceOrgPaths", "aws:SourceAccount", "aws:SourceArn", "aws:SourceOrgID", "aws:SourceOrgPaths",
    "aws:Referer", "aws:SourceIdentity", "aws:FederatedProvider", "aws:Ec2InstanceSourceVpc",
    "aws:Ec2InstanceSourcePrivateIPv4",
]


def global_values(principal, call, req):
    now = datetime.now(timezone.utc)
    v = {
        "aws:PrincipalArn": principal.principal_arn,
        "aws:PrincipalAccount": ACCOUNT,
        "aws:PrincipalType": principal.ptype,
        "aws:userid": principal.userid,
        "aws:username": principal.name if principal.kind == "user" else None,
        "aws:RequestedRegion": call.region,
        "aws:SecureTransport": "true",  # the sandbox stands in for AWS's TLS endpoints
        "aws:CurrentTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "aws:EpochTime": str(int(now.timestamp())),
        "aws:ViaAWSService": "true" if req.via else "false",
        "aws:PrincipalIsAWSService": "false",
        "aws:MultiFactorAuthPresent": "false" if principal.kind == "assumed-role" else None,
        "aws:TokenIssueTime": None,
        "aws:ResourceAccount": None,
    }
    if not req.via:  # for a call a service makes on the caller's behalf these are not modelled
        v["aws:SourceIp"] = call.source_ip
        v["aws:UserAgent"] = call.user_agent
    for k in GLOBAL_ABSENT:
        v[k] = None
    for k, val in principal.tags.items():
        v[f"aws:PrincipalTag/{k}"] = val
    return v


def _patterns(keys):
    exact, prefixes = set(), []
    for k in keys:
        kl = k.lower()
        if "${" in kl:
            prefixes.append(kl.split("${", 1)[0])
        elif kl.endswith("/tag-key"):
            prefixes.append(kl[: -len("tag-key")])
        else:
            exact.add(kl)
    return exact, prefixes


def supplied_keys(entry, rtype):
    """Keys AWS supplies for this action on a resource of `rtype`: the SAR's row for the type and
    its action-level keys; when the row lists none (IAM, SNS, ...), the resource type's own keys."""
    keys = list(entry.conditions)
    if rtype is not None:
        row = entry.resources.get(rtype, (False, []))[1]
        keys += row if row else entry.resource_table.get(rtype, {}).get("keys", [])
    return keys


_KNOWN = []


def _known_keys():
    """Every condition key the table names (as exact names and `prefix/` families), plus the tag
    keys every tagging service defines: absent unless supplied for the action at hand."""
    if not _KNOWN:
        keys = {"aws:RequestTag/${TagKey}", "aws:ResourceTag/${TagKey}", "aws:TagKeys"}
        for sec in table().data.values():
            for r in (sec.get("resources") or {}).values():
                keys.update(r.get("keys", []))
            for row in (sec.get("actions") or {}).values():
                keys.update(row.get("conditions", []))
                for ks in (row.get("resources") or {}).values():
                    keys.update(ks)
        exact, prefixes = _patterns(keys)
        _KNOWN.extend(sorted(exact) + sorted(set(prefixes)))
    return _KNOWN


def _kind(reason):
    return reason.split(" ", 1)[0]


def _record(principal, call, req, decision, reason, ctx=None, **lists):
    d = {
        "seq": len(DECISIONS) + 1,
        "at": time.time(),
        "principal": principal.arn,
        "principal_type": principal.ptype,
        "call": call.full,
        "region": call.region,
        "action": req.action,
        "resource": req.resource,
        "resource_type": req.rtype,
        "decision": decision,
        "reason": reason,
        "note": req.note,
        "allowed_by": lists.get("allowed_by", []),
        "boundary_allowed_by": lists.get("boundary_allowed_by", []),
        "session_allowed_by": lists.get("session_allowed_by", []),
        "trust_allowed_by": lists.get("trust_allowed_by", []),
        "denied_by": lists.get("denied_by", []),
        "context": ctx.public() if ctx is not None else {},
    }
    if req.launch_template:
        d["launch_template"] = req.launch_template
    DECISIONS.append(d)
    return d


def decide(principal, call, req):
    entry = table().action(req.action)
    if entry is None:
        return _record(principal, call, req, "deny",
                       f"because the sandbox's authorization table (authz_actions.toml) has no entry for {req.action}")
    if req.rtype is not None and req.rtype not in entry.resources:
        return _record(principal, call, req, "deny",
                       f"because the sandbox's authorization table lists no resource type {req.rtype} for {req.action}")
    supplied = supplied_keys(entry, req.rtype)
    exact, prefixes = _patterns(supplied)
    values = global_values(principal, call, req)
    glob = {k.lower() for k in values} | {"aws:resourceaccount"}
    for k, v in req.values.items():
        kl = k.lower()
        if kl in glob or kl in exact or any(kl.startswith(p) for p in prefixes):
            values[k] = v
    families = set(req.families) | {"aws:principaltag/"}
    ctx = pol.Context(values, families=families, supplied=list(exact) + prefixes, known=_known_keys())
    identity, boundary, session = principal.policy_sets()
    trust = None
    try:
        allows, denies = pol.evaluate(identity, req.action, req.resource, ctx)
        b_allows, b_denies = pol.evaluate([boundary], req.action, req.resource, ctx) if boundary else ([], [])
        s_allows, s_denies = pol.evaluate([session], req.action, req.resource, ctx) if session else ([], [])
        if req.action == "sts:AssumeRole":
            trust = _trust(getattr(req, "role", None), principal, req, ctx)
    except pol.Unsupported as e:
        return _record(principal, call, req, "deny", f"because the sandbox cannot evaluate it: {e}", ctx)
    lists = {"allowed_by": allows, "boundary_allowed_by": b_allows, "session_allowed_by": s_allows}
    if denies:
        return _record(principal, call, req, "deny", "with an explicit deny in an identity-based policy", ctx,
                       denied_by=denies, **lists)
    if b_denies:
        return _record(principal, call, req, "deny", "with an explicit deny in a permissions boundary", ctx,
                       denied_by=b_denies, **lists)
    if s_denies:
        return _record(principal, call, req, "deny", "with an explicit deny in a session policy", ctx,
                       denied_by=s_denies, **lists)
    if trust is not None:
        t_allows, t_denies, exact_grant = trust
        lists["trust_allowed_by"] = t_allows
        if t_denies:
            return _record(principal, call, req, "deny", "with an explicit deny in a resource-based policy", ctx,
                           denied_by=t_denies, **lists)
        if not t_allows:
            return _record(principal, call, req, "deny",
                           f"because no resource-based policy allows the {req.action} action", ctx, **lists)
        if exact_grant:
            allows = allows or [{"policy": "trust-policy", "sid": t_allows[0]["sid"]}]
    if not allows:
        return _record(principal, call, req, "deny", f"because no identity-based policy allows the {req.action} action",
                       ctx, **lists)
    if boundary and not b_allows:
        return _record(principal, call, req, "deny", f"because no permissions boundary allows the {req.action} action",
                       ctx, **lists)
    if session and not s_allows:
        return _record(principal, call, req, "deny", f"because no session policy allows the {req.action} action",
                       ctx, **lists)
    return _record(principal, call, req, "allow", "allowed", ctx, **lists)


def _trust(role, principal, req, ctx):
    """The role's trust policy for AssumeRole: (allows, denies, names the caller exactly)."""
    if role is None:
        return [], [], False
    doc = _doc(role.assume_role_policy_document)
    who = {"account": ACCOUNT, "arn": principal.arn, "identity_arn": principal.principal_arn}
    allows, denies, exact = [], [], False
    for i, st in enumerate(pol.statements(doc)):
        if "NotPrincipal" in st:
            raise pol.Unsupported("NotPrincipal in a trust policy is not modelled by the sandbox")
        match = pol.principal_matches(st.get("Principal"), who)
        if match is None:
            continue
        if not any(pol.action_matches(a, "sts:AssumeRole") for a in pol._listify(st.get("Action"))):
            continue
        if not pol.conditions_hold(st.get("Condition"), ctx):
            continue
        ref = {"policy": f"{role.arn} (trust policy)", "sid": st.get("Sid") or f"#{i}"}
        if st.get("Effect") == "Deny":
            denies.append(ref)
        elif st.get("Effect") == "Allow":
            allows.append(ref)
            exact = exact or match == "exact"
    return allows, denies, exact


# -- the request hook --------------------------------------------------------------------------

def _error(service, status, code, message):
    from .app import error_response

    if service not in JSON_SERVICES:
        message = escape(message)
    return error_response(service, status, code, message)


AUTH_ERRORS = {
    # kind: (ec2 (status, code), query (status, code), json (status, code))
    "missing": ((401, "MissingAuthenticationToken"), (403, "MissingAuthenticationToken"), (400, "MissingAuthenticationTokenException")),
    "invalid_key": ((401, "AuthFailure"), (403, "InvalidClientTokenId"), (400, "UnrecognizedClientException")),
    "expired": ((401, "AuthFailure"), (403, "ExpiredToken"), (400, "ExpiredTokenException")),
    "signature": ((401, "AuthFailure"), (403, "SignatureDoesNotMatch"), (400, "InvalidSignatureException")),
    "incomplete": ((401, "AuthFailure"), (400, "IncompleteSignature"), (400, "IncompleteSignatureException")),
}


# S3's REST errors for the same failures: https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html
S3_AUTH_ERRORS = {
    "missing": (403, "AccessDenied"),
    "invalid_key": (403, "InvalidAccessKeyId"),
    "expired": (400, "ExpiredToken"),
    "signature": (403, "SignatureDoesNotMatch"),
    "incomplete": (400, "AuthorizationHeaderMalformed"),
}


def _auth_error(service, failure):
    if service == "s3":
        status, code = S3_AUTH_ERRORS.get(failure.kind, S3_AUTH_ERRORS["signature"])
        if failure.kind == "expired" and "Signature expired" in failure.message:
            status, code = 403, "RequestTimeTooSkewed"
        return _error(service, status, code, failure.message)
    ec2, query, js = AUTH_ERRORS.get(failure.kind, AUTH_ERRORS["signature"])
    if failure.kind == "expired" and "Signature expired" in failure.message:
        ec2, query, js = (400, "RequestExpired"), (403, "SignatureDoesNotMatch"), (400, "InvalidSignatureException")
    status, code = ec2 if service == "ec2" else js if service in JSON_SERVICES else query
    message = failure.message
    if service == "ec2" and code == "AuthFailure":
        message = "AWS was not able to validate the provided access credentials" + (
            "" if failure.kind == "invalid_key" else f" ({failure.message})")
    return _error(service, status, code, message)


def _encoded(d):
    return base64.urlsafe_b64encode(json.dumps({
        "allowed": False, "explicitDeny": d["reason"].startswith("with"), "matchedStatements": d["denied_by"],
        "context": {"principal": d["principal"], "action": d["action"], "resource": d["resource"],
                    "conditions": d["context"]}}, sort_keys=True).encode()).decode().rstrip("=")


def _denial(service, principal, d):
    base = (f"User: {principal.arn} is not authorized to perform: {d['action']} on resource: {d['resource']} "
            f"{d['reason']}")
    if d.get("launch_template"):
        base = f"You are not authorized to use launch template: {d['launch_template']}. {base}"
    if service == "ec2":
        return _error(service, 403, "UnauthorizedOperation",
                      f"You are not authorized to perform this operation. {base}. "
                      f"Encoded authorization failure message: {_encoded(d)}")
    if service in JSON_SERVICES:
        return _error(service, 400, "AccessDeniedException", base)
    return _error(service, 403, "AccessDenied", base)


def _unsigned_passthrough(environ):
    """An unsigned request that is not an AWS API call to an enforced service: moto routes it to S3
    (the README's unsigned `PUT /<bucket>` for command output)."""
    host = (environ.get("HTTP_HOST") or "").split(":")[0]
    if environ.get("HTTP_AUTHORIZATION") or environ.get("HTTP_X_AMZ_TARGET"):
        return False
    if "X-Amz-Credential" in environ.get("QUERY_STRING", "") or "Action=" in environ.get("QUERY_STRING", ""):
        return False
    return host in ("127.0.0.1", "localhost", "::1", "[::1]") and environ.get("REQUEST_METHOD") in ("PUT", "GET", "HEAD")


def check(environ, service, region, action):
    """None when the call may proceed to moto; else (status, headers, body) to answer: AWS's refusal
    (or, for the root user's GetCallerIdentity, AWS's answer)."""
    if not SETTINGS.enforcing:
        return None
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    if _unsigned_passthrough(environ):
        return None
    try:
        principal, cred = authenticate(environ, body)
    except AuthFailure as f:
        if not service:
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            service = "ssm" if target.startswith("AmazonSSM") else "kms" if target.startswith("TrentService") else "sts"
        return _auth_error(service, f)
    if principal is ROOT:
        if cred.service == "sts" and action == "GetCallerIdentity":
            return _root_identity()  # moto would answer its default user; AWS names the root user
        return None
    service = cred.service
    region = cred.region
    ambiguous = _ambiguous(environ, body, rest=service == "s3")
    if ambiguous:
        return _error(service, 400, "InvalidRequest" if service != "ec2" else "InvalidParameterCombination", ambiguous)
    if service == "s3":
        try:
            action, params = authz_s3.call_of(environ)
        except pol.Unsupported as e:
            call = Call(service, environ.get("REQUEST_METHOD", ""), region, {}, principal, environ)
            d = _record(principal, call, Req("s3:*", "*"), "deny", f"because the sandbox cannot evaluate it: {e}")
            return _denial(service, principal, d)
    else:
        params = parse_params(service, action, body, environ.get("QUERY_STRING", ""), environ)
    call = Call(service, action, region, params, principal, environ)
    if call.full == "sts:GetCallerIdentity":
        _record(principal, call, Req(call.full, "*"), "allow", "sts:GetCallerIdentity is never denied")
        return None
    if service not in ENFORCED:
        d = _record(principal, call, Req(call.full, "*"), "deny",
                    f"because the sandbox does not authorize {service} calls of IAM principals")
        return _denial(service, principal, d)
    try:
        reqs = requests_for(call)
        first = None
        for req in reqs:
            d = decide(principal, call, req)
            if d["decision"] == "deny" and first is None:
                first = d
    except CallError as e:
        return _error(service, e.status, e.code, e.message)
    except pol.Unsupported as e:
        first = _record(principal, call, Req(call.full, "*"), "deny", f"because the sandbox cannot evaluate it: {e}")
    except Exception as e:  # a sandbox bug: refuse, visibly, rather than let the call through
        traceback.print_exc()
        first = _record(principal, call, Req(call.full, "*"), "deny",
                        f"because the sandbox failed to authorize it ({type(e).__name__}: {e}; see its stderr)")
    return _denial(service, principal, first) if first is not None else None


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _ambiguous(environ, body, rest=False):
    """Why a request could be read one way here and another way by moto (which routes on the Host
    header and merges query string and body), or None. Refused rather than authorized. A REST call
    (S3: parameters in the path, query and headers, the body an object) is checked for its host
    only."""
    host = (environ.get("HTTP_HOST") or "").rsplit(":", 1)[0] if not (environ.get("HTTP_HOST") or "").startswith("[") \
        else environ["HTTP_HOST"].split("]")[0] + "]"
    if host not in LOOPBACK:
        return f"The sandbox serves loopback only; Host {environ.get('HTTP_HOST')!r} is refused in IAM enforcing mode."
    if environ.get("HTTP_X_AMZ_TARGET") or rest:
        return None
    query = environ.get("QUERY_STRING", "")
    if query and body:
        return "The sandbox refuses a request with parameters in both the query string and the body."
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace") if body else query, keep_blank_values=True)
    names = [k for k, _ in pairs]
    if len(names) != len(set(names)):
        dup = sorted({k for k in names if names.count(k) > 1})
        return f"The sandbox refuses a request that repeats parameters ({', '.join(dup)})."
    return None


def _root_identity():
    body = (
        '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>'
        f"<Arn>{ROOT.arn}</Arn><UserId>{ACCOUNT}</UserId><Account>{ACCOUNT}</Account>"
        "</GetCallerIdentityResult><ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000000</RequestId>"
        "</ResponseMetadata></GetCallerIdentityResponse>"
    ).encode()
    return "200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))], body


def requests_for(call):
    entry = table().action(call.full)
    builder = BUILDERS.get(call.full.lower())
    if builder is not None:
        return builder(call)
    if entry is not None and not entry.resources:
        return [Req(call.full, "*", None, {"aws:TagKeys": None}, TAG_FAMILIES + REQUEST_FAMILIES)]
    if entry is None:
        return [Req(call.full, "*")]
    raise pol.Unsupported(f"the sandbox does not know which resources {call.full} authorizes")


# -- control API -------------------------------------------------------------------------------

def control(method, path, query):
    """(status, json) for /_sandbox/iam and /_sandbox/iam/decisions."""
    if path == "/_sandbox/iam" and method == "GET":
        return 200, {"enforcing": SETTINGS.enforcing, "root_access_key": ROOT_KEY, "decisions": len(DECISIONS),
                     "denied": sum(1 for d in DECISIONS if d["decision"] == "deny")}
    if path == "/_sandbox/iam/decisions":
        if method == "DELETE":
            clear()
            return 200, {"ok": True}
        if method == "GET":
            out = DECISIONS
            q = {k: v[0] for k, v in query.items()}
            if q.get("denied") in ("1", "true"):
                out = [d for d in out if d["decision"] == "deny"]
            for key in ("principal", "action", "call", "resource"):
                if q.get(key):
                    out = [d for d in out if d[key] == q[key]]
            if q.get("since"):
                out = [d for d in out if d["seq"] > int(q["since"])]
            return 200, {"count": len(out), "decisions": out}
        return 405, {"error": "use GET or DELETE"}
    return 404, {"error": f"no control endpoint {method} {path} (see tests/sandbox/README.md)"}
