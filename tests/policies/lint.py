#!/usr/bin/env python3
"""Runs parliament and cloudsplaining on every policy bake renders for the project (the operator
and roller policies for every role and for all of them, each role's builder policy in each env,
the builders' boundary), one statement at a time, and compares what they find with
tests/policies/findings.toml, where each accepted finding has a one-line reason. A finding not
listed there fails, and so does a listed one that no longer occurs (the list stays true).

    python3 tests/policies/lint.py BAKE_BINARY PROJECT_ROOT [FINDINGS_FILE]
"""

import json
import os
import subprocess
import sys
import tomllib


def render(bake, root, *args):
    out = subprocess.run([bake, "--root", root, "policy", *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bake policy {' '.join(args)}: {out.stderr.strip()}")
    # A builder that needs no policy gets none (bake says so on stderr).
    return json.loads(out.stdout) if out.stdout.strip() else None


def documents(bake, root):
    """(kind, document) for every policy the project renders."""
    roles = sorted(f[:-5] for f in os.listdir(os.path.join(root, "roles")) if f.endswith(".toml"))
    yield "boundary", render(bake, root, "boundary")
    if os.path.exists(os.path.join(root, "bake.toml")):
        yield "state", render(bake, root, "state")
    for kind in ("operator", "roller"):
        yield kind, render(bake, root, kind)
        for role in roles:
            yield kind, render(bake, root, kind, "--role", role)
    for role in roles:
        with open(os.path.join(root, "roles", f"{role}.toml"), "rb") as f:
            envs = sorted((tomllib.load(f).get("env") or {}).keys())
        for env in envs:
            doc = render(bake, root, "builder", "--role", role, "--env", env)
            if doc is not None:
                yield "builder", doc


def findings(kind, doc):
    """The keys `kind/Sid/tool/ISSUE` of what each tool finds in each statement of `doc`."""
    import parliament
    from cloudsplaining.scan.policy_document import PolicyDocument

    keys = {}
    statements = doc.get("Statement") or []
    for i, st in enumerate(statements if isinstance(statements, list) else [statements]):
        sid = st.get("Sid") or f"#{i}"
        one = {"Version": "2012-10-17", "Statement": [st]}
        for f in parliament.analyze_policy_string(json.dumps(one)).findings:
            keys.setdefault(f"{kind}/{sid}/parliament/{f.issue}", str(f.detail)[:300])
        pd = PolicyDocument(one)
        for check in ("allows_privilege_escalation", "allows_data_exfiltration_actions", "permissions_management_without_constraints",
                      "write_actions_without_constraints", "tagging_actions_without_constraints", "infrastructure_modification",
                      "credentials_exposure", "service_wildcard"):
            value = getattr(pd, check)
            if value:
                keys.setdefault(f"{kind}/{sid}/cloudsplaining/{check}", json.dumps(value, default=str)[:300])
    return keys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    bake, root = sys.argv[1], sys.argv[2]
    listed_file = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "findings.toml")
    try:
        import parliament  # noqa: F401
        import cloudsplaining  # noqa: F401
    except ImportError as e:
        sys.exit(f"parliament and cloudsplaining are needed (python3 -m pip install parliament cloudsplaining): {e}")
    found = {}
    for kind, doc in documents(bake, root):
        found.update(findings(kind, doc))
    with open(listed_file, "rb") as f:
        listed = {entry["key"]: entry for entry in tomllib.load(f).get("finding", [])}
    bad = False
    for key, detail in sorted(found.items()):
        entry = listed.get(key)
        if entry is None:
            print(f"new finding: {key}: {detail}")
            bad = True
        elif not str(entry.get("reason", "")).strip():
            print(f"listed without a reason: {key}")
            bad = True
    for key in sorted(set(listed) - set(found)):
        print(f"listed but no longer found (remove it from {os.path.basename(listed_file)}): {key}")
        bad = True
    print(f"{len(found)} finding(s), all listed with a reason" if not bad else "policy lint failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
