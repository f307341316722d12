//! The sandbox cloud: every addition to moto, through the Rust SDK, with AWS's happy path and
//! AWS's error. Each test starts its own sandbox (state is isolated) and stops it by PID.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types as asg_t;
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types as ec2_t;
use aws_sdk_ssm::types as ssm_t;
use common::sandbox::{alive, Sandbox};
use serde_json::json;

const SSM_CORE: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";
const UBUNTU_2404: &str = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id";

use common::Clients;

async fn clients(sb: &Sandbox) -> Clients {
    // Eventual consistency is on by default (as on AWS); these tests are about other behaviours,
    // so they switch it off. The consistency tests switch it back on (`consistency_on`).
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": 0, "iam_propagation": 0, "block_public_access": 0})));
    Clients::new(&sb.sdk_config("us-east-1").await)
}

/// Polls `f` every 50 ms until it returns Some, or panics after `secs`.
async fn until<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The image a public parameter names.
async fn published(c: &Clients, name: &str) -> String {
    c.ssm.get_parameter().name(name).send().await.unwrap().parameter.unwrap().value.unwrap()
}

async fn ubuntu(c: &Clients) -> String {
    published(c, UBUNTU_2404).await
}

/// Canonical's 22.04 image: another image than `ubuntu`, to move groups onto.
async fn ubuntu_2204(c: &Clients) -> String {
    published(c, "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp3/ami-id").await
}

/// A launch template as bake's users write them: t3.small, instance profile `profile`, IMDSv2
/// required with hop limit 1. Its id.
async fn imdsv2_template(c: &Clients, name: &str, ami: &str, profile: &str) -> String {
    let lt = c
        .ec2
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(
            ec2_t::RequestLaunchTemplateData::builder()
                .image_id(ami)
                .instance_type(ec2_t::InstanceType::T3Small)
                .iam_instance_profile(ec2_t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder().name(profile).build())
                .metadata_options(
                    ec2_t::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                        .http_tokens(ec2_t::LaunchTemplateHttpTokensState::Required)
                        .http_put_response_hop_limit(1)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    lt.launch_template().unwrap().launch_template_id().unwrap().to_string()
}

fn tag(k: &str, v: &str) -> ec2_t::Tag {
    ec2_t::Tag::builder().key(k).value(v).build()
}

fn tags(kind: ec2_t::ResourceType) -> ec2_t::TagSpecification {
    ec2_t::TagSpecification::builder().resource_type(kind).tags(tag("bake:managed", "true")).build()
}

/// A role with AmazonSSMManagedInstanceCore in an instance profile, as bake makes them.
async fn profile(c: &Clients, name: &str, ssm_core: bool) {
    let t = aws_sdk_iam::types::Tag::builder().key("bake:managed").value("true").build().unwrap();
    c.iam
        .create_role()
        .role_name(name)
        .path("/bake/")
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .tags(t.clone())
        .send()
        .await
        .unwrap();
    if ssm_core {
        c.iam.attach_role_policy().role_name(name).policy_arn(SSM_CORE).send().await.unwrap();
    }
    c.iam.create_instance_profile().instance_profile_name(name).path("/bake/").tags(t).send().await.unwrap();
    c.iam.add_role_to_instance_profile().instance_profile_name(name).role_name(name).send().await.unwrap();
}

async fn launch(c: &Clients, image: &str, profile: Option<&str>) -> String {
    let mut req = c
        .ec2
        .run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .instance_type(ec2_t::InstanceType::T3Micro)
        .tag_specifications(tags(ec2_t::ResourceType::Instance))
        .tag_specifications(tags(ec2_t::ResourceType::Volume));
    if let Some(p) = profile {
        req = req.iam_instance_profile(ec2_t::IamInstanceProfileSpecification::builder().name(p).build());
    }
    req.send().await.unwrap().instances()[0].instance_id().unwrap().to_string()
}

async fn state(c: &Clients, id: &str) -> String {
    let r = c.ec2.describe_instances().instance_ids(id).send().await.unwrap();
    r.reservations()[0].instances()[0].state().unwrap().name().unwrap().as_str().to_string()
}

async fn online(c: &Clients) -> Vec<(String, String)> {
    let r = c.ssm.describe_instance_information().send().await.unwrap();
    r.instance_information_list().iter().map(|i| (i.instance_id().unwrap().to_string(), i.ping_status().unwrap().as_str().to_string())).collect()
}

async fn send(c: &Clients, id: &str, script: &str, timeout: &str) -> String {
    c.ssm
        .send_command()
        .instance_ids(id)
        .document_name("AWS-RunShellScript")
        .comment("bake test")
        .parameters("commands", vec![script.to_string()])
        .parameters("executionTimeout", vec![timeout.to_string()])
        .send()
        .await
        .unwrap()
        .command()
        .unwrap()
        .command_id()
        .unwrap()
        .to_string()
}

async fn invocation(c: &Clients, cmd: &str, id: &str) -> aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput {
    c.ssm.get_command_invocation().command_id(cmd).instance_id(id).send().await.unwrap()
}

async fn finished(c: &Clients, cmd: &str, id: &str) -> aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput {
    until(20, "the command to finish", || async {
        let inv = invocation(c, cmd, id).await;
        match inv.status() {
            Some(ssm_t::CommandInvocationStatus::Pending)
            | Some(ssm_t::CommandInvocationStatus::InProgress)
            | Some(ssm_t::CommandInvocationStatus::Delayed) => None,
            _ => Some(inv),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_seeded_and_stops_by_pid() {
    let mut sb = Sandbox::start();
    eprintln!("sandbox started in {:.2}s", sb.startup);
    let c = clients(&sb).await;
    // A default VPC with subnets in several AZs.
    let subnets = c.ec2.describe_subnets().send().await.unwrap();
    let azs: std::collections::BTreeSet<_> =
        subnets.subnets().iter().filter(|s| s.default_for_az() == Some(true)).filter_map(|s| s.availability_zone()).collect();
    assert!(azs.len() >= 3, "{azs:?}");
    // Canonical's public parameters name existing, available, public images.
    for release in ["22.04", "24.04"] {
        let name = format!("/aws/service/canonical/ubuntu/server/{release}/stable/current/amd64/hvm/ebs-gp3/ami-id");
        let ami = c.ssm.get_parameter().name(&name).send().await.unwrap().parameter.unwrap().value.unwrap();
        let img = c.ec2.describe_images().image_ids(&ami).send().await.unwrap();
        let img = &img.images()[0];
        assert_eq!(img.owner_id(), Some("099720109477"));
        assert_eq!(img.state(), Some(&ec2_t::ImageState::Available));
        assert!(img.name().unwrap().contains(&format!("-{release}-amd64-server-")));
    }
    // The newest of several builds is what a filter finds first.
    let imgs = c
        .ec2
        .describe_images()
        .owners("099720109477")
        .filters(ec2_t::Filter::builder().name("name").values("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*").build())
        .send()
        .await
        .unwrap();
    assert_eq!(imgs.images().len(), 3);
    // The AWS managed policy the builder needs.
    let p = c.iam.get_policy().policy_arn(SSM_CORE).send().await.unwrap();
    assert_eq!(p.policy().unwrap().policy_name(), Some("AmazonSSMManagedInstanceCore"));
    // AMI validation is on: an unknown image is refused, as AWS does.
    let e = c.ec2.run_instances().image_id("ami-0000000000000000f").min_count(1).max_count(1).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidAMIID.NotFound"));
    let pid = sb.pid;
    assert!(alive(pid));
    sb.stop();
    assert!(!alive(pid), "the sandbox is gone after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_agent_registers_instances_with_a_profile_after_a_delay() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/delays", Some(json!({"agent_registration": 0.6, "instance_pending": 0.3})));
    profile(&c, "bake-agent", true).await;
    profile(&c, "bake-no-ssm", false).await;
    let ami = ubuntu(&c).await;
    let t0 = Instant::now();
    let with = launch(&c, &ami, Some("bake-agent")).await;
    let without = launch(&c, &ami, None).await;
    let no_policy = launch(&c, &ami, Some("bake-no-ssm")).await;
    assert_eq!(state(&c, &with).await, "pending", "instances stay pending for a while");
    assert!(online(&c).await.is_empty(), "nothing registers before the delay");
    until(10, "running", || async { (state(&c, &with).await == "running").then_some(()) }).await;
    let got = until(10, "the agent", || async {
        let o = online(&c).await;
        (!o.is_empty()).then_some(o)
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(900), "pending (0.3 s) then registration (0.6 s)");
    assert_eq!(got, vec![(with.clone(), "Online".to_string())], "only the instance whose role has SSM core");
    let _ = (without, no_policy);
    // AWS's error for a filter it does not know.
    let e = c
        .ssm
        .describe_instance_information()
        .filters(ssm_t::InstanceInformationStringFilter::builder().key("Colour").values("blue").build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidFilterKey"));
    // Stopped: the agent loses its connection.
    c.ec2.stop_instances().instance_ids(&with).send().await.unwrap();
    assert_eq!(online(&c).await, vec![(with.clone(), "ConnectionLost".to_string())]);
}

/// OutputS3BucketName / CloudWatchOutputConfig: the whole output goes there when the command
/// ends, GetCommandInvocation names the S3 objects, and a bad bucket name is AWS's validation error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_output_goes_whole_to_s3_and_cloudwatch_logs() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "bake-out", true).await;
    let ami = ubuntu(&c).await;
    let a = launch(&c, &ami, Some("bake-out")).await;
    assert_eq!(sb.call("PUT", "/out-bucket", None).0, 200);
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "long", "stdout_bytes": 25000, "stderr_bytes": 9000}]})));
    let sent = c
        .ssm
        .send_command()
        .instance_ids(&a)
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["echo long".to_string()])
        .output_s3_bucket_name("out-bucket")
        .output_s3_key_prefix("runs")
        .cloud_watch_output_config(ssm_t::CloudWatchOutputConfig::builder().cloud_watch_log_group_name("/bake/runs").cloud_watch_output_enabled(true).build())
        .send()
        .await
        .unwrap();
    let cmd = sent.command().unwrap().command_id().unwrap().to_string();
    assert_eq!(sent.command().unwrap().output_s3_bucket_name(), Some("out-bucket"));
    let inv = finished(&c, &cmd, &a).await;
    assert_eq!(inv.standard_output_content().unwrap().len(), 24_000, "the API keeps the first 24,000");
    let url = format!("https://s3.us-east-1.amazonaws.com/out-bucket/runs/{cmd}/{a}/awsrunShellScript/0.awsrunShellScript/stdout");
    assert_eq!(inv.standard_output_url(), Some(url.as_str()));
    assert_eq!(inv.cloud_watch_output_config().unwrap().cloud_watch_log_group_name(), Some("/bake/runs"));
    let outputs = sb.control("GET", "/_sandbox/ssm/outputs", None)["outputs"].as_array().unwrap().clone();
    let whole = |u: &str| outputs.iter().find(|o| o["url"] == u).unwrap_or_else(|| panic!("{u}: {outputs:?}")).clone();
    assert_eq!(whole(&url)["bytes"], 25_000);
    assert_eq!(whole(&url)["stored"], true);
    let stderr = whole(&format!("cloudwatch-logs:///bake/runs/{cmd}/{a}/aws-runShellScript/stderr"));
    assert_eq!((stderr["bytes"].as_u64(), stderr["stored"].as_bool()), (Some(9_000), Some(true)));
    // A bucket that does not exist: the command still ends as it would, the output is lost.
    let lost = c
        .ssm
        .send_command()
        .instance_ids(&a)
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["echo lost".to_string()])
        .output_s3_bucket_name("no-such-bucket")
        .send()
        .await
        .unwrap();
    let lost = lost.command().unwrap().command_id().unwrap().to_string();
    assert_eq!(finished(&c, &lost, &a).await.status(), Some(&ssm_t::CommandInvocationStatus::Success));
    let outputs = sb.control("GET", "/_sandbox/ssm/outputs", None)["outputs"].as_array().unwrap().clone();
    assert!(outputs.iter().filter(|o| o["command_id"] == lost.as_str()).all(|o| o["stored"] == false));
    let e = c
        .ssm
        .send_command()
        .instance_ids(&a)
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".to_string()])
        .output_s3_bucket_name("ab")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_only_the_instances_asked_and_run_nothing() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "bake-cmd", true).await;
    let ami = ubuntu(&c).await;
    let a = launch(&c, &ami, Some("bake-cmd")).await;
    let b = launch(&c, &ami, Some("bake-cmd")).await;
    let none = launch(&c, &ami, None).await;
    let marker = std::env::temp_dir().join(format!("bake-sandbox-must-not-exist-{}", std::process::id()));
    let script = format!("#!/bin/bash\nset -euo pipefail\ntouch {}\necho hello", marker.display());
    let cmd = send(&c, &a, &script, "60").await;
    let inv = finished(&c, &cmd, &a).await;
    assert_eq!(inv.status(), Some(&ssm_t::CommandInvocationStatus::Success));
    assert_eq!(inv.response_code(), 0);
    assert!(!marker.exists(), "the sandbox never executes a script");
    // Recorded for `a`, in order, and nothing for `b` (moto fans out to every instance).
    let second = send(&c, &a, "echo second", "60").await;
    finished(&c, &second, &a).await;
    let got = sb.scripts(&a);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["script"], script);
    assert_eq!(got[0]["comment"], "bake test");
    assert_eq!(got[0]["execution_timeout"], 60);
    assert_eq!(got[1]["script"], "echo second");
    assert!(sb.scripts(&b).is_empty());
    // An instance without a registered agent is refused, as AWS does.
    let e =
        c.ssm.send_command().instance_ids(&none).document_name("AWS-RunShellScript").parameters("commands", vec!["true".to_string()]).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidInstanceId"));
    assert!(e.message().unwrap().contains(&none));
    // ListCommandInvocations, and AWS's errors for unknown commands.
    let list = c.ssm.list_command_invocations().command_id(&cmd).details(true).send().await.unwrap();
    assert_eq!(list.command_invocations().len(), 1);
    assert_eq!(list.command_invocations()[0].instance_id(), Some(a.as_str()));
    let e = c.ssm.get_command_invocation().command_id("00000000-0000-0000-0000-000000000000").instance_id(&a).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvocationDoesNotExist"));
    let e = c.ssm.get_command_invocation().command_id(&cmd).instance_id(&b).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvocationDoesNotExist"));
    let e = c.ssm.list_command_invocations().command_id("00000000-0000-0000-0000-000000000000").send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidCommandId"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_move_through_their_states_and_play_programmed_outcomes() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "bake-life", true).await;
    let id = launch(&c, &ubuntu(&c).await, Some("bake-life")).await;
    sb.control("POST", "/_sandbox/delays", Some(json!({"command_pending": 0.3, "command_duration": 0.3})));
    sb.control(
        "POST",
        "/_sandbox/ssm/outcomes",
        Some(json!({"outcomes": [
            {"match": "step=fails", "exit_code": 3, "stderr": "E: Unable to locate package nope\n", "stdout": "reading lists\n"},
            {"match": "step=slow", "duration": 5},
            {"match": "step=hangs", "hang": true},
            {"match": "step=chatty", "stdout_bytes": 30000, "stderr_bytes": 9000},
        ]})),
    );
    // Pending → InProgress → Success
    let cmd = send(&c, &id, "echo step=ok", "60").await;
    assert_eq!(invocation(&c, &cmd, &id).await.status(), Some(&ssm_t::CommandInvocationStatus::Pending));
    until(5, "InProgress", || async { (invocation(&c, &cmd, &id).await.status() == Some(&ssm_t::CommandInvocationStatus::InProgress)).then_some(()) }).await;
    let inv = invocation(&c, &cmd, &id).await;
    assert_eq!(inv.standard_output_content(), Some(""), "output comes when the invocation ends, as on AWS");
    let inv = finished(&c, &cmd, &id).await;
    assert_eq!(inv.status(), Some(&ssm_t::CommandInvocationStatus::Success));
    // A programmed failure: exit code, stdout and stderr.
    let cmd = send(&c, &id, "echo step=fails", "60").await;
    let inv = finished(&c, &cmd, &id).await;
    assert_eq!(inv.status(), Some(&ssm_t::CommandInvocationStatus::Failed));
    assert_eq!(inv.response_code(), 3);
    assert_eq!(inv.standard_error_content(), Some("E: Unable to locate package nope\n"));
    assert_eq!(inv.standard_output_content(), Some("reading lists\n"));
    // executionTimeout is honoured.
    let cmd = send(&c, &id, "echo step=slow", "1").await;
    let inv = finished(&c, &cmd, &id).await;
    assert_eq!(inv.status(), Some(&ssm_t::CommandInvocationStatus::TimedOut));
    assert_eq!(inv.status_details(), Some("ExecutionTimedOut"));
    // A command that never finishes can be cancelled.
    let cmd = send(&c, &id, "echo step=hangs", "3600").await;
    until(5, "InProgress", || async { (invocation(&c, &cmd, &id).await.status() == Some(&ssm_t::CommandInvocationStatus::InProgress)).then_some(()) }).await;
    c.ssm.cancel_command().command_id(&cmd).instance_ids(&id).send().await.unwrap();
    let inv = finished(&c, &cmd, &id).await;
    assert_eq!(inv.status(), Some(&ssm_t::CommandInvocationStatus::Cancelled));
    // Output is truncated as AWS truncates it.
    let cmd = send(&c, &id, "echo step=chatty", "60").await;
    let inv = finished(&c, &cmd, &id).await;
    assert_eq!(inv.standard_output_content().unwrap().len(), 24_000);
    assert_eq!(inv.standard_error_content().unwrap().len(), 8_000);
    // A syntax error fails with exit 2 and bash's message, without running anything.
    let cmd = send(&c, &id, "#!/bin/bash\nif true; then\necho broken\n", "60").await;
    let inv = finished(&c, &cmd, &id).await;
    assert_eq!(inv.status(), Some(&ssm_t::CommandInvocationStatus::Failed));
    assert_eq!(inv.response_code(), 2);
    assert!(inv.standard_error_content().unwrap().contains("syntax error"), "{:?}", inv.standard_error_content());
    // AWS's error for a bad executionTimeout.
    let e = c
        .ssm
        .send_command()
        .instance_ids(&id)
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".to_string()])
        .parameters("executionTimeout", vec!["forever".to_string()])
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameters"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_tag_snapshots_take_time_and_deprecate() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/delays", Some(json!({"image_pending": 0.5, "instance_stopping": 0.4})));
    let id = launch(&c, &ubuntu(&c).await, None).await;
    c.ec2.stop_instances().instance_ids(&id).send().await.unwrap();
    assert_eq!(state(&c, &id).await, "stopping", "a stop takes time");
    // The SDK's waiter really waits (its first poll sees `stopping`; the next comes 15 s later).
    c.ec2.wait_until_instance_stopped().instance_ids(&id).wait(Duration::from_secs(60)).await.unwrap();
    let image = c
        .ec2
        .create_image()
        .instance_id(&id)
        .name("bake-test-1")
        .tag_specifications(tags(ec2_t::ResourceType::Image))
        .tag_specifications(
            ec2_t::TagSpecification::builder()
                .resource_type(ec2_t::ResourceType::Snapshot)
                .tags(tag("bake:managed", "true"))
                .tags(tag("bake:role", "boxoffice"))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    assert_eq!(d.images()[0].state(), Some(&ec2_t::ImageState::Pending));
    until(10, "the image", || async {
        let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
        (d.images()[0].state() == Some(&ec2_t::ImageState::Available)).then_some(())
    })
    .await;
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    let snap = d.images()[0].block_device_mappings()[0].ebs().unwrap().snapshot_id().unwrap().to_string();
    let s = c.ec2.describe_snapshots().snapshot_ids(&snap).send().await.unwrap();
    let keys: Vec<_> = s.snapshots()[0].tags().iter().map(|t| t.key().unwrap().to_string()).collect();
    assert!(keys.contains(&"bake:role".to_string()), "{keys:?}");
    // AWS refuses a second image with the same name.
    let e = c.ec2.create_image().instance_id(&id).name("bake-test-1").send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidAMIName.Duplicate"));
    // Deprecation.
    let at = aws_sdk_ec2::primitives::DateTime::from_secs(1_830_297_600); // 2028-01-01
    c.ec2.enable_image_deprecation().image_id(&image).deprecate_at(at).send().await.unwrap();
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    assert_eq!(d.images()[0].deprecation_time(), Some("2028-01-01T00:00:00.000Z"));
    c.ec2.disable_image_deprecation().image_id(&image).send().await.unwrap();
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    assert_eq!(d.images()[0].deprecation_time(), None);
    let e = c.ec2.enable_image_deprecation().image_id("ami-00000000000000000").deprecate_at(at).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidAMIID.NotFound"));
    // An image that never becomes available.
    sb.control("POST", "/_sandbox/delays", Some(json!({"image_pending": -1})));
    let stuck = c.ec2.create_image().instance_id(&id).name("bake-test-2").send().await.unwrap().image_id.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let d = c.ec2.describe_images().image_ids(&stuck).send().await.unwrap();
    assert_eq!(d.images()[0].state(), Some(&ec2_t::ImageState::Pending));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_template_versions_copy_their_source() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "bake-lt", true).await;
    let ami = ubuntu(&c).await;
    let lt_id = imdsv2_template(&c, "app", &ami, "bake-lt").await;
    let other = ubuntu_2204(&c).await;
    c.ec2
        .create_launch_template_version()
        .launch_template_id(&lt_id)
        .source_version("1")
        .version_description("bake b-0123456789ab: ami")
        .launch_template_data(ec2_t::RequestLaunchTemplateData::builder().image_id(&other).build())
        .send()
        .await
        .unwrap();
    let v = c.ec2.describe_launch_template_versions().launch_template_id(&lt_id).versions("2").send().await.unwrap();
    let data = v.launch_template_versions()[0].launch_template_data().unwrap();
    assert_eq!(data.image_id(), Some(other.as_str()));
    assert_eq!(data.instance_type(), Some(&ec2_t::InstanceType::T3Small), "copied from version 1");
    assert_eq!(data.iam_instance_profile().unwrap().name(), Some("bake-lt"));
    assert_eq!(data.metadata_options().unwrap().http_tokens(), Some(&ec2_t::LaunchTemplateHttpTokensState::Required));
    let e = c
        .ec2
        .create_launch_template_version()
        .launch_template_id(&lt_id)
        .source_version("9")
        .launch_template_data(ec2_t::RequestLaunchTemplateData::builder().image_id(&other).build())
        .send()
        .await
        .unwrap_err();
    assert!(e.code().unwrap().starts_with("InvalidLaunchTemplate"), "{:?}", e.code());
}

async fn group_with_template(c: &Clients, name: &str, size: i32) -> (String, String) {
    let ami = ubuntu(c).await;
    let lt_id = imdsv2_template(c, &format!("{name}-lt"), &ami, "bake-asg").await;
    common::template_group(&c.asg, name, &lt_id, "1", size, size * 2, vec![]).await;
    (lt_id, ami)
}

async fn new_version(c: &Clients, lt_id: &str, image: &str) -> String {
    let v = c
        .ec2
        .create_launch_template_version()
        .launch_template_id(lt_id)
        .source_version("1")
        .launch_template_data(ec2_t::RequestLaunchTemplateData::builder().image_id(image).build())
        .send()
        .await
        .unwrap();
    v.launch_template_version().unwrap().version_number().unwrap().to_string()
}

async fn refresh_status(c: &Clients, group: &str) -> asg_t::InstanceRefresh {
    c.asg.describe_instance_refreshes().auto_scaling_group_name(group).send().await.unwrap().instance_refreshes()[0].clone()
}

async fn refresh_until_done(c: &Clients, group: &str) -> asg_t::InstanceRefresh {
    until(30, "the refresh to end", || async {
        let r = refresh_status(c, group).await;
        match r.status() {
            Some(asg_t::InstanceRefreshStatus::Pending)
            | Some(asg_t::InstanceRefreshStatus::InProgress)
            | Some(asg_t::InstanceRefreshStatus::Cancelling)
            | Some(asg_t::InstanceRefreshStatus::Baking)
            | Some(asg_t::InstanceRefreshStatus::RollbackInProgress) => None,
            _ => Some(r),
        }
    })
    .await
}

async fn group_images(c: &Clients, group: &str) -> Vec<(String, String)> {
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names(group).send().await.unwrap();
    let ids: Vec<String> = g.auto_scaling_groups()[0].instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let d = c.ec2.describe_instances().set_instance_ids(Some(ids)).send().await.unwrap();
    let mut out: Vec<(String, String)> =
        d.reservations().iter().flat_map(|r| r.instances()).map(|i| (i.instance_id().unwrap().to_string(), i.image_id().unwrap().to_string())).collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_instances_get_the_templates_profile_and_metadata_options() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "bake-asg", true).await;
    group_with_template(&c, "web_staging", 2).await;
    let imgs = group_images(&c, "web_staging").await;
    assert_eq!(imgs.len(), 2);
    let d = c.ec2.describe_instances().instance_ids(&imgs[0].0).send().await.unwrap();
    let i = &d.reservations()[0].instances()[0];
    assert_eq!(i.metadata_options().unwrap().http_tokens(), Some(&ec2_t::HttpTokensState::Required));
    assert_eq!(i.metadata_options().unwrap().http_put_response_hop_limit(), Some(1));
    let assoc = c.ec2.describe_iam_instance_profile_associations().send().await.unwrap();
    let profiled: Vec<_> = assoc.iam_instance_profile_associations().iter().filter_map(|a| a.instance_id()).collect();
    assert!(imgs.iter().all(|(id, _)| profiled.contains(&id.as_str())), "{profiled:?}");
    // So their agents register with SSM.
    let o = until(5, "agents", || async {
        let o = online(&c).await;
        (o.len() == 2).then_some(o)
    })
    .await;
    assert!(o.iter().all(|(_, s)| s == "Online"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_refresh_replaces_in_batches_with_checkpoints_and_skip_matching() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, _) = group_with_template(&c, "api_production", 4).await;
    let new_ami = ubuntu_2204(&c).await;
    let v2 = new_version(&c, &lt_id, &new_ami).await;
    let start = c
        .asg
        .start_instance_refresh()
        .auto_scaling_group_name("api_production")
        .preferences(
            asg_t::RefreshPreferences::builder()
                .min_healthy_percentage(75)
                .instance_warmup(100)
                .checkpoint_percentages(50)
                .checkpoint_percentages(100)
                .checkpoint_delay(200)
                .skip_matching(true)
                .build(),
        )
        .desired_configuration(
            asg_t::DesiredConfiguration::builder()
                .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version(&v2).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(start.instance_refresh_id().is_some());
    // A second one while the first runs is AWS's InstanceRefreshInProgress.
    let e = c.asg.start_instance_refresh().auto_scaling_group_name("api_production").send().await.unwrap_err();
    assert_eq!(e.code(), Some("InstanceRefreshInProgress"));
    // It pauses at the 50% checkpoint.
    let mid = until(20, "the checkpoint", || async {
        let r = refresh_status(&c, "api_production").await;
        (r.percentage_complete() == Some(50)).then_some(r)
    })
    .await;
    assert_eq!(mid.status(), Some(&asg_t::InstanceRefreshStatus::InProgress));
    let done = refresh_until_done(&c, "api_production").await;
    assert_eq!(done.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert_eq!(done.percentage_complete(), Some(100));
    let imgs = group_images(&c, "api_production").await;
    assert_eq!(imgs.len(), 4);
    assert!(imgs.iter().all(|(_, ami)| *ami == new_ami), "{imgs:?}");
    // Batches of one (75% of 4 must stay healthy); the group now uses the desired version.
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("api_production").send().await.unwrap();
    assert_eq!(g.auto_scaling_groups()[0].launch_template().unwrap().version(), Some(v2.as_str()));
    let history = &sb.control("GET", "/_sandbox/refreshes?group=api_production", None)["refreshes"][0]["history"];
    let batches: Vec<usize> = history.as_array().unwrap().iter().map(|b| b["terminate"].as_array().unwrap().len()).collect();
    assert_eq!(batches, vec![1, 1, 1, 1], "MinHealthyPercentage 75 of 4: one at a time");
    // SkipMatching: a second refresh onto the same version replaces nothing.
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("api_production")
        .preferences(asg_t::RefreshPreferences::builder().skip_matching(true).build())
        .send()
        .await
        .unwrap();
    let again = refresh_until_done(&c, "api_production").await;
    assert_eq!(again.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert_eq!(group_images(&c, "api_production").await, imgs, "no instance replaced");
    let e = c.asg.cancel_instance_refresh().auto_scaling_group_name("api_production").send().await.unwrap_err();
    assert_eq!(e.code(), Some("ActiveInstanceRefreshNotFound"));
}

/// A refresh runs on the clock, not on calls: left alone, it ends when its batches' start-up and
/// warm-up add up to, so a caller that polls less often does not make it slower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_keeps_time_when_nobody_polls_it() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.01})));
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_pending": 1.5})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, _) = group_with_template(&c, "quiet_production", 2).await;
    let new_ami = ubuntu_2204(&c).await;
    let v2 = new_version(&c, &lt_id, &new_ami).await;
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("quiet_production")
        .preferences(asg_t::RefreshPreferences::builder().min_healthy_percentage(50).instance_warmup(100).build())
        .desired_configuration(
            asg_t::DesiredConfiguration::builder()
                .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version(&v2).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    // No call at all while it runs: two batches of one, each pending 1.5 s (longer than its 1 s
    // warm-up), so 3 s; the one call after 5 s finds it ended at 3 s, not at 5.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = refresh_status(&c, "quiet_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert_eq!(group_images(&c, "quiet_production").await.iter().filter(|(_, a)| *a == new_ami).count(), 2);
    let rec = &sb.control("GET", "/_sandbox/refreshes?group=quiet_production", None)["refreshes"][0];
    let took = rec["ended"].as_f64().unwrap() - rec["started"].as_f64().unwrap();
    assert!((2.95..3.3).contains(&took), "the refresh took {took:.2}s of sandbox time");
    let (start, end) = (r.start_time().unwrap().as_secs_f64(), r.end_time().unwrap().as_secs_f64());
    assert!((2.9..3.4).contains(&(end - start)), "StartTime to EndTime {:.2}s", end - start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_healthy_percentage_launches_before_terminating() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, _) = group_with_template(&c, "boxoffice_production", 4).await;
    let new_ami = ubuntu_2204(&c).await;
    let v2 = new_version(&c, &lt_id, &new_ami).await;
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("boxoffice_production")
        .preferences(asg_t::RefreshPreferences::builder().min_healthy_percentage(100).max_healthy_percentage(150).instance_warmup(50).build())
        .desired_configuration(
            asg_t::DesiredConfiguration::builder()
                .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version(&v2).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refresh_until_done(&c, "boxoffice_production").await.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    let history = sb.control("GET", "/_sandbox/refreshes?group=boxoffice_production", None)["refreshes"][0]["history"].clone();
    for b in history.as_array().unwrap() {
        assert_eq!(b["launch"].as_array().unwrap().len(), 2, "50% headroom of 4: two at a time");
        assert_eq!(b["capacity"], 6, "new instances launched before old ones go: never below 100%");
    }
    assert!(group_images(&c, "boxoffice_production").await.iter().all(|(_, a)| *a == new_ami));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_onto_an_unhealthy_image_fails_and_rolls_back_when_asked() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, old_ami) = group_with_template(&c, "kaiju_production", 3).await;
    let bad = ubuntu_2204(&c).await;
    sb.control("POST", "/_sandbox/unhealthy_amis", Some(json!({"amis": [bad]})));
    let v2 = new_version(&c, &lt_id, &bad).await;
    let desired = asg_t::DesiredConfiguration::builder()
        .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version(&v2).build())
        .build();
    // Without AutoRollback: Failed, partly replaced.
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("kaiju_production")
        .preferences(asg_t::RefreshPreferences::builder().min_healthy_percentage(66).instance_warmup(50).build())
        .desired_configuration(desired.clone())
        .send()
        .await
        .unwrap();
    let r = refresh_until_done(&c, "kaiju_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::Failed));
    assert!(r.status_reason().unwrap().contains(&bad));
    assert!(group_images(&c, "kaiju_production").await.iter().any(|(_, a)| *a == bad));
    // Put it back by hand (what `bake roll` does without AutoRollback), then try with AutoRollback.
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("kaiju_production")
        .preferences(asg_t::RefreshPreferences::builder().min_healthy_percentage(66).instance_warmup(50).skip_matching(true).build())
        .desired_configuration(
            asg_t::DesiredConfiguration::builder()
                .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version("1").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refresh_until_done(&c, "kaiju_production").await.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert!(group_images(&c, "kaiju_production").await.iter().all(|(_, a)| *a == old_ami));
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("kaiju_production")
        .preferences(asg_t::RefreshPreferences::builder().min_healthy_percentage(66).instance_warmup(50).auto_rollback(true).build())
        .desired_configuration(desired)
        .send()
        .await
        .unwrap();
    let r = refresh_until_done(&c, "kaiju_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::RollbackSuccessful));
    assert!(r.rollback_details().unwrap().rollback_reason().unwrap().contains(&bad));
    let imgs = group_images(&c, "kaiju_production").await;
    assert_eq!(imgs.len(), 3);
    assert!(imgs.iter().all(|(_, a)| *a == old_ami), "every instance back on the old image: {imgs:?}");
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("kaiju_production").send().await.unwrap();
    assert_eq!(g.auto_scaling_groups()[0].launch_template().unwrap().version(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_cancel_and_roll_back_on_request() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.01})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, old_ami) = group_with_template(&c, "www_staging", 4).await;
    let new_ami = ubuntu_2204(&c).await;
    let v2 = new_version(&c, &lt_id, &new_ami).await;
    let start = |auto: bool| {
        c.asg
            .start_instance_refresh()
            .auto_scaling_group_name("www_staging")
            .preferences(asg_t::RefreshPreferences::builder().min_healthy_percentage(75).instance_warmup(100).auto_rollback(auto).build())
            .desired_configuration(
                asg_t::DesiredConfiguration::builder()
                    .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version(&v2).build())
                    .build(),
            )
            .send()
    };
    start(false).await.unwrap();
    c.asg.cancel_instance_refresh().auto_scaling_group_name("www_staging").send().await.unwrap();
    let r = refresh_until_done(&c, "www_staging").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::Cancelled));
    // Let any batch in flight settle, then roll forward again and roll back on request.
    start(false).await.unwrap();
    until(10, "some progress", || async { (refresh_status(&c, "www_staging").await.percentage_complete().unwrap_or(0) >= 25).then_some(()) }).await;
    c.asg.rollback_instance_refresh().auto_scaling_group_name("www_staging").send().await.unwrap();
    let r = refresh_until_done(&c, "www_staging").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::RollbackSuccessful));
    assert!(group_images(&c, "www_staging").await.iter().all(|(_, a)| *a == old_ami));
    let e = c.asg.rollback_instance_refresh().auto_scaling_group_name("www_staging").send().await.unwrap_err();
    assert_eq!(e.code(), Some("ActiveInstanceRefreshNotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_throttle_fail_and_slow_calls_by_seeded_chance() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    // Every DescribeImages throttled: the SDK retries, then reports AWS's code.
    sb.control(
        "POST",
        "/_sandbox/faults",
        Some(json!({"faults": [
            {"service": "ec2", "action": "DescribeImages", "rate": 1.0, "kind": "throttle"},
            {"service": "ssm", "action": "GetParameter", "rate": 1.0, "kind": "throttle"},
            {"service": "iam", "action": "ListRoles", "rate": 1.0, "kind": "500"},
        ]})),
    );
    let e = c.ec2.describe_images().owners("self").send().await.unwrap_err();
    assert_eq!(e.code(), Some("RequestLimitExceeded"));
    let e = c.ssm.get_parameter().name(UBUNTU_2404).send().await.unwrap_err();
    assert_eq!(e.code(), Some("ThrottlingException"));
    let e = c.iam.list_roles().send().await.unwrap_err();
    assert_eq!(e.code(), Some("InternalFailure"));
    // Elastic Load Balancing speaks the query protocol: its faults are XML errors the SDK reads.
    sb.control(
        "POST",
        "/_sandbox/faults",
        Some(json!({"faults": [{"service": "elasticloadbalancing", "action": "DescribeTargetHealth", "rate": 1.0, "kind": "throttle"}]})),
    );
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sb.sdk_config("us-east-1").await);
    let e = elb
        .describe_target_health()
        .target_group_arn("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/x/0123456789abcdef")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("Throttling"));
    let calls = sb.calls();
    assert!(calls["by_action"]["ec2:DescribeImages"].as_u64().unwrap() >= 2, "the SDK retried: {}", calls["by_action"]);
    // 20% throttling and 5xx everywhere: the SDK's retries carry every call through.
    sb.control(
        "POST",
        "/_sandbox/faults",
        Some(json!({"faults": [
            {"service": "*", "action": "*", "rate": 0.1, "kind": "throttle", "seed": 7},
            {"service": "*", "action": "*", "rate": 0.1, "kind": "503", "seed": 8},
        ]})),
    );
    sb.control("DELETE", "/_sandbox/calls", None);
    for _ in 0..30 {
        c.ec2.describe_images().owners("self").send().await.expect("retried through the faults");
    }
    let n = sb.calls()["by_action"]["ec2:DescribeImages"].as_u64().unwrap();
    assert!(n > 30, "some calls were retried ({n} requests for 30 calls)");
    // Latency.
    sb.control("POST", "/_sandbox/faults", Some(json!({"faults": [{"service": "sts", "action": "*", "latency_ms": 300}]})));
    let sts = aws_sdk_sts::Client::new(&sb.sdk_config("us-east-1").await);
    let t = Instant::now();
    sts.get_caller_identity().send().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_lists_every_live_bake_managed_resource() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    assert!(sb.live().is_empty());
    profile(&c, "bake-acct", true).await;
    let id = launch(&c, &ubuntu(&c).await, Some("bake-acct")).await;
    let sg = c
        .ec2
        .create_security_group()
        .group_name("bake-builder")
        .description("bake builder: no inbound rule")
        .tag_specifications(tags(ec2_t::ResourceType::SecurityGroup))
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    let image = c
        .ec2
        .create_image()
        .instance_id(&id)
        .name("bake-acct-1")
        .tag_specifications(tags(ec2_t::ResourceType::Image))
        .tag_specifications(tags(ec2_t::ResourceType::Snapshot))
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    c.ssm
        .put_parameter()
        .name("/bake/acct/staging/ami-id")
        .value(&image)
        .r#type(ssm_t::ParameterType::String)
        .tags(ssm_t::Tag::builder().key("bake:managed").value("true").build().unwrap())
        .send()
        .await
        .unwrap();
    let kinds = |v: Vec<serde_json::Value>| {
        let mut k: Vec<String> = v.iter().map(|r| r["type"].as_str().unwrap().to_string()).collect();
        k.sort();
        k
    };
    assert_eq!(kinds(sb.live()), ["iam-role", "image", "instance", "instance-profile", "security-group", "snapshot", "ssm-parameter", "volume"]);
    // Gone when deleted (or terminated).
    c.ec2.terminate_instances().instance_ids(&id).send().await.unwrap();
    c.ec2.delete_security_group().group_id(&sg).send().await.unwrap();
    let snap = sb.live().iter().find(|r| r["type"] == "snapshot").unwrap()["id"].as_str().unwrap().to_string();
    c.ec2.deregister_image().image_id(&image).send().await.unwrap();
    c.ec2.delete_snapshot().snapshot_id(&snap).send().await.unwrap();
    c.ssm.delete_parameter().name("/bake/acct/staging/ami-id").send().await.unwrap();
    c.iam.remove_role_from_instance_profile().instance_profile_name("bake-acct").role_name("bake-acct").send().await.unwrap();
    c.iam.delete_instance_profile().instance_profile_name("bake-acct").send().await.unwrap();
    c.iam.detach_role_policy().role_name("bake-acct").policy_arn(SSM_CORE).send().await.unwrap();
    c.iam.delete_role().role_name("bake-acct").send().await.unwrap();
    let left = sb.live();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_rejects_bad_input_and_resets() {
    let sb = Sandbox::start();
    let bad = [
        ("POST", "/_sandbox/delays", json!({"instance_pendng": 1}), "unknown delay key(s) instance_pendng"),
        ("POST", "/_sandbox/delays", json!({"image_pending": "soon"}), "image_pending must be a number"),
        ("POST", "/_sandbox/ssm/outcomes", json!({"outcomes": [{"exit_code": 3}]}), "needs `match`"),
        ("POST", "/_sandbox/ssm/outcomes", json!({"outcomes": [{"match": "(", "exit_code": 3}]}), "is not a regular expression"),
        ("POST", "/_sandbox/ssm/outcomes", json!({"outcomes": [{"match": "x", "exit_code": 300}]}), "exit_code must be an integer 0-255"),
        ("POST", "/_sandbox/faults", json!({"faults": [{"service": "s3", "kind": "throttle"}]}), "fault service 's3'"),
        ("POST", "/_sandbox/faults", json!({"faults": [{"kind": "throttle", "rate": 2}]}), "rate is a probability"),
        ("POST", "/_sandbox/unhealthy_amis", json!({"amis": ["i-123"]}), "a list of AMI ids"),
        ("GET", "/_sandbox/nope", json!(null), "no control endpoint"),
    ];
    for (method, path, body, want) in bad {
        let (status, v) = sb.call(method, path, if body.is_null() { None } else { Some(&body) });
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert!(v["error"].as_str().unwrap().contains(want), "{path}: {v}");
    }
    // Every endpoint answers a method it does not take the same way (one routing table).
    for (method, path, allowed) in [
        ("PUT", "/_sandbox/unhealthy_amis", "use DELETE, GET or POST"),
        ("PUT", "/_sandbox/failing_image_regions", "use DELETE, GET or POST"),
        ("POST", "/_sandbox/calls", "use DELETE or GET"),
        ("POST", "/_sandbox/health", "use GET"),
    ] {
        let (status, v) = sb.call(method, path, None);
        assert_eq!(status, 405, "{method} {path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(allowed), "{method} {path}: {v}");
    }
    sb.control("POST", "/_sandbox/delays", Some(json!({"image_pending": 3})));
    sb.control("POST", "/_sandbox/reset", None);
    let d = sb.control("GET", "/_sandbox/delays", None);
    assert_eq!(d["delays"]["image_pending"], 0.0, "reset restores defaults");
    let c = clients(&sb).await;
    assert!(!ubuntu(&c).await.is_empty(), "and seeds again");
}

// ---------------------------------------------------------------------------------------------
// The sandbox as strict as AWS documents it (issue 12, and the paging of issue 11). Each test
// cites the AWS page that says what it checks.
// ---------------------------------------------------------------------------------------------

/// Eventual consistency back on (the `clients` helper switches it off for the other tests).
fn consistency_on(sb: &Sandbox, visibility_lag: f64, iam_propagation: f64) {
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": visibility_lag, "iam_propagation": iam_propagation})));
}

fn desired(lt_id: &str, version: &str) -> asg_t::DesiredConfiguration {
    asg_t::DesiredConfiguration::builder()
        .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(lt_id).version(version).build())
        .build()
}

/// A group on launch template `lt_id` at `version` (numbered, `$Latest` or `$Default`).
async fn group_on(c: &Clients, name: &str, lt_id: &str, version: &str, size: i32) {
    common::template_group(&c.asg, name, lt_id, version, size, size * 2 + 1, vec![]).await;
}

async fn group_instances(c: &Clients, group: &str) -> Vec<asg_t::Instance> {
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names(group).send().await.unwrap();
    let mut v = g.auto_scaling_groups()[0].instances().to_vec();
    v.sort_by(|a, b| a.instance_id().cmp(&b.instance_id()));
    v
}

fn batches(sb: &Sandbox, group: &str, index: usize) -> Vec<usize> {
    let rec = sb.control("GET", &format!("/_sandbox/refreshes?group={group}"), None);
    rec["refreshes"][index]["history"].as_array().unwrap().iter().map(|b| b["launch"].as_array().unwrap().len()).collect()
}

/// A refresh whose checkpoints stop short of 100 replaces that share of the group and ends
/// `Successful` there, the rest on the old image. "The last value shown in the
/// CheckpointPercentages array describes the percentage of the Auto Scaling group that needs to be
/// successfully replaced. The operation transitions to Successful after this percentage is
/// successfully replaced", and a checkpoint is never overshot ("Add checkpoints to an instance
/// refresh", https://docs.aws.amazon.com/autoscaling/ec2/userguide/asg-adding-checkpoints-instance-refresh.html).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_refresh_stops_at_its_last_checkpoint_and_succeeds() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, old_ami) = group_with_template(&c, "half_production", 10).await;
    let new_ami = ubuntu_2204(&c).await;
    let v2 = new_version(&c, &lt_id, &new_ami).await;
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("half_production")
        .preferences(
            asg_t::RefreshPreferences::builder()
                .min_healthy_percentage(80)
                .instance_warmup(50)
                .checkpoint_percentages(20)
                .checkpoint_percentages(50)
                .checkpoint_delay(100)
                .build(),
        )
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    let r = refresh_until_done(&c, "half_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert_eq!(r.percentage_complete(), Some(50));
    let imgs = group_images(&c, "half_production").await;
    assert_eq!(imgs.iter().filter(|(_, a)| *a == new_ami).count(), 5, "half the group moved: {imgs:?}");
    assert_eq!(imgs.iter().filter(|(_, a)| *a == old_ami).count(), 5, "the rest stays on the old image");
    assert_eq!(batches(&sb, "half_production", 0), vec![2, 2, 1], "20 %, then up to 50 % without overshooting it");
}

/// AutoRollback is refused where AWS does not support a rollback: "There is no desired
/// configuration specified for the instance refresh", or "The Auto Scaling group uses the launch
/// template's $Latest or $Default version" (RefreshPreferences.AutoRollback,
/// https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_RefreshPreferences.html; "Undo changes
/// with a manual or auto rollback", https://docs.aws.amazon.com/autoscaling/ec2/userguide/instance-refresh-rollback.html).
/// RollbackInstanceRefresh says the same of a manual rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rollback_needs_a_desired_configuration_and_a_numbered_version() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.01})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, _) = group_with_template(&c, "numbered_staging", 2).await;
    let v2 = new_version(&c, &lt_id, &ubuntu_2204(&c).await).await;
    let auto = asg_t::RefreshPreferences::builder().min_healthy_percentage(50).instance_warmup(100).auto_rollback(true).build();
    let e = c.asg.start_instance_refresh().auto_scaling_group_name("numbered_staging").preferences(auto.clone()).send().await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationError"), "no desired configuration");
    for alias in ["$Latest", "$Default"] {
        let name = format!("alias{}_staging", &alias[1..]);
        group_on(&c, &name, &lt_id, alias, 2).await;
        let e = c
            .asg
            .start_instance_refresh()
            .auto_scaling_group_name(&name)
            .preferences(auto.clone())
            .desired_configuration(desired(&lt_id, &v2))
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("ValidationError"), "{alias}");
        assert!(e.message().unwrap().contains(alias), "{:?}", e.message());
    }
    // Without AutoRollback it runs; a manual rollback of it is refused the same way.
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("aliasLatest_staging")
        .preferences(asg_t::RefreshPreferences::builder().min_healthy_percentage(50).instance_warmup(100).build())
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    let e = c.asg.rollback_instance_refresh().auto_scaling_group_name("aliasLatest_staging").send().await.unwrap_err();
    assert_eq!(e.code(), Some("IrreversibleInstanceRefresh"));
    // A numbered version with a desired configuration is fine.
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("numbered_staging")
        .preferences(auto)
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
}

/// SkipMatching needs a launch template: "You can't use skip matching with a new launch
/// configuration" ("Use an instance refresh with skip matching",
/// https://docs.aws.amazon.com/autoscaling/ec2/userguide/asg-instance-refresh-skip-matching.html).
/// A group on a launch configuration can skip-match only against a launch template in the desired
/// configuration (a migration), and then moves to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_matching_needs_a_launch_template() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    profile(&c, "bake-asg", true).await;
    let ami = ubuntu(&c).await;
    c.asg.create_launch_configuration().launch_configuration_name("legacy-lc").image_id(&ami).instance_type("t3.micro").send().await.unwrap();
    c.asg
        .create_auto_scaling_group()
        .auto_scaling_group_name("legacy_production")
        .launch_configuration_name("legacy-lc")
        .min_size(0)
        .max_size(4)
        .desired_capacity(2)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
    let skip = asg_t::RefreshPreferences::builder().min_healthy_percentage(50).instance_warmup(50).skip_matching(true).build();
    let e = c.asg.start_instance_refresh().auto_scaling_group_name("legacy_production").preferences(skip.clone()).send().await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationError"));
    let new_ami = ubuntu_2204(&c).await;
    let lt_id = imdsv2_template(&c, "legacy-lt", &new_ami, "bake-asg").await;
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("legacy_production")
        .preferences(skip)
        .desired_configuration(desired(&lt_id, "1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh_until_done(&c, "legacy_production").await.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert!(group_images(&c, "legacy_production").await.iter().all(|(_, a)| *a == new_ami), "nothing matched: all replaced");
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("legacy_production").send().await.unwrap();
    let g = &g.auto_scaling_groups()[0];
    assert_eq!(g.launch_template().unwrap().launch_template_id(), Some(lt_id.as_str()));
    assert_eq!(g.launch_configuration_name(), None, "a group has a launch template or a configuration, not both");
}

/// Instances protected from scale in: "Wait (default) Amazon EC2 Auto Scaling waits one hour for
/// you to remove scale-in protection. Otherwise, the instance refresh will fail."; "Refresh ...
/// replaces instances that are protected from scale in" (RefreshPreferences.ScaleInProtectedInstances,
/// https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_RefreshPreferences.html). The hour is
/// multiplied by the sandbox's time_scale; unprotected instances are replaced first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_protected_instances_make_a_default_refresh_wait_then_fail() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.0005})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, old_ami) = group_with_template(&c, "ecs_production", 3).await;
    let new_ami = ubuntu_2204(&c).await;
    let v2 = new_version(&c, &lt_id, &new_ami).await;
    let protected = group_instances(&c, "ecs_production").await[0].instance_id().unwrap().to_string();
    c.asg.set_instance_protection().auto_scaling_group_name("ecs_production").instance_ids(&protected).protected_from_scale_in(true).send().await.unwrap();
    let prefs = || asg_t::RefreshPreferences::builder().min_healthy_percentage(50).instance_warmup(50);
    let t0 = Instant::now();
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("ecs_production")
        .preferences(prefs().build())
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    let waiting = until(10, "the refresh to wait", || async {
        let r = refresh_status(&c, "ecs_production").await;
        r.status_reason().unwrap_or_default().contains("Waiting").then_some(r)
    })
    .await;
    assert_eq!(waiting.status(), Some(&asg_t::InstanceRefreshStatus::InProgress));
    assert_eq!(waiting.preferences().unwrap().scale_in_protected_instances(), Some(&asg_t::ScaleInProtectedInstances::Wait));
    let r = refresh_until_done(&c, "ecs_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::Failed));
    assert!(r.status_reason().unwrap().contains(&protected), "{:?}", r.status_reason());
    assert!(t0.elapsed() >= Duration::from_millis(1700), "it waited the (scaled) hour: {:?}", t0.elapsed());
    let imgs = group_images(&c, "ecs_production").await;
    assert_eq!(imgs.iter().find(|(i, _)| *i == protected).map(|(_, a)| a.clone()), Some(old_ami), "the protected one is untouched");
    assert_eq!(imgs.iter().filter(|(_, a)| *a == new_ami).count(), 2, "the others were replaced first");
    // Refresh: protected instances are replaced too.
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("ecs_production")
        .preferences(prefs().scale_in_protected_instances(asg_t::ScaleInProtectedInstances::Refresh).build())
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh_until_done(&c, "ecs_production").await.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert!(group_images(&c, "ecs_production").await.iter().all(|(_, a)| *a == new_ami));
}

/// Standby instances: Ignore leaves them, Wait (the default) waits for them to return to service
/// and carries on when they do, Terminate terminates them ("StandbyInstances",
/// https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_RefreshPreferences.html;
/// EnterStandby/ExitStandby, https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-enter-exit-standby.html).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_instances_are_ignored_waited_for_or_terminated_as_asked() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.001})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, old_ami) = group_with_template(&c, "queue_production", 3).await;
    let new_ami = ubuntu_2204(&c).await;
    let v2 = new_version(&c, &lt_id, &new_ami).await;
    let standby = group_instances(&c, "queue_production").await[0].instance_id().unwrap().to_string();
    c.asg.enter_standby().auto_scaling_group_name("queue_production").instance_ids(&standby).should_decrement_desired_capacity(true).send().await.unwrap();
    let start = |standby_pref: Option<asg_t::StandbyInstances>| {
        c.asg
            .start_instance_refresh()
            .auto_scaling_group_name("queue_production")
            .preferences(
                asg_t::RefreshPreferences::builder()
                    .min_healthy_percentage(50)
                    .instance_warmup(50)
                    .skip_matching(true)
                    .set_standby_instances(standby_pref)
                    .build(),
            )
            .desired_configuration(desired(&lt_id, &v2))
            .send()
    };
    start(Some(asg_t::StandbyInstances::Ignore)).await.unwrap();
    assert_eq!(refresh_until_done(&c, "queue_production").await.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    let imgs = group_images(&c, "queue_production").await;
    assert_eq!(imgs.iter().find(|(i, _)| *i == standby).map(|(_, a)| a.clone()), Some(old_ami), "ignored");
    let st = group_instances(&c, "queue_production").await;
    assert_eq!(st.iter().find(|i| i.instance_id() == Some(&standby)).unwrap().lifecycle_state(), Some(&asg_t::LifecycleState::Standby));
    // Wait (the default): the refresh waits; returning the instance to service lets it finish.
    start(None).await.unwrap();
    until(10, "the refresh to wait", || async {
        refresh_status(&c, "queue_production").await.status_reason().unwrap_or_default().contains("Standby").then_some(())
    })
    .await;
    c.asg.exit_standby().auto_scaling_group_name("queue_production").instance_ids(&standby).send().await.unwrap();
    assert_eq!(refresh_until_done(&c, "queue_production").await.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert!(group_images(&c, "queue_production").await.iter().all(|(_, a)| *a == new_ami));
    // Terminate: a Standby instance is terminated, not replaced.
    let again = group_instances(&c, "queue_production").await[0].instance_id().unwrap().to_string();
    c.asg.enter_standby().auto_scaling_group_name("queue_production").instance_ids(&again).should_decrement_desired_capacity(true).send().await.unwrap();
    // (Without SkipMatching: an instance already on the desired version is skipped, Standby or not.)
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("queue_production")
        .preferences(
            asg_t::RefreshPreferences::builder().min_healthy_percentage(50).instance_warmup(50).standby_instances(asg_t::StandbyInstances::Terminate).build(),
        )
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh_until_done(&c, "queue_production").await.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    let left = group_instances(&c, "queue_production").await;
    assert!(left.iter().all(|i| i.instance_id() != Some(&again)), "{left:?}");
    assert_eq!(state(&c, &again).await, "terminated");
}

/// Health: EC2 status checks are the default and can't be disabled; load balancer checks count only
/// when the group's HealthCheckType turns them on, after its HealthCheckGracePeriod (default 0
/// through the API). So an image whose instances fail only ELB checks rolls out "successfully" in a
/// group without ELB checks, and fails (and rolls back) in one with them ("Health checks for
/// instances in an Auto Scaling group", https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-health-checks.html;
/// CreateAutoScalingGroup HealthCheckGracePeriod "Default: 0 seconds").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_the_groups_type_and_grace_period() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, old_ami) = group_with_template(&c, "noelb_production", 2).await;
    // Its target group: Auto Scaling registers the instances it launches and deregisters those it
    // terminates (they drain); the target group's own checks find the bad image's instances
    // unhealthy although the group does not use them (DescribeTargetHealth, TargetHealth.State).
    let (elb, tg) = common::target_group(&sb, "noelb-production", &["noelb_production"]).await;
    let before = common::target_states(&elb, &tg).await;
    assert!(before.len() == 2 && before.values().all(|s| s == "healthy"), "{before:?}");
    let bad = ubuntu_2204(&c).await;
    let v2 = new_version(&c, &lt_id, &bad).await;
    sb.control("POST", "/_sandbox/elb_unhealthy_amis", Some(json!({"amis": [bad]})));
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("noelb_production").send().await.unwrap();
    assert_eq!(g.auto_scaling_groups()[0].health_check_type(), Some("EC2"));
    assert_eq!(g.auto_scaling_groups()[0].health_check_grace_period(), Some(0));
    let prefs = asg_t::RefreshPreferences::builder().min_healthy_percentage(50).instance_warmup(50).auto_rollback(true).build();
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("noelb_production")
        .preferences(prefs.clone())
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh_until_done(&c, "noelb_production").await.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    assert!(group_images(&c, "noelb_production").await.iter().all(|(_, a)| *a == bad), "rolled out: EC2 checks pass");
    assert!(group_instances(&c, "noelb_production").await.iter().all(|i| i.health_status() == Some("Healthy")));
    let after = common::target_states(&elb, &tg).await;
    for i in group_instances(&c, "noelb_production").await {
        assert_eq!(after.get(i.instance_id().unwrap()).map(String::as_str), Some("unhealthy"), "{after:?}");
    }
    // The old instances left the target group (AWS lists them draining for a while, then not).
    assert!(before.keys().all(|old| after.get(old).is_none_or(|s| s == "draining")), "{after:?}");
    // The same image in a group with ELB checks and a 300 s grace period (0.6 s scaled).
    c.asg
        .create_auto_scaling_group()
        .auto_scaling_group_name("elb_production")
        .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version("1").build())
        .min_size(0)
        .max_size(4)
        .desired_capacity(2)
        .health_check_type("ELB")
        .health_check_grace_period(300)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("elb_production")
        .preferences(prefs)
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    let r = refresh_until_done(&c, "elb_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::RollbackSuccessful));
    assert!(r.rollback_details().unwrap().rollback_reason().unwrap().contains("ELB"), "{:?}", r.rollback_details());
    assert!(group_images(&c, "elb_production").await.iter().all(|(_, a)| *a == old_ami));
    let rec = &sb.control("GET", "/_sandbox/refreshes?group=elb_production", None)["refreshes"][0];
    let took = rec["ended"].as_f64().unwrap() - rec["started"].as_f64().unwrap();
    assert!(took >= 0.6, "the ELB check failed only after the (scaled) 300 s grace period: {took:.2}s");
}

/// "Eventual consistency in the Amazon EC2 API": a resource can answer NotFound right after it is
/// created (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html; Packer and
/// Ansible report InvalidAMIID.NotFound straight after CreateImage). On by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_resources_answer_not_found_for_a_moment() {
    let sb = Sandbox::start();
    let d = sb.control("GET", "/_sandbox/delays", None);
    assert!(d["delays"]["visibility_lag"].as_f64().unwrap() > 0.0, "on by default: {d}");
    assert!(d["delays"]["iam_propagation"].as_f64().unwrap() > 0.0, "on by default: {d}");
    let c = clients(&sb).await;
    consistency_on(&sb, 0.6, 0.0);
    let ami = ubuntu(&c).await;
    let id = launch(&c, &ami, None).await;
    let e = c.ec2.describe_instances().instance_ids(&id).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidInstanceID.NotFound"));
    let listed = c.ec2.describe_instances().send().await.unwrap();
    assert!(listed.reservations().iter().flat_map(|r| r.instances()).all(|i| i.instance_id() != Some(id.as_str())), "not listed yet");
    let sg = c.ec2.create_security_group().group_name("bake-new").description("new").send().await.unwrap().group_id.unwrap();
    let e = c.ec2.run_instances().image_id(&ami).min_count(1).max_count(1).security_group_ids(&sg).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidGroup.NotFound"));
    let lt = c
        .ec2
        .create_launch_template()
        .launch_template_name("bake-new-lt")
        .launch_template_data(ec2_t::RequestLaunchTemplateData::builder().image_id(&ami).build())
        .send()
        .await
        .unwrap();
    let lt_id = lt.launch_template().unwrap().launch_template_id().unwrap().to_string();
    let e = c.ec2.describe_launch_template_versions().launch_template_id(&lt_id).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidLaunchTemplateId.NotFound"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The instance, group and template are there now; a new image is not, and neither is a new group.
    c.ec2.describe_instances().instance_ids(&id).send().await.unwrap();
    let image = c.ec2.create_image().instance_id(&id).name("bake-new-1").send().await.unwrap().image_id.unwrap();
    let e = c.ec2.describe_images().image_ids(&image).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidAMIID.NotFound"), "described straight after CreateImage");
    let own = c.ec2.describe_images().owners("self").send().await.unwrap();
    assert!(own.images().is_empty(), "not listed yet either");
    let e = c.ec2.run_instances().image_id(&image).min_count(1).max_count(1).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidAMIID.NotFound"));
    group_on(&c, "fresh_staging", &lt_id, "1", 0).await;
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("fresh_staging").send().await.unwrap();
    assert!(g.auto_scaling_groups().is_empty(), "an unknown name is left out, not an error");
    let e = c.asg.start_instance_refresh().auto_scaling_group_name("fresh_staging").send().await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationError"));
    // A retry a moment later finds them.
    let found = until(5, "the image", || async { c.ec2.describe_images().image_ids(&image).send().await.ok() }).await;
    assert_eq!(found.images().len(), 1);
    until(5, "the group", || async {
        let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("fresh_staging").send().await.unwrap();
        (!g.auto_scaling_groups().is_empty()).then_some(())
    })
    .await;
}

/// IAM changes reach EC2 late ("Changes that I make are not always immediately visible", IAM user
/// guide troubleshooting, https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html;
/// Packer #9810 and #12303): a profile whose role was just added is refused by RunInstances, and a
/// policy just attached to the role lets the instance's SSM agent register only once it propagated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_changes_reach_instances_late() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    consistency_on(&sb, 0.0, 0.8);
    let ami = ubuntu(&c).await;
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    for name in ["bake-late-role", "bake-late-policy"] {
        c.iam.create_role().role_name(name).path("/bake/").assume_role_policy_document(trust).send().await.unwrap();
        c.iam.create_instance_profile().instance_profile_name(name).path("/bake/").send().await.unwrap();
    }
    c.iam.attach_role_policy().role_name("bake-late-role").policy_arn(SSM_CORE).send().await.unwrap();
    c.iam.add_role_to_instance_profile().instance_profile_name("bake-late-policy").role_name("bake-late-policy").send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    // AddRoleToInstanceProfile: refused right after.
    c.iam.add_role_to_instance_profile().instance_profile_name("bake-late-role").role_name("bake-late-role").send().await.unwrap();
    let p = ec2_t::IamInstanceProfileSpecification::builder().name("bake-late-role").build();
    let e = c.ec2.run_instances().image_id(&ami).min_count(1).max_count(1).iam_instance_profile(p.clone()).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"));
    assert!(e.message().unwrap().contains("Invalid IAM Instance Profile"), "{:?}", e.message());
    let t = Instant::now();
    let id = until(5, "the profile to propagate", || async {
        c.ec2.run_instances().image_id(&ami).min_count(1).max_count(1).iam_instance_profile(p.clone()).send().await.ok()
    })
    .await;
    assert!(t.elapsed() >= Duration::from_millis(600));
    let _ = id;
    // AttachRolePolicy: the agent registers only once the policy has propagated.
    c.iam.attach_role_policy().role_name("bake-late-policy").policy_arn(SSM_CORE).send().await.unwrap();
    let t = Instant::now();
    let late = launch(&c, &ami, Some("bake-late-policy")).await;
    assert!(!online(&c).await.iter().any(|(i, _)| *i == late), "the new policy has not reached the instance yet");
    until(5, "the agent", || async { online(&c).await.iter().any(|(i, s)| *i == late && s == "Online").then_some(()) }).await;
    assert!(t.elapsed() >= Duration::from_millis(700), "{:?}", t.elapsed());
    // Deleting what still holds on to something is DeleteConflict; taking out what is not there,
    // NoSuchEntity (moto crashed on a role the profile does not hold).
    let e = c.iam.delete_instance_profile().instance_profile_name("bake-late-role").send().await.unwrap_err();
    assert_eq!(e.code(), Some("DeleteConflict"));
    let e = c.iam.remove_role_from_instance_profile().instance_profile_name("bake-late-role").role_name("bake-late-policy").send().await.unwrap_err();
    assert_eq!(e.code(), Some("NoSuchEntity"), "{e:?}");
    let e = c.iam.remove_role_from_instance_profile().instance_profile_name("no-such-profile").role_name("bake-late-role").send().await.unwrap_err();
    assert_eq!(e.code(), Some("NoSuchEntity"), "{e:?}");
    c.iam.remove_role_from_instance_profile().instance_profile_name("bake-late-role").role_name("bake-late-role").send().await.unwrap();
    let e = c.iam.delete_role().role_name("bake-late-role").send().await.unwrap_err();
    assert_eq!(e.code(), Some("DeleteConflict"), "a policy is still attached");
    let e = c.iam.detach_role_policy().role_name("bake-late-role").policy_arn("arn:aws:iam::aws:policy/ReadOnlyAccess").send().await.unwrap_err();
    assert_eq!(e.code(), Some("NoSuchEntity"), "{e:?}");
}

/// A builder lost mid-step, as "Understanding command statuses" describes
/// (https://docs.aws.amazon.com/systems-manager/latest/userguide/monitor-commands.html):
/// - a running command whose agent dies with its instance "remains at In Progress" and, getting no
///   "document terminal response from SSM Agent", ends Delivery Timed Out when TimeoutSeconds plus
///   executionTimeout have passed (also ExpiresAfter, "calculated based on the total timeout");
/// - a command sent to a stopped instance is Delayed ("The system retries again");
/// - one whose instance is terminated before it arrives is Undeliverable (Status Failed);
/// - TimeoutSeconds is 30 to 2592000 (SendCommand API reference).
/// The sandbox clock is moved forward (POST /_sandbox/clock) instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_lost_mid_step_ends_its_command_as_aws_documents() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "bake-lost", true).await;
    let ami = ubuntu(&c).await;
    let spot = launch(&c, &ami, Some("bake-lost")).await;
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "step=long", "duration": 40}]})));
    let send_to = |id: String, script: &'static str| {
        c.ssm
            .send_command()
            .instance_ids(id)
            .document_name("AWS-RunShellScript")
            .timeout_seconds(30)
            .parameters("commands", vec![script.to_string()])
            .parameters("executionTimeout", vec!["60".to_string()])
            .send()
    };
    let sent = send_to(spot.clone(), "echo step=long").await.unwrap();
    let cmd = sent.command().unwrap();
    let (requested, expires) = (cmd.requested_date_time().unwrap().secs(), cmd.expires_after().unwrap().secs());
    assert_eq!(expires - requested, 90, "ExpiresAfter: TimeoutSeconds + executionTimeout");
    let cmd = cmd.command_id().unwrap().to_string();
    until(5, "InProgress", || async { (invocation(&c, &cmd, &spot).await.status() == Some(&ssm_t::CommandInvocationStatus::InProgress)).then_some(()) }).await;
    // EC2 reclaims the Spot builder.
    let v = sb.control("POST", "/_sandbox/interrupt", Some(json!({"instance": spot})));
    assert_eq!(v["state"], "terminated");
    let d = c.ec2.describe_instances().instance_ids(&spot).send().await.unwrap();
    let reason = d.reservations()[0].instances()[0].state_reason().unwrap().code().unwrap().to_string();
    assert_eq!(reason, "Server.SpotInstanceTermination");
    sb.control("POST", "/_sandbox/clock", Some(json!({"advance": 45})));
    let inv = invocation(&c, &cmd, &spot).await;
    assert_eq!(inv.status(), Some(&ssm_t::CommandInvocationStatus::InProgress), "past its 40 s, still no report");
    sb.control("POST", "/_sandbox/clock", Some(json!({"advance": 46})));
    let inv = invocation(&c, &cmd, &spot).await;
    assert_eq!(inv.status(), Some(&ssm_t::CommandInvocationStatus::TimedOut));
    assert_eq!(inv.status_details(), Some("DeliveryTimedOut"));
    // Stopped before delivery: Delayed, and not timed out at TimeoutSeconds alone.
    let stopped = launch(&c, &ami, Some("bake-lost")).await;
    until(5, "the agent", || async { online(&c).await.iter().any(|(i, _)| *i == stopped).then_some(()) }).await;
    c.ec2.stop_instances().instance_ids(&stopped).send().await.unwrap();
    let late = send_to(stopped.clone(), "echo step=late").await.unwrap().command().unwrap().command_id().unwrap().to_string();
    assert_eq!(invocation(&c, &late, &stopped).await.status(), Some(&ssm_t::CommandInvocationStatus::Delayed));
    sb.control("POST", "/_sandbox/clock", Some(json!({"advance": 35})));
    assert_eq!(invocation(&c, &late, &stopped).await.status(), Some(&ssm_t::CommandInvocationStatus::Delayed), "30 s is not the end");
    sb.control("POST", "/_sandbox/clock", Some(json!({"advance": 56})));
    let inv = invocation(&c, &late, &stopped).await;
    assert_eq!((inv.status(), inv.status_details()), (Some(&ssm_t::CommandInvocationStatus::TimedOut), Some("DeliveryTimedOut")));
    // Terminated before delivery: Undeliverable, and the command (all undeliverable) Failed.
    sb.control("POST", "/_sandbox/delays", Some(json!({"command_pending": 5})));
    let gone = launch(&c, &ami, Some("bake-lost")).await;
    until(5, "the agent", || async { online(&c).await.iter().any(|(i, _)| *i == gone).then_some(()) }).await;
    let never = send_to(gone.clone(), "echo step=never").await.unwrap().command().unwrap().command_id().unwrap().to_string();
    c.ec2.terminate_instances().instance_ids(&gone).send().await.unwrap();
    let inv = invocation(&c, &never, &gone).await;
    assert_eq!((inv.status(), inv.status_details()), (Some(&ssm_t::CommandInvocationStatus::Failed), Some("Undeliverable")));
    let listed = c.ssm.list_commands().command_id(&never).send().await.unwrap();
    assert_eq!(listed.commands()[0].status(), Some(&ssm_t::CommandStatus::Failed));
    // TimeoutSeconds below 30 is AWS's validation error.
    let other = launch(&c, &ami, Some("bake-lost")).await;
    let e = c
        .ssm
        .send_command()
        .instance_ids(&other)
        .document_name("AWS-RunShellScript")
        .timeout_seconds(10)
        .parameters("commands", vec!["true".to_string()])
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
}

/// SendCommand's size limit is the document's: "The content of the document must not exceed 64KB.
/// This quota also includes the content specified for input parameters at runtime" (SSM API
/// reference, CreateDocument Content, https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_CreateDocument.html);
/// SendCommand answers MaxDocumentSizeExceeded ("The size limit of a document is 64 KB."). The
/// sandbox counts AWS-RunShellScript's content plus the parameters as JSON against 64,000 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_command_refuses_a_document_over_64_kb_with_its_parameters() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "bake-big", true).await;
    let id = launch(&c, &ubuntu(&c).await, Some("bake-big")).await;
    let send = |script: String| c.ssm.send_command().instance_ids(&id).document_name("AWS-RunShellScript").parameters("commands", vec![script]).send();
    let e = send(format!("echo {}", "x".repeat(63_000))).await.unwrap_err();
    assert_eq!(e.code(), Some("MaxDocumentSizeExceeded"));
    // JSON escaping counts: 40,000 newlines are 80,000 bytes.
    let e = send("\n".repeat(40_000)).await.unwrap_err();
    assert_eq!(e.code(), Some("MaxDocumentSizeExceeded"));
    send(format!("echo {}", "x".repeat(60_000))).await.unwrap();
    send(format!("echo {}", "x".repeat(48 * 1024))).await.unwrap();
}

/// EnableImageDeprecation: "You can't specify a date in the past. The upper limit for DeprecateAt
/// is 10 years from now ... If you specify a value for seconds, Amazon EC2 rounds the seconds to the
/// nearest minute." (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_EnableImageDeprecation.html)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecation_dates_are_bounded_and_rounded_to_the_minute() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    let id = launch(&c, &ubuntu(&c).await, None).await;
    let image = c.ec2.create_image().instance_id(&id).name("bake-deprecate-1").send().await.unwrap().image_id.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let at = |secs: i64| aws_sdk_ec2::primitives::DateTime::from_secs(secs);
    let deprecate = |secs: i64| c.ec2.enable_image_deprecation().image_id(&image).deprecate_at(at(secs)).send();
    let e = deprecate(now - 3600).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"), "in the past");
    let e = deprecate(now + 11 * 366 * 86400).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"), "more than 10 years ahead");
    let minute = (now / 60 + 30 * 24 * 60) * 60; // a whole minute, 30 days ahead
    deprecate(minute + 40).await.unwrap();
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    let shown = d.images()[0].deprecation_time().unwrap().to_string();
    let got = aws_sdk_ec2::primitives::DateTime::from_str(&shown, aws_sdk_ec2::primitives::DateTimeFormat::DateTime).unwrap();
    assert_eq!(got.secs(), minute + 60, "40 s rounds up to the next minute ({shown})");
    deprecate(minute + 20).await.unwrap();
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    let got =
        aws_sdk_ec2::primitives::DateTime::from_str(d.images()[0].deprecation_time().unwrap(), aws_sdk_ec2::primitives::DateTimeFormat::DateTime).unwrap();
    assert_eq!(got.secs(), minute, "20 s rounds down");
}

/// Images as AWS protects them:
/// - CreateImage refuses a malformed name (EC2 API reference, CreateImage Name);
/// - DisableImage: "A disabled AMI can't be used for instance launches", it loses its launch
///   permissions, and "does not appear in DescribeImages API calls by default" (IncludeDisabled shows
///   it) (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/disable-an-ami.html);
/// - deregistration protection: "When deregistration protection is enabled, the AMI can't be
///   deregistered"; WithCooldown "enforces deregistration protection for 24 hours after
///   deregistration protection is disabled" (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ami-deregistration-protection.html);
/// - block public access for AMIs, per region, on for a new account: making an image public fails
///   with OperationNotPermitted ("You can't publicly share this image because block public access for
///   AMIs is enabled for this account") and the setting takes time to change ("During this time, if
///   you run GetImageBlockPublicAccessState, the response will be unblocked")
///   (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-public-access-to-amis.html).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_can_be_disabled_protected_and_kept_private() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    let ami = ubuntu(&c).await;
    let id = launch(&c, &ami, None).await;
    // CreateImage's name: "3-128 alphanumeric characters, parentheses (()), square brackets ([]),
    // spaces ( ), periods (.), slashes (/), dashes (-), single quotes ('), at-signs (@), or underscores(_)".
    for bad in ["ab", "bake:protect", "bake-{{timestamp}}"] {
        let e = c.ec2.create_image().instance_id(&id).name(bad).send().await.unwrap_err();
        assert_eq!(e.code(), Some("InvalidAMIName.Malformed"), "{bad}");
    }
    let image = c.ec2.create_image().instance_id(&id).name("bake-protect-1").send().await.unwrap().image_id.unwrap();
    // Deregistration protection with its cooldown.
    let r = c.ec2.enable_image_deregistration_protection().image_id(&image).with_cooldown(true).send().await.unwrap();
    assert_eq!(r.r#return(), Some("enabled-with-cooldown"));
    let e = c.ec2.deregister_image().image_id(&image).send().await.unwrap_err();
    assert_eq!(e.code(), Some("OperationNotPermitted"));
    let r = c.ec2.disable_image_deregistration_protection().image_id(&image).send().await.unwrap();
    assert!(r.r#return().unwrap().starts_with("disabled after "), "{:?}", r.r#return());
    let e = c.ec2.deregister_image().image_id(&image).send().await.unwrap_err();
    assert_eq!(e.code(), Some("OperationNotPermitted"), "still protected during the 24-hour cooldown");
    sb.control("POST", "/_sandbox/clock", Some(json!({"advance": 24 * 3600 + 1})));
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    assert_eq!(d.images()[0].deregistration_protection(), Some("disabled"));
    // Block public access: on for a new account, in every region.
    let s = c.ec2.get_image_block_public_access_state().send().await.unwrap();
    assert_eq!(s.image_block_public_access_state(), Some("block-new-sharing"));
    let public = || {
        c.ec2
            .modify_image_attribute()
            .image_id(&image)
            .launch_permission(
                ec2_t::LaunchPermissionModifications::builder().add(ec2_t::LaunchPermission::builder().group(ec2_t::PermissionGroup::All).build()).build(),
            )
            .send()
    };
    let e = public().await.unwrap_err();
    assert_eq!(e.code(), Some("OperationNotPermitted"));
    assert!(e.message().unwrap().contains("block public access for AMIs is enabled"), "{:?}", e.message());
    sb.control("POST", "/_sandbox/delays", Some(json!({"block_public_access": 0.5})));
    c.ec2.disable_image_block_public_access().send().await.unwrap();
    let s = c.ec2.get_image_block_public_access_state().send().await.unwrap();
    assert_eq!(s.image_block_public_access_state(), Some("block-new-sharing"), "the change takes a while");
    assert_eq!(public().await.unwrap_err().code(), Some("OperationNotPermitted"));
    until(5, "unblocked", || async {
        let s = c.ec2.get_image_block_public_access_state().send().await.unwrap();
        (s.image_block_public_access_state() == Some("unblocked")).then_some(())
    })
    .await;
    public().await.unwrap();
    assert_eq!(c.ec2.describe_images().image_ids(&image).send().await.unwrap().images()[0].public(), Some(true));
    // Disabled: private, hidden, not launchable; enabled again: launchable, still private.
    c.ec2.disable_image().image_id(&image).send().await.unwrap();
    assert!(c.ec2.describe_images().image_ids(&image).send().await.unwrap().images().is_empty());
    assert!(c.ec2.describe_images().owners("self").send().await.unwrap().images().is_empty());
    let d = c.ec2.describe_images().image_ids(&image).include_disabled(true).send().await.unwrap();
    assert_eq!(d.images()[0].state(), Some(&ec2_t::ImageState::Disabled));
    assert_eq!(d.images()[0].public(), Some(false), "disabling removes every launch permission");
    let e = c.ec2.run_instances().image_id(&image).min_count(1).max_count(1).send().await.unwrap_err();
    assert!(e.code().unwrap().starts_with("InvalidAMIID"), "{:?}", e.code());
    c.ec2.enable_image().image_id(&image).send().await.unwrap();
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    assert_eq!((d.images()[0].state(), d.images()[0].public()), (Some(&ec2_t::ImageState::Available), Some(false)));
    c.ec2.run_instances().image_id(&image).min_count(1).max_count(1).send().await.unwrap();
    c.ec2.deregister_image().image_id(&image).send().await.unwrap();
}

/// Auto Scaling and IAM lists page at AWS's documented sizes: DescribeAutoScalingGroups,
/// DescribeLaunchConfigurations and DescribeInstanceRefreshes "MaxRecords ... The default value is
/// 50 and the maximum value is 100" (Auto Scaling API reference); ListRoles / ListInstanceProfiles
/// "If you do not include this parameter, the number of items defaults to 100", PathPrefix "gets
/// all roles whose path starts with" it (IAM API reference,
/// https://docs.aws.amazon.com/IAM/latest/APIReference/API_ListInstanceProfiles.html).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_scaling_and_iam_lists_page_at_aws_sizes() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    let ami = ubuntu(&c).await;
    let lt = c
        .ec2
        .create_launch_template()
        .launch_template_name("many")
        .launch_template_data(ec2_t::RequestLaunchTemplateData::builder().image_id(&ami).build())
        .send()
        .await
        .unwrap();
    let lt_id = lt.launch_template().unwrap().launch_template_id().unwrap().to_string();
    let names: Vec<String> = (0..60).map(|i| format!("fleet{i:02}_production")).collect();
    for n in &names {
        group_on(&c, n, &lt_id, "1", 0).await;
    }
    let first = c.asg.describe_auto_scaling_groups().send().await.unwrap();
    assert_eq!(first.auto_scaling_groups().len(), 50);
    assert!(first.next_token().is_some());
    let by_names = c.asg.describe_auto_scaling_groups().set_auto_scaling_group_names(Some(names.clone())).send().await.unwrap();
    assert_eq!(by_names.auto_scaling_groups().len(), 50, "an explicit list of names pages too");
    let all = c.asg.describe_auto_scaling_groups().set_auto_scaling_group_names(Some(names)).into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(all.len(), 60);
    let e = c.asg.describe_auto_scaling_groups().max_records(101).send().await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationError"));
    let e = c.asg.describe_auto_scaling_groups().next_token("forged").send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidNextToken"));
    for i in 0..60 {
        c.asg.create_launch_configuration().launch_configuration_name(format!("lc-{i:03}")).image_id(&ami).instance_type("t3.micro").send().await.unwrap();
    }
    let first = c.asg.describe_launch_configurations().send().await.unwrap();
    assert_eq!((first.launch_configurations().len(), first.next_token().is_some()), (50, true));
    let all = c.asg.describe_launch_configurations().into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(all.len(), 60);
    // Instance refreshes: an empty group's refreshes end at once.
    for _ in 0..3 {
        c.asg.start_instance_refresh().auto_scaling_group_name("fleet00_production").send().await.unwrap();
        refresh_until_done(&c, "fleet00_production").await;
    }
    let page = c.asg.describe_instance_refreshes().auto_scaling_group_name("fleet00_production").max_records(2).send().await.unwrap();
    assert_eq!((page.instance_refreshes().len(), page.next_token().is_some()), (2, true));
    let pages =
        c.asg.describe_instance_refreshes().auto_scaling_group_name("fleet00_production").max_records(2).into_paginator().send().try_collect().await.unwrap();
    assert_eq!(pages.iter().map(|p| p.instance_refreshes().len()).sum::<usize>(), 3);
    let e = c.asg.describe_instance_refreshes().auto_scaling_group_name("fleet00_production").max_records(101).send().await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationError"));
    // 110 profiles and 12 roles, half under /bake/, half under /other/ (moto paged roles already).
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    for i in 0..110 {
        let path = if i % 2 == 0 { "/bake/" } else { "/other/" };
        if i < 12 {
            c.iam.create_role().role_name(format!("role-{i:03}")).path(path).assume_role_policy_document(trust).send().await.unwrap();
        }
        c.iam.create_instance_profile().instance_profile_name(format!("profile-{i:03}")).path(path).send().await.unwrap();
    }
    let first = c.iam.list_instance_profiles().send().await.unwrap();
    assert_eq!((first.instance_profiles().len(), first.is_truncated()), (100, true));
    let bake = c.iam.list_instance_profiles().path_prefix("/bake/").into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(bake.len(), 55);
    assert!(bake.iter().all(|p| p.path() == "/bake/"), "PathPrefix is honoured");
    let all = c.iam.list_instance_profiles().max_items(1000).into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(all.len(), 110, "IAM may return fewer than MaxItems; the paginator follows IsTruncated");
    let roles = c.iam.list_roles().path_prefix("/other/").into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(roles.len(), 6);
}

/// EC2 and SSM lists: DescribeImages / DescribeSnapshots / DescribeSecurityGroups page with
/// MaxResults and NextToken (DescribeSecurityGroups: "This value can be between 5 and 1000");
/// DescribeLaunchTemplateVersions pages ("This value can be between 1 and 200") where moto cut the
/// list at 15 without a token; ListCommandInvocations MaxResults 1-50; GetParameters takes at most
/// 10 names (EC2, SSM API references).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_and_ssm_lists_page_and_refuse_bad_tokens() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    let canonical = || c.ec2.describe_images().owners("099720109477");
    let everything = canonical().send().await.unwrap().images().len();
    let page = canonical().max_results(5).send().await.unwrap();
    assert_eq!((page.images().len(), page.next_token().is_some()), (5, true));
    let all = canonical().max_results(5).into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(all.len(), everything);
    let e = canonical().max_results(5).next_token("forged").send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"));
    let e = c.ec2.describe_images().owners("self").max_results(5).set_next_token(page.next_token().map(str::to_string)).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"), "a token belongs to its query");
    let e = c.ec2.describe_security_groups().max_results(4).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"));
    let ami = ubuntu(&c).await;
    let lt_id = imdsv2_template(&c, "versions", &ami, "none").await;
    for _ in 0..19 {
        new_version(&c, &lt_id, &ami).await;
    }
    let first = c.ec2.describe_launch_template_versions().launch_template_id(&lt_id).send().await.unwrap();
    assert_eq!((first.launch_template_versions().len(), first.next_token().is_some()), (15, true));
    let all = c.ec2.describe_launch_template_versions().launch_template_id(&lt_id).into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(all.len(), 20);
    let e = c.ec2.describe_launch_template_versions().launch_template_id(&lt_id).max_results(201).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"));
    profile(&c, "bake-pages", true).await;
    let id = launch(&c, &ami, Some("bake-pages")).await;
    for i in 0..3 {
        send(&c, &id, &format!("echo {i}"), "60").await;
    }
    let page = c.ssm.list_command_invocations().instance_id(&id).max_results(2).send().await.unwrap();
    assert_eq!((page.command_invocations().len(), page.next_token().is_some()), (2, true));
    let all = c.ssm.list_command_invocations().instance_id(&id).max_results(2).into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(all.len(), 3);
    let e = c.ssm.list_command_invocations().max_results(51).send().await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let e = c.ssm.get_parameters().set_names(Some((0..11).map(|i| format!("/bake/p{i}")).collect())).send().await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
}

/// "You can't delete a security group that is associated with an instance" -- DependencyViolation,
/// while any instance not yet terminated uses it (DeleteSecurityGroup,
/// https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteSecurityGroup.html).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_group_in_use_cannot_be_deleted() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_shutting_down": 0.5})));
    let sg = c.ec2.create_security_group().group_name("bake-builder").description("builder").send().await.unwrap().group_id.unwrap();
    let r = c.ec2.run_instances().image_id(ubuntu(&c).await).min_count(1).max_count(1).security_group_ids(&sg).send().await.unwrap();
    let id = r.instances()[0].instance_id().unwrap().to_string();
    let e = c.ec2.delete_security_group().group_id(&sg).send().await.unwrap_err();
    assert_eq!(e.code(), Some("DependencyViolation"));
    c.ec2.terminate_instances().instance_ids(&id).send().await.unwrap();
    let e = c.ec2.delete_security_group().group_id(&sg).send().await.unwrap_err();
    assert_eq!(e.code(), Some("DependencyViolation"), "still shutting down");
    until(5, "the group to go", || async { c.ec2.delete_security_group().group_id(&sg).send().await.ok() }).await;
}

/// A rollback restores what the group had when the refresh started ("The new instances match the
/// configuration that you last saved on the Auto Scaling group before starting the instance
/// refresh", https://docs.aws.amazon.com/autoscaling/ec2/userguide/instance-refresh-rollback.html):
/// a group switched to a new template first (UpdateAutoScalingGroup) rolls back to that template,
/// not to its launch configuration (terraform-provider-aws #34189); one refreshed onto the template
/// through DesiredConfiguration rolls back to its launch configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_restores_the_configuration_the_group_had_at_the_start() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    profile(&c, "bake-asg", true).await;
    let lc_ami = ubuntu_2204(&c).await;
    let lt_ami = ubuntu(&c).await;
    // A third x86_64 image (an arm64 one would not even launch on the template's t3.small).
    let bad = common::baked_image(&c.ec2, &lc_ami, "bad-image").await;
    sb.control("POST", "/_sandbox/unhealthy_amis", Some(json!({"amis": [bad]})));
    c.asg.create_launch_configuration().launch_configuration_name("migrate-lc").image_id(&lc_ami).instance_type("t3.micro").send().await.unwrap();
    let lt_id = imdsv2_template(&c, "migrate-lt", &lt_ami, "bake-asg").await;
    let v2 = new_version(&c, &lt_id, &bad).await;
    for name in ["switched_first", "desired_only"] {
        c.asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_configuration_name("migrate-lc")
            .min_size(0)
            .max_size(4)
            .desired_capacity(2)
            .availability_zones("us-east-1a")
            .send()
            .await
            .unwrap();
    }
    let auto = asg_t::RefreshPreferences::builder().min_healthy_percentage(50).instance_warmup(50).auto_rollback(true).build();
    // Switched to the template first, then refreshed onto a bad version: back to the template.
    c.asg
        .update_auto_scaling_group()
        .auto_scaling_group_name("switched_first")
        .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version("1").build())
        .send()
        .await
        .unwrap();
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("switched_first")
        .preferences(auto.clone())
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh_until_done(&c, "switched_first").await.status(), Some(&asg_t::InstanceRefreshStatus::RollbackSuccessful));
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("switched_first").send().await.unwrap();
    assert!(g.auto_scaling_groups()[0].launch_template().is_some(), "rolled back to the new template, not the configuration");
    let imgs = group_images(&c, "switched_first").await;
    assert!(imgs.iter().all(|(_, a)| *a != bad), "{imgs:?}");
    assert!(imgs.iter().any(|(_, a)| *a == lt_ami), "the replaced instance came back from the template, not the configuration: {imgs:?}");
    // Refreshed onto the template through DesiredConfiguration: back to the launch configuration.
    c.asg.start_instance_refresh().auto_scaling_group_name("desired_only").preferences(auto).desired_configuration(desired(&lt_id, &v2)).send().await.unwrap();
    assert_eq!(refresh_until_done(&c, "desired_only").await.status(), Some(&asg_t::InstanceRefreshStatus::RollbackSuccessful));
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("desired_only").send().await.unwrap();
    assert_eq!(g.auto_scaling_groups()[0].launch_configuration_name(), Some("migrate-lc"));
    assert!(group_images(&c, "desired_only").await.iter().all(|(_, a)| *a == lc_ami));
}

/// Issue 14's watchers list every invocation since their earliest command (SSM cannot list
/// several command ids in one call). SSM API reference, ListCommandInvocations and CommandFilter:
/// InvokedAfter / InvokedBefore take ISO 8601 times, at most 5 filters, ExecutionStage only for
/// ListCommands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_invocations_filter_by_time_status_and_document() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "bake-list", true).await;
    let ami = ubuntu(&c).await;
    let a = launch(&c, &ami, Some("bake-list")).await;
    until(20, "the agent", || async { online(&c).await.iter().any(|(i, p)| *i == a && p == "Online").then_some(()) }).await;
    let first = send(&c, &a, "echo first", "60").await;
    finished(&c, &first, &a).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = aws_smithy_types::DateTime::from(std::time::SystemTime::now()).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap();
    let second = send(&c, &a, "echo second", "60").await;
    let listed = |filters: Vec<ssm_t::CommandFilter>| {
        let c = &c;
        async move {
            let r = c.ssm.list_command_invocations().set_filters(Some(filters)).send().await?;
            Ok::<Vec<String>, aws_sdk_ssm::error::SdkError<_>>(r.command_invocations().iter().map(|i| i.command_id().unwrap().to_string()).collect())
        }
    };
    let f = |k: ssm_t::CommandFilterKey, v: &str| ssm_t::CommandFilter::builder().key(k).value(v).build().unwrap();
    assert_eq!(listed(vec![f(ssm_t::CommandFilterKey::InvokedAfter, &between)]).await.unwrap(), vec![second.clone()]);
    assert_eq!(listed(vec![f(ssm_t::CommandFilterKey::InvokedBefore, &between)]).await.unwrap(), vec![first.clone()]);
    assert_eq!(listed(vec![f(ssm_t::CommandFilterKey::DocumentName, "AWS-RunPatchBaseline")]).await.unwrap(), Vec::<String>::new());
    finished(&c, &second, &a).await;
    assert_eq!(listed(vec![f(ssm_t::CommandFilterKey::Status, "Success")]).await.unwrap().len(), 2);
    let e = listed(vec![f(ssm_t::CommandFilterKey::ExecutionStage, "Executing")]).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidFilterKey"));
    let e = listed(vec![f(ssm_t::CommandFilterKey::InvokedAfter, "yesterday")]).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidFilterValue"));
    let e = listed((0..6).map(|_| f(ssm_t::CommandFilterKey::DocumentName, "AWS-RunShellScript")).collect()).await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
}

/// EC2 refuses more than 200 filter values in one call (`FilterLimitExceeded`); the call log
/// names the instances each call asked about (the watchers' batching is checked through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_refuses_more_than_200_filter_values_and_the_log_names_ids() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    let ids: Vec<String> = (0..201).map(|i| format!("i-{i:017x}")).collect();
    let filter = |n: usize| ec2_t::Filter::builder().name("instance-id").set_values(Some(ids[..n].to_vec())).build();
    let e = c.ec2.describe_instances().filters(filter(201)).send().await.unwrap_err();
    assert_eq!(e.code(), Some("FilterLimitExceeded"));
    sb.control("DELETE", "/_sandbox/calls", None);
    let r = c.ec2.describe_instances().filters(filter(200)).send().await.unwrap();
    assert!(r.reservations().is_empty());
    let calls = sb.calls();
    let logged = &calls["calls"][0];
    assert_eq!(logged["action"], "DescribeInstances");
    assert_eq!(logged["ids"].as_array().unwrap().len(), 200);
}

/// Warm pools ("Warm pools for Amazon EC2 Auto Scaling"): the pool holds MaxGroupPreparedCapacity
/// (default: the group's maximum) minus the desired capacity, at least MinSize, stopped for
/// PoolState Stopped; an instance refresh replaces them after the live pool and reports
/// WarmPoolProgress; DeleteWarmPool terminates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_holds_stopped_instances_that_a_refresh_replaces() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    profile(&c, "bake-asg", true).await;
    let (lt_id, ami) = group_with_template(&c, "warm_production", 2).await;
    c.asg.put_warm_pool().auto_scaling_group_name("warm_production").min_size(3).send().await.unwrap();
    let pool = c.asg.describe_warm_pool().auto_scaling_group_name("warm_production").send().await.unwrap();
    assert_eq!(pool.instances().len(), 3, "MinSize 3 beats max 4 - desired 2");
    assert!(pool.instances().iter().all(|i| i.lifecycle_state() == Some(&asg_t::LifecycleState::WarmedStopped)));
    let ids: Vec<String> = pool.instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect();
    for id in &ids {
        assert_eq!(state(&c, id).await, "stopped");
    }
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names("warm_production").send().await.unwrap();
    assert_eq!(g.auto_scaling_groups()[0].warm_pool_size(), Some(3));
    assert_eq!(g.auto_scaling_groups()[0].instances().len(), 2, "warm instances are not in service");
    let new_ami = ubuntu_2204(&c).await;
    assert_ne!(new_ami, ami);
    let v2 = new_version(&c, &lt_id, &new_ami).await;
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("warm_production")
        .preferences(asg_t::RefreshPreferences::builder().min_healthy_percentage(50).build())
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    let r = refresh_until_done(&c, "warm_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::Successful));
    let warm = r.progress_details().unwrap().warm_pool_progress().unwrap();
    assert_eq!((warm.percentage_complete(), warm.instances_to_update()), (Some(100), Some(0)));
    let pool = c.asg.describe_warm_pool().auto_scaling_group_name("warm_production").send().await.unwrap();
    let now: Vec<String> = pool.instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect();
    assert_eq!(now.len(), 3);
    assert!(now.iter().all(|i| !ids.contains(i)), "every warm instance replaced");
    for id in &ids {
        assert_eq!(state(&c, id).await, "terminated");
    }
    c.asg.delete_warm_pool().auto_scaling_group_name("warm_production").send().await.unwrap();
    for id in &now {
        assert_eq!(state(&c, id).await, "terminated");
    }
}

/// CloudWatch reaches the sandbox in Smithy RPC v2 CBOR (the Rust SDK's protocol for it); its
/// alarms gate instance refreshes: "If any of the alarms go into the ALARM state, the instance
/// refresh fails" and, with AutoRollback, rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_alarms_answer_in_cbor_and_fail_a_refresh_that_names_them() {
    use aws_sdk_cloudwatch::types as cw_t;
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    let cw = common::alarm(&sb, "api-5xx").await;
    let d = cw.describe_alarms().alarm_names("api-5xx").send().await.unwrap();
    let a = &d.metric_alarms()[0];
    assert_eq!((a.alarm_name(), a.state_value()), (Some("api-5xx"), Some(&cw_t::StateValue::Ok)));
    assert!(a.state_updated_timestamp().is_some(), "timestamps arrive as CBOR's");
    let e = cw.set_alarm_state().alarm_name("nobody").state_value(cw_t::StateValue::Alarm).state_reason("x").send().await.unwrap_err();
    assert_eq!(e.code(), Some("ResourceNotFound"), "{e:?}");
    // A refresh gated by the alarm: it fires, AWS rolls the refresh back.
    profile(&c, "bake-asg", true).await;
    let (lt_id, ami) = group_with_template(&c, "gated_production", 2).await;
    let v2 = new_version(&c, &lt_id, &ubuntu_2204(&c).await).await;
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("gated_production")
        .preferences(
            asg_t::RefreshPreferences::builder()
                .min_healthy_percentage(50)
                .instance_warmup(200)
                .auto_rollback(true)
                .alarm_specification(asg_t::AlarmSpecification::builder().alarms("api-5xx").build())
                .build(),
        )
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    cw.set_alarm_state().alarm_name("api-5xx").state_value(cw_t::StateValue::Alarm).state_reason("5xx above 10").send().await.unwrap();
    let r = refresh_until_done(&c, "gated_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::RollbackSuccessful), "{r:?}");
    assert!(r.status_reason().unwrap_or_default().contains("api-5xx"), "{r:?}");
    assert!(group_images(&c, "gated_production").await.iter().all(|(_, i)| *i == ami));
}

/// BakeTime: the refresh stays `Baking` after its last instance, its alarms still watched; an
/// alarm then rolls it back. At most 172800 seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baking_refresh_rolls_back_when_its_alarm_fires() {
    use aws_sdk_cloudwatch::types as cw_t;
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    let cw = common::alarm(&sb, "api-latency").await;
    profile(&c, "bake-asg", true).await;
    let (lt_id, ami) = group_with_template(&c, "baking_production", 2).await;
    let v2 = new_version(&c, &lt_id, &ubuntu_2204(&c).await).await;
    let prefs = |bake: i32| {
        asg_t::RefreshPreferences::builder()
            .min_healthy_percentage(50)
            .auto_rollback(true)
            .bake_time(bake)
            .alarm_specification(asg_t::AlarmSpecification::builder().alarms("api-latency").build())
            .build()
    };
    let e = c
        .asg
        .start_instance_refresh()
        .auto_scaling_group_name("baking_production")
        .preferences(prefs(172_801))
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationError"));
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("baking_production")
        .preferences(prefs(10_000))
        .desired_configuration(desired(&lt_id, &v2))
        .send()
        .await
        .unwrap();
    until(20, "the refresh to bake", || async {
        (refresh_status(&c, "baking_production").await.status() == Some(&asg_t::InstanceRefreshStatus::Baking)).then_some(())
    })
    .await;
    cw.set_alarm_state().alarm_name("api-latency").state_value(cw_t::StateValue::Alarm).state_reason("slow").send().await.unwrap();
    let r = refresh_until_done(&c, "baking_production").await;
    assert_eq!(r.status(), Some(&asg_t::InstanceRefreshStatus::RollbackSuccessful), "{r:?}");
    assert!(group_images(&c, "baking_production").await.iter().all(|(_, i)| *i == ami));
}

/// EC2 refuses an instance type that cannot run the image's architecture ("The architecture
/// 'x86_64' of the specified instance type does not match the architecture 'arm64' of the
/// specified AMI", InvalidParameterValue); so does an Auto Scaling launch (a failed activity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_type_must_run_the_images_architecture() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    let arm = published(&c, "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id").await;
    let e = c.ec2.run_instances().image_id(&arm).instance_type(ec2_t::InstanceType::T3Small).min_count(1).max_count(1).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"));
    assert!(e.message().unwrap().contains("does not match the architecture 'arm64' of the specified AMI"), "{:?}", e.message());
    let ok = c.ec2.run_instances().image_id(&arm).instance_type(ec2_t::InstanceType::T4gSmall).min_count(1).max_count(1).send().await.unwrap();
    assert_eq!(ok.instances().len(), 1);
}

/// An image of the home account from an instance whose root volume is encrypted with `kms` (the
/// account's AWS managed key when None): (image, snapshot), available.
async fn encrypted_image(c: &Clients, name: &str, kms: Option<&str>) -> (String, String) {
    let ebs = ec2_t::EbsBlockDevice::builder().encrypted(true).volume_size(8).set_kms_key_id(kms.map(str::to_string)).build();
    let id = c
        .ec2
        .run_instances()
        .image_id(ubuntu(c).await)
        .min_count(1)
        .max_count(1)
        .instance_type(ec2_t::InstanceType::T3Micro)
        .block_device_mappings(ec2_t::BlockDeviceMapping::builder().device_name("/dev/sda1").ebs(ebs).build())
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    let image = c.ec2.create_image().instance_id(&id).name(name).tag_specifications(tags(ec2_t::ResourceType::Image)).send().await.unwrap().image_id.unwrap();
    until(10, "the image", || async {
        let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
        (d.images()[0].state() == Some(&ec2_t::ImageState::Available)).then_some(())
    })
    .await;
    let d = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    let snap = d.images()[0].block_device_mappings()[0].ebs().unwrap().snapshot_id().unwrap().to_string();
    (image, snap)
}

fn share(c: &Clients, image: &str, account: &str, add: bool) -> aws_sdk_ec2::operation::modify_image_attribute::builders::ModifyImageAttributeFluentBuilder {
    let p = ec2_t::LaunchPermission::builder().user_id(account).build();
    let m = if add { ec2_t::LaunchPermissionModifications::builder().add(p) } else { ec2_t::LaunchPermissionModifications::builder().remove(p) };
    c.ec2.modify_image_attribute().image_id(image).launch_permission(m.build())
}

/// Other accounts, as AWS has them: AssumeRole only into a role that exists and trusts the
/// caller (external id included), its session acting in the role's account; an image is seen
/// and launched there only while shared with it (without the owner's tags), and only its owner
/// changes or deregisters it; a snapshot under the AWS managed key cannot be shared, nor
/// launched from another account; a snapshot's permissions are added or removed, not both.
/// https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/sharingamis-explicit.html
/// https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifySnapshotAttribute.html
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_assumes_a_trusting_role_and_sees_only_what_is_shared_with_it() {
    const B: &str = "210987654321";
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    let sts = aws_sdk_sts::Client::new(&sb.sdk_config("us-east-1").await);
    let arn = format!("arn:aws:iam::{B}:role/bake-target");
    let e = sts.assume_role().role_arn(&arn).role_session_name("set-up").send().await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDenied"), "no such role: {e:?}");
    sb.control("POST", "/_sandbox/accounts", Some(json!({"account": B, "role": "bake-target", "external_id": "x-1"})));
    let e = sts.assume_role().role_arn(&arn).role_session_name("set-up").external_id("x-2").send().await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDenied"), "the trust policy's external id: {e:?}");
    let creds = sb.assume_role_with(&arn, "set-up", Some("x-1")).await;
    let conf = sb.sdk_config_as("us-east-1", &creds).await;
    assert_eq!(aws_sdk_sts::Client::new(&conf).get_caller_identity().send().await.unwrap().account(), Some(B));
    let b = Clients::new(&conf);
    // What every account sees: Canonical's public images and parameters.
    let ubuntu_there = published(&b, UBUNTU_2404).await;
    assert_eq!(ubuntu_there, ubuntu(&c).await);
    assert_eq!(b.ec2.describe_images().image_ids(&ubuntu_there).send().await.unwrap().images()[0].owner_id(), Some("099720109477"));

    let key = sb.aws_json("kms", "TrentService.CreateKey", &json!({"Description": "shared"}))["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    let (image, snap) = encrypted_image(&c, "shared-1", Some(&key)).await;
    let e = b.ec2.describe_images().image_ids(&image).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidAMIID.NotFound"), "not shared yet");
    share(&c, &image, B, true).send().await.unwrap();
    let seen = b.ec2.describe_images().image_ids(&image).send().await.unwrap();
    assert_eq!((seen.images()[0].owner_id(), seen.images()[0].tags().len()), (Some("123456789012"), 0), "shared, without the owner's tags");
    let own = b.ec2.describe_images().owners("self").send().await.unwrap();
    assert!(own.images().is_empty(), "not the account's own");
    b.ec2.run_instances().image_id(&image).min_count(1).max_count(1).instance_type(ec2_t::InstanceType::T3Micro).send().await.unwrap();
    assert_eq!(b.ec2.deregister_image().image_id(&image).send().await.unwrap_err().code(), Some("AuthFailure"));
    assert_eq!(share(&b, &image, "111122223333", true).send().await.unwrap_err().code(), Some("AuthFailure"));

    // Snapshots: add or remove, not both; not under the AWS managed key.
    let perm = |a: &str| ec2_t::CreateVolumePermission::builder().user_id(a).build();
    let both = ec2_t::CreateVolumePermissionModifications::builder().add(perm(B)).remove(perm("111122223333")).build();
    let e = c.ec2.modify_snapshot_attribute().snapshot_id(&snap).create_volume_permission(both).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterCombination"));
    let add = ec2_t::CreateVolumePermissionModifications::builder().add(perm(B)).build();
    c.ec2.modify_snapshot_attribute().snapshot_id(&snap).create_volume_permission(add.clone()).send().await.unwrap();
    assert_eq!(b.ec2.describe_snapshots().snapshot_ids(&snap).send().await.unwrap().snapshots().len(), 1, "shared with the account");
    let (managed, managed_snap) = encrypted_image(&c, "managed-1", None).await;
    let e = c.ec2.modify_snapshot_attribute().snapshot_id(&managed_snap).create_volume_permission(add).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameter"), "{e:?}");
    share(&c, &managed, B, true).send().await.unwrap();
    let e = b.ec2.run_instances().image_id(&managed).min_count(1).max_count(1).instance_type(ec2_t::InstanceType::T3Micro).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"), "the owner's AWS managed key: {e:?}");

    // Unshared (or deregistered): gone from the account.
    share(&c, &image, B, false).send().await.unwrap();
    assert_eq!(b.ec2.describe_images().image_ids(&image).send().await.unwrap_err().code(), Some("InvalidAMIID.NotFound"));
    c.ec2.deregister_image().image_id(&managed).send().await.unwrap();
    assert_eq!(b.ec2.describe_images().image_ids(&managed).send().await.unwrap_err().code(), Some("InvalidAMIID.NotFound"));
}

/// Reads an instance's inventory as bake does: the first page, then pages until the size the
/// script printed; checked, parsed, and how many commands it took.
async fn read_inventory(c: &Clients, id: &str) -> (bake::inventory::Inventory, usize) {
    let cmd = send(c, id, &bake::inventory::script().join("\n"), "60").await;
    let out = finished(c, &cmd, id).await.standard_output_content().unwrap().to_string();
    let (size, sha, first) = bake::inventory::first_page(&out).unwrap();
    let mut doc = first.into_bytes();
    let mut pages = 1;
    while doc.len() < size {
        let cmd = send(c, id, &bake::inventory::page_script(doc.len()).join("\n"), "60").await;
        let page = finished(c, &cmd, id).await.standard_output_content().unwrap().to_string();
        assert!(page.len() <= bake::inventory::PAGE && !page.is_empty());
        doc.extend_from_slice(page.as_bytes());
        pages += 1;
    }
    assert_eq!((doc.len(), bake::plan::sha256_hex(&doc)), (size, sha));
    (bake::inventory::parse(&String::from_utf8(doc).unwrap()).unwrap(), pages)
}

/// What is installed (inventory.py): an instance holds what its image held, an outcome rule
/// changes it when its command succeeds, CreateImage keeps it; bake's inventory script and its
/// pages are answered byte for byte, a large listing across pages. ImdsSupport takes only v2.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_hold_their_images_packages_and_answer_the_inventory_script() {
    let sb = Sandbox::start();
    let c = clients(&sb).await;
    profile(&c, "inv", true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = launch(&c, &ubuntu(&c).await, Some("inv")).await;
    until(20, "the agent", || async { online(&c).await.iter().any(|(i, s)| *i == id && s == "Online").then_some(()) }).await;
    // Bad rules are refused.
    let (code, _) = sb.call("POST", "/_sandbox/ssm/outcomes", Some(&json!({"outcomes": [{"match": "x", "packages": ["openssl"]}]})));
    assert_eq!(code, 400);
    sb.control(
        "POST",
        "/_sandbox/ssm/outcomes",
        Some(json!({"outcomes": [{"match": "upgrade", "packages": {"openssl": "3.0.13-0ubuntu3", "snapd": null}, "packages_generated": 1500, "kernel": "6.8.0-1009-aws", "containers": [["nginx", "1.25", "sha256:abc"]]}]})),
    );
    let cmd = send(&c, &id, "apt-get upgrade -y", "60").await;
    assert_eq!(finished(&c, &cmd, &id).await.status(), Some(&ssm_t::CommandInvocationStatus::Success));
    let (inv, pages) = read_inventory(&c, &id).await;
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(inv.kernel, "6.8.0-1009-aws");
    assert_eq!(inv.versions("openssl")[0].version, "3.0.13-0ubuntu3");
    assert!(inv.versions("snapd").is_empty() && inv.versions("libssl3")[0].version == "3.0.2-0ubuntu1.15");
    assert!(inv.packages.len() > 1500 && inv.containers.len() == 1);
    // An image of it holds the same; an instance of that image too.
    c.ec2.stop_instances().instance_ids(&id).send().await.unwrap();
    until(20, "stopped", || async { (state(&c, &id).await == "stopped").then_some(()) }).await;
    let image = c.ec2.create_image().instance_id(&id).name("inv-image").send().await.unwrap().image_id().unwrap().to_string();
    until(20, "available", || async {
        let r = c.ec2.describe_images().image_ids(&image).send().await.ok()?;
        (r.images().first()?.state() == Some(&ec2_t::ImageState::Available)).then_some(())
    })
    .await;
    let second = launch(&c, &image, Some("inv")).await;
    until(20, "the agent", || async { online(&c).await.iter().any(|(i, s)| *i == second && s == "Online").then_some(()) }).await;
    assert_eq!(read_inventory(&c, &second).await.0, inv, "the lineage: what the image was made from");
    // ImdsSupport: v2.0 only, then shown.
    let e = c.ec2.modify_image_attribute().image_id(&image).imds_support(ec2_t::AttributeValue::builder().value("v1.0").build()).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"));
    c.ec2.modify_image_attribute().image_id(&image).imds_support(ec2_t::AttributeValue::builder().value("v2.0").build()).send().await.unwrap();
    let r = c.ec2.describe_images().image_ids(&image).send().await.unwrap();
    assert_eq!(r.images()[0].imds_support(), Some(&ec2_t::ImdsSupportValues::V20));
}
