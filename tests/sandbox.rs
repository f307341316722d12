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

struct Clients {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    iam: aws_sdk_iam::Client,
    asg: aws_sdk_autoscaling::Client,
}

async fn clients(sb: &Sandbox) -> Clients {
    let conf = sb.sdk_config("us-east-1").await;
    Clients {
        ec2: aws_sdk_ec2::Client::new(&conf),
        ssm: aws_sdk_ssm::Client::new(&conf),
        iam: aws_sdk_iam::Client::new(&conf),
        asg: aws_sdk_autoscaling::Client::new(&conf),
    }
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

async fn ubuntu(c: &Clients) -> String {
    c.ssm.get_parameter().name(UBUNTU_2404).send().await.unwrap().parameter.unwrap().value.unwrap()
}

/// Canonical's 22.04 image: another image than `ubuntu`, to move groups onto.
async fn ubuntu_2204(c: &Clients) -> String {
    c.ssm.get_parameter().name("/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp3/ami-id").send().await.unwrap().parameter.unwrap().value.unwrap()
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
        .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#)
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
    r.instance_information_list()
        .iter()
        .map(|i| (i.instance_id().unwrap().to_string(), i.ping_status().unwrap().as_str().to_string()))
        .collect()
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
            Some(ssm_t::CommandInvocationStatus::Pending) | Some(ssm_t::CommandInvocationStatus::InProgress)
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
    let e = c
        .ssm
        .send_command()
        .instance_ids(&none)
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".to_string()])
        .send()
        .await
        .unwrap_err();
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
    until(5, "InProgress", || async {
        (invocation(&c, &cmd, &id).await.status() == Some(&ssm_t::CommandInvocationStatus::InProgress)).then_some(())
    })
    .await;
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
    until(5, "InProgress", || async {
        (invocation(&c, &cmd, &id).await.status() == Some(&ssm_t::CommandInvocationStatus::InProgress)).then_some(())
    })
    .await;
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
    c.asg
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version("1").build())
        .min_size(0)
        .max_size(size * 2)
        .desired_capacity(size)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
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
    let mut out: Vec<(String, String)> = d
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| (i.instance_id().unwrap().to_string(), i.image_id().unwrap().to_string()))
        .collect();
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
    until(10, "some progress", || async {
        (refresh_status(&c, "www_staging").await.percentage_complete().unwrap_or(0) >= 25).then_some(())
    })
    .await;
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
    sb.control("POST", "/_sandbox/faults", Some(json!({"faults": [
        {"service": "ec2", "action": "DescribeImages", "rate": 1.0, "kind": "throttle"},
        {"service": "ssm", "action": "GetParameter", "rate": 1.0, "kind": "throttle"},
        {"service": "iam", "action": "ListRoles", "rate": 1.0, "kind": "500"},
    ]})));
    let e = c.ec2.describe_images().owners("self").send().await.unwrap_err();
    assert_eq!(e.code(), Some("RequestLimitExceeded"));
    let e = c.ssm.get_parameter().name(UBUNTU_2404).send().await.unwrap_err();
    assert_eq!(e.code(), Some("ThrottlingException"));
    let e = c.iam.list_roles().send().await.unwrap_err();
    assert_eq!(e.code(), Some("InternalFailure"));
    let calls = sb.calls();
    assert!(calls["by_action"]["ec2:DescribeImages"].as_u64().unwrap() >= 2, "the SDK retried: {}", calls["by_action"]);
    // 20% throttling and 5xx everywhere: the SDK's retries carry every call through.
    sb.control("POST", "/_sandbox/faults", Some(json!({"faults": [
        {"service": "*", "action": "*", "rate": 0.1, "kind": "throttle", "seed": 7},
        {"service": "*", "action": "*", "rate": 0.1, "kind": "503", "seed": 8},
    ]})));
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
    assert_eq!(
        kinds(sb.live()),
        ["iam-role", "image", "instance", "instance-profile", "security-group", "snapshot", "ssm-parameter", "volume"]
    );
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
    sb.control("POST", "/_sandbox/delays", Some(json!({"image_pending": 3})));
    sb.control("POST", "/_sandbox/reset", None);
    let d = sb.control("GET", "/_sandbox/delays", None);
    assert_eq!(d["delays"]["image_pending"], 0.0, "reset restores defaults");
    let c = clients(&sb).await;
    assert!(!ubuntu(&c).await.is_empty(), "and seeds again");
}
