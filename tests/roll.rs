//! `bake roll` against the sandbox: launch-template and launch-configuration groups, canaries,
//! failures that put every group back, refreshes already running, `--plan`, migration, rollback
//! on demand, and `bake build --roll` end to end.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use aws_sdk_autoscaling::types as asg_t;
use aws_sdk_ec2::types as ec2_t;
use base64::Engine as _;
use common::sandbox::Sandbox;
use common::{bake_on as bake, json_out, project_copy, signal, spawn_until, text};
use serde_json::{json, Value};

const UBUNTU_2204: &str = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp3/ami-id";

type Cloud = common::Clients;

async fn cloud(sb: &Sandbox) -> Cloud {
    common::Clients::new(&sb.sdk_config("us-east-1").await)
}

async fn param(c: &Cloud, name: &str) -> String {
    c.ssm.get_parameter().name(name).send().await.unwrap().parameter.unwrap().value.unwrap()
}

/// An image that looks like one bake made for kaiju/staging (tags included).
async fn baked_image(c: &Cloud, name: &str) -> String {
    common::baked_image(&c.ec2, &param(c, UBUNTU_2204).await, name).await
}

async fn lt_group(c: &Cloud, name: &str, ami: &str, size: i32, version: &str) -> String {
    let lt = c
        .ec2
        .create_launch_template()
        .launch_template_name(format!("{name}-lt"))
        .tag_specifications(common::opted_in_template("kaiju", "staging"))
        .launch_template_data(
            ec2_t::RequestLaunchTemplateData::builder()
                .image_id(ami)
                .instance_type(ec2_t::InstanceType::T3Small)
                .metadata_options(
                    ec2_t::LaunchTemplateInstanceMetadataOptionsRequest::builder().http_tokens(ec2_t::LaunchTemplateHttpTokensState::Required).build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let id = lt.launch_template().unwrap().launch_template_id().unwrap().to_string();
    let mut tags =
        vec![asg_t::Tag::builder().key("app").value("kaiju").resource_id(name).resource_type("auto-scaling-group").propagate_at_launch(true).build()];
    tags.extend(common::opted_in_group(name, "kaiju", "staging"));
    common::template_group(&c.asg, name, &id, version, size, size * 2, tags).await;
    id
}

const USER_DATA: &str = "#!/bin/bash\necho hello from user data\n";

async fn lc_group(c: &Cloud, name: &str, ami: &str, size: i32) {
    c.asg
        .create_launch_configuration()
        .launch_configuration_name(format!("{name}-original"))
        .image_id(ami)
        .instance_type("t3.medium")
        .user_data(base64::engine::general_purpose::STANDARD.encode(USER_DATA))
        .metadata_options(
            asg_t::InstanceMetadataOptions::builder().http_tokens(asg_t::InstanceMetadataHttpTokensState::Required).http_put_response_hop_limit(1).build(),
        )
        .send()
        .await
        .unwrap();
    c.asg
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(format!("{name}-original"))
        .set_tags(Some(common::opted_in_group(name, "kaiju", "staging")))
        .min_size(0)
        .max_size(size * 2)
        .desired_capacity(size)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
}

/// The images a group's instances run.
async fn images_of(c: &Cloud, group: &str) -> BTreeSet<String> {
    let g = c.asg.describe_auto_scaling_groups().auto_scaling_group_names(group).send().await.unwrap();
    let ids: Vec<String> = g.auto_scaling_groups()[0].instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect();
    let d = c.ec2.describe_instances().set_instance_ids(Some(ids)).send().await.unwrap();
    d.reservations().iter().flat_map(|r| r.instances()).map(|i| i.image_id().unwrap().to_string()).collect()
}

async fn group(c: &Cloud, name: &str) -> asg_t::AutoScalingGroup {
    c.asg.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap().auto_scaling_groups()[0].clone()
}

fn set_rollout(root: &Path, rollout: &str) {
    let p = root.join("roles/kaiju.toml");
    let s = std::fs::read_to_string(&p).unwrap();
    // A second call replaces the first's.
    let s: String = s.lines().filter(|l| !l.starts_with("rollout = ")).map(|l| format!("{l}\n")).collect();
    let s = s.replace("[env.staging]\n", &format!("[env.staging]\nrollout = {rollout}\n"));
    std::fs::write(&p, s).unwrap();
}

/// What every test here starts from: a sandbox with refresh warm-ups scaled down, clients for
/// it, a copy of the example project, and the image groups start on (Canonical's 22.04).
struct Rig {
    sb: Sandbox,
    c: Cloud,
    dir: tempfile::TempDir,
    old: String,
}

async fn rig() -> Rig {
    let sb = Sandbox::start();
    sb.control("POST", "/_sandbox/time_scale", Some(json!({"time_scale": 0.002})));
    // Set-up uses the groups and templates it creates at once, which AWS does not promise.
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": 0})));
    let c = cloud(&sb).await;
    let old = param(&c, UBUNTU_2204).await;
    Rig { sb, c, dir: project_copy(), old }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_launch_template_and_launch_configuration_groups() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    let lt_id = lt_group(&c, "kaiju_staging", &old, 2, "$Latest").await;
    // A second group on the same template version: it shares the new version too.
    c.asg
        .create_auto_scaling_group()
        .auto_scaling_group_name("kaiju_staging_b")
        .set_tags(Some(common::opted_in_group("kaiju_staging_b", "kaiju", "staging")))
        .launch_template(asg_t::LaunchTemplateSpecification::builder().launch_template_id(&lt_id).version("1").build())
        .min_size(0)
        .max_size(2)
        .desired_capacity(1)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
    lc_group(&c, "kaiju_legacy", &old, 2).await;
    set_rollout(
        root,
        r#"{ groups = ["kaiju_staging", "kaiju_staging_b", "kaiju_legacy"], keep_launch_configurations = 2, refresh = { min_healthy_percentage = 50, instance_warmup = "60s" } }"#,
    );
    let new = baked_image(&c, "kaiju-staging-1").await;
    let before = sb.live();
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["status"], "succeeded");
    assert_eq!(m["ami"], new.as_str(), "the newest image bake made for kaiju/staging");
    for g in m["groups"].as_array().unwrap() {
        assert_eq!(g["outcome"], "rolled", "{g}");
        assert_eq!(g["previous_image"], old.as_str());
        assert_eq!(g["final_image"], new.as_str());
        assert_eq!(g["refresh_ids"].as_array().unwrap().len(), 1);
    }
    // The launch template group: a numbered version from the one it used, never $Latest.
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([new.clone()]));
    let g = group(&c, "kaiju_staging").await;
    assert_eq!(g.launch_template().unwrap().version(), Some("2"));
    let v = c.ec2.describe_launch_template_versions().launch_template_id(&lt_id).versions("2").send().await.unwrap();
    let v = &v.launch_template_versions()[0];
    assert!(v.version_description().unwrap().contains(m["roll_id"].as_str().unwrap()) && v.version_description().unwrap().contains(&new));
    assert_eq!(v.launch_template_data().unwrap().instance_type(), Some(&ec2_t::InstanceType::T3Small), "copied from v1");
    let tags: Vec<(String, String)> = g.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string())).collect();
    assert!(tags.contains(&("bake:previous-image".into(), old.clone())) && tags.contains(&("bake:previous-version".into(), "1".into())), "{tags:?}");
    assert_eq!(group(&c, "kaiju_staging_b").await.launch_template().unwrap().version(), Some("2"), "the same new version");
    let all = c.ec2.describe_launch_template_versions().launch_template_id(&lt_id).send().await.unwrap();
    assert_eq!(all.launch_template_versions().len(), 2, "one new version for both groups");
    // The launch configuration group: a copy with the new image, every other field kept.
    assert_eq!(images_of(&c, "kaiju_legacy").await, BTreeSet::from([new.clone()]));
    let g = group(&c, "kaiju_legacy").await;
    let lc_name = g.launch_configuration_name().unwrap().to_string();
    assert_eq!(lc_name, format!("kaiju_legacy-{new}-{}", m["roll_id"].as_str().unwrap()));
    let lc = c.asg.describe_launch_configurations().launch_configuration_names(&lc_name).send().await.unwrap();
    let lc = &lc.launch_configurations()[0];
    assert_eq!(lc.image_id(), Some(new.as_str()));
    assert_eq!(lc.instance_type(), Some("t3.medium"));
    assert_eq!(lc.metadata_options().unwrap().http_tokens(), Some(&asg_t::InstanceMetadataHttpTokensState::Required));
    let ud = base64::engine::general_purpose::STANDARD.decode(lc.user_data().unwrap()).unwrap();
    assert_eq!(String::from_utf8(ud).unwrap(), USER_DATA);
    // Nothing temporary: only the launch configuration in use is new.
    let after = sb.live();
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    // Two more rolls: bake keeps the last 2 launch configurations it made for the group.
    // (Named: images made in the same second have the same CreationDate, so "the newest" is a tie.)
    let newer = baked_image(&c, "kaiju-staging-2").await;
    assert_eq!(bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &newer]).status.code(), Some(0));
    let newest = baked_image(&c, "kaiju-staging-3").await;
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &newest]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lcs = c.asg.describe_launch_configurations().send().await.unwrap();
    let mine: BTreeSet<String> = lcs
        .launch_configurations()
        .iter()
        .filter_map(|l| l.launch_configuration_name())
        .filter(|n| n.starts_with("kaiju_legacy-ami"))
        .map(str::to_string)
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().any(|n| n.contains(&newest)) && mine.iter().any(|n| n.contains(&newer)));
    // Already on the image: nothing to do.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(json_out(&out)["status"], "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rolls_first_then_five_groups_a_few_at_a_time() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    let names = ["kaiju_canary", "kaiju_a", "kaiju_b", "kaiju_c", "kaiju_d", "kaiju_e"];
    for n in names {
        lt_group(&c, n, &old, 2, "1").await;
    }
    set_rollout(
        root,
        r#"{ group_tags = { app = "kaiju" }, canaries = ["kaiju_canary"], canary_bake_time = "1s", concurrency = 2, refresh = { min_healthy_percentage = 50, instance_warmup = "100s", auto_rollback = true } }"#,
    );
    let new = baked_image(&c, "kaiju-staging-1").await;
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["groups"].as_array().unwrap().len(), 6, "found by tag");
    assert_eq!(m["groups"][0]["name"], "kaiju_canary");
    assert_eq!(m["groups"][0]["canary"], true);
    for n in names {
        assert_eq!(images_of(&c, n).await, BTreeSet::from([new.clone()]), "{n}");
    }
    // The canary's refresh ended (plus the bake time) before any other began; never more than two at once.
    let rs = sb.control("GET", "/_sandbox/refreshes", None)["refreshes"].as_array().unwrap().clone();
    let canary = rs.iter().find(|r| r["group"] == "kaiju_canary").unwrap();
    let canary_end = canary["ended"].as_f64().unwrap();
    let others: Vec<&Value> = rs.iter().filter(|r| r["group"] != "kaiju_canary").collect();
    assert_eq!(others.len(), 5);
    for r in &others {
        assert!(r["started"].as_f64().unwrap() >= canary_end + 1.0, "{} started before the canary's bake time ended", r["group"]);
    }
    for r in &others {
        let (s, e) = (r["started"].as_f64().unwrap(), r["ended"].as_f64().unwrap());
        let overlapping = others.iter().filter(|o| o["started"].as_f64().unwrap() < e && o["ended"].as_f64().unwrap() > s).count();
        assert!(overlapping <= 2, "{} overlapped {overlapping} refreshes", r["group"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_image_fails_the_rollout_and_every_group_ends_on_its_previous_image() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_a", &old, 2, "1").await;
    lt_group(&c, "kaiju_b", &old, 2, "1").await;
    lc_group(&c, "kaiju_legacy", &old, 2).await;
    set_rollout(
        root,
        r#"{ groups = ["kaiju_a", "kaiju_b", "kaiju_legacy"], concurrency = 3, refresh = { min_healthy_percentage = 50, instance_warmup = "100s", auto_rollback = true } }"#,
    );
    let bad = baked_image(&c, "kaiju-staging-bad").await;
    sb.control("POST", "/_sandbox/unhealthy_amis", Some(json!({"amis": [bad]})));
    let before = sb.live();
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["status"], "failed");
    assert!(text(&out.stderr).contains("health check"), "{}", text(&out.stderr));
    for g in m["groups"].as_array().unwrap() {
        assert_eq!(g["final_image"], old.as_str(), "{g}");
        assert!(["rolled-back", "rolled-back-by-aws", "not-started"].contains(&g["outcome"].as_str().unwrap()), "{g}");
    }
    for n in ["kaiju_a", "kaiju_b", "kaiju_legacy"] {
        assert_eq!(images_of(&c, n).await, BTreeSet::from([old.clone()]), "{n} back on its previous image");
    }
    // Back on a copy of its configuration with the old image, named as bake names its own (the
    // roller may point groups at no other), and the failed roll's configuration is gone.
    let back = group(&c, "kaiju_legacy").await.launch_configuration_name().unwrap().to_string();
    assert!(back.starts_with(&format!("kaiju_legacy-{old}-b-")), "{back}");
    let after = sb.live();
    let new: Vec<&Value> = after.iter().filter(|r| !before.contains(r)).collect();
    assert_eq!(new.len(), 1, "only the configuration the group is on now: {new:?}");
    assert_eq!(new[0]["id"], back.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_canary_puts_the_canary_back_too() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_canary", &old, 2, "1").await;
    lt_group(&c, "kaiju_main", &old, 4, "1").await;
    set_rollout(
        root,
        r#"{ groups = ["kaiju_canary", "kaiju_main"], canaries = ["kaiju_canary"], refresh = { min_healthy_percentage = 50, instance_warmup = "10s" } }"#,
    );
    let new = baked_image(&c, "kaiju-staging-1").await;
    // kaiju_main is busy with a refresh nobody may interrupt: the rollout fails after the canary.
    c.asg
        .start_instance_refresh()
        .auto_scaling_group_name("kaiju_main")
        .preferences(asg_t::RefreshPreferences::builder().instance_warmup(600_000).min_healthy_percentage(50).build())
        .send()
        .await
        .unwrap();
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("group kaiju_main has instance refresh") && text(&out.stderr).contains("--replace-in-progress"),
        "{}",
        text(&out.stderr)
    );
    let m = json_out(&out);
    let canary = m["groups"].as_array().unwrap().iter().find(|g| g["name"] == "kaiju_canary").unwrap();
    assert_eq!(canary["outcome"], "rolled-back");
    assert_eq!(canary["new_image"], new.as_str(), "the canary had moved to the new image");
    assert_eq!(canary["final_image"], old.as_str());
    assert_eq!(images_of(&c, "kaiju_canary").await, BTreeSet::from([old.clone()]));
    assert_ne!(new, old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_in_progress_is_waited_for_or_replaced_never_doubled() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_staging", &old, 2, "1").await;
    let new = baked_image(&c, "kaiju-staging-1").await;
    let busy = || {
        c.asg
            .start_instance_refresh()
            .auto_scaling_group_name("kaiju_staging")
            .preferences(asg_t::RefreshPreferences::builder().instance_warmup(1500).min_healthy_percentage(50).build())
            .send()
    };
    busy().await.unwrap();
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("has instance refresh"), "{}", text(&out.stderr));
    let by = sb.calls()["by_action"].clone();
    assert!(by.get("autoscaling:StartInstanceRefresh").is_none() && by.get("ec2:CreateLaunchTemplateVersion").is_none(), "nothing changed: {by}");
    // Wait for it: the rollout starts when it ends (3 s of warmup at this time scale).
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--wait-in-progress", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([new.clone()]));
    // Replace it: cancelled, then the rollout.
    let newer = baked_image(&c, "kaiju-staging-2").await;
    busy().await.unwrap();
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--replace-in-progress", "--ami", &newer, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([newer.clone()]));
    let rs = sb.control("GET", "/_sandbox/refreshes?group=kaiju_staging", None)["refreshes"].as_array().unwrap().clone();
    assert!(rs.iter().any(|r| r["status"] == "Cancelled"));
    for (i, a) in rs.iter().enumerate() {
        for b in &rs[i + 1..] {
            let overlap = a["started"].as_f64().unwrap() < b["ended"].as_f64().unwrap_or(f64::MAX)
                && b["started"].as_f64().unwrap() < a["ended"].as_f64().unwrap_or(f64::MAX);
            assert!(!overlap, "two refreshes at once: {a} {b}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_every_group_and_changes_nothing() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_staging", &old, 2, "1").await;
    lc_group(&c, "kaiju_legacy", &old, 1).await;
    set_rollout(
        root,
        r#"{ groups = ["kaiju_staging", "kaiju_legacy"], canaries = ["kaiju_staging"], refresh = { min_healthy_percentage = 75, checkpoint_percentages = [50, 100], checkpoint_delay = "2m" } }"#,
    );
    let new = baked_image(&c, "kaiju-staging-1").await;
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("kaiju_staging [canary]") && s.contains(&format!("{old} → {new}")), "{s}");
    assert!(s.contains("launch template kaiju_staging-lt: new version from v1"), "{s}");
    assert!(s.contains("launch configuration kaiju_legacy-original → kaiju_legacy-"), "{s}");
    assert!(s.contains("min healthy 75%") && s.contains("checkpoints 50%,100% every 2m"), "{s}");
    let calls = sb.calls();
    assert!(calls["mutating"].as_array().unwrap().is_empty(), "no mutating call: {}", calls["mutating"]);
    assert!(calls["count"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_configuration_group_migrates_to_a_launch_template() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lc_group(&c, "kaiju_staging", &old, 2).await;
    let new = baked_image(&c, "kaiju-staging-1").await;
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--migrate-to-launch-template", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let g = group(&c, "kaiju_staging").await;
    assert!(g.launch_configuration_name().is_none());
    let spec = g.launch_template().unwrap();
    assert_eq!(spec.version(), Some("1"));
    let v = c.ec2.describe_launch_template_versions().launch_template_id(spec.launch_template_id().unwrap()).versions("1").send().await.unwrap();
    let d = v.launch_template_versions()[0].launch_template_data().unwrap();
    assert_eq!(d.image_id(), Some(new.as_str()));
    assert_eq!(d.instance_type(), Some(&ec2_t::InstanceType::T3Medium), "the launch configuration's settings");
    assert_eq!(d.metadata_options().unwrap().http_tokens(), Some(&ec2_t::LaunchTemplateHttpTokensState::Required));
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([new]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_demand_restores_the_previous_image_once() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_staging", &old, 2, "1").await;
    lc_group(&c, "kaiju_legacy", &old, 2).await;
    set_rollout(root, r#"{ groups = ["kaiju_staging", "kaiju_legacy"], refresh = { min_healthy_percentage = 50 } }"#);
    let new = baked_image(&c, "kaiju-staging-1").await;
    assert_eq!(bake(&sb, root, &["roll", "kaiju", "--env", "staging"]).status.code(), Some(0));
    assert_eq!(images_of(&c, "kaiju_legacy").await, BTreeSet::from([new.clone()]));
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--rollback", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for n in ["kaiju_staging", "kaiju_legacy"] {
        assert_eq!(images_of(&c, n).await, BTreeSet::from([old.clone()]), "{n}");
    }
    assert_eq!(group(&c, "kaiju_staging").await.launch_template().unwrap().version(), Some("1"));
    // The record says what runs now: the image rolled back to, on every instance.
    for g in json_out(&out)["groups"].as_array().unwrap() {
        assert_eq!((g["outcome"].as_str(), g["final_image"].as_str()), (Some("rolled-back"), Some(old.as_str())), "{g}");
        assert_eq!(g["running"], json!({old.clone(): 2}), "{g}");
    }
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no previous image recorded by bake"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_group_found_is_a_clear_error() {
    let Rig { sb, c, dir, .. } = rig().await;
    baked_image(&c, "kaiju-staging-1").await;
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, dir.path(), &["roll", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no Auto Scaling group named kaiju_staging in us-east-1"), "{}", text(&out.stderr));
    assert!(sb.calls()["mutating"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bake_build_roll_bakes_then_rolls() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_staging", &old, 2, "1").await;
    let before: BTreeSet<String> = sb.live().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--roll", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["status"], "succeeded");
    let ami = m["images"]["us-east-1"]["ami_id"].as_str().unwrap().to_string();
    assert_eq!(m["roll"]["status"], "succeeded");
    assert_eq!(m["roll"]["ami"], ami.as_str());
    assert_eq!(m["roll"]["groups"][0]["final_image"], ami.as_str());
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([ami.clone()]));
    let after: BTreeSet<String> = sb.live().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let added: BTreeSet<String> = after.difference(&before).cloned().collect();
    assert!(added.iter().all(|id| id.starts_with("ami-") || id.starts_with("snap-") || id.starts_with("/bake/")), "only the bake's products: {added:?}");
}

/// Ctrl-C while a group refreshes: the roll cancels that refresh, puts the group back on its
/// previous image (the way back is not interrupted by the same Ctrl-C) and exits 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_refresh_puts_the_group_back_and_exits_130() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_staging", &old, 2, "1").await;
    set_rollout(root, r#"{ groups = ["kaiju_staging"], refresh = { min_healthy_percentage = 50, instance_warmup = "1000s" } }"#);
    let new = baked_image(&c, "kaiju-staging-1").await;
    let (mut child, _) = spawn_until(&sb, root, &["roll", "kaiju", "--env", "staging", "--manifest", "roll.json"], "started");
    // Let the first batch launch an instance from the new image.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(root.join("roll.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "interrupted");
    let g = &m["groups"][0];
    assert_eq!(
        (g["outcome"].as_str(), g["new_image"].as_str(), g["final_image"].as_str()),
        (Some("rolled-back"), Some(new.as_str()), Some(old.as_str())),
        "{g}"
    );
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([old.clone()]), "every instance back on the previous image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_is_a_census_of_what_runs_and_leftovers_exit_1() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_staging", &old, 3, "1").await;
    lc_group(&c, "kaiju_legacy", &old, 1).await;
    set_rollout(
        root,
        r#"{ groups = ["kaiju_staging", "kaiju_legacy"], keep_launch_configurations = 1, refresh = { min_healthy_percentage = 50, protected_instances = "ignore" } }"#,
    );
    // A protected instance the refresh leaves alone: the group ends on two images.
    let kept = group(&c, "kaiju_staging").await.instances()[0].instance_id().unwrap().to_string();
    c.asg.set_instance_protection().auto_scaling_group_name("kaiju_staging").instance_ids(&kept).protected_from_scale_in(true).send().await.unwrap();
    let new = baked_image(&c, "kaiju-staging-1").await;
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    let mut both = [format!("{old} ×1"), format!("{new} ×2")];
    both.sort();
    assert!(summary.contains(&format!("kaiju_staging: rolled (now mixed: {})", both.join(", "))), "{summary}");

    // The second roll rolls, but cannot delete the configuration the first one made.
    let newer = baked_image(&c, "kaiju-staging-2").await;
    sb.control(
        "POST",
        "/_sandbox/faults",
        Some(json!({"faults": [{"service": "autoscaling", "action": "DeleteLaunchConfiguration", "rate": 1.0, "kind": "denied"}]})),
    );
    // Named: made within the second of the first image, "the newest" would be a tie.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &newer, "--output", "json"]);
    sb.control("DELETE", "/_sandbox/faults", None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let m = json_out(&out);
    assert_eq!(m["status"], "leftovers");
    let legacy = m["groups"].as_array().unwrap().iter().find(|g| g["name"] == "kaiju_legacy").unwrap().clone();
    assert_eq!((legacy["outcome"].as_str(), legacy["final_image"].as_str()), (Some("rolled"), Some(newer.as_str())), "{legacy}");
    let left = m["leftovers"].as_array().unwrap();
    assert!(left.len() == 1 && left[0].as_str().unwrap().contains(&format!("launch configuration kaiju_legacy-{new}-b-")), "{left:?}");
    assert!(err.contains("left: autoscaling:DeleteLaunchConfiguration"), "{err}");

    // The image the groups would roll back to is in use: prune keeps it, and --rollback goes there.
    let out = bake(&sb, root, &["prune", "kaiju", "--env", "staging", "--keep", "1", "--older-than", "0s", "--yes", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let pruned = text(&out.stdout);
    assert!(!pruned.contains(&format!("\"{new}\"")) || pruned.contains("rollback of group kaiju_staging"), "{pruned}");
    c.ec2.describe_images().image_ids(&new).send().await.unwrap().images().first().expect("the rollback target is kept");
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--rollback", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for g in json_out(&out)["groups"].as_array().unwrap() {
        assert_eq!(g["outcome"], "rolled-back", "{g}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_an_image_that_is_gone_changes_nothing() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_staging", &old, 2, "1").await;
    set_rollout(root, r#"{ groups = ["kaiju_staging"], refresh = { min_healthy_percentage = 50 } }"#);
    let new = baked_image(&c, "kaiju-staging-1").await;
    assert_eq!(bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new]).status.code(), Some(0));
    let newer = baked_image(&c, "kaiju-staging-2").await;
    assert_eq!(bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &newer]).status.code(), Some(0));
    c.ec2.deregister_image().image_id(&new).send().await.unwrap();
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--rollback"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("group kaiju_staging cannot go back: image {new} does not exist in us-east-1; nothing changed")), "{err}");
    assert!(sb.calls()["mutating"].as_array().unwrap().is_empty(), "{}", sb.calls()["mutating"]);
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([newer]));
}

/// An opted-in launch template for kaiju/staging launching `ami` on `itype`: its id.
async fn template(c: &Cloud, name: &str, ami: &str, itype: ec2_t::InstanceType) -> String {
    let lt = c
        .ec2
        .create_launch_template()
        .launch_template_name(name)
        .tag_specifications(common::opted_in_template("kaiju", "staging"))
        .launch_template_data(ec2_t::RequestLaunchTemplateData::builder().image_id(ami).instance_type(itype).build())
        .send()
        .await
        .unwrap();
    lt.launch_template().unwrap().launch_template_id().unwrap().to_string()
}

/// A group with a mixed instances policy: template `main` (and the override `m5.large` on it),
/// plus an override of `other_type` launched from template `other`; On-Demand base 1, Spot above.
async fn mixed_group(c: &Cloud, name: &str, main: &str, other: &str, other_type: &str) {
    let spec = |id: &str| asg_t::LaunchTemplateSpecification::builder().launch_template_id(id).version("1").build();
    let policy = asg_t::MixedInstancesPolicy::builder()
        .launch_template(
            asg_t::LaunchTemplate::builder()
                .launch_template_specification(spec(main))
                .overrides(asg_t::LaunchTemplateOverrides::builder().instance_type("m5.large").build())
                .overrides(asg_t::LaunchTemplateOverrides::builder().instance_type(other_type).launch_template_specification(spec(other)).build())
                .build(),
        )
        .instances_distribution(asg_t::InstancesDistribution::builder().on_demand_base_capacity(1).spot_allocation_strategy("price-capacity-optimized").build())
        .build();
    c.asg
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .mixed_instances_policy(policy)
        .set_tags(Some(common::opted_in_group(name, "kaiju", "staging")))
        .min_size(0)
        .max_size(4)
        .desired_capacity(2)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
}

/// The versions a mixed group's policy names: (template id, version), its own first.
async fn policy_versions(c: &Cloud, name: &str) -> Vec<(String, String)> {
    let g = group(c, name).await;
    let lt = g.mixed_instances_policy().unwrap().launch_template().unwrap();
    let spec = |s: &asg_t::LaunchTemplateSpecification| (s.launch_template_id().unwrap().to_string(), s.version().unwrap().to_string());
    std::iter::once(spec(lt.launch_template_specification().unwrap()))
        .chain(lt.overrides().iter().filter_map(|o| o.launch_template_specification().map(spec)))
        .collect()
}

async fn version_image(c: &Cloud, id: &str, version: &str) -> String {
    let v = c.ec2.describe_launch_template_versions().launch_template_id(id).versions(version).send().await.unwrap();
    v.launch_template_versions()[0].launch_template_data().unwrap().image_id().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_instances_group_rolls_every_template_and_rolls_back_and_a_foreign_architecture_is_refused() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    let main = template(&c, "kaiju-mixed-main", &old, ec2_t::InstanceType::T3Small).await;
    let other = template(&c, "kaiju-mixed-other", &old, ec2_t::InstanceType::T3Medium).await;
    mixed_group(&c, "kaiju_mixed", &main, &other, "c5.large").await;
    set_rollout(root, r#"{ groups = ["kaiju_mixed"], refresh = { min_healthy_percentage = 50, auto_rollback = true } }"#);
    let new = baked_image(&c, "kaiju-staging-1").await;
    // The plan names both templates and changes nothing.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("mixed instances policy: new versions of kaiju-mixed-main (from v1), kaiju-mixed-other (from v1)"), "{shown}");
    assert_eq!(policy_versions(&c, "kaiju_mixed").await, [(main.clone(), "1".to_string()), (other.clone(), "1".to_string())]);
    // The roll: a new version of each template, the refresh's desired configuration the whole
    // policy on them; the Spot/On-Demand distribution is kept.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let g = &json_out(&out)["groups"][0];
    assert_eq!((g["kind"].as_str(), g["outcome"].as_str()), (Some("mixed-instances"), Some("rolled")), "{g}");
    assert_eq!(policy_versions(&c, "kaiju_mixed").await, [(main.clone(), "2".to_string()), (other.clone(), "2".to_string())]);
    for id in [&main, &other] {
        assert_eq!(version_image(&c, id, "2").await, new, "{id} v2");
    }
    let policy = group(&c, "kaiju_mixed").await.mixed_instances_policy().unwrap().clone();
    assert_eq!(policy.instances_distribution().unwrap().on_demand_base_capacity(), Some(1));
    assert_eq!(policy.launch_template().unwrap().overrides().len(), 2);
    assert_eq!(images_of(&c, "kaiju_mixed").await, BTreeSet::from([new.clone()]));
    // Back, on demand: every template on the version it was on.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--rollback"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(policy_versions(&c, "kaiju_mixed").await, [(main.clone(), "1".to_string()), (other.clone(), "1".to_string())]);
    assert_eq!(images_of(&c, "kaiju_mixed").await, BTreeSet::from([old.clone()]));
    // A Graviton override: the x86_64 image cannot run on m6g.large; refused before any change.
    let arm = template(&c, "kaiju-mixed-arm", &old, ec2_t::InstanceType::M6gLarge).await;
    mixed_group(&c, "kaiju_graviton", &main, &arm, "m6g.large").await;
    common::edit(root, "roles/kaiju.toml", r#"groups = ["kaiju_mixed"]"#, r#"groups = ["kaiju_graviton"]"#);
    let before = c.ec2.describe_launch_template_versions().launch_template_id(&main).send().await.unwrap().launch_template_versions().len();
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("group kaiju_graviton: instance type m6g.large of launch template kaiju-mixed-arm runs arm64, but") && e.contains("nothing changed"),
        "{e}"
    );
    let after = c.ec2.describe_launch_template_versions().launch_template_id(&main).send().await.unwrap().launch_template_versions().len();
    assert_eq!(before, after, "no version made");
    assert_eq!(policy_versions(&c, "kaiju_graviton").await, [(main.clone(), "1".to_string()), (arm.clone(), "1".to_string())]);
    // The same for a plain launch-template group on a Graviton type.
    let plain = template(&c, "kaiju-plain-arm", &old, ec2_t::InstanceType::M6gLarge).await;
    common::template_group(&c.asg, "kaiju_plain_arm", &plain, "1", 1, 2, common::opted_in_group("kaiju_plain_arm", "kaiju", "staging")).await;
    common::edit(root, "roles/kaiju.toml", r#"groups = ["kaiju_graviton"]"#, r#"groups = ["kaiju_plain_arm"]"#);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("group kaiju_plain_arm: instance type m6g.large of launch template kaiju-plain-arm runs arm64") && e.contains("nothing changed"), "{e}");
    assert_eq!(c.ec2.describe_launch_template_versions().launch_template_id(&plain).send().await.unwrap().launch_template_versions().len(), 1);
    // An override of a type EC2 does not know: named with its group and template.
    mixed_group(&c, "kaiju_unknown", &main, &other, "x9z.mega").await;
    common::edit(root, "roles/kaiju.toml", r#"groups = ["kaiju_plain_arm"]"#, r#"groups = ["kaiju_unknown"]"#);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("group kaiju_unknown: EC2 does not know instance type x9z.mega (launch template kaiju-mixed-other); nothing changed"), "{e}");
}

/// How many instances a group's warm pool holds, and the images they run.
async fn warm_pool(c: &Cloud, group: &str) -> (usize, BTreeSet<String>) {
    let w = c.asg.describe_warm_pool().auto_scaling_group_name(group).send().await.unwrap();
    let ids: Vec<String> = w.instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect();
    let d = c.ec2.describe_instances().set_instance_ids(Some(ids.clone())).send().await.unwrap();
    (ids.len(), d.reservations().iter().flat_map(|r| r.instances()).map(|i| i.image_id().unwrap().to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_a_warm_pool_rolls_its_pool_too() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_warm", &old, 2, "1").await;
    // A warm pool of max size (4) minus desired (2): two stopped instances.
    c.asg.put_warm_pool().auto_scaling_group_name("kaiju_warm").pool_state(asg_t::WarmPoolState::Stopped).send().await.unwrap();
    assert_eq!(warm_pool(&c, "kaiju_warm").await, (2, BTreeSet::from([old.clone()])));
    assert_eq!(group(&c, "kaiju_warm").await.warm_pool_size(), Some(2));
    set_rollout(root, r#"{ groups = ["kaiju_warm"], refresh = { min_healthy_percentage = 50 } }"#);
    let new = baked_image(&c, "kaiju-staging-1").await;
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan"]);
    assert!(text(&out.stdout).contains("its warm pool (2 instance(s)) is refreshed too"), "{}", text(&out.stdout));
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let g = &json_out(&out)["groups"][0];
    assert_eq!((g["outcome"].as_str(), g["warm_pool_percentage_complete"].as_i64()), (Some("rolled"), Some(100)), "{g}");
    assert!(text(&out.stderr).contains("warm pool 100%, 0 left") || text(&out.stdout).contains("warm pool 100%, 0 left"), "{}", text(&out.stdout));
    assert_eq!(images_of(&c, "kaiju_warm").await, BTreeSet::from([new.clone()]));
    assert_eq!(warm_pool(&c, "kaiju_warm").await, (2, BTreeSet::from([new.clone()])), "the warm pool runs the new image");
    // And back: the pool too.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--rollback"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(warm_pool(&c, "kaiju_warm").await, (2, BTreeSet::from([old.clone()])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_during_the_canarys_bake_time_puts_the_canary_back_and_starts_nothing_else() {
    use aws_sdk_cloudwatch::types::StateValue;
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_canary", &old, 2, "1").await;
    lt_group(&c, "kaiju_rest", &old, 2, "1").await;
    set_rollout(
        root,
        r#"{ groups = ["kaiju_canary", "kaiju_rest"], canaries = ["kaiju_canary"], canary_bake_time = "60s", alarms = ["kaiju-5xx"], refresh = { min_healthy_percentage = 50 } }"#,
    );
    let new = baked_image(&c, "kaiju-staging-1").await;
    // No such alarm yet: refused before anything changes.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("CloudWatch has no alarm named kaiju-5xx in us-east-1; nothing changed"), "{}", text(&out.stderr));
    let cw = common::alarm(&sb, "kaiju-5xx").await;
    // Firing already: refused too.
    cw.set_alarm_state().alarm_name("kaiju-5xx").state_value(StateValue::Alarm).state_reason("5xx above 10").send().await.unwrap();
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("alarm kaiju-5xx is in ALARM in us-east-1 (5xx above 10)"), "{}", text(&out.stderr));
    cw.set_alarm_state().alarm_name("kaiju-5xx").state_value(StateValue::Ok).state_reason("quiet").send().await.unwrap();
    // The plan says what gates the roll.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan"]);
    assert!(text(&out.stdout).contains("gated by the alarms `kaiju-5xx`"), "{}", text(&out.stdout));
    // The canary rolls (its refresh names the alarm); during its bake time the alarm fires.
    let (child, _) = spawn_until(
        &sb,
        root,
        &["roll", "kaiju", "--env", "staging", "--manifest", "roll.json"],
        "canaries healthy; waiting 1m before the rest, watching alarms kaiju-5xx in us-east-1",
    );
    let refreshes = c.asg.describe_instance_refreshes().auto_scaling_group_name("kaiju_canary").send().await.unwrap();
    let spec = refreshes.instance_refreshes()[0].preferences().unwrap().alarm_specification().unwrap().clone();
    assert_eq!(spec.alarms(), ["kaiju-5xx"]);
    assert_eq!(images_of(&c, "kaiju_canary").await, BTreeSet::from([new.clone()]));
    cw.set_alarm_state().alarm_name("kaiju-5xx").state_value(StateValue::Alarm).state_reason("5xx above 10").send().await.unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("alarm kaiju-5xx went into ALARM in us-east-1 (5xx above 10), during the canaries' bake time"), "{}", text(&out.stderr));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(root.join("roll.json")).unwrap()).unwrap();
    let outcome = |n: &str| m["groups"].as_array().unwrap().iter().find(|g| g["name"] == n).map(|g| g["outcome"].as_str().unwrap().to_string());
    assert_eq!(outcome("kaiju_canary").as_deref(), Some("rolled-back"), "{m}");
    assert_eq!(outcome("kaiju_rest").as_deref(), Some("not-started"), "{m}");
    assert_eq!(images_of(&c, "kaiju_canary").await, BTreeSet::from([old.clone()]), "the canary is back");
    assert_eq!(images_of(&c, "kaiju_rest").await, BTreeSet::from([old.clone()]), "nothing else started");
    assert!(c.asg.describe_instance_refreshes().auto_scaling_group_name("kaiju_rest").send().await.unwrap().instance_refreshes().is_empty());
}

/// A target group that finds a canary's new instances unhealthy during the canaries' bake time
/// stops the roll, although the group's own (EC2) checks pass: the canary goes back, nothing else
/// starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_canary_targets_put_the_canary_back_and_start_nothing_else() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    lt_group(&c, "kaiju_canary", &old, 2, "1").await;
    lt_group(&c, "kaiju_rest", &old, 2, "1").await;
    let (elb, arn) = common::target_group(&sb, "kaiju-web", &["kaiju_canary"]).await;
    set_rollout(
        root,
        &format!(
            r#"{{ groups = ["kaiju_canary", "kaiju_rest"], canaries = ["kaiju_canary"], canary_bake_time = "60s", target_groups = ["{arn}"], refresh = {{ min_healthy_percentage = 50 }} }}"#
        ),
    );
    let new = baked_image(&c, "kaiju-staging-1").await;
    sb.control("POST", "/_sandbox/elb_unhealthy_amis", Some(json!({"amis": [new]})));
    let started = std::time::Instant::now();
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(50), "found within the bake time, not after it: {:?}", started.elapsed());
    assert!(err.contains("watching 2 canary instance(s) in target group"), "{err}");
    assert!(
        err.contains(&format!(
            "of canary group kaiju_canary is unhealthy in target group {arn} (Target.FailedHealthChecks: Health checks failed), during the canaries' bake time"
        )),
        "{err}"
    );
    let m = json_out(&out);
    let outcome = |n: &str| m["groups"].as_array().unwrap().iter().find(|g| g["name"] == n).map(|g| g["outcome"].as_str().unwrap().to_string());
    assert_eq!(outcome("kaiju_canary").as_deref(), Some("rolled-back"), "{m}");
    assert_eq!(outcome("kaiju_rest").as_deref(), Some("not-started"), "{m}");
    assert_eq!(images_of(&c, "kaiju_canary").await, BTreeSet::from([old.clone()]), "the canary is back");
    assert_eq!(images_of(&c, "kaiju_rest").await, BTreeSet::from([old.clone()]), "nothing else started");
    assert!(common::target_states(&elb, &arn).await.values().all(|s| s != "unhealthy"), "the unhealthy instances left the target group");
    // A target group that holds none of the canaries' instances cannot vouch for them: the roll stops.
    sb.control("POST", "/_sandbox/elb_unhealthy_amis", Some(json!({"amis": []})));
    let (_, rest_only) = common::target_group(&sb, "kaiju-rest", &["kaiju_rest"]).await;
    let rollout = |tg: &str| {
        format!(
            r#"{{ groups = ["kaiju_canary", "kaiju_rest"], canaries = ["kaiju_canary"], canary_bake_time = "60s", target_groups = ["{tg}"], refresh = {{ min_healthy_percentage = 50 }} }}"#
        )
    };
    set_rollout(root, &rollout(&rest_only));
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("target group {rest_only} holds none of the canaries' instances in us-east-1 (kaiju_canary)")), "{err}");
    assert_eq!(images_of(&c, "kaiju_canary").await, BTreeSet::from([old.clone()]), "the canary is back");
    assert_eq!(images_of(&c, "kaiju_rest").await, BTreeSet::from([old.clone()]), "nothing else started");
    // One in a region the roll does not cover, or that does not exist: refused before anything changes.
    for (tg, why) in [
        (arn.replace("us-east-1", "eu-west-1"), "is in eu-west-1, but this roll covers us-east-1"),
        (format!("{}/0000000000000000", arn.rsplit_once('/').unwrap().0), "TargetGroupNotFound"),
    ] {
        set_rollout(root, &rollout(&tg));
        sb.control("DELETE", "/_sandbox/calls", None);
        let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(why) && err.contains("nothing changed"), "{err}");
        assert!(sb.calls()["mutating"].as_array().unwrap().is_empty(), "{}", sb.calls()["mutating"]);
    }
    set_rollout(root, &rollout(&arn));
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new, "--plan"]);
    assert!((text(&out.stdout) + &text(&out.stderr)).contains(&format!("watched in target group {arn}")), "{}", text(&out.stderr));

    // The roller policy reads target health (ELBv2's Describe actions take no resource).
    let out = bake(&sb, root, &["policy", "roller", "--role", "kaiju", "--env", "staging"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = doc["Statement"].as_array().unwrap().iter().find(|s| s["Sid"] == "ReadCanaryTargetHealth").expect("ReadCanaryTargetHealth").clone();
    assert_eq!((st["Action"].as_str(), st["Resource"].as_str()), (Some("elasticloadbalancing:DescribeTargetHealth"), Some("*")), "{st}");
}

/// A region's copy of an image that looks like one bake made (its bake:id as on `source`).
async fn copied(west: &Cloud, source: &str, id: &str) -> String {
    let copy = west.ec2.copy_image().source_region("us-east-1").source_image_id(source).name(format!("copy-{source}")).send().await.unwrap();
    let copy = copy.image_id().unwrap().to_string();
    let mut tags = vec![];
    for (k, v) in [("bake:role", "kaiju"), ("bake:env", "staging"), ("bake:complete", "true"), ("bake:managed", "true"), ("bake:id", id)] {
        tags.push(ec2_t::Tag::builder().key(k).value(v).build());
    }
    west.ec2.create_tags().resources(&copy).set_tags(Some(tags)).send().await.unwrap();
    for _ in 0..100 {
        let d = west.ec2.describe_images().image_ids(&copy).send().await.unwrap();
        if d.images().first().and_then(|i| i.state()) == Some(&ec2_t::ImageState::Available) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    copy
}

/// kaiju/staging is copied to us-west-2: a roll covers both regions, each group on its own
/// region's copy, canaries (here in us-east-1) first; a failure in us-west-2 puts the groups of
/// us-east-1 back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_covers_every_region_with_a_copy_and_a_failure_puts_every_region_back() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    let west = common::Clients::new(&sb.sdk_config("us-west-2").await);
    let old_west = param(&west, UBUNTU_2204).await;
    lt_group(&c, "kaiju_canary", &old, 1, "1").await;
    lt_group(&c, "kaiju_staging", &old, 2, "1").await;
    lt_group(&west, "kaiju_staging", &old_west, 2, "1").await;
    set_rollout(root, r#"{ groups = ["kaiju_canary", "kaiju_staging"], canaries = ["kaiju_canary"], refresh = { min_healthy_percentage = 50 } }"#);
    let tag = |id: &str| ec2_t::Tag::builder().key("bake:id").value(id).build();
    let new = baked_image(&c, "kaiju-staging-1").await;
    c.ec2.create_tags().resources(&new).tags(tag("b-00000000000a")).send().await.unwrap();
    let new_west = copied(&west, &new, "b-00000000000a").await;

    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan"]);
    let plan = text(&out.stderr) + &text(&out.stdout);
    assert!(plan.contains(&format!("Rollout of {new} to role kaiju in env staging (us-east-1)")), "{plan}");
    assert!(plan.contains(&format!("Rollout of {new_west} to role kaiju in env staging (us-west-2)")), "{plan}");
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["regions"], json!(["us-east-1", "us-west-2"]), "{m}");
    assert_eq!(m["images"], json!({"us-east-1": {"x86_64": new}, "us-west-2": {"x86_64": new_west}}), "{m}");
    let groups = m["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{m}");
    assert_eq!((groups[0]["name"].as_str(), groups[0]["canary"].as_bool()), (Some("kaiju_canary"), Some(true)), "{m}");
    for g in groups {
        let want = if g["region"] == "us-west-2" { &new_west } else { &new };
        assert_eq!((g["outcome"].as_str(), g["final_image"].as_str()), (Some("rolled"), Some(want.as_str())), "{g}");
    }
    assert_eq!(images_of(&west, "kaiju_staging").await, BTreeSet::from([new_west.clone()]));
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([new.clone()]));

    // --rollback goes back in every region, each group to what it ran before; and forward again.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--rollback", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["regions"], json!(["us-east-1", "us-west-2"]));
    assert_eq!(images_of(&west, "kaiju_staging").await, BTreeSet::from([old_west.clone()]));
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([old.clone()]));

    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // The next image's copy fails in us-west-2: every region goes back to where it was.
    let newer = baked_image(&c, "kaiju-staging-2").await;
    c.ec2.create_tags().resources(&newer).tags(tag("b-00000000000b")).send().await.unwrap();
    let newer_west = copied(&west, &newer, "b-00000000000b").await;
    sb.control("POST", "/_sandbox/unhealthy_amis", Some(json!({"amis": [newer_west]})));
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("group kaiju_staging"), "{err}");
    let summary = text(&out.stdout);
    assert!(summary.contains("kaiju_staging (us-west-2): "), "{summary}");
    assert_eq!(images_of(&west, "kaiju_staging").await, BTreeSet::from([new_west.clone()]), "us-west-2 is back");
    assert_eq!(images_of(&c, "kaiju_staging").await, BTreeSet::from([new.clone()]), "us-east-1 is back");
    assert_eq!(images_of(&c, "kaiju_canary").await, BTreeSet::from([new.clone()]), "the canary is back");

    // --region rolls one region: the canary, only in us-east-1, is not needed there.
    // (The role names no builder.region: --region is also where its --ami is.)
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--region", "us-west-2", "--ami", &new_west, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!((m["regions"].clone(), m["groups"].as_array().unwrap().len()), (json!(["us-west-2"]), 1), "{m}");

    // rollout.regions narrows the roll; a region without a copy is refused before anything changes.
    set_rollout(root, r#"{ groups = ["kaiju_staging"], regions = ["us-west-2"], refresh = { min_healthy_percentage = 50 } }"#);
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &new, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["regions"], json!(["us-west-2"]));
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &old]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("us-west-2 (rollout.regions of roles/kaiju.toml) has no copy of"), "{}", text(&out.stderr));
}

/// A role that bakes x86_64 and arm64: a roll gives each group, and each template of a mixed
/// group, the image of its instance types' architecture — a Graviton override's template the
/// arm64 image, the rest the x86_64 one; a plain group on a Graviton type the arm64 image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_two_architectures_gives_each_template_its_architectures_image() {
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    let arm_param = "/aws/service/canonical/ubuntu/server/22.04/stable/current/arm64/hvm/ebs-gp3/ami-id";
    let old_arm = param(&c, arm_param).await;
    common::edit(
        root,
        "roles/kaiju.toml",
        &format!("[source]\nssm_parameter = \"{UBUNTU_2204}\"\n"),
        &format!(
            "[architectures.x86_64]\nsource = {{ ssm_parameter = \"{UBUNTU_2204}\" }}\n\n[architectures.arm64]\nsource = {{ ssm_parameter = \"{arm_param}\" }}\ninstance_type = \"t4g.small\"\n"
        ),
    );
    common::edit(root, "roles/kaiju.toml", "name = \"kaiju-{{env}}-{{timestamp}}\"", "name = \"kaiju-{{env}}-{{arch}}-{{timestamp}}\"");
    let main = template(&c, "kaiju-multi-main", &old, ec2_t::InstanceType::T3Small).await;
    let arm = template(&c, "kaiju-multi-arm", &old_arm, ec2_t::InstanceType::M6gLarge).await;
    mixed_group(&c, "kaiju_multi", &main, &arm, "m6g.large").await;
    let plain = template(&c, "kaiju-multi-plain", &old_arm, ec2_t::InstanceType::M6gLarge).await;
    common::template_group(&c.asg, "kaiju_multi_plain", &plain, "1", 1, 2, common::opted_in_group("kaiju_multi_plain", "kaiju", "staging")).await;
    set_rollout(root, r#"{ groups = ["kaiju_multi", "kaiju_multi_plain"], refresh = { min_healthy_percentage = 50 } }"#);
    // One image per architecture, as bake tags them.
    let arch_tag = |a: &str| ec2_t::Tag::builder().key("bake:arch").value(a).build();
    let new_x86 = baked_image(&c, "kaiju-staging-x86_64-1").await;
    c.ec2.create_tags().resources(&new_x86).tags(arch_tag("x86_64")).send().await.unwrap();
    let new_arm = common::baked_image(&c.ec2, &old_arm, "kaiju-staging-arm64-1").await;
    c.ec2.create_tags().resources(&new_arm).tags(arch_tag("arm64")).send().await.unwrap();

    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains(&format!("kaiju-multi-arm (from v1, {new_arm})")), "{shown}");
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["images"]["us-east-1"], json!({"arm64": new_arm, "x86_64": new_x86}), "{m}");
    assert_eq!(policy_versions(&c, "kaiju_multi").await, [(main.clone(), "2".to_string()), (arm.clone(), "2".to_string())]);
    assert_eq!(version_image(&c, &main, "2").await, new_x86, "the policy's own template: x86_64");
    assert_eq!(version_image(&c, &arm, "2").await, new_arm, "the Graviton override's template: arm64");
    assert_eq!(version_image(&c, &plain, "2").await, new_arm, "a plain group on a Graviton type: arm64");
    assert_eq!(images_of(&c, "kaiju_multi_plain").await, BTreeSet::from([new_arm.clone()]));
    // --ami pins its own architecture; the other rolls its newest.
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &old, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["images"]["us-east-1"], json!({"arm64": new_arm, "x86_64": old}));
    assert_eq!(version_image(&c, &main, "3").await, old, "x86_64 pinned");
    assert_eq!(version_image(&c, &arm, "3").await, new_arm, "arm64 the newest");
}

/// Clients for a workload account: a session of its role, assumed with its external id.
async fn account_cloud(sb: &Sandbox, role_arn: &str, external_id: &str) -> Cloud {
    let creds = sb.assume_role_with(role_arn, "set-up", Some(external_id)).await;
    common::Clients::new(&sb.sdk_config_as("us-east-1", &creds).await)
}

/// Golden images baked in a tools account, run in a workload account (rollout.accounts): the
/// build shares the image (and its snapshot, under a customer managed key) with the account and
/// publishes the parameter there through the assumed role; the roll moves the account's group
/// with the assumed credentials, after the canary at home. A wrong external id is refused before
/// anything exists; an image no longer shared is refused before anything changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_accounts_group_rolls_through_assume_role_on_the_shared_image() {
    const B: &str = "210987654321";
    let Rig { sb, c, dir, old } = rig().await;
    let root = dir.path();
    let key = sb.aws_json("kms", "TrentService.CreateKey", &json!({"Description": "golden images"}))["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    let role_arn = sb.control("POST", "/_sandbox/accounts", Some(json!({"account": B, "role": "bake-target", "external_id": "tools-7"})))["arn"]
        .as_str()
        .unwrap()
        .to_string();
    common::edit(root, "roles/kaiju.toml", "instance_type = \"t3.small\"", &format!("instance_type = \"t3.small\"\nkms_key_id = \"{key}\""));
    common::edit(root, "roles/kaiju.toml", "image = { regions = [\"us-west-2\"] }\n", "");
    lt_group(&c, "kaiju_canary", &old, 1, "1").await;
    let rollout = |external_id: &str| {
        format!(
            r#"{{ groups = ["kaiju_canary", "kaiju_staging"], canaries = ["kaiju_canary"], refresh = {{ min_healthy_percentage = 50 }}, accounts = {{ "{B}" = {{ role_arn = "{role_arn}", external_id = "{external_id}" }} }} }}"#
        )
    };

    // The account's role does not trust this external id: nothing is created.
    set_rollout(root, &rollout("not-ours"));
    let before = sb.live().len();
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("rollout.accounts.{B} of roles/kaiju.toml")) && err.contains("AccessDenied") && err.contains("nothing was created"), "{err}");
    assert!(!err.contains("SdkBody") && !err.contains("Response {"), "one sentence, no dump: {err}");
    assert_eq!(sb.live().len(), before, "nothing was created");

    // Built: shared with the account, the parameter published there too.
    set_rollout(root, &rollout("tools-7"));
    let first = json_out(&bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]));
    assert_eq!(first["status"], "succeeded", "{first}");
    let first_ami = first["images"]["us-east-1"]["ami_id"].as_str().unwrap().to_string();
    let there: Vec<&Value> = first["parameters"].as_array().unwrap().iter().filter(|p| p["account"] == B).collect();
    assert_eq!(there.len(), 1, "{first}");
    let name = there[0]["name"].as_str().unwrap().to_string();
    let b = account_cloud(&sb, &role_arn, "tools-7").await;
    assert_eq!(param(&b, &name).await, first_ami, "the account's parameter names the image");
    let seen = b.ec2.describe_images().image_ids(&first_ami).send().await.unwrap();
    assert_eq!(seen.images()[0].owner_id(), Some("123456789012"), "the account sees the tools account's image");
    assert!(seen.images()[0].tags().is_empty(), "but not the owner's tags");

    // The account's group runs the first image; a second bake is rolled there.
    lt_group(&b, "kaiju_staging", &first_ami, 2, "1").await;
    let second = json_out(&bake(&sb, root, &["build", "kaiju", "--env", "staging", "--force", "--output", "json"]));
    assert_eq!(second["status"], "succeeded", "{second}");
    let ami = second["images"]["us-east-1"]["ami_id"].as_str().unwrap().to_string();
    assert_eq!(param(&b, &name).await, ami);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan"]);
    let plan = text(&out.stderr) + &text(&out.stdout);
    assert!(plan.contains(&format!("Rollout of {ami} to role kaiju in env staging (us-east-1 of {B})")), "{plan}");
    assert!(plan.contains(&format!("Rollout of {ami} to role kaiju in env staging (us-east-1)")), "{plan}");
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["regions"], json!(["us-east-1", format!("us-east-1 of {B}")]), "{m}");
    let groups = m["groups"].as_array().unwrap();
    assert_eq!((groups[0]["name"].as_str(), groups[0].get("account")), (Some("kaiju_canary"), None), "the canary at home first: {m}");
    assert_eq!(
        (groups[1]["name"].as_str(), groups[1]["account"].as_str(), groups[1]["final_image"].as_str()),
        (Some("kaiju_staging"), Some(B), Some(ami.as_str())),
        "{m}"
    );
    assert_eq!(images_of(&b, "kaiju_staging").await, BTreeSet::from([ami.clone()]));
    assert_eq!(images_of(&c, "kaiju_canary").await, BTreeSet::from([ami.clone()]));
    assert!(text(&bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &first_ami]).stdout).contains(&format!("kaiju_staging (us-east-1 of {B}): ")));

    // No longer shared: refused before anything changes.
    c.ec2
        .modify_image_attribute()
        .image_id(&ami)
        .launch_permission(ec2_t::LaunchPermissionModifications::builder().remove(ec2_t::LaunchPermission::builder().user_id(B).build()).build())
        .send()
        .await
        .unwrap();
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &ami]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("image {ami} is not shared with account {B} in us-east-1")) && err.contains("nothing changed"), "{err}");
    assert!(sb.calls()["mutating"].as_array().unwrap().iter().all(|c| !c.as_str().unwrap_or_default().contains("autoscaling")), "{}", sb.calls());
    assert_eq!(images_of(&b, "kaiju_staging").await, BTreeSet::from([first_ami.clone()]));
    // Nor when the account could no longer launch what its group runs now (no way back).
    let share = |image: &str, add: bool| {
        let p = ec2_t::LaunchPermission::builder().user_id(B).build();
        let m = if add { ec2_t::LaunchPermissionModifications::builder().add(p) } else { ec2_t::LaunchPermissionModifications::builder().remove(p) };
        c.ec2.modify_image_attribute().image_id(image).launch_permission(m.build()).send()
    };
    share(&ami, true).await.unwrap();
    share(&first_ami, false).await.unwrap();
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--ami", &ami]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("group kaiju_staging (us-east-1 of {B}) runs {first_ami}, which account {B} can no longer launch")), "{err}");
    share(&first_ami, true).await.unwrap();

    // What each account's role needs.
    let roller = bake(&sb, root, &["policy", "roller", "--role", "kaiju"]);
    let roller: Value = serde_json::from_slice(&roller.stdout).unwrap();
    let assume =
        roller["Statement"].as_array().unwrap().iter().find(|s| s["Sid"] == "AssumeWorkloadAccountRoles").expect("the roller assumes the account's role");
    assert_eq!(assume["Resource"], json!([role_arn]));
    let target = bake(&sb, root, &["policy", "target", "--role", "kaiju", "--account", B]);
    assert_eq!(target.status.code(), Some(0), "{}", text(&target.stderr));
    let target: Value = serde_json::from_slice(&target.stdout).unwrap();
    let sids: Vec<&str> = target["Statement"].as_array().unwrap().iter().map(|s| s["Sid"].as_str().unwrap()).collect();
    assert!(sids.contains(&"PublishParameterHere") && !sids.contains(&"AssumeWorkloadAccountRoles"), "{sids:?}");
    assert!(target.to_string().contains(&format!("arn:aws:ssm:*:{B}:parameter{name}")), "{target}");
    assert!(!target.to_string().contains("123456789012"), "only the workload account's resources: {target}");
    let none = bake(&sb, root, &["policy", "target", "--role", "kaiju", "--account", "111122223333"]);
    assert_eq!(none.status.code(), Some(1), "{}", text(&none.stderr));

    // ls and prune count what the account runs: with the home canary gone, only the account's
    // group runs the first image, and prune keeps it.
    c.asg.delete_auto_scaling_group().auto_scaling_group_name("kaiju_canary").force_delete(true).send().await.unwrap();
    let ls = json_out(&bake(&sb, root, &["ls", "kaiju", "--env", "staging", "--output", "json"]));
    let used: Vec<String> = ls.as_array().unwrap().iter().find(|i| i["id"] == first_ami.as_str()).unwrap()["used_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(used.contains(&format!("group kaiju_staging (account {B})")), "{used:?}");
    let out = bake(&sb, root, &["prune", "kaiju", "--env", "staging", "--keep", "1", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(c.ec2.describe_images().image_ids(&first_ami).send().await.unwrap().images().len(), 1, "kept: the account runs it");

    // A parameter the account cannot take (at its 100 versions, the oldest labelled): the bake
    // ends `leftovers` (exit 1), keeps the image it published at home, and says what to do.
    b.ssm.label_parameter_version().name(&name).parameter_version(1).labels("pinned").send().await.unwrap();
    while b.ssm.get_parameter().name(&name).send().await.unwrap().parameter().unwrap().version() < 100 {
        b.ssm.put_parameter().name(&name).value(&first_ami).r#type(aws_sdk_ssm::types::ParameterType::String).overwrite(true).send().await.unwrap();
    }
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--force", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let third = json_out(&out);
    assert_eq!(third["status"], "leftovers", "{third}");
    assert!(third["error"].as_str().unwrap().contains("not published") && third["error"].as_str().unwrap().contains("the image is kept"), "{third}");
    let kept = third["images"]["us-east-1"]["ami_id"].as_str().unwrap().to_string();
    assert_eq!(c.ec2.describe_images().image_ids(&kept).send().await.unwrap().images()[0].state(), Some(&ec2_t::ImageState::Available));
    assert_eq!(param(&c, &name).await, kept, "published at home");

    // The account bake runs in is no workload account.
    set_rollout(root, r#"{ groups = ["kaiju_staging"], accounts = { "123456789012" = { role_arn = "arn:aws:iam::123456789012:role/bake-self" } } }"#);
    let out = bake(&sb, root, &["roll", "kaiju", "--env", "staging", "--plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("123456789012 is the account bake runs in"), "{}", text(&out.stderr));

    // Left behind: the products (images, snapshots, parameters in both accounts) and nothing else.
    let live = sb.live();
    assert!(live.iter().all(|r| ["image", "snapshot", "ssm-parameter"].contains(&r["type"].as_str().unwrap())), "{live:?}");
    assert!(live.iter().any(|r| r["type"] == "ssm-parameter" && r["account"] == B), "{live:?}");
}
