//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod sandbox;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A scratch copy of the example project (roles, cookbooks, policies).
pub fn project_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["roles", "cookbooks", "policies"] {
        copy_dir(&repo().join(sub), &dir.path().join(sub));
    }
    dir
}

/// Runs the bake binary with `--root root` and `args`, with no BAKE_VAR_* from outside.
pub fn bake(root: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bake"));
    cmd.arg("--root").arg(root).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BAKE_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run bake")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The bake binary with `--root root`, run in `root`, talking to `sb` (and to nothing else).
/// Before a build or a patch, the account gets the set-up an administrator gives it once
/// (`bake bootstrap`: the builders' permissions boundary, from the project as the test left it).
pub fn bake_cmd_on(sb: &sandbox::Sandbox, root: &Path, args: &[&str]) -> Command {
    if matches!(args.first(), Some(&"build") | Some(&"patch")) {
        let out = bake_cmd_unprepared(sb, root, &["bootstrap"]).output().expect("run bake bootstrap");
        assert!(out.status.success(), "bake bootstrap: {}", text(&out.stderr));
    }
    bake_cmd_unprepared(sb, root, args)
}

/// [`bake_cmd_on`] without the account's one-time set-up.
pub fn bake_cmd_unprepared(sb: &sandbox::Sandbox, root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bake"));
    cmd.arg("--root").arg(root).args(args).current_dir(root);
    for (k, _) in std::env::vars() {
        if k.starts_with("BAKE_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in sb.env() {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the bake binary with `args` and reads its progress (stdout) until a line contains
/// `marker`; the lines read so far. stdout keeps being drained so the bake never blocks.
pub fn spawn_until(sb: &sandbox::Sandbox, root: &Path, args: &[&str], marker: &str) -> (std::process::Child, Vec<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = bake_cmd_on(sb, root, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap() == 0 || std::time::Instant::now() > deadline {
            panic!("bake {args:?} ended before {marker:?}: {lines:#?}");
        }
        let done = l.contains(marker);
        lines.push(l);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, lines)
}

/// Sends `sig` (libc::SIGINT, SIGKILL, …) to a child.
pub fn signal(child: &std::process::Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub fn bake_on(sb: &sandbox::Sandbox, root: &Path, args: &[&str]) -> Output {
    bake_cmd_on(sb, root, args).output().expect("run bake")
}

/// stdout as JSON, or a panic showing both streams.
pub fn json_out(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr)))
}

/// Replaces the first `from` with `to` in a project file (which must contain it).
pub fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let p = root.join(file);
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains(from), "{file} lacks {from:?}");
    std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
}

/// The tags a team puts on an Auto Scaling group to opt it in to bake's role/env (README, IAM).
pub fn opted_in_group(group: &str, role: &str, env: &str) -> Vec<aws_sdk_autoscaling::types::Tag> {
    [("bake:role", role), ("bake:env", env)]
        .iter()
        .map(|(k, v)| {
            aws_sdk_autoscaling::types::Tag::builder()
                .key(*k)
                .value(*v)
                .resource_id(group)
                .resource_type("auto-scaling-group")
                .propagate_at_launch(false)
                .build()
        })
        .collect()
}

/// The same for the group's launch template, as a tag specification of CreateLaunchTemplate.
pub fn opted_in_template(role: &str, env: &str) -> aws_sdk_ec2::types::TagSpecification {
    aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::LaunchTemplate)
        .tags(aws_sdk_ec2::types::Tag::builder().key("bake:role").value(role).build())
        .tags(aws_sdk_ec2::types::Tag::builder().key("bake:env").value(env).build())
        .build()
}

/// The SDK clients a test talks to the sandbox with (one set for every test file).
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub iam: aws_sdk_iam::Client,
    pub asg: aws_sdk_autoscaling::Client,
}

impl Clients {
    pub fn new(conf: &aws_config::SdkConfig) -> Clients {
        Clients {
            ec2: aws_sdk_ec2::Client::new(conf),
            ssm: aws_sdk_ssm::Client::new(conf),
            iam: aws_sdk_iam::Client::new(conf),
            asg: aws_sdk_autoscaling::Client::new(conf),
        }
    }
}

/// An image that looks like one bake made for kaiju/staging: role, env, complete and managed
/// tags on the image and its snapshot (made from `source` through a short-lived instance).
pub async fn baked_image(ec2: &aws_sdk_ec2::Client, source: &str, name: &str) -> String {
    use aws_sdk_ec2::types as ec2_t;
    let r = ec2.run_instances().image_id(source).min_count(1).max_count(1).send().await.unwrap();
    let id = r.instances()[0].instance_id().unwrap().to_string();
    let mut tags = ec2_t::TagSpecification::builder();
    for (k, v) in [("bake:role", "kaiju"), ("bake:env", "staging"), ("bake:complete", "true"), ("bake:managed", "true")] {
        tags = tags.tags(ec2_t::Tag::builder().key(k).value(v).build());
    }
    let img = ec2
        .create_image()
        .instance_id(&id)
        .name(name)
        .tag_specifications(tags.clone().resource_type(ec2_t::ResourceType::Image).build())
        .tag_specifications(tags.resource_type(ec2_t::ResourceType::Snapshot).build())
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    ec2.terminate_instances().instance_ids(&id).send().await.unwrap();
    img
}

/// An Auto Scaling group in zone `a` of the client's region on launch template `lt_id` at `version` (a number,
/// `$Latest` or `$Default`): `size` instances, room for `max`, with `tags`.
pub async fn template_group(
    asg: &aws_sdk_autoscaling::Client,
    name: &str,
    lt_id: &str,
    version: &str,
    size: i32,
    max: i32,
    tags: Vec<aws_sdk_autoscaling::types::Tag>,
) {
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder().launch_template_id(lt_id).version(version).build())
        .min_size(0)
        .max_size(max)
        .desired_capacity(size)
        .availability_zones(format!("{}a", asg.config().region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into())))
        .set_tags(Some(tags).filter(|t| !t.is_empty()))
        .send()
        .await
        .unwrap();
}

/// An Elastic Load Balancing target group `name` in the default VPC of us-east-1, with the
/// groups `groups` attached (their instances registered): its ARN, and a client to read it.
pub async fn target_group(sb: &sandbox::Sandbox, name: &str, groups: &[&str]) -> (aws_sdk_elasticloadbalancingv2::Client, String) {
    let conf = sb.sdk_config("us-east-1").await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let vpcs = ec2.describe_vpcs().filters(aws_sdk_ec2::types::Filter::builder().name("is-default").values("true").build()).send().await.unwrap();
    let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&conf);
    let tg =
        elb.create_target_group().name(name).protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http).port(80).vpc_id(vpc).send().await.unwrap();
    let arn = tg.target_groups()[0].target_group_arn().unwrap().to_string();
    let asg = aws_sdk_autoscaling::Client::new(&conf);
    for g in groups {
        asg.attach_load_balancer_target_groups().auto_scaling_group_name(*g).target_group_arns(&arn).send().await.unwrap();
    }
    (elb, arn)
}

/// Each target of target group `arn`: instance → its health state.
pub async fn target_states(elb: &aws_sdk_elasticloadbalancingv2::Client, arn: &str) -> std::collections::BTreeMap<String, String> {
    let r = elb.describe_target_health().target_group_arn(arn).send().await.unwrap();
    r.target_health_descriptions()
        .iter()
        .map(|d| (d.target().unwrap().id().unwrap().to_string(), d.target_health().unwrap().state().unwrap().as_str().to_string()))
        .collect()
}

/// A CloudWatch alarm `name` (OK until a test sets its state), and a client to flip it.
pub async fn alarm(sb: &sandbox::Sandbox, name: &str) -> aws_sdk_cloudwatch::Client {
    let cw = aws_sdk_cloudwatch::Client::new(&sb.sdk_config("us-east-1").await);
    cw.put_metric_alarm()
        .alarm_name(name)
        .namespace("AWS/ApplicationELB")
        .metric_name("HTTPCode_Target_5XX_Count")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(10.0)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .unwrap();
    cw
}
