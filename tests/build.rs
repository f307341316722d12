//! `bake build` end to end against the sandbox cloud, through the real binary. Every test counts
//! the sandbox's live bake:managed resources before and after: a failed or interrupted bake
//! leaves nothing; a successful one leaves exactly its images, their snapshots and parameters.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use bake::config::{Project, VarInputs};
use common::sandbox::Sandbox;
use common::{bake_cmd_on as bake_cmd, bake_on as bake, edit, json_out, project_copy, signal, spawn_until, text};
use serde_json::{json, Value};

/// Live resources as a set of "type id region".
fn live(sb: &Sandbox) -> BTreeSet<String> {
    sb.live().iter().map(|r| format!("{} {} {}", r["type"].as_str().unwrap(), r["id"].as_str().unwrap(), r["region"].as_str().unwrap_or("global"))).collect()
}

/// What a successful bake leaves: its images and snapshots in every region, and parameters.
fn products(m: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (region, img) in m["images"].as_object().unwrap() {
        out.insert(format!("image {} {region}", img["ami_id"].as_str().unwrap()));
        for s in img["snapshot_ids"].as_array().unwrap() {
            out.insert(format!("snapshot {} {region}", s.as_str().unwrap()));
        }
    }
    for p in m["parameters"].as_array().unwrap() {
        out.insert(format!("ssm-parameter {} {}", p["name"].as_str().unwrap(), p["region"].as_str().unwrap()));
    }
    out
}

/// The sandbox holds what it held before plus exactly the bake's products.
fn assert_only_products_added(sb: &Sandbox, before: &BTreeSet<String>, m: &Value) {
    let mut expected = before.clone();
    expected.extend(products(m));
    assert_eq!(live(sb), expected, "exactly the bake's products were added");
}

fn describe(sb: &Sandbox, query: &str) -> Value {
    sb.control("GET", &format!("/_sandbox/images{query}"), None)["images"].clone()
}

#[test]
fn every_example_role_bakes_and_leaves_only_its_images() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    let out = bake(&sb, root, &["build", "boxoffice", "www", "kaiju", "--env", "staging", "--output", "json", "--manifest", "bake.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let manifests = json_out(&out);
    assert_eq!(manifests.as_array().unwrap().len(), 3);
    assert_eq!(std::fs::read_to_string(root.join("bake.json")).unwrap().trim(), text(&out.stdout).trim(), "--manifest writes the same JSON");
    let mut expected = before.clone();
    let project = Project::new(root);
    for m in manifests.as_array().unwrap() {
        let role = m["role"].as_str().unwrap();
        assert_eq!(m["status"], "succeeded", "{m}");
        assert!(m["bake_id"].as_str().unwrap().starts_with("b-"));
        // The manifest is complete.
        for key in ["source", "fingerprint", "builder", "steps", "images", "parameters", "stages", "api_calls", "journal"] {
            assert!(!m[key].is_null(), "{role}: manifest lacks {key}");
        }
        assert!(m["source"]["ami_id"].as_str().unwrap().starts_with("ami-"));
        assert!(m["source"]["name"].as_str().unwrap().starts_with("ubuntu/images/"));
        for stage in ["source", "iam", "launch", "agent", "provision", "image", "distribute", "cleanup"] {
            assert!(m["stages"][stage].as_f64().is_some(), "{role}: no duration for stage {stage}");
        }
        // One builder: a retry while the new security group is not yet visible to EC2 (eventual
        // consistency) carries the same client token.
        let runs = m["api_calls"]["ec2:RunInstances"].as_u64().unwrap();
        assert!((1..=3).contains(&runs), "{role}: {runs} RunInstances calls");
        let plan = project.plan(role, "staging", &VarInputs::default()).unwrap();
        let steps = m["steps"].as_array().unwrap();
        assert_eq!(steps.len(), plan.steps.len());
        for (s, p) in steps.iter().zip(&plan.steps) {
            assert_eq!(s["status"], "Success");
            assert_eq!(s["exit_code"], 0);
            assert_eq!(s["sha256"], p.sha256.as_str());
            assert_eq!(s["stdout_truncated"], false);
        }
        assert_eq!(steps[0]["rebooted"], true, "base/updates reboots");
        // The sandbox received exactly the rendered steps, in run-list order.
        let instance = m["builder"]["instance_id"].as_str().unwrap();
        let got: Vec<String> = sb.scripts(instance).iter().map(|r| r["script"].as_str().unwrap().to_string()).collect();
        let mut want: Vec<String> = plan.steps.iter().map(|s| s.script.trim_end_matches('\n').to_string()).collect();
        // Then the inventory of what the image holds, the last command on the builder.
        want.push(bake::inventory::script().join("\n"));
        assert_eq!(got, want, "{role}: scripts received");
        let inv = &m["inventory"];
        assert!(inv["packages"].as_u64().unwrap() > 10 && inv["kernel"].as_str().unwrap().ends_with("-aws"), "{role}: {inv}");
        let digest = inv["sha256"].as_str().unwrap();
        assert!(Path::new(inv["stored"][0].as_str().unwrap()).exists(), "{role}: the inventory is kept");
        let comments: Vec<String> = sb.scripts(instance).iter().map(|r| r["comment"].as_str().unwrap().to_string()).collect();
        assert_eq!(comments[0], format!("bake {} base/updates", m["bake_id"].as_str().unwrap()));
        // Images: available, tagged with provenance, snapshots tagged, copies in the other regions.
        let regions: Vec<&String> = m["images"].as_object().unwrap().keys().collect();
        assert_eq!(regions.len(), 1 + plan.image.regions.len(), "{role}: {regions:?}");
        for (region, rec) in m["images"].as_object().unwrap() {
            let imgs = describe(&sb, &format!("?region={region}"));
            let img = imgs.as_array().unwrap().iter().find(|i| i["id"] == rec["ami_id"]).unwrap();
            assert_eq!(img["state"], "available");
            assert!(img["name"].as_str().unwrap().starts_with(&format!("{role}-staging-")));
            for (k, v) in [("bake:role", role), ("bake:env", "staging"), ("bake:managed", "true"), ("bake:complete", "true")] {
                assert_eq!(img["tags"][k], v, "{role} {region}: tag {k}");
                assert_eq!(img["snapshot_tags"][k], v, "{role} {region}: snapshot tag {k}");
            }
            assert_eq!(img["tags"]["bake:source-ami"], m["source"]["ami_id"]);
            assert_eq!(img["tags"]["bake:fingerprint"], m["fingerprint"]);
            assert_eq!(img["tags"]["bake:cookbooks"], "base,docker,app-server");
            assert_eq!(img["tags"]["bake:id"], m["bake_id"]);
            assert_eq!(img["tags"]["bake:inventory"], digest, "{role} {region}: the inventory's digest");
            assert!(img["snapshot_encrypted"].as_bool().unwrap(), "{role} {region}: encrypted");
            for (k, v) in &plan.image.tags {
                assert_eq!(img["tags"][k], v.as_str());
            }
        }
        // Parameter published in every region.
        let params = m["parameters"].as_array().unwrap();
        assert_eq!(params.len(), regions.len());
        for p in params {
            assert_eq!(p["name"], format!("/bake/{role}/staging/ami-id"));
            assert_eq!(p["value"], m["images"][p["region"].as_str().unwrap()]["ami_id"]);
        }
        expected.extend(products(m));
    }
    // Builders terminated, temporary IAM and security groups gone: only the products remain.
    assert_eq!(live(&sb), expected);
    // The journal ends with `finished succeeded`.
    let j = std::fs::read_to_string(manifests[0]["journal"].as_str().unwrap()).unwrap();
    assert!(j.lines().last().unwrap().contains("\"succeeded\""));
}

#[test]
fn waiters_really_wait_and_nothing_polls_busily() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    edit(root, "roles/kaiju.toml", "image = { regions = [\"us-west-2\"] }", "");
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_pending": 2, "agent_registration": 2, "image_pending": 2, "command_duration": 0.6})));
    sb.control("DELETE", "/_sandbox/calls", None);
    let t = Instant::now();
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    // The waiters waited: the instance was pending 2 s, the image 2 s.
    assert!(m["stages"]["launch"].as_f64().unwrap() >= 2.0, "{}", m["stages"]);
    assert!(m["stages"]["image"].as_f64().unwrap() >= 2.0, "{}", m["stages"]);
    let ready = m["stages"]["launch"].as_f64().unwrap() + m["stages"]["agent"].as_f64().unwrap();
    assert!(ready >= 4.0, "pending, then registration: {}", m["stages"]);
    let calls = sb.calls();
    let polls: Vec<(f64, String)> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            let a = c["action"].as_str().unwrap();
            a.starts_with("Describe") || a.starts_with("Get")
        })
        .map(|c| (c["t"].as_f64().unwrap(), c["action"].as_str().unwrap().to_string()))
        .collect();
    let rate = polls.len() as f64 / secs;
    assert!(rate <= 2.0, "{} Describe/Get calls in {secs:.1}s", polls.len());
    // No busy loop: the same call repeated never runs more than twice in a second.
    for (i, (t0, a)) in polls.iter().enumerate() {
        let same = polls[i..].iter().take_while(|(t, _)| t - t0 < 1.0).filter(|(_, b)| b == a).count();
        assert!(same <= 2, "{a} polled {same} times within a second");
    }
}

fn assert_failed_cleanly(sb: &Sandbox, before: &BTreeSet<String>, out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(1), "stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(&live(sb), before, "a failed bake leaves nothing behind");
    assert!(!text(&out.stderr).contains("panicked"));
    json_out(out)
}

#[test]
fn a_failing_step_stops_the_bake_with_its_exit_code_and_stderr() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    sb.control(
        "POST",
        "/_sandbox/ssm/outcomes",
        Some(json!({"outcomes": [{
            "match": "cookbook=docker step=engine",
            "exit_code": 3,
            "stdout": "Reading package lists...\n",
            "stderr": (1..=50).map(|i| format!("E: line {i}\n")).collect::<String>() + "E: Unable to locate package docker.io\n",
        }]})),
    );
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    let m = assert_failed_cleanly(&sb, &before, &out);
    let err = text(&out.stderr);
    assert!(err.contains("step docker/engine failed on builder i-"), "{err}");
    assert!(err.contains("exit code 3"), "{err}");
    assert!(err.contains("| E: Unable to locate package docker.io"), "{err}");
    assert!(err.contains("| E: line 12\n") && !err.contains("| E: line 11\n"), "the last 40 lines of stderr: {err}");
    assert_eq!(m["status"], "failed");
    let steps = m["steps"].as_array().unwrap();
    let engine = steps.iter().find(|s| s["step"] == "engine").unwrap();
    assert_eq!(engine["status"], "Failed");
    assert_eq!(engine["exit_code"], 3);
    assert_eq!(steps.iter().find(|s| s["step"] == "daemon").unwrap()["status"], "not-run", "fail fast");
    assert!(m["images"].as_object().unwrap().is_empty(), "no AMI made");
}

#[test]
fn a_step_that_times_out_and_a_syntax_error_fail_cleanly() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    // base/ssh has a 5m timeout; the sandbox's outcome takes longer. Shorten it to keep the test quick.
    edit(
        root,
        "cookbooks/base/cookbook.toml",
        "name = \"ssh\"\ndescription = \"Harden sshd, or disable it\"\ntimeout = \"5m\"",
        "name = \"ssh\"\ndescription = \"Harden sshd, or disable it\"\ntimeout = \"2s\"",
    );
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=base step=ssh", "hang": true}]})));
    let out = bake(&sb, root, &["build", "www", "--env", "staging", "--output", "json"]);
    let m = assert_failed_cleanly(&sb, &before, &out);
    assert!(text(&out.stderr).contains("step base/ssh failed on builder"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("timed out after 2s"), "{}", text(&out.stderr));
    assert_eq!(m["steps"][1]["status"], "TimedOut");

    // A template that renders to bad shell: the sandbox's bash -n says so.
    sb.control("DELETE", "/_sandbox/ssm/outcomes", None);
    edit(root, "cookbooks/base/steps/logs.sh.hbs", "if [ -n \"$target\" ]; then", "if [ -n \"$target\" ]; then (");
    let out = bake(&sb, root, &["build", "www", "--env", "staging", "--output", "json"]);
    assert_failed_cleanly(&sb, &before, &out);
    let err = text(&out.stderr);
    assert!(err.contains("step base/logs failed") && err.contains("exit code 2") && err.contains("syntax error"), "{err}");
}

#[test]
fn an_image_that_never_becomes_available_is_deregistered() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    edit(root, "roles/kaiju.toml", "instance_type = \"t3.small\"", "instance_type = \"t3.small\"\nimage_timeout = \"3s\"");
    let before = live(&sb);
    sb.control("POST", "/_sandbox/delays", Some(json!({"image_pending": -1})));
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_failed_cleanly(&sb, &before, &out);
    let err = text(&out.stderr);
    assert!(err.contains("image ami-") && err.contains("in us-east-1 did not become available within 3s"), "{err}");
    let mine: Vec<Value> = describe(&sb, "").as_array().unwrap().clone();
    assert!(mine.is_empty(), "the pending image was deregistered: {mine:?}");
}

#[test]
fn one_regions_copy_failing_removes_every_copy() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    edit(root, "roles/kaiju.toml", "image = { regions = [\"us-west-2\"] }", "image = { regions = [\"us-west-2\", \"eu-west-1\"] }");
    let before = live(&sb);
    sb.control("POST", "/_sandbox/failing_image_regions", Some(json!({"regions": ["eu-west-1"]})));
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_failed_cleanly(&sb, &before, &out);
    let err = text(&out.stderr);
    assert!(err.contains("failed in eu-west-1"), "{err}");
    assert!(err.contains("the copies in us-west-2 succeeded and are removed"), "{err}");
    assert!(describe(&sb, "").as_array().unwrap().is_empty(), "no image left in any region");
}

#[test]
fn throttling_and_5xx_on_a_fifth_of_calls_still_bake() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    sb.control(
        "POST",
        "/_sandbox/faults",
        Some(json!({"faults": [
            {"service": "*", "action": "*", "rate": 0.1, "kind": "throttle", "seed": 11},
            {"service": "*", "action": "*", "rate": 0.1, "kind": "503", "seed": 12},
        ]})),
    );
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_eq!(m["status"], "succeeded");
    sb.control("DELETE", "/_sandbox/faults", None);
    assert_only_products_added(&sb, &before, &m);
    let n = sb.calls()["count"].as_u64().unwrap();
    let made: u64 = m["api_calls"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(n > made, "the SDK retried ({n} requests for {made} calls)");
}

#[test]
fn an_unchanged_rerun_launches_nothing_and_force_bakes_again() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let first = json_out(&bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]));
    assert_eq!(first["status"], "succeeded");
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let again = json_out(&out);
    assert_eq!(again["status"], "reused");
    assert_eq!(again["images"]["us-east-1"]["ami_id"], first["images"]["us-east-1"]["ami_id"]);
    assert!(sb.calls()["mutating"].as_array().unwrap().is_empty(), "nothing created: {}", sb.calls()["mutating"]);
    let forced = json_out(&bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json", "--force"]));
    assert_eq!(forced["status"], "succeeded");
    assert_ne!(forced["images"]["us-east-1"]["ami_id"], first["images"]["us-east-1"]["ami_id"]);
    assert_eq!(forced["fingerprint"], first["fingerprint"]);
    // A new source image (Canonical's weekly build) is a new fingerprint: it bakes again.
    let params = &forced["source"]["selector"];
    assert!(params["ssm_parameter"].is_object());
}

#[test]
fn all_roles_bake_concurrently_and_one_failing_leaks_nothing() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    sb.control(
        "POST",
        "/_sandbox/ssm/outcomes",
        Some(json!({"outcomes": [
            {"match": "role=kaiju env=production cookbook=app-server step=pull", "exit_code": 1, "stderr": "Error response from daemon: manifest unknown\n"}
        ]})),
    );
    let out = bake(&sb, root, &["build", "--all", "--env", "production", "--jobs", "3", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let ms = json_out(&out);
    let mut expected = before;
    let mut statuses = Vec::new();
    for m in ms.as_array().unwrap() {
        statuses.push(format!("{}={}", m["role"].as_str().unwrap(), m["status"].as_str().unwrap()));
        if m["status"] == "succeeded" {
            expected.extend(products(m));
        }
    }
    statuses.sort();
    assert_eq!(statuses, ["boxoffice=succeeded", "kaiju=failed", "www=succeeded"]);
    assert!(text(&out.stderr).contains("kaiju/production: step app-server/pull failed"), "{}", text(&out.stderr));
    assert_eq!(live(&sb), expected);
}

/// Issue 14: one watcher per service and region in a process. Two bakes at once are described
/// together: DescribeInstances calls name both builders, and nobody polls faster than a tick.
#[test]
fn two_concurrent_bakes_are_watched_in_the_same_describe_calls() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_pending": 2, "agent_registration": 1, "command_duration": 0.5, "instance_stopping": 1})));
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["build", "kaiju", "www", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let builders: Vec<String> = json_out(&out).as_array().unwrap().iter().map(|m| m["builder"]["instance_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(builders.len(), 2);
    let calls = sb.calls();
    let describes: Vec<&Value> = calls["calls"].as_array().unwrap().iter().filter(|c| c["action"] == "DescribeInstances").collect();
    let naming_both = describes
        .iter()
        .filter(|c| {
            let ids: Vec<&str> = c["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
            builders.iter().all(|b| ids.contains(&b.as_str()))
        })
        .count();
    assert!(naming_both >= 2, "DescribeInstances calls naming both builders: {naming_both} of {}", describes.len());
    // Within the process's budget for EC2 (10 describe calls a second by default).
    let times: Vec<f64> = describes.iter().map(|c| c["t"].as_f64().unwrap()).collect();
    let busiest = times.iter().map(|t| times.iter().filter(|u| **u >= *t && **u < t + 1.0).count()).max().unwrap_or(0);
    assert!(busiest <= 10, "{busiest} DescribeInstances calls in one second");
}

/// Issue 14: a throttled describe slows the watcher down (every attempt within the budget, the
/// interval doubling) and fails nobody; once AWS answers again the bake goes on.
#[test]
fn throttled_describes_slow_the_watcher_and_fail_nobody() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_pending": 1})));
    let before = live(&sb);
    sb.control("DELETE", "/_sandbox/calls", None);
    let (mut child, _) = spawn_until(&sb, root, &["build", "kaiju", "--env", "staging"], "launch: i-");
    // Every DescribeInstances refused for six seconds.
    sb.control("POST", "/_sandbox/faults", Some(json!({"faults": [{"service": "ec2", "action": "DescribeInstances", "rate": 1.0, "kind": "throttle"}]})));
    let from = sb.calls()["now"].as_f64().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let to = sb.calls()["now"].as_f64().unwrap();
    sb.control("DELETE", "/_sandbox/faults", None);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let calls = sb.calls();
    let times: Vec<f64> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "DescribeInstances" && c["t"].as_f64().unwrap() >= from && c["t"].as_f64().unwrap() <= to)
        .map(|c| c["t"].as_f64().unwrap())
        .collect();
    // Slowing down: 1, 2, 4 s apart, not the SDK's eight attempts within seconds.
    assert!(!times.is_empty() && times.len() <= 4, "{} DescribeInstances in 6 s of throttling: {times:?}", times.len());
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= 0.9, "{times:?}");
    }
    let after = live(&sb);
    assert!(after.len() > before.len(), "the bake left its products");
}

#[test]
fn a_200_kb_step_is_delivered_in_parts_and_checked() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    // A cookbook step that installs a 200 KB file.
    let big: String = (0..4000).map(|i| format!("line {i:05} of a large configuration file, padded to fifty bytes\n")).collect();
    assert!(big.len() > 200_000);
    std::fs::create_dir_all(root.join("cookbooks/bigfile/steps")).unwrap();
    std::fs::create_dir_all(root.join("cookbooks/bigfile/files")).unwrap();
    std::fs::write(root.join("cookbooks/bigfile/files/big.conf"), &big).unwrap();
    std::fs::write(
        root.join("cookbooks/bigfile/cookbook.toml"),
        "description = \"a large file\"\n[[steps]]\nname = \"install\"\n[[steps]]\nname = \"quotes\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("cookbooks/bigfile/steps/install.sh.hbs"),
        "printf '%s' {{file \"big.conf\"}} | base64 -d | bake_put 0644 /etc/big.conf || true\n",
    )
    .unwrap();
    // 32 KB of script that SendCommand's JSON doubles (every quote escaped): past 64,000 bytes
    // inline, so it too goes in parts.
    let quotes: String = (0..800).map(|_| format!(": \"{}\"\n", "\\\"".repeat(18))).collect();
    assert!(quotes.len() < 48 * 1024 && quotes.len() > 30_000);
    std::fs::write(root.join("cookbooks/bigfile/steps/quotes.sh.hbs"), &quotes).unwrap();
    std::fs::write(
        root.join("roles/big.toml"),
        "description = \"a role with a large step\"\nrun_list = [\"base\", \"bigfile\"]\n[source]\nssm_parameter = \"/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id\"\n[env.staging]\n",
    )
    .unwrap();
    let plan = Project::new(root).plan("big", "staging", &VarInputs::default()).unwrap_or_else(|p| panic!("{p}"));
    let step = plan.steps.iter().find(|s| s.cookbook == "bigfile").unwrap();
    assert!(step.bytes > 200_000);
    let out = bake(&sb, root, &["build", "big", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    let rec = m["steps"].as_array().unwrap().iter().find(|s| s["cookbook"] == "bigfile").unwrap();
    let parts = rec["command_ids"].as_array().unwrap().len();
    assert!(parts >= 6, "delivered in parts: {parts} commands");
    // The parts the builder received reassemble into exactly the rendered step.
    let scripts = sb.scripts(m["builder"]["instance_id"].as_str().unwrap());
    let mut b64 = String::new();
    for s in &scripts {
        let script = s["script"].as_str().unwrap();
        if script.contains("# bake: part ") && script.contains("bigfile/install") {
            let line = script.lines().find(|l| l.starts_with("printf '%s' '")).unwrap();
            b64.push_str(line.split('\'').nth(3).unwrap());
            assert!(script.len() < 48 * 1024);
        }
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), step.script);
    let runner = scripts.iter().map(|s| s["script"].as_str().unwrap()).find(|s| s.contains("# bake: run step bigfile/install")).unwrap();
    assert!(runner.contains(&step.sha256), "the builder checks the sha256 before running");
    let quoted = m["steps"].as_array().unwrap().iter().find(|s| s["step"] == "quotes").unwrap();
    assert!(quoted["command_ids"].as_array().unwrap().len() >= 2, "in parts by its encoded size: {quoted}");
}

#[test]
fn a_slow_instance_profile_is_retried() {
    let sb = Sandbox::start();
    let dir = project_copy();
    sb.control("POST", "/_sandbox/delays", Some(json!({"iam_propagation": 2.5})));
    let out = bake(&sb, dir.path(), &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let by = &sb.calls()["by_action"];
    assert!(by["ec2:RunInstances"].as_u64().unwrap() >= 2, "RunInstances retried: {by}");
}

/// Starts a bake and returns once its output shows `marker`; the bake id and the lines so far.
fn start_until(sb: &Sandbox, root: &Path, marker: &str) -> (Child, String, Vec<String>) {
    let (child, lines) = spawn_until(sb, root, &["build", "kaiju", "--env", "staging", "--force"], marker);
    let id = lines.iter().find_map(|l| l.split("bake b-").nth(1)).map(|rest| format!("b-{}", &rest[..12])).unwrap_or_default();
    (child, id, lines)
}

/// Where to interrupt: a line that shows the stage is under way, and the delays that hold it there.
fn stages() -> Vec<(&'static str, Value, Value)> {
    vec![
        ("launch: i-", json!({"instance_pending": 30}), json!([])),
        ("agent: waiting for the SSM agent", json!({"agent_registration": 30}), json!([])),
        ("provision: docker/engine", json!({}), json!([{"match": "cookbook=docker step=engine", "hang": true}])),
        ("image: ami-", json!({"image_pending": 30}), json!([])),
        ("distribute: copying", json!({"image_pending": 0}), json!([])),
    ]
}

#[test]
fn ctrl_c_at_each_stage_cleans_up_and_exits_130() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    for (marker, delays, outcomes) in stages() {
        sb.control("POST", "/_sandbox/reset", None);
        let base = live(&sb);
        assert_eq!(base, before);
        sb.control("POST", "/_sandbox/delays", Some(delays.clone()));
        sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": outcomes})));
        let (mut child, id, _) = start_until(&sb, root, marker);
        signal(&child, libc::SIGINT);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "at {marker}");
        assert_eq!(live(&sb), before, "Ctrl-C at {marker:?} left something (bake {id})");
        let j = std::fs::read_to_string(root.join(format!(".bake/journal/{id}.jsonl"))).unwrap();
        assert!(j.lines().last().unwrap().contains("\"interrupted\""), "{j}");
    }
}

#[test]
fn sigkill_at_each_stage_then_bake_cleanup_leaves_nothing() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    for (marker, delays, outcomes) in stages() {
        sb.control("POST", "/_sandbox/reset", None);
        sb.control("POST", "/_sandbox/delays", Some(delays.clone()));
        sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": outcomes})));
        let (mut child, id, _) = start_until(&sb, root, marker);
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
        assert_ne!(live(&sb), before, "the crash left resources at {marker:?}");
        sb.control("POST", "/_sandbox/delays", Some(json!({"instance_pending": 0, "agent_registration": 0, "image_pending": 0})));
        let out = bake(&sb, root, &["cleanup", &id]);
        assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(live(&sb), before, "bake cleanup {id} after SIGKILL at {marker:?}");
        // Idempotent: a second replay finds everything done.
        let out = bake(&sb, root, &["cleanup", &id]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

#[test]
fn the_orphan_sweep_finds_what_a_deleted_journal_left() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let first = json_out(&bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]));
    let before = live(&sb);
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=docker step=engine", "hang": true}]})));
    let (mut child, id, _) = start_until(&sb, root, "provision: docker/engine");
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    std::fs::remove_file(root.join(format!(".bake/journal/{id}.jsonl"))).unwrap();
    let left: BTreeSet<String> = live(&sb).difference(&before).cloned().collect();
    assert!(left.iter().any(|r| r.starts_with("instance ")) && left.iter().any(|r| r.starts_with("iam-role ")), "{left:?}");
    // Young orphans are left alone by default (6h); a listing without --yes removes nothing.
    let out = bake(&sb, root, &["cleanup", "--orphans", "--region", "us-east-1"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("no orphans older than 6h"), "{}", text(&out.stdout));
    let out = bake(&sb, root, &["cleanup", "--orphans", "--older-than", "0s", "--region", "us-east-1"]);
    assert!(text(&out.stdout).contains(&format!("(bake {id})")), "{}", text(&out.stdout));
    assert_ne!(live(&sb), before);
    let out = bake(&sb, root, &["cleanup", "--orphans", "--older-than", "0s", "--yes", "--region", "us-east-1"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(live(&sb), before, "orphans removed; the finished bake's image kept ({})", first["images"]["us-east-1"]["ami_id"]);
}

#[test]
fn on_error_abort_keeps_the_builder_and_prints_the_cleanup_command() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    sb.control(
        "POST",
        "/_sandbox/ssm/outcomes",
        Some(json!({"outcomes": [{"match": "cookbook=base step=time", "exit_code": 1, "stderr": "chronyd: bad config\n"}]})),
    );
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--on-error", "abort", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let m = json_out(&out);
    let id = m["bake_id"].as_str().unwrap();
    assert!(text(&out.stderr).contains(&format!("bake cleanup {id}")), "{}", text(&out.stderr));
    let kept = live(&sb);
    assert!(kept.iter().any(|r| r.starts_with("instance ")), "the builder is kept: {kept:?}");
    let out = bake(&sb, root, &["cleanup", id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(live(&sb), before);
}

#[test]
fn a_missing_source_is_a_clear_error_and_creates_nothing() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    edit(root, "roles/kaiju.toml", "/aws/service/canonical/ubuntu/server/22.04/", "/aws/service/canonical/ubuntu/server/20.10/");
    let out = bake(&sb, root, &["bootstrap"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bake = |sb: &Sandbox, root: &Path, args: &[&str]| common::bake_cmd_unprepared(sb, root, args).output().unwrap();
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("source image parameter /aws/service/canonical/ubuntu/server/20.10/") && err.contains("in us-east-1: the parameter does not exist"),
        "{err}"
    );
    assert!(sb.calls()["mutating"].as_array().unwrap().is_empty());
    // Bad configuration: nothing reaches AWS at all.
    sb.control("DELETE", "/_sandbox/calls", None);
    edit(root, "roles/kaiju.toml", "instance_type = \"t3.small\"", "instance_typ = \"t3.small\"");
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("roles/kaiju.toml:9: builder.instance_typ: unknown key"), "{}", text(&out.stderr));
    assert_eq!(sb.calls()["count"], 0);
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_names_the_cleanup_command() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    // The builder takes a long time to terminate, so the first Ctrl-C's cleanup is still running.
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_shutting_down": 60})));
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=base step=ssh", "hang": true}]})));
    let mut child = bake_cmd(&sb, root, &["build", "kaiju", "--env", "staging"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut id = String::new();
    loop {
        let mut l = String::new();
        assert!(reader.read_line(&mut l).unwrap() > 0, "the bake ended early");
        if let Some(rest) = l.split("bake b-").nth(1) {
            id = format!("b-{}", &rest[..12]);
        }
        if l.contains("provision: base/ssh") {
            break;
        }
    }
    signal(&child, libc::SIGINT);
    loop {
        let mut l = String::new();
        assert!(reader.read_line(&mut l).unwrap() > 0, "the bake ended before its cleanup");
        if l.contains("cleanup: removing everything") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "the second Ctrl-C exits at once");
    assert_eq!(out.status.code(), Some(130));
    assert!(text(&out.stderr).contains(&format!("bake cleanup {id}")), "{}", text(&out.stderr));
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_shutting_down": 0})));
    let out = bake(&sb, root, &["cleanup", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(live(&sb), before);
}

/// Two bakes of a role in the same second render the same `{{timestamp}}` name; the second one
/// still bakes, under the name plus its bake id, and the image that had the name is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_name_already_taken_gets_the_bake_id() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let ec2 = aws_sdk_ec2::Client::new(&sb.sdk_config("us-east-1").await);
    // Set-up: what the test creates is used at once (as AWS does not promise).
    sb.control("POST", "/_sandbox/delays", Some(json!({"visibility_lag": 0})));
    // Every name kaiju/staging can render in the next 90 seconds is taken.
    let src = ec2.describe_images().owners("099720109477").send().await.unwrap().images()[0].image_id().unwrap().to_string();
    let r = ec2.run_instances().image_id(&src).min_count(1).max_count(1).send().await.unwrap();
    let instance = r.instances()[0].instance_id().unwrap().to_string();
    let now = std::time::SystemTime::now();
    let mut taken = BTreeSet::new();
    for s in 0..90 {
        let name = format!("kaiju-staging-{}", bake::stages::image::timestamp_at(now + Duration::from_secs(s)));
        let img = ec2.create_image().instance_id(&instance).name(&name).send().await.unwrap();
        taken.insert((name, img.image_id().unwrap().to_string()));
    }
    ec2.terminate_instances().instance_ids(&instance).send().await.unwrap();
    let before = live(&sb);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    let name = m["images"]["us-east-1"]["name"].as_str().unwrap();
    let hex = m["bake_id"].as_str().unwrap().trim_start_matches("b-");
    let base = name.strip_suffix(&format!("-{hex}")).unwrap_or_else(|| panic!("{name} does not end with the bake id"));
    let (_, holder) = taken.iter().find(|(n, _)| n == base).unwrap_or_else(|| panic!("{base} was not a taken name"));
    assert!(text(&out.stderr).contains(&format!("the name is taken by {holder}")), "{}", text(&out.stderr));
    let d = ec2.describe_images().image_ids(holder).send().await.unwrap();
    assert_eq!(d.images()[0].name(), Some(base), "the image that had the name keeps it");
    assert_only_products_added(&sb, &before, &m);
}

/// With `builder.output`, SSM sends each step's whole output to S3 and CloudWatch Logs: the
/// manifest says where, the builder's policy may write exactly there, and what arrived is the
/// whole output, not the API's first 24,000 characters.
#[test]
fn whole_step_output_goes_to_s3_and_cloudwatch_when_the_role_says() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    edit(
        root,
        "roles/kaiju.toml",
        "instance_type = \"t3.small\"",
        "instance_type = \"t3.small\"\noutput = { s3_bucket = \"bake-steps\", log_group = \"/bake/steps\" }",
    );
    let (status, _) = sb.call("PUT", "/bake-steps", None);
    assert_eq!(status, 200, "the bucket (bake does not create it)");
    let policy = bake(&sb, root, &["policy", "builder", "--role", "kaiju", "--env", "staging"]);
    let policy: Value = serde_json::from_slice(&policy.stdout).unwrap();
    let put = policy["Statement"].as_array().unwrap().iter().find(|s| s["Action"] == "s3:PutObject").expect("s3:PutObject");
    assert_eq!(put["Resource"], "arn:aws:s3:::bake-steps/bake/kaiju/staging/*", "only under the role's prefix");
    assert!(policy.to_string().contains("log-group:/bake/steps:*"), "{policy}");
    let plan = text(&bake(&sb, root, &["plan", "kaiju", "--env", "staging"]).stdout);
    assert!(plan.contains("step output: whole, to s3://bake-steps/bake/kaiju/staging/ and CloudWatch Logs /bake/steps"), "{plan}");
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=docker step=engine", "stdout_bytes": 30000}]})));
    let before = live(&sb);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    let engine = m["steps"].as_array().unwrap().iter().find(|s| s["step"] == "engine").unwrap().clone();
    assert_eq!(engine["stdout_truncated"], true);
    let command = engine["command_ids"][0].as_str().unwrap();
    let places: Vec<&str> = engine["full_output"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(places.len(), 4, "{places:?}");
    let s3_stdout =
        places.iter().find(|u| u.starts_with("https://s3.us-east-1.amazonaws.com/bake-steps/bake/kaiju/staging/") && u.ends_with("/stdout")).unwrap();
    assert!(s3_stdout.contains(command));
    let cw_stdout = places.iter().find(|u| u.starts_with("cloudwatch-logs:///bake/steps/") && u.ends_with("/stdout")).unwrap();
    assert!(text(&out.stderr).contains(&format!("docker/engine: whole output at {}", places.join(", "))), "{}", text(&out.stderr));
    let outputs = sb.control("GET", "/_sandbox/ssm/outputs", None)["outputs"].as_array().unwrap().clone();
    for url in [s3_stdout, cw_stdout] {
        let o = outputs.iter().find(|o| o["url"] == *url).unwrap_or_else(|| panic!("{url} not delivered: {outputs:?}"));
        assert_eq!(o["bytes"], 30000, "the whole output: {o}");
        assert_eq!(o["stored"], true, "{o}");
    }
    // Every step's command sent its output there, not only the long one (and the inventory's).
    let steps = m["steps"].as_array().unwrap().len() + 1;
    assert_eq!(outputs.iter().filter(|o| o["stream"] == "stdout" && o["url"].as_str().unwrap().starts_with("https://")).count(), steps);
    assert_only_products_added(&sb, &before, &m);
}

#[test]
fn what_cleanup_leaves_after_a_good_bake_is_named_and_exits_1() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    // The image is made; then IAM refuses to delete the builder's role.
    sb.control("POST", "/_sandbox/faults", Some(json!({"faults": [{"service": "iam", "action": "DeleteRole", "rate": 1.0, "kind": "denied"}]})));
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    sb.control("DELETE", "/_sandbox/faults", None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let m = json_out(&out);
    let id = m["bake_id"].as_str().unwrap();
    assert_eq!(m["status"], "leftovers");
    let left = m["leftovers"].as_array().unwrap();
    assert!(left.len() == 1 && left[0].as_str().unwrap().contains(&format!("role bake-{id}")), "{left:?}");
    assert!(
        err.contains(&format!("bake cleanup {id}")) && err.contains(&format!("left: IAM role bake-{id} (global): iam:DeleteRole on role bake-{id}")),
        "{err}"
    );
    // The image is good; `bake cleanup ID` finishes the rest, and leaves the image.
    for _ in 0..2 {
        let out = bake(&sb, root, &["cleanup", id]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_only_products_added(&sb, &before, &m);
    }
    // An id this project never saw, with nothing tagged with it: said so, exit 1.
    let out = bake(&sb, root, &["cleanup", "b-000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("bake b-000000000000: no journal in"), "{}", text(&out.stderr));
}

#[test]
fn a_second_bake_of_a_role_waits_for_the_first_then_reuses_its_image() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    // Hold the first bake in its steps for a while.
    sb.control("POST", "/_sandbox/delays", Some(json!({"command_duration": 0.5})));
    let (first, _) = spawn_until(&sb, root, &["build", "kaiju", "--env", "staging", "--manifest", "first.json"], "started (journal");
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--no-wait"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("kaiju/staging is being changed here already: bake build kaiju/staging (pid "), "{err}");
    // Without --no-wait it waits, saying for whom, then finds the first one's image.
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("waiting for bake build kaiju/staging (pid"), "{}", text(&out.stderr));
    let m = json_out(&out);
    let f: Value = serde_json::from_str(&std::fs::read_to_string(root.join("first.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "reused");
    assert_eq!(m["images"]["us-east-1"]["ami_id"], f["images"]["us-east-1"]["ami_id"]);
}

#[test]
fn a_builder_lost_mid_step_fails_the_bake_at_once_and_leaves_nothing() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let before = live(&sb);
    // A long first step, during which EC2 reclaims the (Spot) builder.
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=base step=updates", "duration": 600}]})));
    let (child, _) = spawn_until(&sb, root, &["build", "kaiju", "--env", "staging"], "base/updates");
    let builder = sb.live().iter().find(|r| r["type"] == "instance").map(|r| r["id"].as_str().unwrap().to_string()).expect("the builder");
    let t = Instant::now();
    sb.control("POST", "/_sandbox/interrupt", Some(json!({"instance": builder, "action": "terminate", "region": "us-east-1"})));
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(60), "noticed at once, not at the step's timeout: {:?}", t.elapsed());
    assert!(
        err.contains(&format!("builder {builder} in us-east-1 was terminated (Server.SpotInstanceTermination")) && err.contains("during step base/updates"),
        "{err}"
    );
    assert_eq!(live(&sb), before, "everything the bake made is gone");
}

/// A role that bakes two architectures (`[architectures]`): one bake each, at once, on an
/// instance type of its architecture, each image tagged `bake:arch` and published under its own
/// parameter; a rerun reuses both. The sandbox, like EC2, refuses an instance type that cannot
/// run the source image's architecture.
#[test]
fn a_role_with_two_architectures_bakes_an_image_for_each() {
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let x86 = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp3/ami-id";
    let arm = "/aws/service/canonical/ubuntu/server/22.04/stable/current/arm64/hvm/ebs-gp3/ami-id";
    edit(
        root,
        "roles/kaiju.toml",
        &format!("[source]\nssm_parameter = \"{x86}\"\n"),
        &format!("[architectures.x86_64]\nsource = {{ ssm_parameter = \"{x86}\" }}\n\n[architectures.arm64]\nsource = {{ ssm_parameter = \"{arm}\" }}\ninstance_type = \"t4g.small\"\n"),
    );
    edit(root, "roles/kaiju.toml", "name = \"kaiju-{{env}}-{{timestamp}}\"", "name = \"kaiju-{{env}}-{{arch}}-{{timestamp}}\"");
    let plan = bake(&sb, root, &["plan", "kaiju", "--env", "staging"]);
    let plan_text = text(&plan.stdout);
    assert!(plan_text.contains("Plan for role kaiju in env staging, architecture arm64"), "{plan_text}");
    assert!(plan_text.contains("published:   /bake/kaiju/staging/arm64/ami-id"), "{plan_text}");
    // The operator may publish both parameters (and launch both sources).
    let policy = text(&bake(&sb, root, &["policy", "operator", "--role", "kaiju", "--env", "staging"]).stdout);
    for a in ["x86_64", "arm64"] {
        assert!(policy.contains(&format!("parameter/bake/kaiju/staging/{a}/ami-id")), "{a}: {policy}");
    }
    let before = live(&sb);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ms = json_out(&out);
    let ms = ms.as_array().unwrap();
    assert_eq!(ms.len(), 2);
    let mut expected = before.clone();
    for m in ms {
        let arch = m["arch"].as_str().unwrap();
        assert_eq!(m["status"], "succeeded", "{m}");
        assert_eq!(m["builder"]["instance_type"], if arch == "arm64" { "t4g.small" } else { "t3.small" }, "{m}");
        assert_eq!(m["parameters"][0]["name"], format!("/bake/kaiju/staging/{arch}/ami-id"), "{m}");
        let ami = m["images"]["us-east-1"]["ami_id"].as_str().unwrap();
        let all = describe(&sb, "");
        let img = all.as_array().unwrap().iter().find(|i| i["id"] == ami).unwrap();
        assert_eq!(img["architecture"], arch, "{img}");
        assert_eq!(img["tags"]["bake:arch"], arch, "{img}");
        assert!(img["name"].as_str().unwrap().starts_with(&format!("kaiju-staging-{arch}-")), "{img}");
        expected.extend(products(m));
    }
    assert_ne!(ms[0]["bake_id"], ms[1]["bake_id"], "each architecture is its own bake");
    assert_ne!(ms[0]["fingerprint"], ms[1]["fingerprint"], "the architecture is part of the fingerprint");
    assert_eq!(live(&sb), expected, "exactly the two bakes' products were added");
    let again = json_out(&bake(&sb, root, &["build", "kaiju", "--env", "staging", "--output", "json"]));
    assert!(again.as_array().unwrap().iter().all(|m| m["status"] == "reused"), "{again}");

    // A patch is of one architecture, from that architecture's newest image.
    let out = bake(&sb, root, &["patch", "kaiju", "--env", "staging", "--packages", "openssl"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("bakes x86_64, arm64: give --arch"), "{}", text(&out.stderr));
    let arm_image = ms.iter().find(|m| m["arch"] == "arm64").unwrap()["images"]["us-east-1"]["ami_id"].as_str().unwrap().to_string();
    let out = bake(&sb, root, &["patch", "kaiju", "--env", "staging", "--arch", "arm64", "--packages", "openssl", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let p = json_out(&out);
    assert_eq!((p["arch"].as_str(), p["patch"]["parent"].as_str()), (Some("arm64"), Some(arm_image.as_str())), "{p}");
    assert_eq!(p["builder"]["instance_type"], "t4g.small", "{p}");

    // A mislabelled source (the amd64 image under architectures.arm64) is refused before anything
    // is created: its image would be published as arm64.
    edit(
        root,
        "roles/kaiju.toml",
        &format!("source = {{ ssm_parameter = \"{arm}\" }}\ninstance_type = \"t4g.small\""),
        &format!("source = {{ ssm_parameter = \"{x86}\" }}\ninstance_type = \"t3.small\""),
    );
    let before = live(&sb);
    sb.control("DELETE", "/_sandbox/calls", None);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("kaiju/staging (arm64): source image") && text(&out.stderr).contains("is x86_64, not arm64"), "{}", text(&out.stderr));
    assert_eq!(live(&sb), before, "nothing created");
    edit(
        root,
        "roles/kaiju.toml",
        &format!("source = {{ ssm_parameter = \"{x86}\" }}\ninstance_type = \"t3.small\""),
        &format!("source = {{ ssm_parameter = \"{arm}\" }}\ninstance_type = \"t4g.small\""),
    );

    // An arm64 source on an x86_64 builder: EC2 refuses the launch, and the bake fails cleanly.
    edit(root, "roles/kaiju.toml", "instance_type = \"t4g.small\"\n", "instance_type = \"t3.small\"\n");
    let before = live(&sb);
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not match the architecture 'arm64' of the specified AMI"), "{}", text(&out.stderr));
    let after = live(&sb);
    assert!(
        after.len() >= before.len()
            && after.iter().all(|r| before.contains(r) || r.starts_with("image ") || r.starts_with("snapshot ") || r.starts_with("ssm-parameter ")),
        "only the x86_64 bake's products: {after:?}"
    );
}

/// The way the shipped container runs bake (deploy/ecs/Dockerfile): as uid 1000, the project
/// folder read-only (root's). Without a state folder bake stops before any AWS call, saying how
/// to give it one, and nothing is created; with BAKE_STATE_DIR (as the image sets it) it bakes,
/// its journal there, and nothing is written into the project.
#[test]
fn bake_runs_as_the_container_runs_it_non_root_with_a_read_only_project() {
    use std::process::Command;
    let sb = Sandbox::start();
    let dir = project_copy();
    let root = dir.path();
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bake");
    std::fs::copy(env!("CARGO_BIN_EXE_bake"), &bin).unwrap();
    let state = work.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let sh = |args: &[&str]| assert!(Command::new(args[0]).args(&args[1..]).status().unwrap().success(), "{args:?}");
    let is_root = text(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0";
    // The administrator's one-time set-up, then: everyone may read the project, nobody writes it.
    let out = common::bake_cmd_unprepared(&sb, root, &["bootstrap"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    sh(&["chmod", "755", work.path().to_str().unwrap()]);
    sh(&["chmod", "-R", "a+rX,a-w", root.to_str().unwrap()]);
    if is_root {
        sh(&["chown", "1000:1000", state.to_str().unwrap()]);
    }
    let run = |state_dir: Option<&Path>, args: &[&str]| -> Output {
        let mut cmd = if is_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=1000", "--regid=1000", "--clear-groups", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        cmd.arg("--root").arg(root).args(args).current_dir(root);
        for (k, _) in std::env::vars() {
            if k.starts_with("BAKE_") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in sb.env() {
            cmd.env(k, v);
        }
        cmd.env("HOME", work.path());
        if let Some(d) = state_dir {
            cmd.env("BAKE_STATE_DIR", d);
        }
        cmd.output().unwrap()
    };
    let before = live(&sb);
    let out = run(None, &["build", "kaiju", "--env", "staging"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Permission denied") && err.contains("BAKE_STATE_DIR") && err.lines().count() == 1, "{err}");
    assert_eq!(live(&sb), before, "nothing was created");
    let out = run(Some(&state), &["build", "kaiju", "--env", "staging", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let m = json_out(&out);
    assert_only_products_added(&sb, &before, &m);
    assert!(state.join("journal").join(format!("{}.jsonl", m["bake_id"].as_str().unwrap())).exists(), "the journal is in the state folder");
    assert!(!root.join(".bake").exists(), "nothing written into the project");
    sh(&["chmod", "-R", "u+w", root.to_str().unwrap()]);
}

/// The sandbox's S3 (signed, as every object call must be): reads an object's status, writes one.
struct S3 {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl S3 {
    fn new(sb: &Sandbox) -> S3 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conf = rt.block_on(sb.sdk_config("us-east-1"));
        S3 { rt, client: aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&conf).force_path_style(true).build()) }
    }
    fn exists(&self, bucket: &str, key: &str) -> bool {
        self.rt.block_on(self.client.head_object().bucket(bucket).key(key).send()).is_ok()
    }
    fn put(&self, bucket: &str, key: &str, body: &Value) {
        self.rt.block_on(self.client.put_object().bucket(bucket).key(key).body(body.to_string().into_bytes().into()).send()).unwrap();
    }
    fn delete(&self, bucket: &str, key: &str) {
        self.rt.block_on(self.client.delete_object().bucket(bucket).key(key).send()).unwrap();
    }
    fn get(&self, bucket: &str, key: &str) -> Value {
        let o = self.rt.block_on(self.client.get_object().bucket(bucket).key(key).send()).unwrap();
        serde_json::from_slice(&self.rt.block_on(o.body.collect()).unwrap().into_bytes()).unwrap()
    }
}

/// A project whose state is shared in the sandbox's S3 (`bake.toml [state]`), with a short lease.
fn share_state(root: &Path, bucket: &str) {
    std::fs::write(root.join("bake.toml"), format!("[state]\ns3 = \"s3://{bucket}/team\"\nlease = \"3s\"\n")).unwrap();
}

/// Team state in S3, three folders standing for three machines: two runners baking one role at
/// once (one bakes, the other waits, saying who holds the lock, then reuses the image); a runner
/// killed with SIGKILL (the next run takes the lock over once its lease ends, and `bake cleanup`
/// of the dead bake works from a third folder whose local state never saw it, the first folder's
/// `.bake/` deleted); `bake ls --history` from anywhere. Nothing is left but products.
#[test]
fn shared_state_one_lock_for_every_folder_a_lease_for_the_dead_and_a_journal_anyone_can_replay() {
    let sb = Sandbox::start();
    let (status, _) = sb.call("PUT", "/bake-state", None);
    assert_eq!(status, 200, "the state bucket");
    let (a, b, c) = (project_copy(), project_copy(), project_copy());
    for d in [&a, &b, &c] {
        share_state(d.path(), "bake-state");
    }
    let before = live(&sb);
    sb.control("POST", "/_sandbox/delays", Some(json!({"command_duration": 0.5})));
    let (first, _) = spawn_until(&sb, a.path(), &["build", "kaiju", "--env", "staging", "--manifest", "first.json"], "started (journal");
    let out = bake(&sb, b.path(), &["build", "kaiju", "--env", "staging", "--no-wait"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("kaiju/staging is being changed already: bake build kaiju/staging by ") && err.contains("(pid "), "{err}");
    let out = bake(&sb, b.path(), &["build", "kaiju", "--env", "staging", "--output", "json"]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("waiting for bake build kaiju/staging by "), "{}", text(&out.stderr));
    let f: Value = serde_json::from_str(&std::fs::read_to_string(a.path().join("first.json")).unwrap()).unwrap();
    let m = json_out(&out);
    assert_eq!((m["status"].as_str(), &m["images"]["us-east-1"]["ami_id"]), (Some("reused"), &f["images"]["us-east-1"]["ami_id"]));
    sb.control("POST", "/_sandbox/delays", Some(json!({"command_duration": 0})));

    // A runner dies mid-bake, its local state with it.
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=base step=updates", "duration": 600}]})));
    let (mut dead, lines) = spawn_until(&sb, a.path(), &["build", "kaiju", "--env", "staging", "--force"], "base/updates");
    let id = lines.iter().find_map(|l| l.split("bake b-").nth(1)).map(|rest| format!("b-{}", &rest[..12])).unwrap();
    // While it runs, another machine's orphan sweep leaves its resources alone: its shared
    // journal names the process that holds the lock. Its history record says it runs.
    let sweep = |dir: &Path| {
        let out = bake(&sb, dir, &["cleanup", "--orphans", "--older-than", "0s", "--region", "us-east-1", "--output", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        json_out(&out)
    };
    let status_of = |dir: &Path| {
        let out = bake(&sb, dir, &["ls", "--history", "--output", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let h = json_out(&out);
        h.as_array().unwrap().iter().find(|r| r["manifest"]["bake_id"] == id.as_str()).map(|r| r["manifest"]["status"].clone()).unwrap_or_default()
    };
    let s = sweep(b.path());
    let skipped = s["skipped"].as_array().unwrap();
    assert!(skipped.iter().any(|r| r["type"] == "instance" && r["why"].as_str().unwrap().contains(&format!("bake {id} is still running on "))), "{s}");
    assert!(s["orphans"].as_array().unwrap().iter().all(|o| o["bake_id"] != id.as_str()), "{s}");
    assert_eq!(status_of(c.path()), "running");
    let lock = S3::new(&sb).get("bake-state", "team/locks/kaiju/staging.json");
    assert_eq!(lock["bake_id"], id.as_str(), "the lock names the bake that holds it: {lock}");
    assert_eq!(lock["lease_secs"], 3, "and its lease: {lock}");
    signal(&dead, libc::SIGKILL);
    dead.wait().unwrap();
    std::fs::remove_dir_all(a.path().join(".bake")).unwrap();
    sb.control("DELETE", "/_sandbox/ssm/outcomes", None);
    // Another runner waits for the lease to end, then takes the lock over.
    let t = Instant::now();
    let out = bake(&sb, b.path(), &["build", "kaiju", "--env", "staging", "--force", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("took over the lock s3://bake-state/team/locks/kaiju/staging.json"), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    let second = json_out(&out);
    // Its lease over, the dead bake is an orphan to any machine, and unfinished in the history.
    let s = sweep(b.path());
    assert!(s["orphans"].as_array().unwrap().iter().any(|o| o["bake_id"] == id.as_str() && o["type"] == "instance"), "{s}");
    assert_eq!(status_of(c.path()), "unfinished");
    // The dead bake, cleaned up from a folder that never saw it: its journal is in S3.
    assert!(!c.path().join(".bake").exists());
    let out = bake(&sb, c.path(), &["cleanup", &id]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("removed instance"), "{}", text(&out.stdout));
    let mut expected = before.clone();
    expected.extend(products(&f));
    expected.extend(products(&second));
    assert_eq!(live(&sb), expected, "only the two bakes' products are left");
    // The history, from any folder: every bake, who ran it, from where.
    let out = bake(&sb, c.path(), &["ls", "--history", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let h = json_out(&out);
    let ids: Vec<&str> = h.as_array().unwrap().iter().map(|r| r["manifest"]["bake_id"].as_str().unwrap_or_default()).collect();
    assert!(ids.contains(&f["bake_id"].as_str().unwrap()) && ids.contains(&second["bake_id"].as_str().unwrap()), "{h}");
    assert!(h.as_array().unwrap().iter().all(|r| !r["by"]["host"].as_str().unwrap_or_default().is_empty()), "{h}");
    assert_eq!(status_of(c.path()), "cleaned");
    // Inventories are shared too: a folder that baked nothing audits the team's images.
    let out = bake(&sb, c.path(), &["audit", "openssl<3.0.13", "--region", "us-east-1", "--output", "json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let r = json_out(&out);
    assert!(r["unknown"].as_array().unwrap().is_empty() && !r["affected"].as_array().unwrap().is_empty(), "{r}");
    // Ctrl-C releases the lock at once: the object is gone, nothing made is left.
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=base step=updates", "duration": 600}]})));
    let (child, _) = spawn_until(&sb, a.path(), &["build", "kaiju", "--env", "staging", "--force"], "base/updates");
    let s3 = S3::new(&sb);
    assert!(s3.exists("bake-state", "team/locks/kaiju/staging.json"), "held while it runs");
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(!s3.exists("bake-state", "team/locks/kaiju/staging.json"), "released");
    sb.control("DELETE", "/_sandbox/ssm/outcomes", None);
    assert_eq!(live(&sb), expected, "the interrupted bake left nothing");
}

/// A lease is judged on S3's clock, never the holder's: a lock whose writer's clock ran behind
/// (its `expires` long past) holds while it is renewed, and one whose writer's clock ran ahead
/// (`expires` in 2100) ends a lease after S3 last saw it written. Every exit path releases it,
/// a failure included.
#[test]
fn a_shared_lease_is_judged_on_s3s_clock_not_the_holders() {
    let sb = Sandbox::start();
    assert_eq!(sb.call("PUT", "/bake-state", None).0, 200);
    let dir = project_copy();
    let root = dir.path();
    share_state(root, "bake-state");
    // A source that does not exist: the bake fails right after taking the lock.
    edit(root, "roles/kaiju.toml", "/aws/service/canonical/ubuntu/server/22.04/", "/aws/service/canonical/ubuntu/server/20.10/");
    let (s3, lock) = (S3::new(&sb), "team/locks/kaiju/staging.json");
    let holder = |expires: u64| json!({"owner": "ops", "host": "skewed", "pid": 7, "command": "bake build kaiju/staging", "since": "2026-12-02T00:00:00Z", "expires": expires, "lease_secs": 3});
    s3.put("bake-state", lock, &holder(0));
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--no-wait"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("kaiju/staging is being changed already: bake build kaiju/staging by ops on skewed (pid 7)"), "{err}");
    s3.put("bake-state", lock, &holder(4_102_444_800));
    std::thread::sleep(Duration::from_secs(5));
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--no-wait"]);
    let err = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("took over the lock s3://bake-state/team/locks/kaiju/staging.json from bake build kaiju/staging by ops on skewed"), "{err}");
    assert!(err.contains("the parameter does not exist"), "{err}");
    assert!(!s3.exists("bake-state", lock), "released when the bake failed");
    // The holder's lease, not the reader's: a holder with an hour's lease, last written 5 s ago,
    // still holds the lock for a reader whose bake.toml says 3 s. What it wrote is printed on one
    // line, control characters escaped.
    let mut long = holder(0);
    long["lease_secs"] = json!(3600);
    long["owner"] = json!("ops\u{1b}[31m\nfake: line");
    s3.put("bake-state", lock, &long);
    std::thread::sleep(Duration::from_secs(5));
    let out = bake(&sb, root, &["build", "kaiju", "--env", "staging", "--no-wait"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is being changed already: bake build kaiju/staging by ops\\u{1b}[31m fake: line on skewed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A state bucket bake cannot use stops it before anything is created, in one line.
#[test]
fn an_unusable_state_bucket_stops_bake_before_anything_is_created() {
    let sb = Sandbox::start();
    let dir = project_copy();
    share_state(dir.path(), "no-such-bucket");
    let before = live(&sb);
    let out = bake(&sb, dir.path(), &["build", "kaiju", "--env", "staging"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the state bucket s3://no-such-bucket/team/ (bake.toml: state.s3) cannot be used") && err.contains("NoSuchBucket"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(live(&sb), before, "nothing was created");
}

/// Two writers of one journal at once (a bake and a `bake cleanup` of it, say): every entry lands
/// in its own object, none is overwritten.
#[test]
fn concurrent_journal_writers_never_overwrite_an_entry() {
    use bake::journal::{BakeId, Entry, Journal, Kind, Resource};
    let sb = Sandbox::start();
    let (status, _) = sb.call("PUT", "/journals", None);
    assert_eq!(status, 200);
    for (k, v) in sb.env() {
        std::env::set_var(k, v);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let spec = bake::config::state::StateSpec {
        bucket: "journals".into(),
        prefix: "t".into(),
        region: Some("us-east-1".into()),
        kms_key_id: None,
        lease: Duration::from_secs(10),
    };
    let r = rt.block_on(async {
        let aws = bake::aws::Aws::load(&bake::aws::Connection::default()).await;
        bake::remote::init(&aws, &spec).await.unwrap()
    });
    let id = BakeId::new();
    let writers: Vec<std::thread::JoinHandle<Vec<String>>> = (0..2)
        .map(|w| {
            let id = id.clone();
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                bake::journal::set_state_dir(dir.path().to_path_buf());
                let mut j = Journal::create(dir.path(), &id).unwrap();
                let mut wrote = Vec::new();
                for i in 0..15 {
                    let e = Entry::Created { resource: Resource::new(Kind::Image, format!("ami-{w}{i:02}"), "us-east-1"), at: "2026-12-02T00:00:00Z".into() };
                    j.append(&e).unwrap();
                    wrote.push(serde_json::to_string(&e).unwrap());
                }
                wrote
            })
        })
        .collect();
    let mut wrote: Vec<String> = writers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let mut stored = rt.block_on(r.journal_lines(id.as_str())).unwrap();
    wrote.sort();
    stored.sort();
    assert_eq!(stored, wrote, "every entry of both writers, each once");
}

/// A run whose shared lock is no longer its own (removed by hand here; taken over after a lease it
/// missed, a laptop asleep) stops as on Ctrl-C — exit 130, what it made cleaned up — and says why:
/// two runs never change one role and env at once.
#[test]
fn a_run_that_loses_its_shared_lock_stops_and_cleans_up() {
    let sb = Sandbox::start();
    let (status, _) = sb.call("PUT", "/bake-state", None);
    assert_eq!(status, 200);
    let dir = project_copy();
    share_state(dir.path(), "bake-state");
    let before = live(&sb);
    sb.control("POST", "/_sandbox/ssm/outcomes", Some(json!({"outcomes": [{"match": "cookbook=base step=updates", "duration": 600}]})));
    let (child, _) = spawn_until(&sb, dir.path(), &["build", "kaiju", "--env", "staging"], "base/updates");
    let s3 = S3::new(&sb);
    s3.delete("bake-state", "team/locks/kaiju/staging.json");
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("is no longer this run's (someone else changed or removed it); stopping as on Ctrl-C"), "{err}");
    assert_eq!(live(&sb), before, "what it made is gone");
    // Lost while a Ctrl-C's cleanup runs: the cleanup finishes (it is not a second Ctrl-C).
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_shutting_down": 3})));
    let (child, _) = spawn_until(&sb, dir.path(), &["build", "kaiju", "--env", "staging"], "base/updates");
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    s3.delete("bake-state", "team/locks/kaiju/staging.json");
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(!err.contains("left behind"), "{err}");
    assert_eq!(live(&sb), before, "the cleanup finished");
    // A second Ctrl-C exits at once, and releases the shared lock on its way out.
    sb.control("POST", "/_sandbox/delays", Some(json!({"instance_shutting_down": 0})));
    let (child, lines) = spawn_until(&sb, dir.path(), &["build", "kaiju", "--env", "staging"], "base/updates");
    let id = lines.iter().find_map(|l| l.split("bake b-").nth(1)).map(|rest| format!("b-{}", &rest[..12])).unwrap();
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("left behind; finish with: bake cleanup {id}")), "{}", text(&out.stderr));
    assert!(!S3::new(&sb).exists("bake-state", "team/locks/kaiju/staging.json"), "released");
    let out = bake(&sb, dir.path(), &["cleanup", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(live(&sb), before);
}
