"""Other accounts: moto keeps every service's state per account and tells the account from the
access key (a session from STS AssumeRole belongs to the role's account). What the sandbox adds,
so that a cross-account bug cannot hide behind moto's leniency:

- AssumeRole is refused as AWS refuses it (AccessDenied) unless the role exists in its account
  and its trust policy allows the caller: moto hands out credentials for any ARN ("the role does
  not need to exist"). The trust policy is read with the same evaluator as IAM enforcing mode
  (policy.py): Principal (`*`, the account id or root ARN, or the caller's own ARN), Action,
  Condition (sts:ExternalId, aws:PrincipalAccount, aws:PrincipalArn); a Deny wins.
  https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_common-scenarios_third-party.html
- Images shared with an account (images.py) and snapshots shared with it (pages.py) are visible
  there; refreshes and launches of groups in every account run (autoscaling.py).
- POST /_sandbox/accounts makes a role in another account whose trust policy lets the home account
  in (tests set up a workload account this way, then work in it through AssumeRole).

IAM enforcing mode (authz.py) models the home account only: a session of another account's role is
refused there as an unknown key."""

import json
import urllib.parse

from moto.iam.models import iam_backends
from moto.sts.models import sts_backends
from moto.sts.responses import TokenResponse

from . import policy as pol
from .state import ACCOUNT, err

_orig_assume = TokenResponse.assume_role


def _caller_arn(self):
    """The calling identity's ARN: a session's assumed-role ARN, or the account's root."""
    key = self.get_access_key()
    for acct in list(sts_backends.keys()):
        for part in list(sts_backends[acct].values()):
            s = part.get_assumed_role_from_access_key(key)
            if s is not None:
                return s.arn, s.role_arn
    return f"arn:aws:iam::{self.current_account}:root", None


def _doc(text):
    if isinstance(text, str) and text.startswith("%7B"):
        text = urllib.parse.unquote(text)
    return json.loads(text) if isinstance(text, str) else text


def assume_role(self):
    role_arn = self._get_param("RoleArn") or ""
    external_id = self._get_param("ExternalId")
    caller = self.current_account
    arn, role_of_session = _caller_arn(self)
    denied = err("AccessDenied", f"User: {arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}")
    parts = role_arn.split(":")
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "iam" or not parts[5].startswith("role/"):
        raise err("ValidationError", f"{role_arn} is invalid")
    account, name = parts[4], parts[5].rsplit("/", 1)[-1]
    role = next((r for r in iam_backends[account]["aws"].roles.values() if r.name == name), None)
    if role is None:
        raise denied
    who = {"account": caller, "arn": arn, "identity_arn": role_of_session or arn}
    ctx = pol.Context({"sts:ExternalId": external_id, "aws:PrincipalAccount": caller,
                       "aws:PrincipalArn": role_of_session or arn})
    allowed = False
    for st in pol.statements(_doc(role.assume_role_policy_document)):
        if pol.principal_matches(st.get("Principal"), who) is None:
            continue
        if not any(pol.action_matches(a, "sts:AssumeRole") for a in pol._listify(st.get("Action"))):
            continue
        if not pol.conditions_hold(st.get("Condition"), ctx):
            continue
        if st.get("Effect") == "Deny":
            raise denied
        allowed = allowed or st.get("Effect") == "Allow"
    if not allowed:
        raise denied
    return _orig_assume(self)


TokenResponse.assume_role = assume_role


def create_account_role(body):
    """POST /_sandbox/accounts {"account", "role", "trust" (account id, default the home account),
    "external_id" (optional)}: the role's ARN."""
    account = str(body.get("account") or "")
    if len(account) != 12 or not account.isdigit():
        raise ValueError("account must be a 12-digit account id")
    trust = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{body.get('trust') or ACCOUNT}:root"},
             "Action": "sts:AssumeRole"}
    if body.get("external_id"):
        trust["Condition"] = {"StringEquals": {"sts:ExternalId": body["external_id"]}}
    from . import seed
    seed.join(account)
    iam = iam_backends[account]["aws"]
    name = body.get("role") or "bake-target"
    role = next((r for r in iam.roles.values() if r.name == name), None)
    if role is None:
        role = iam.create_role(role_name=name, assume_role_policy_document=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
                               path="/", permissions_boundary=None, description="", tags=[], max_session_duration="3600")
    return {"arn": role.arn, "account": account}
