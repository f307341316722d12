//! bake's own IAM policies against the sandbox's IAM enforcing mode: holding only the role-scoped
//! operator and roller policies (and with builder roles capped by the boundary) bake builds,
//! rolls, patches, lists, prunes and cleans up; no statement is dead weight; and what an operator
//! must not do is denied. Every test starts its own enforcing sandbox and stops it by PID.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aws_sdk_autoscaling::types as asg_t;
use aws_sdk_ec2::types as ec2_t;
use common::sandbox::{Creds, Sandbox};
use common::{edit, json_out, project_copy, text};
use serde_json::{json, Value};

const ACCOUNT: &str = "123456789012";
const UBUNTU_2204: &str = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp3/ami-id";

fn bake(sb: &Sandbox, root: &Path, args: &[&str]) -> std::process::Output {
    common::bake_cmd_unprepared(sb, root, args).output().unwrap()
}

/// The policy bake renders for `kind` (operator, roller) for kaiju/staging in the account.
fn rendered(root: &Path, kind: &str) -> Value {
    let out = common::bake(root, &["policy", kind, "--role", "kaiju", "--env", "staging", "--account", ACCOUNT]);
    assert!(out.status.success(), "bake policy {kind}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A user holding exactly these documents, each as a customer managed policy (as an account
/// would attach them: a managed policy holds 6,144 characters).
async fn user_with(sb: &Sandbox, name: &str, docs: &[(&str, &Value)]) -> Creds {
    let iam = aws_sdk_iam::Client::new(&sb.sdk_config("us-east-1").await);
    let creds = sb.create_user(name, &[]).await;
    for (policy, doc) in docs {
        let arn = sb.create_policy(&format!("{name}-{policy}"), doc).await;
        iam.attach_user_policy().user_name(name).policy_arn(arn).send().await.unwrap();
    }
    creds
}

fn owner_tags(role: &str, env: &str) -> Vec<aws_sdk_iam::types::Tag> {
    [("bake:role", role), ("bake:env", env)].iter().map(|(k, v)| aws_sdk_iam::types::Tag::builder().key(*k).value(*v).build().unwrap()).collect()
}

/// The team's side of a roll: an instance role and profile, a launch template and a
/// launch-template group, and a launch-configuration group, all opted in to `role`/`env`.
async fn team_fleet(sb: &Sandbox, role: &str, env: &str, image: &str) {
    let conf = sb.sdk_config("us-east-1").await;
    let (iam, ec2, asg) = (aws_sdk_iam::Client::new(&conf), aws_sdk_ec2::Client::new(&conf), aws_sdk_autoscaling::Client::new(&conf));
    let app = format!("{role}-app");
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    iam.create_role().role_name(&app).assume_role_policy_document(trust.to_string()).set_tags(Some(owner_tags(role, env))).send().await.unwrap();
    iam.create_instance_profile().instance_profile_name(&app).send().await.unwrap();
    iam.add_role_to_instance_profile().instance_profile_name(&app).role_name(&app).send().await.unwrap();
    let lt = ec2
        .create_launch_template()
        .launch_template_name(format!("{role}-{env}"))
        .tag_specifications(common::opted_in_template(role, env))
        .launch_template_data(
            ec2_t::RequestLaunchTemplateData::builder()
                .image_id(image)
                .instance_type(ec2_t::InstanceType::T3Small)
                .iam_instance_profile(ec2_t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder().name(&app).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let lt_id = lt.launch_template().unwrap().launch_template_id().unwrap().to_string();
    let group = format!("{role}_{env}");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&group)
        .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version("1").build())
        .min_size(0)
        .max_size(4)
        .desired_capacity(2)
        .availability_zones("us-east-1a")
        .set_tags(Some(common::opted_in_group(&group, role, env)))
        .send()
        .await
        .unwrap();
    // The common production shape: On-Demand and Spot over several instance types.
    let mixed = format!("{role}_{env}_mixed");
    let policy = asg_t::MixedInstancesPolicy::builder()
        .launch_template(
            asg_t::LaunchTemplate::builder()
                .launch_template_specification(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version("1").build())
                .overrides(asg_t::LaunchTemplateOverrides::builder().instance_type("t3.small").build())
                .overrides(asg_t::LaunchTemplateOverrides::builder().instance_type("m5.large").build())
                .build(),
        )
        .instances_distribution(asg_t::InstancesDistribution::builder().on_demand_base_capacity(1).build())
        .build();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&mixed)
        .mixed_instances_policy(policy)
        .min_size(0)
        .max_size(4)
        .desired_capacity(2)
        .availability_zones("us-east-1a")
        .set_tags(Some(common::opted_in_group(&mixed, role, env)))
        .send()
        .await
        .unwrap();
    let legacy = format!("{role}_{env}_legacy");
    asg.create_launch_configuration()
        .launch_configuration_name(format!("{legacy}-original"))
        .image_id(image)
        .instance_type("t3.small")
        .iam_instance_profile(&app)
        .send()
        .await
        .unwrap();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&legacy)
        .launch_configuration_name(format!("{legacy}-original"))
        .min_size(0)
        .max_size(2)
        .desired_capacity(1)
        .availability_zones("us-east-1a")
        .set_tags(Some(common::opted_in_group(&legacy, role, env)))
        .send()
        .await
        .unwrap();
}

/// A launch configuration the account's administrator made, passing the `admin` profile.
async fn r_asg_create_lc(sb: &Sandbox, name: &str, image: &str) {
    let asg = aws_sdk_autoscaling::Client::new(&sb.sdk_config("us-east-1").await);
    asg.create_launch_configuration()
        .launch_configuration_name(name)
        .image_id(image)
        .instance_type("t3.small")
        .iam_instance_profile("admin")
        .send()
        .await
        .unwrap();
}

/// kaiju/staging as a team would run it: copies, a share, deprecation, an SNS topic, whole step
/// output to S3, a customer-managed EBS key, and two groups to roll.
async fn kaiju_everything(sb: &Sandbox, root: &Path) {
    let conf = sb.sdk_config("us-east-1").await;
    let topic = aws_sdk_sns::Client::new(&conf).create_topic().name("bakes").send().await.unwrap().topic_arn.unwrap();
    let key = sb.aws_json("kms", "TrentService.CreateKey", &json!({"Description": "ebs"}))["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    // The copy is shared too: under a customer managed key of its own region.
    let west_key =
        sb.aws_json_in("us-west-2", "kms", "TrentService.CreateKey", &json!({"Description": "ebs"}))["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    let (status, _) = sb.call("PUT", "/bake-steps", None);
    assert_eq!(status, 200, "the step output bucket");
    edit(
        root,
        "roles/kaiju.toml",
        "instance_type = \"t3.small\"",
        &format!("instance_type = \"t3.small\"\nkms_key_id = \"{key}\"\noutput = {{ s3_bucket = \"bake-steps\" }}"),
    );
    edit(
        root,
        "roles/kaiju.toml",
        "image = { regions = [\"us-west-2\"] }",
        &format!("image = {{ regions = [\"us-west-2\"], kms_keys = {{ us-west-2 = \"{west_key}\" }}, share_accounts = [\"111122223333\"], deprecate_after_days = 30, keep = 1 }}"),
    );
    edit(
        root,
        "roles/kaiju.toml",
        "[rollout]\nrefresh = { min_healthy_percentage = 50 }",
        &format!("[rollout]\ngroups = [\"kaiju_staging\", \"kaiju_staging_legacy\", \"kaiju_staging_mixed\"]\nrefresh = {{ min_healthy_percentage = 50 }}\n\n[notify]\nsns_topic_arn = \"{topic}\""),
    );
}

/// The Sids of a policy document's Allow statements.
fn allow_sids(doc: &Value) -> BTreeSet<String> {
    doc["Statement"].as_array().unwrap().iter().filter(|s| s["Effect"] == "Allow").map(|s| s["Sid"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_only_its_role_scoped_policies_bake_does_everything_and_every_statement_is_needed() {
    let sb = Sandbox::start_enforcing();
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    // Set-up uses what it creates at once (AWS does not promise that); bake then meets AWS's lag.
    let lag = sb.control("GET", "/_sandbox/delays", None)["delays"]["visibility_lag"].clone();
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": 0})));
    let dir = project_copy();
    let root = dir.path();
    kaiju_everything(&sb, root).await;
    let ssm = aws_sdk_ssm::Client::new(&sb.sdk_config("us-east-1").await);
    let old = ssm.get_parameter().name(UBUNTU_2204).send().await.unwrap().parameter.unwrap().value.unwrap();
    team_fleet(&sb, "kaiju", "staging", &old).await;
    // Another team's resources, which kaiju's operator must not touch.
    team_fleet(&sb, "billing", "staging", &old).await;
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": lag})));

    // The administrator's one-time set-up, with the root keys. The team's state is shared in S3
    // (bake.toml [state]), so the state policy is needed too — and enough.
    let out = bake(&sb, root, &["bootstrap"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sb.call("PUT", "/bake-state", None).0, 200);
    std::fs::write(root.join("bake.toml"), "[state]\ns3 = \"s3://bake-state/team\"\nlease = \"5s\"\n").unwrap();
    let (operator, roller) = (rendered(root, "operator"), rendered(root, "roller"));
    let out = common::bake(root, &["policy", "state", "--account", ACCOUNT]);
    assert!(out.status.success(), "bake policy state: {}", text(&out.stderr));
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    let op = user_with(&sb, "kaiju-operator", &[("operator", &operator), ("roller", &roller), ("state", &state)]).await;
    sb.run_as(Some(&op));
    sb.clear_decisions();

    let ok = |what: &str, out: &std::process::Output| {
        assert_eq!(out.status.code(), Some(0), "{what}:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    };
    // Bake and roll onto both groups.
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--roll", "--output", "json"]);
    ok("build --roll", &out);
    let m = json_out(&out);
    assert_eq!(m["status"], "succeeded", "{m}");
    assert_eq!(m["roll"]["status"], "succeeded", "{m}");
    // A patch, rolled.
    let out = bake(&sb, root, &["patch", "kaiju", "--env", "staging", "--packages", "openssl", "--roll", "--output", "json"]);
    ok("patch --roll", &out);
    let patched = json_out(&out);
    assert_eq!(patched["roll"]["status"], "succeeded");
    ok("ls", &bake(&sb, root, &["ls", "kaiju", "--env", "staging"]));
    ok("ls --history", &bake(&sb, root, &["ls", "--history"]));
    let out = bake(&sb, root, &["prune", "kaiju", "--env", "staging", "--keep", "1", "--yes", "--output", "json"]);
    ok("prune", &out);
    let decisions = json_out(&out)["decisions"].as_array().unwrap().clone();
    let retired = decisions.iter().find(|d| d["action"] == "retire").expect("prune retired the golden image")["image"]["id"].as_str().unwrap().to_string();
    ok("prune --restore", &bake(&sb, root, &["prune", "kaiju", "--env", "staging", "--restore", &retired]));
    // A failed bake kept for debugging, removed by `bake cleanup ID`.
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=base step=time", "exit_code": 1, "times": 2}]})));
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--force", "--on-error", "abort", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let kept = json_out(&out)["bake_id"].as_str().unwrap().to_string();
    ok("cleanup ID", &bake(&sb, root, &["cleanup", &kept]));
    // Another, whose journal is lost: the orphan sweep removes it.
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--force", "--on-error", "abort", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(root.join(".bake")).unwrap();
    ok("cleanup --orphans", &bake(&sb, root, &["cleanup", "--orphans", "--older-than", "0s", "--yes"]));
    // A failed migration to a launch template, undone.
    let bad = json_out(&bake(&sb, root, &["build", "kaiju", "--env", "staging", "--force", "--output", "json"]))["images"]["us-east-1"]["ami_id"]
        .as_str()
        .unwrap()
        .to_string();
    sb.control("POST", "/_sandbox/unhealthy_amis", Some(json!({"amis": [bad]})));
    edit(root, "roles/kaiju.toml", "refresh = { min_healthy_percentage = 50 }", "refresh = { min_healthy_percentage = 50, auto_rollback = true }");
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &bad, "--migrate-to-launch-template", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(json_out(&out)["groups"].as_array().unwrap().iter().all(|g| g["final_image"] != bad.as_str()));

    // Nothing was denied, and only the two documents allowed anything.
    let denied = sb.decisions(true);
    assert!(denied.is_empty(), "denied: {:#?}", denied.iter().map(|d| format!("{} {} ({})", d["action"], d["resource"], d["reason"])).collect::<Vec<_>>());
    // No statement is dead weight: each is the only one allowing at least one request.
    let all = sb.decisions(false);
    let mut needed: BTreeMap<String, usize> = BTreeMap::new();
    for d in all.iter().filter(|d| d["principal"].as_str().map(|p| p.ends_with("user/kaiju-operator")).unwrap_or(false)) {
        let by: Vec<&Value> = d["allowed_by"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
        if by.len() == 1 {
            *needed.entry(by[0]["sid"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let mut dead: Vec<String> = Vec::new();
    for sid in allow_sids(&operator).into_iter().chain(allow_sids(&roller)).chain(allow_sids(&state)) {
        if !needed.contains_key(&sid) {
            dead.push(sid);
        }
    }
    assert!(dead.is_empty(), "statements no request needed: {dead:?} (needed: {needed:?})");

    // kaiju shares its images, so its operator may change launch permissions: a public share is
    // then stopped by the account's AMI Block Public Access (on in new accounts), not by IAM.
    let image = patched["images"]["us-east-1"]["ami_id"].as_str().unwrap().to_string();
    let ec2 = aws_sdk_ec2::Client::new(&sb.sdk_config_as("us-east-1", &op).await);
    let e = ec2
        .modify_image_attribute()
        .image_id(&image)
        .launch_permission(
            ec2_t::LaunchPermissionModifications::builder().add(ec2_t::LaunchPermission::builder().group(ec2_t::PermissionGroup::All).build()).build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(err_of(&e).0, "OperationNotPermitted", "{e:?}");

    // And removing one, for real, fails with AccessDenied naming the action.
    sb.run_as(None);
    let mut without = operator.clone();
    without["Statement"].as_array_mut().unwrap().retain(|s| s["Sid"] != "PublishParameters");
    let short = user_with(&sb, "short-operator", &[("operator", &without), ("roller", &roller), ("state", &state)]).await;
    sb.run_as(Some(&short));
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("ssm:GetParameter") && err.contains("AccessDeniedException"), "{err}");
}

/// The (code, message) of an SDK error.
fn err_of<E: aws_sdk_ec2::error::ProvideErrorMetadata>(e: &E) -> (String, String) {
    (e.code().unwrap_or_default().to_string(), e.message().unwrap_or_default().to_string())
}

fn denied<T, E: aws_sdk_ec2::error::ProvideErrorMetadata + std::fmt::Debug>(what: &str, r: Result<T, E>, code: &str) {
    match r {
        Ok(_) => panic!("{what}: allowed"),
        Err(e) => assert_eq!(err_of(&e).0, code, "{what}: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_the_operator_policies_what_an_operator_must_not_do_is_denied() {
    let sb = Sandbox::start_enforcing();
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": 0, "iam_propagation": 0})));
    let dir = project_copy();
    let root = dir.path();
    let conf = sb.sdk_config("us-east-1").await;
    let (r_iam, r_ec2, r_ssm) = (aws_sdk_iam::Client::new(&conf), aws_sdk_ec2::Client::new(&conf), aws_sdk_ssm::Client::new(&conf));
    let ubuntu = r_ssm.get_parameter().name(UBUNTU_2204).send().await.unwrap().parameter.unwrap().value.unwrap();
    team_fleet(&sb, "kaiju", "staging", &ubuntu).await;
    team_fleet(&sb, "billing", "staging", &ubuntu).await;
    assert!(bake(&sb, root, &["bootstrap"]).status.success());
    let boundary = format!("arn:aws:iam::{ACCOUNT}:policy/bake/bake-builder-boundary");
    // What the account already holds: another team's bake-made image, an instance that is not a
    // builder, a role under /bake/ that bake did not make, and an image nobody vetted.
    let img_tags = |role: &str| {
        let mut b = ec2_t::TagSpecification::builder().resource_type(ec2_t::ResourceType::Image);
        for (k, v) in [("bake:managed", "true"), ("bake:role", role), ("bake:env", "staging"), ("bake:complete", "true")] {
            b = b.tags(ec2_t::Tag::builder().key(k).value(v).build());
        }
        b.build()
    };
    let host = r_ec2.run_instances().image_id(&ubuntu).min_count(1).max_count(1).send().await.unwrap().instances()[0].instance_id().unwrap().to_string();
    let billing_image =
        r_ec2.create_image().instance_id(&host).name("billing-staging-1").tag_specifications(img_tags("billing")).send().await.unwrap().image_id.unwrap();
    let unvetted = r_ec2.create_image().instance_id(&host).name("someones-image").send().await.unwrap().image_id.unwrap();
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    r_iam
        .create_role()
        .role_name("legacy-builder")
        .path("/bake/")
        .assume_role_policy_document(trust.to_string())
        .set_tags(Some(owner_tags("kaiju", "staging")))
        .send()
        .await
        .unwrap();
    r_iam.create_role().role_name("admin").assume_role_policy_document(trust.to_string()).send().await.unwrap();
    r_iam.create_instance_profile().instance_profile_name("admin").send().await.unwrap();
    r_iam.add_role_to_instance_profile().instance_profile_name("admin").role_name("admin").send().await.unwrap();

    let op = user_with(&sb, "kaiju-operator", &[("operator", &rendered(root, "operator")), ("roller", &rendered(root, "roller"))]).await;
    let conf = sb.sdk_config_as("us-east-1", &op).await;
    let (iam, ec2, asg, ssm) =
        (aws_sdk_iam::Client::new(&conf), aws_sdk_ec2::Client::new(&conf), aws_sdk_autoscaling::Client::new(&conf), aws_sdk_ssm::Client::new(&conf));
    let mine = owner_tags("kaiju", "staging")
        .into_iter()
        .chain([aws_sdk_iam::types::Tag::builder().key("bake:managed").value("true").build().unwrap()])
        .collect::<Vec<_>>();

    // A builder role without the boundary, or with another one.
    denied(
        "a role without the boundary",
        iam.create_role()
            .role_name("bake-b-00000000000a")
            .path("/bake/")
            .assume_role_policy_document(trust.to_string())
            .set_tags(Some(mine.clone()))
            .send()
            .await,
        "AccessDenied",
    );
    let other = sb.create_policy("wide-open", &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})).await;
    denied(
        "a role with another boundary",
        iam.create_role()
            .role_name("bake-b-00000000000b")
            .path("/bake/")
            .assume_role_policy_document(trust.to_string())
            .permissions_boundary(&other)
            .set_tags(Some(mine.clone()))
            .send()
            .await,
        "AccessDenied",
    );
    denied(
        "a role not named as bake names builders",
        iam.create_role()
            .role_name("ci-deployer")
            .path("/bake/")
            .assume_role_policy_document(trust.to_string())
            .permissions_boundary(&boundary)
            .set_tags(Some(mine.clone()))
            .send()
            .await,
        "AccessDenied",
    );
    // With the boundary and a builder's name: allowed, and capped by it. Its creator chooses its
    // trust policy: one that lets the account's principals assume it.
    let anyone = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")}, "Action": "sts:AssumeRole"}]}).to_string();
    iam.create_role()
        .role_name("bake-b-00000000000c")
        .path("/bake/")
        .assume_role_policy_document(&anyone)
        .permissions_boundary(&boundary)
        .set_tags(Some(mine.clone()))
        .send()
        .await
        .unwrap();
    let admin = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}).to_string();
    denied(
        "an admin inline policy on a /bake/ role bake did not make",
        iam.put_role_policy().role_name("legacy-builder").policy_name("admin").policy_document(&admin).send().await,
        "AccessDenied",
    );
    // Claiming a role by tagging it as bake's: refused for names bake does not give; a role with
    // a builder's name and bake's tags but no boundary (an administrator's) cannot be changed.
    denied("claiming a /bake/ role with bake's tags", iam.tag_role().role_name("legacy-builder").set_tags(Some(mine.clone())).send().await, "AccessDenied");
    r_iam
        .create_role()
        .role_name("bake-b-00000000000d")
        .path("/bake/")
        .assume_role_policy_document(trust.to_string())
        .set_tags(Some(mine.clone()))
        .send()
        .await
        .unwrap();
    // Another role's builder, running now: its role and profile cannot be re-tagged as this role's.
    let theirs: Vec<aws_sdk_iam::types::Tag> = [("bake:managed", "true"), ("bake:role", "billing"), ("bake:env", "staging")]
        .iter()
        .map(|(k, v)| aws_sdk_iam::types::Tag::builder().key(*k).value(*v).build().unwrap())
        .collect();
    r_iam
        .create_role()
        .role_name("bake-b-00000000000e")
        .path("/bake/")
        .assume_role_policy_document(trust.to_string())
        .permissions_boundary(&boundary)
        .set_tags(Some(theirs.clone()))
        .send()
        .await
        .unwrap();
    r_iam.create_instance_profile().instance_profile_name("bake-b-00000000000e").path("/bake/").set_tags(Some(theirs.clone())).send().await.unwrap();
    denied("claiming another role's builder role", iam.tag_role().role_name("bake-b-00000000000e").set_tags(Some(mine.clone())).send().await, "AccessDenied");
    denied(
        "claiming another role's builder profile",
        iam.tag_instance_profile().instance_profile_name("bake-b-00000000000e").set_tags(Some(mine.clone())).send().await,
        "AccessDenied",
    );
    denied(
        "an admin inline policy on a builder-named role without the boundary",
        iam.put_role_policy().role_name("bake-b-00000000000d").policy_name("admin").policy_document(&admin).send().await,
        "AccessDenied",
    );
    denied("removing the boundary", iam.delete_role_permissions_boundary().role_name("bake-b-00000000000c").send().await, "AccessDenied");
    denied(
        "attaching a managed policy but SSM core",
        iam.attach_role_policy().role_name("bake-b-00000000000c").policy_arn(&other).send().await,
        "AccessDenied",
    );
    // An admin inline policy on its own builder role is allowed, but the boundary caps it, and
    // off an EC2 instance its credentials do nothing at all (not even what the boundary allows).
    iam.put_role_policy().role_name("bake-b-00000000000c").policy_name("admin").policy_document(&admin).send().await.unwrap();
    let session = sb.assume_role(&format!("arn:aws:iam::{ACCOUNT}:role/bake/bake-b-00000000000c"), "escalate").await;
    let as_builder_conf = sb.sdk_config_as("us-east-1", &session).await;
    let as_builder = aws_sdk_iam::Client::new(&as_builder_conf);
    denied("a builder role doing IAM", as_builder.create_user().user_name("backdoor").send().await, "AccessDenied");
    denied(
        "a builder role's credentials off an instance",
        // (the boundary allows builders to read boxoffice's registry password)
        aws_sdk_ssm::Client::new(&as_builder_conf).get_parameter().name("/universe/registry/password").send().await,
        "AccessDeniedException",
    );
    let why: Vec<Value> = sb.decisions(true).into_iter().filter(|d| d["action"] == "ssm:GetParameter").collect();
    assert!(
        why.iter().any(|d| d["reason"].as_str().unwrap_or("").contains("explicit deny in a permissions boundary")),
        "the boundary's OnlyFromInstances: {why:?}"
    );

    // Launching: a builder with a role that is not a builder's; from an arbitrary image.
    let launch = |image: &str, profile: Option<&str>| {
        let mut r = ec2.run_instances().image_id(image).min_count(1).max_count(1);
        for t in [ec2_t::ResourceType::Instance, ec2_t::ResourceType::Volume, ec2_t::ResourceType::NetworkInterface] {
            let mut b = ec2_t::TagSpecification::builder().resource_type(t);
            for (k, v) in [("bake:managed", "true"), ("bake:role", "kaiju"), ("bake:env", "staging")] {
                b = b.tags(ec2_t::Tag::builder().key(k).value(v).build());
            }
            r = r.tag_specifications(b.build());
        }
        if let Some(p) = profile {
            r = r.iam_instance_profile(ec2_t::IamInstanceProfileSpecification::builder().name(p).build());
        }
        r.send()
    };
    denied("passing a role that is not a builder's", launch(&ubuntu, Some("admin")).await, "UnauthorizedOperation");
    denied("launching an image nobody vetted", launch(&unvetted, None).await, "UnauthorizedOperation");

    // Sharing publicly: a snapshot by IAM; an image by the account's AMI Block Public Access.
    let snap = r_ec2.describe_images().image_ids(&billing_image).send().await.unwrap().images()[0].block_device_mappings()[0]
        .ebs()
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    r_ec2.create_tags().resources(&snap).tags(ec2_t::Tag::builder().key("bake:role").value("kaiju").build()).send().await.unwrap();
    denied(
        "a snapshot shared publicly",
        ec2.modify_snapshot_attribute()
            .snapshot_id(&snap)
            .create_volume_permission(
                ec2_t::CreateVolumePermissionModifications::builder()
                    .add(ec2_t::CreateVolumePermission::builder().group(ec2_t::PermissionGroup::All).build())
                    .build(),
            )
            .send()
            .await,
        "UnauthorizedOperation",
    );

    // An image shared publicly: IAM has no key for who is added (and the operator may take shares
    // away, which needs the action), so the account's AMI Block Public Access refuses it.
    let kaiju_image =
        r_ec2.create_image().instance_id(&host).name("kaiju-staging-1").tag_specifications(img_tags("kaiju")).send().await.unwrap().image_id.unwrap();
    denied(
        "an image shared publicly",
        ec2.modify_image_attribute()
            .image_id(&kaiju_image)
            .launch_permission(
                ec2_t::LaunchPermissionModifications::builder().add(ec2_t::LaunchPermission::builder().group(ec2_t::PermissionGroup::All).build()).build(),
            )
            .send()
            .await,
        "OperationNotPermitted",
    );
    // A snapshot shared with an account the role does not list: an explicit Deny.
    let kaiju_snap = r_ec2.describe_images().image_ids(&kaiju_image).send().await.unwrap().images()[0].block_device_mappings()[0]
        .ebs()
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    let mut t = r_ec2.create_tags().resources(&kaiju_snap);
    for (k, v) in [("bake:managed", "true"), ("bake:role", "kaiju"), ("bake:env", "staging")] {
        t = t.tags(ec2_t::Tag::builder().key(k).value(v).build());
    }
    t.send().await.unwrap();
    denied(
        "a snapshot shared with an account the role does not list",
        ec2.modify_snapshot_attribute()
            .snapshot_id(&kaiju_snap)
            .create_volume_permission(
                ec2_t::CreateVolumePermissionModifications::builder().add(ec2_t::CreateVolumePermission::builder().user_id("999999999999").build()).build(),
            )
            .send()
            .await,
        "UnauthorizedOperation",
    );
    // Taking a share away is allowed (it is how a removed share is revoked).
    ec2.modify_snapshot_attribute()
        .snapshot_id(&kaiju_snap)
        .create_volume_permission(
            ec2_t::CreateVolumePermissionModifications::builder().remove(ec2_t::CreateVolumePermission::builder().user_id("999999999999").build()).build(),
        )
        .send()
        .await
        .expect("a removal");

    // Another team's things: its template, its group, its image.
    let billing_lt = r_ec2.describe_launch_templates().launch_template_names("billing-staging").send().await.unwrap().launch_templates()[0]
        .launch_template_id()
        .unwrap()
        .to_string();
    denied(
        "a new version of another role's template",
        ec2.create_launch_template_version()
            .launch_template_id(&billing_lt)
            .source_version("1")
            .launch_template_data(ec2_t::RequestLaunchTemplateData::builder().image_id(&ubuntu).build())
            .send()
            .await,
        "UnauthorizedOperation",
    );
    denied(
        "scaling another role's group to zero",
        asg.update_auto_scaling_group().auto_scaling_group_name("billing_staging").min_size(0).desired_capacity(0).send().await,
        "AccessDenied",
    );
    denied("refreshing another role's group", asg.start_instance_refresh().auto_scaling_group_name("billing_staging").send().await, "AccessDenied");
    denied("deregistering another role's image", ec2.deregister_image().image_id(&billing_image).send().await, "UnauthorizedOperation");
    let copy_tags = {
        let mut b = ec2_t::TagSpecification::builder().resource_type(ec2_t::ResourceType::Image);
        for (k, v) in [("bake:managed", "true"), ("bake:role", "kaiju"), ("bake:env", "staging")] {
            b = b.tags(ec2_t::Tag::builder().key(k).value(v).build());
        }
        b.build()
    };
    denied(
        "copying another role's image as one's own",
        ec2.copy_image().source_image_id(&billing_image).source_region("us-east-1").name("mine-now").tag_specifications(copy_tags).send().await,
        "UnauthorizedOperation",
    );
    // A group of its own onto a version alias (no PassRole check at launch) or a launch
    // configuration bake did not make.
    denied(
        "putting an owned group on $Latest",
        asg.update_auto_scaling_group()
            .auto_scaling_group_name("kaiju_staging")
            .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_name("kaiju-staging").version("$Latest").build())
            .send()
            .await,
        "AccessDenied",
    );
    r_asg_create_lc(&sb, "kaiju-admin-lc", &ubuntu).await;
    denied(
        "putting an owned group on a launch configuration bake did not make",
        asg.update_auto_scaling_group().auto_scaling_group_name("kaiju_staging_legacy").launch_configuration_name("kaiju-admin-lc").send().await,
        "AccessDenied",
    );
    denied(
        "claiming another's resource with bake's tags",
        ec2.create_tags().resources(&billing_image).tags(ec2_t::Tag::builder().key("bake:role").value("kaiju").build()).send().await,
        "UnauthorizedOperation",
    );
    // Commands only on builders.
    denied(
        "SendCommand to an instance that is not a builder",
        ssm.send_command().instance_ids(&host).document_name("AWS-RunShellScript").parameters("commands", vec!["id".to_string()]).send().await,
        "AccessDeniedException",
    );
    // Every one of these is in the sandbox's record as a denial naming its action.
    let actions: BTreeSet<String> = sb.decisions(true).iter().map(|d| d["action"].as_str().unwrap().to_string()).collect();
    for a in [
        "iam:CreateRole",
        "iam:PutRolePolicy",
        "iam:DeleteRolePermissionsBoundary",
        "iam:AttachRolePolicy",
        "iam:CreateUser",
        "iam:PassRole",
        "ec2:RunInstances",
        "ec2:ModifySnapshotAttribute",
        "ec2:CreateLaunchTemplateVersion",
        "autoscaling:UpdateAutoScalingGroup",
        "autoscaling:StartInstanceRefresh",
        "ec2:DeregisterImage",
        "ec2:CreateTags",
        "ssm:SendCommand",
        "iam:TagRole",
        "iam:TagInstanceProfile",
        "ec2:CopyImage",
    ] {
        assert!(actions.contains(a), "no denial recorded for {a}: {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_pre_created_profile_the_operator_holds_no_iam_write_and_bakes() {
    let sb = Sandbox::start_enforcing();
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": 0})));
    let dir = project_copy();
    let root = dir.path();
    edit(root, "roles/kaiju.toml", "instance_type = \"t3.small\"", "instance_type = \"t3.small\"\ninstance_profile = \"kaiju-builder\"");
    // The account made the builder's role and profile beforehand (under /bake/, opted in).
    let iam = aws_sdk_iam::Client::new(&sb.sdk_config("us-east-1").await);
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    iam.create_role()
        .role_name("kaiju-builder")
        .path("/bake/")
        .assume_role_policy_document(trust.to_string())
        .set_tags(Some(owner_tags("kaiju", "staging")))
        .send()
        .await
        .unwrap();
    iam.attach_role_policy().role_name("kaiju-builder").policy_arn("arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore").send().await.unwrap();
    iam.create_instance_profile().instance_profile_name("kaiju-builder").path("/bake/").send().await.unwrap();
    iam.add_role_to_instance_profile().instance_profile_name("kaiju-builder").role_name("kaiju-builder").send().await.unwrap();

    let operator = rendered(root, "operator");
    let writes: Vec<String> = operator["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| match &s["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
            _ => vec![],
        })
        .filter(|a| a.starts_with("iam:") && !a.starts_with("iam:Get") && !a.starts_with("iam:List") && a != "iam:PassRole")
        .collect();
    assert!(writes.is_empty(), "IAM writes in the operator policy: {writes:?}");
    let op = user_with(&sb, "kaiju-operator", &[("operator", &operator)]).await;
    sb.run_as(Some(&op));
    let before = sb.live();
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["builder"]["instance_profile"], "kaiju-builder");
    assert_eq!(m["builder"]["iam_role"], "kaiju-builder");
    assert!(sb.decisions(true).is_empty(), "{:#?}", sb.decisions(true));
    let made: Vec<Value> = sb.live().into_iter().filter(|r| !before.contains(r)).collect();
    assert!(made.iter().all(|r| r["type"] != "iam-role" && r["type"] != "instance-profile"), "{made:#?}");
}

#[test]
fn without_the_boundary_or_with_an_old_one_a_bake_stops_before_it_creates_anything() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("the permissions boundary arn:aws:iam::123456789012:policy/bake/bake-builder-boundary does not exist")
            && err.contains("`bake bootstrap`")
            && err.contains("nothing was created"),
        "{err}"
    );
    assert!(sb.calls()["mutating"].as_array().unwrap().is_empty(), "{}", sb.calls()["mutating"]);

    // The administrator bootstraps; a role then asks its builder for more (whole step output to
    // S3): the boundary no longer covers it, and the bake says so before creating anything.
    let out = bake(&sb, root, &["bootstrap"]);
    assert!(out.status.success() && text(&out.stdout).contains(": created"), "{}", text(&out.stderr));
    assert!(text(&bake(&sb, root, &["bootstrap"]).stdout).contains(": unchanged"));
    edit(root, "roles/kaiju.toml", "instance_type = \"t3.small\"", "instance_type = \"t3.small\"\noutput = { s3_bucket = \"bake-steps\" }");
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("does not allow what the builder of kaiju/staging needs (s3:putobject on arn:aws:s3:::bake-steps/bake/kaiju/staging/*"), "{err}");
    assert!(sb.calls()["mutating"].as_array().unwrap().is_empty(), "{}", sb.calls()["mutating"]);
    let out = bake(&sb, root, &["bootstrap", "--output", "json"]);
    assert_eq!(json_out(&out)["status"], "updated");
    let (status, _) = sb.call("PUT", "/bake-steps", None);
    assert_eq!(status, 200);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
