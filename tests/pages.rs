//! Accounts bigger than one page of any list: bake reads every page. The sandbox pages at AWS's
//! documented sizes (Auto Scaling groups and launch configurations 50, IAM 100), so 60 groups,
//! 120 roles, 120 instance profiles and 120 launch configurations each span pages.

mod common;

use aws_sdk_autoscaling::types as asg_t;
use aws_sdk_ec2::types as ec2_t;
use common::sandbox::Sandbox;
use common::{edit, json_out, project_copy, text};
use serde_json::json;

const UBUNTU_2204: &str = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp3/ami-id";

fn bake(sb: &Sandbox, root: &std::path::Path, args: &[&str]) -> std::process::Output {
    common::bake_on(sb, root, args)
}

/// A sandbox whose set-up may use what it just made.
async fn account() -> (Sandbox, aws_sdk_ec2::Client, aws_sdk_autoscaling::Client, aws_sdk_iam::Client, String) {
    let sb = Sandbox::start();
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": 0})));
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    let conf = sb.sdk_config("us-east-1").await;
    let ssm = aws_sdk_ssm::Client::new(&conf);
    let ubuntu = ssm.get_parameter().name(UBUNTU_2204).send().await.unwrap().parameter.unwrap().value.unwrap();
    (sb, aws_sdk_ec2::Client::new(&conf), aws_sdk_autoscaling::Client::new(&conf), aws_sdk_iam::Client::new(&conf), ubuntu)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_groups_by_tag_and_by_name_are_all_planned_and_rolled() {
    let (sb, ec2, asg, _, ubuntu) = account().await;
    let dir = project_copy();
    let root = dir.path();
    let lt = ec2
        .create_launch_template()
        .launch_template_name("kaiju")
        .tag_specifications(common::opted_in_template("kaiju", "staging"))
        .launch_template_data(ec2_t::RequestLaunchTemplateData::builder().image_id(&ubuntu).instance_type(ec2_t::InstanceType::T3Small).build())
        .send()
        .await
        .unwrap();
    let lt_id = lt.launch_template().unwrap().launch_template_id().unwrap().to_string();
    let names: Vec<String> = (0..60).map(|i| format!("kaiju_staging_{i:02}")).collect();
    for n in &names {
        let mut tags = common::opted_in_group(n, "kaiju", "staging");
        tags.push(asg_t::Tag::builder().key("fleet").value("kaiju").resource_id(n).resource_type("auto-scaling-group").propagate_at_launch(false).build());
        common::template_group(&asg, n, &lt_id, "1", 0, 1, tags).await;
    }
    let new = common::baked_image(&ec2, &ubuntu, "kaiju-staging-1").await;
    // By tag: the plan lists, and the roll moves, all sixty.
    edit(root, "roles/kaiju.toml", "[rollout]\n", "[rollout]\ngroup_tags = { fleet = \"kaiju\" }\n");
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["groups"].as_array().unwrap().len(), 60);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["groups"].as_array().unwrap().len(), 60);
    assert!(m["groups"].as_array().unwrap().iter().all(|g| g["outcome"] == "rolled"), "{m}");
    let groups: Vec<asg_t::AutoScalingGroup> =
        asg.describe_auto_scaling_groups().set_auto_scaling_group_names(Some(names.clone())).into_paginator().items().send().try_collect().await.unwrap();
    assert_eq!(groups.len(), 60);
    assert!(groups.iter().all(|g| g.launch_template().unwrap().version() == Some("2")), "every group moved");
    // By name: sixty names (more than one page, and more than one request's worth).
    let list = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    edit(root, "roles/kaiju.toml", "group_tags = { fleet = \"kaiju\" }\n", &format!("groups = [{list}]\n"));
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &ubuntu, "--plan", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["groups"].as_array().unwrap().len(), 60);
    assert!(text(&out.stderr).contains("kaiju_staging_59"), "{}", text(&out.stderr));
    let _ = new;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_sweep_reads_every_page_and_touches_only_what_bake_made() {
    let (sb, _, _, iam, _) = account().await;
    let dir = project_copy();
    let root = dir.path();
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
        .to_string();
    let bake_tags = |id: &str| -> Vec<aws_sdk_iam::types::Tag> {
        [("bake:managed", "true"), ("bake:id", id), ("bake:role", "kaiju"), ("bake:env", "staging")]
            .iter()
            .map(|(k, v)| aws_sdk_iam::types::Tag::builder().key(*k).value(*v).build().unwrap())
            .collect()
    };
    // 120 builder roles and profiles a crashed bake left (bake's tags), under /bake/.
    for i in 0..120 {
        let id = format!("b-{i:012x}");
        let name = format!("bake-{id}");
        iam.create_role().role_name(&name).path("/bake/").assume_role_policy_document(&trust).set_tags(Some(bake_tags(&id))).send().await.unwrap();
        iam.create_instance_profile().instance_profile_name(&name).path("/bake/").set_tags(Some(bake_tags(&id))).send().await.unwrap();
    }
    // What bake never made, under its path or with one of its tags only: left alone, and said so.
    iam.create_role().role_name("ci-operator").path("/bake/").assume_role_policy_document(&trust).send().await.unwrap();
    iam.create_role()
        .role_name("half-tagged")
        .path("/bake/")
        .assume_role_policy_document(&trust)
        .tags(aws_sdk_iam::types::Tag::builder().key("bake:managed").value("true").build().unwrap())
        .send()
        .await
        .unwrap();
    iam.create_instance_profile().instance_profile_name("ci-operator").path("/bake/").send().await.unwrap();
    let out = bake(&sb, root, &["cleanup", "--orphans", "--older-than", "0s", "--region", "us-east-1", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    let orphans = m["orphans"].as_array().unwrap();
    assert_eq!(orphans.iter().filter(|o| o["type"] == "iam-role").count(), 120, "every page of roles");
    assert_eq!(orphans.iter().filter(|o| o["type"] == "instance-profile").count(), 120, "every page of profiles");
    let skipped: Vec<String> = m["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}: {}", s["type"].as_str().unwrap(), s["id"].as_str().unwrap(), s["why"].as_str().unwrap()))
        .collect();
    assert!(skipped.contains(&"iam-role ci-operator: it has no bake:managed tag: bake did not make it".to_string()), "{skipped:?}");
    assert!(skipped.contains(&"iam-role half-tagged: it has no bake:id tag".to_string()), "{skipped:?}");
    assert!(skipped.contains(&"instance-profile ci-operator: it has no bake:managed tag: bake did not make it".to_string()), "{skipped:?}");
    let out = bake(&sb, root, &["cleanup", "--orphans", "--older-than", "0s", "--region", "us-east-1", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("skipped IAM role ci-operator (global): it has no bake:managed tag"), "{}", text(&out.stdout));
    let left: Vec<aws_sdk_iam::types::Role> = iam.list_roles().path_prefix("/bake/").into_paginator().items().send().try_collect().await.unwrap();
    let mut left: Vec<&str> = left.iter().map(|r| r.role_name()).collect();
    left.sort();
    assert_eq!(left, ["ci-operator", "half-tagged"], "only what bake made was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_finds_the_launch_configuration_that_uses_an_image_on_the_third_page() {
    let (sb, ec2, asg, _, ubuntu) = account().await;
    let dir = project_copy();
    let root = dir.path();
    let image = common::baked_image(&ec2, &ubuntu, "kaiju-staging-1").await;
    for i in 0..120 {
        let using = if i == 117 { image.as_str() } else { ubuntu.as_str() };
        asg.create_launch_configuration().launch_configuration_name(format!("lc-{i:03}")).image_id(using).instance_type("t3.micro").send().await.unwrap();
    }
    let out = bake(&sb, root, &["ls", "kaiju", "--env", "staging", "--region", "us-east-1", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    let img = m.as_array().unwrap().iter().find(|i| i["id"] == image.as_str()).unwrap();
    assert_eq!(img["used_by"], json!(["launch-configuration lc-117"]));
    // prune keeps it: it is in use.
    let out = bake(&sb, root, &["prune", "kaiju", "--env", "staging", "--region", "us-east-1", "--keep", "0", "--plan", "--output", "json"]);
    let d = json_out(&out)["decisions"].as_array().unwrap().iter().find(|d| d["image"]["id"] == image.as_str()).unwrap().clone();
    assert_eq!(d["delete"], false, "{d}");
}
