//! The configuration a team writes, and the commands that need no AWS: validate, plan, render,
//! policy. Bad input, fingerprints, rendering, injection.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use bake::config::{Project, VarInputs};
use common::{bake, project_copy, repo, text};
use serde::Deserialize;

#[derive(Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    replace: Vec<(String, String, String)>,
    #[serde(default)]
    write: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    expect: String,
}

fn apply(root: &Path, case: &Case) {
    for path in &case.remove {
        let p = root.join(path);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    for (path, content) in &case.write {
        std::fs::write(root.join(path), content).unwrap();
    }
    for (file, from, to) in &case.replace {
        let p = root.join(file);
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from.as_str()), "case {:?}: {file} does not contain {from:?}", case.name);
        std::fs::write(&p, s.replacen(from.as_str(), to, 1)).unwrap();
    }
}

#[test]
fn bad_input_gets_one_clear_line_and_nothing_else() {
    let corpus: Corpus = toml::from_str(&std::fs::read_to_string(repo().join("tests/corpus/bad_input.toml")).unwrap()).unwrap();
    let mut failures = Vec::new();
    for case in &corpus.case {
        let dir = project_copy();
        apply(dir.path(), case);
        let args: Vec<&str> = if case.args.is_empty() { vec!["plan", "boxoffice", "--env", "staging"] } else { case.args.iter().map(String::as_str).collect() };
        let out = bake(dir.path(), &args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let validate = args[0] == "validate";
        // validate reports on stdout; every other command prints nothing there on bad input.
        let report = if validate { &stdout } else { &stderr };
        let lines: Vec<&str> = report.lines().filter(|l| !l.contains("problem(s) found")).collect();
        let ok = out.status.code() == Some(1)
            && (validate || stdout.is_empty())
            && (1..=3).contains(&lines.len())
            && lines.iter().all(|l| validate || l.starts_with("error: "))
            && lines.iter().any(|l| l.contains(&case.expect))
            && !stderr.contains("panicked");
        if !ok {
            failures.push(format!(
                "case {:?}: exit {:?}\n  expected one line with: {}\n  stdout: {stdout}\n  stderr: {stderr}",
                case.name,
                out.status.code(),
                case.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), corpus.case.len(), failures.join("\n"));
}

#[test]
fn validate_reports_every_problem_at_once() {
    let dir = project_copy();
    let root = dir.path();
    let edit = |f: &str, from: &str, to: &str| {
        let p = root.join(f);
        let s = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
    };
    edit("roles/boxoffice.toml", "instance_type = \"t3.medium\"", "instance_typo = \"t3.medium\"");
    edit("roles/boxoffice.toml", "[rollout]", "[rollout]\ncanary = true");
    edit("roles/www.toml", "\"docker\", ", "\"dockr\", ");
    edit("cookbooks/base/steps/ssh.sh.hbs", "{{attr.ssh.port}}", "{{attr.ssh.prot}}");
    let out = bake(root, &["validate", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let texts: Vec<String> = report["problems"].as_array().unwrap().iter().map(|p| p["text"].as_str().unwrap().to_string()).collect();
    let want = [
        "roles/boxoffice.toml:10: builder.instance_typo: unknown key",
        "rollout.canary: unknown key",
        "roles/www.toml:22: attributes.docker: no cookbook `docker` in the run list (base, dockr, app-server)",
        "cookbooks/base/steps/ssh.sh.hbs:2: `attr.ssh.prot` is not set",
    ];
    for w in want {
        assert!(texts.iter().any(|t| t.contains(w)), "missing {w:?} in {texts:#?}");
    }
    // One problem per cause, even though several roles and envs hit the same template.
    let ssh = texts.iter().filter(|t| t.contains("attr.ssh.prot")).count();
    assert!((1..=3).contains(&ssh), "{texts:#?}");
}

#[test]
fn validate_passes_on_the_examples() {
    let out = bake(&repo(), &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: 3 role(s) in 6 env(s), 4 cookbook(s)"));
}

fn plan_json(root: &Path, role: &str, env: &str) -> (String, serde_json::Value) {
    let out = bake(root, &["plan", role, "--env", env, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let v = serde_json::from_str(&s).unwrap();
    (s, v)
}

#[test]
fn plan_is_byte_identical_for_the_same_inputs() {
    let a = plan_json(&repo(), "boxoffice", "production").0;
    let b = plan_json(&repo(), "boxoffice", "production").0;
    assert_eq!(a, b);
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(v["source"]["ssm_parameter"]["name"], "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id");
    assert_eq!(v["builder"]["instance_type"], "c6i.large", "the production overlay wins");
    assert_eq!(v["builder"]["root_volume_size"], 16, "the base stays where the overlay is silent");
    assert_eq!(v["image"]["regions"], serde_json::json!(["us-west-2", "eu-west-1"]));
    assert_eq!(v["image"]["ssm_parameter"], "/bake/boxoffice/production/ami-id");
    assert_eq!(v["rollout"]["canaries"], serde_json::json!(["boxoffice_production_canary"]));
    assert_eq!(v["rollout"]["patch_refresh"]["min_healthy_percentage"], 50);
    let steps: Vec<String> =
        v["steps"].as_array().unwrap().iter().map(|s| format!("{}/{}", s["cookbook"].as_str().unwrap(), s["step"].as_str().unwrap())).collect();
    assert_eq!(steps.first().map(String::as_str), Some("base/updates"));
    assert_eq!(steps.last().map(String::as_str), Some("app-server/unit"));
    assert_eq!(steps.len(), 14);
    assert!(v["steps"][0]["sha256"].as_str().unwrap().len() == 64);
    assert!(v["fingerprint"].as_str().unwrap().starts_with("sha256:"));
}

fn fingerprint(root: &Path, role: &str, env: &str, vars: &VarInputs) -> String {
    Project::new(root).plan(role, env, vars).unwrap().fingerprint
}

#[test]
fn fingerprint_follows_content_and_only_content() {
    let dir = project_copy();
    let root = dir.path();
    let none = VarInputs::default();
    let base = fingerprint(root, "www", "staging", &none);
    assert_eq!(base, fingerprint(root, "www", "staging", &none), "stable");
    assert_ne!(base, fingerprint(root, "www", "production", &none), "another env renders other scripts");

    let edit = |f: &str, from: &str, to: &str| {
        let p = root.join(f);
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "{f} lacks {from}");
        std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
    };
    // Not content: tags, regions, shares, names, timeouts, rollout, instance type.
    edit("roles/www.toml", "tags = { team = \"web\", app = \"www\" }", "tags = { team = \"platform\" }\nregions = [\"eu-west-1\"]");
    edit(
        "roles/www.toml",
        "instance_type = \"t3.medium\"",
        "instance_type = \"m7i.large\"\nstep_timeout = \"1h\"\noutput = { s3_bucket = \"bake-logs\", log_group = \"/bake/steps\" }",
    );
    edit("roles/www.toml", "name = \"www-{{env}}-{{timestamp}}\"", "name = \"web-{{env}}-{{timestamp}}\"");
    edit("roles/www.toml", "rollout = { groups = [\"www_production\"], concurrency = 2 }", "rollout = { groups = [\"www_prod\"] }");
    assert_eq!(base, fingerprint(root, "www", "staging", &none), "non-content changes keep the fingerprint");

    // Content: an attribute, a script, a file, the source, the volume, a variable.
    let mut seen = vec![base.clone()];
    let mut changed = |what: &str, fp: String| {
        assert!(!seen.contains(&fp), "{what} must change the fingerprint");
        seen.push(fp);
    };
    edit("roles/www.toml", "data-root = \"/mnt/docker\"", "data-root = \"/mnt/docker2\"");
    changed("an attribute", fingerprint(root, "www", "staging", &none));
    edit("cookbooks/base/steps/logs.sh.hbs", "max_use=", "# a comment\nmax_use=");
    changed("a script", fingerprint(root, "www", "staging", &none));
    std::fs::write(root.join("cookbooks/base/files/bake-aws-curl"), "#!/bin/sh\necho changed\n").unwrap();
    changed("a delivered file", fingerprint(root, "www", "staging", &none));
    edit("roles/www.toml", "architecture = \"x86_64\"", "architecture = \"arm64\"");
    changed("the source", fingerprint(root, "www", "staging", &none));
    edit("roles/www.toml", "root_volume_size = 20", "root_volume_size = 30");
    changed("the root volume", fingerprint(root, "www", "staging", &none));
    let flags = VarInputs { flags: vec![("app_tag".into(), "v2".into())], ..Default::default() };
    assert_eq!(fingerprint(root, "www", "staging", &flags), *seen.last().unwrap(), "an unused variable changes nothing");
    let bx = fingerprint(root, "boxoffice", "staging", &none);
    assert_ne!(bx, fingerprint(root, "boxoffice", "staging", &flags), "a used variable is content");
}

#[test]
fn variables_follow_their_precedence() {
    let dir = project_copy();
    let root = dir.path();
    std::fs::write(root.join("one.toml"), "app_tag = \"from-file-1\"\n").unwrap();
    std::fs::write(root.join("two.toml"), "app_tag = \"from-file-2\"\n").unwrap();
    let tag_of = |args: &[&str], env: &[(&str, &str)]| -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bake"));
        cmd.current_dir(root); // --var-file paths are relative to where bake runs
        cmd.arg("--root").arg(root).args(["render", "boxoffice", "--env", "staging", "--step", "app-server/pull"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let s = text(&out.stdout);
        s.lines().find_map(|l| l.strip_prefix("tag=")).unwrap().to_string()
    };
    assert_eq!(tag_of(&[], &[]), "latest", "the role's default");
    assert_eq!(tag_of(&[], &[("BAKE_VAR_app_tag", "from-env")]), "from-env");
    assert_eq!(tag_of(&["--var-file", "one.toml"], &[("BAKE_VAR_app_tag", "from-env")]), "from-file-1");
    assert_eq!(tag_of(&["--var-file", "one.toml", "--var-file", "two.toml"], &[]), "from-file-2");
    assert_eq!(tag_of(&["--var-file", "two.toml", "--var", "app_tag=from-flag"], &[("BAKE_VAR_app_tag", "e")]), "from-flag");
}

/// Every step of every example role renders, passes `bash -n` and shellcheck.
#[test]
fn every_example_step_is_valid_shell() {
    let tmp = tempfile::tempdir().unwrap();
    let project = Project::new(repo());
    let mut files = Vec::new();
    for role in project.role_names().unwrap() {
        let rf = project.role(&role).unwrap();
        for env in &rf.envs {
            let plan = project.plan(&role, env, &VarInputs::default()).unwrap();
            for s in &plan.steps {
                assert!(s.script.starts_with("#!/bin/bash\nset -euo pipefail\n# bake: role="), "{}", s.id());
                let f = tmp.path().join(format!("{role}-{env}-{}-{}.sh", s.cookbook, s.step));
                std::fs::write(&f, &s.script).unwrap();
                files.push(f);
            }
        }
    }
    // The security patch, both ways.
    for (n, what) in [("packages", bake::patch::What::Packages(vec!["openssl".into(), "libssl3".into()])), ("all", bake::patch::What::All)] {
        let plan =
            bake::patch::plan(&project, "boxoffice", "production", None, &VarInputs::default(), &what, "ami-0123456789abcdef0", &["CVE-2024-5535".into()])
                .unwrap();
        assert_eq!(plan.steps.len(), 1);
        let f = tmp.path().join(format!("patch-{n}.sh"));
        std::fs::write(&f, &plan.steps[0].script).unwrap();
        files.push(f);
    }
    assert_eq!(files.len(), 86);
    for f in &files {
        let out = Command::new("bash").arg("-n").arg(f).output().unwrap();
        assert!(out.status.success(), "bash -n {}: {}", f.display(), text(&out.stderr));
    }
    let check = Command::new("shellcheck").arg("--version").output();
    if check.is_err() && std::env::var_os("BAKE_SKIP_SHELLCHECK").is_some() {
        eprintln!("shellcheck not installed; skipped (BAKE_SKIP_SHELLCHECK)");
        return;
    }
    assert!(check.is_ok(), "shellcheck is not installed (apt-get install shellcheck, or set BAKE_SKIP_SHELLCHECK=1)");
    let out = Command::new("shellcheck").args(["-s", "bash", "-f", "gcc"]).args(&files).output().unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", text(&out.stdout));
    let helpers: Vec<_> = std::fs::read_dir(repo().join("cookbooks"))
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path().join("files")).into_iter().flatten())
        .map(|f| f.unwrap().path())
        .collect();
    let out = Command::new("shellcheck").args(["-f", "gcc"]).args(&helpers).output().unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", text(&out.stdout));
}

/// Attribute values meant to break out of a shell word print literally and run nothing.
#[test]
fn attribute_values_cannot_inject_shell() {
    let evil = [
        "$(touch pwned-subst)",
        "`touch pwned-backtick`",
        "; touch pwned-semicolon",
        "&& touch pwned-and",
        "|| touch pwned-or",
        "| touch pwned-pipe",
        "'; touch pwned-quote; '",
        "\"; touch pwned-dquote; \"",
        "line1\ntouch pwned-newline",
        "*",
        "?",
        "[a-z]*",
        "~",
        "--version",
        "-rf /",
        "${HOME}",
        "$HOME",
        "a b  c",
        "",
        "\\",
        "'",
        "!!",
        "#comment",
        "> pwned-redirect",
        "< /etc/passwd",
        "{a,b}",
        "FOO=bar",
        "\t tab",
    ];
    let reg = bake::template::registry(bake::template::Flavor::Shell);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a-file"), "x").unwrap(); // something for globs to match
    for v in evil {
        let data = serde_json::json!({"v": v, "l": [v, v]});
        let script = reg.render_template("printf '%s\\n' {{v}}\nprintf '[%s]' {{words l}}\necho {{v}}\n", &data).unwrap();
        let out = Command::new("bash").arg("-c").arg(&script).current_dir(work.path()).output().unwrap();
        assert!(out.status.success(), "{v:?}: {}", text(&out.stderr));
        let want = format!("{v}\n[{v}][{v}]{v}\n");
        // echo's own options (-n -e -E) are not values bake can protect; none are in the list.
        assert_eq!(text(&out.stdout), want, "value {v:?} rendered as:\n{script}");
        let made: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(made.len(), 1, "value {v:?} created {made:?}");
    }
}

#[test]
fn render_prints_one_step_and_policy_prints_json() {
    let out = bake(&repo(), &["render", "www", "--env", "production", "--step", "docker/daemon"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.starts_with("#!/bin/bash\nset -euo pipefail\n# bake: role=www env=production cookbook=docker step=daemon (9/14)"), "{s}");
    assert!(s.contains("\"data-root\": \"/mnt/docker\""), "{s}");
    let out = bake(&repo(), &["render", "www", "--env", "production", "--step", "docker/nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no step `docker/nope`"));

    let out = bake(&repo(), &["policy", "operator", "--account", "123456789012"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = doc.to_string();
    assert!(all.contains("arn:aws:iam::123456789012:role/bake/*"));
    assert!(all.contains("aws:RequestTag/bake:managed") && all.contains("aws:ResourceTag/bake:managed"));
    let statements = |doc: &serde_json::Value| doc["Statement"].as_array().unwrap().clone();
    let sid =
        |doc: &serde_json::Value, sid: &str| statements(doc).into_iter().find(|s| s["Sid"] == sid).unwrap_or_else(|| panic!("no statement {sid} in {doc}"));
    let pass = sid(&doc, "PassBuilderRolesToEc2");
    assert_eq!(pass["Condition"]["StringEqualsIfExists"]["iam:PassedToService"], "ec2.amazonaws.com");
    assert_eq!(pass["Resource"], "arn:aws:iam::123456789012:role/bake/*");
    let create = sid(&doc, "CreateBuilderIdentity");
    assert_eq!(create["Condition"]["StringLikeIfExists"]["iam:PermissionsBoundary"], "arn:aws:iam::123456789012:policy/bake/bake-builder-boundary");
    assert_eq!(
        create["Resource"],
        serde_json::json!(["arn:aws:iam::123456789012:role/bake/bake-b-*", "arn:aws:iam::123456789012:instance-profile/bake/bake-b-*"]),
        "only bake's own names"
    );
    // Changing a role needs the boundary on it (strictly: a role without one is not bake's).
    let manage = sid(&doc, "ManageBuilderRoles");
    assert_eq!(manage["Condition"]["StringLike"]["iam:PermissionsBoundary"], "arn:aws:iam::123456789012:policy/bake/bake-builder-boundary");
    assert_eq!(manage["Resource"], "arn:aws:iam::123456789012:role/bake/bake-b-*");
    assert_eq!(sid(&doc, "CreateTagged")["Condition"]["StringEqualsIfExists"]["ec2:MetadataHttpTokens"], "required", "builders only with IMDSv2");
    let deny = sid(&doc, "OnlyWithTheBoundary");
    assert_eq!(deny["Effect"], "Deny");
    // Groups get numbered template versions and bake's own launch configurations only.
    let out = bake(&repo(), &["policy", "roller", "--role", "boxoffice", "--env", "production"]);
    let roller: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let roll = sid(&roller, "RollOwnedGroups");
    assert_eq!(roll["Condition"]["BoolIfExists"]["autoscaling:LaunchTemplateVersionSpecified"], "true");
    assert!(
        roll["Condition"]["StringLikeIfExists"]["autoscaling:LaunchConfigurationName"]
            .as_array()
            .is_some_and(|v| !v.is_empty() && v.iter().all(|n| n.as_str().unwrap().ends_with("-ami-*-b-*"))),
        "{roll}"
    );
    assert!(!all.contains("ec2:Describe*") && !all.contains("DescribeInstanceAttribute"), "Describe narrowed to what bake calls");
    for unused in ["StartInstances", "DisableImageDeprecation", "RollbackInstanceRefresh", "ListCommands", "kms:Encrypt\""] {
        assert!(!all.contains(unused), "unused grant {unused}");
    }

    // One role's policies: every mutating statement names that role and env.
    for kind in ["operator", "roller"] {
        let out = bake(&repo(), &["policy", kind, "--role", "boxoffice", "--env", "production"]);
        assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for s in statements(&doc) {
            let text = s.to_string();
            let resources = s["Resource"].to_string() + &s["NotResource"].to_string();
            let scoped = text.contains("\"bake:role\":\"boxoffice\"") || text.contains("/bake:role\":\"boxoffice\"")
                || !resources.contains('*') || s["Effect"] == "Deny"
                // the role's own keys, each named (a multi-Region key in any region)
                || s["Sid"] == "KeysThroughEc2" && !resources.contains("key/*")
                // reads; launches that also need a role-scoped resource; resources named exactly
                || ["ReadAndCancel", "ReadGroupsTemplatesAndImages", "ReadBuilderIdentity", "LaunchSourceImages", "LaunchIntoPlaces", "LaunchGroupInstancesFromTemplates"].contains(&s["Sid"].as_str().unwrap())
                || ["ShellDocument", "ReadSourceParameters", "PublishParameters", "LegacyLaunchConfigurations"].contains(&s["Sid"].as_str().unwrap()) && (text.contains("boxoffice") || text.contains("AWS-RunShellScript") || text.contains("parameter/aws/service/"));
            assert!(scoped, "{kind}: statement not confined to boxoffice/production: {s}");
        }
        let size = serde_json::to_string(&doc).unwrap().len();
        assert!(size <= 6144, "{kind} fits a managed policy: {size}");
    }
    let out = bake(&repo(), &["policy", "operator", "--role", "boxoffice", "--env", "production"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // PutParameter's tags are authorized on `parameter/` + the name as given (slash included).
    assert_eq!(
        sid(&doc, "PublishParameters")["Resource"],
        serde_json::json!(["arn:aws:ssm:*:*:parameter/bake/boxoffice/production/ami-id", "arn:aws:ssm:*:*:parameter//bake/boxoffice/production/ami-id"])
    );
    assert_eq!(sid(&doc, "LaunchSourceImages")["Condition"]["StringEquals"]["ec2:Owner"], serde_json::json!(["099720109477"]));
    // www's source is a filter: no source parameter, and its owners from the filter.
    let out = bake(&repo(), &["policy", "operator", "--role", "www", "--env", "staging"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(statements(&doc).iter().all(|s| s["Sid"] != "ReadSourceParameters"));
    assert_eq!(sid(&doc, "LaunchSourceImages")["Condition"]["StringEquals"]["ec2:Owner"], serde_json::json!(["099720109477"]));
    let out = bake(&repo(), &["policy", "boundary", "--account", "123456789012"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = doc.to_string();
    assert!(
        all.contains("ssm:UpdateInstanceInformation")
            && all.contains("parameter/universe/registry/password")
            && all.contains("universe-apps/boxoffice_production.tgz")
    );
    assert!(!all.contains("iam:") && !all.contains("ec2:RunInstances") && !all.contains("sts:"), "the boundary grants no way up: {all}");

    let only = sid(&doc, "OnlyFromInstances");
    assert_eq!(
        (only["Effect"].as_str(), only["Condition"]["Null"]["ec2:SourceInstanceARN"].as_str()),
        (Some("Deny"), Some("true")),
        "builder credentials act only from an instance"
    );

    // www reads no secret and no bundle: no builder policy (IAM refuses one without statements).
    let out = bake(&repo(), &["policy", "builder", "--role", "www", "--env", "staging"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("www/staging needs no builder policy"), "{}", text(&out.stderr));
    let out = bake(&repo(), &["policy", "builder", "--role", "boxoffice", "--env", "staging"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = doc.to_string();
    assert!(s.contains("parameter/universe/registry/password") && s.contains("universe-apps/boxoffice_staging.tgz"));
    assert!(s.contains(":${aws:PrincipalAccount}:parameter/"), "the builder's own account, whichever it is: {s}");
}

#[test]
fn the_registry_password_never_reaches_a_script() {
    // The role names the parameter; only the parameter's name may appear in scripts.
    let project = Project::new(repo());
    let plan = project.plan("boxoffice", "production", &VarInputs::default()).unwrap();
    let registry = plan.steps.iter().find(|s| s.id() == "docker/registry").unwrap();
    assert!(registry.script.contains("param=/universe/registry/password"));
    assert!(!registry.script.contains("--password "), "no password on a command line");
    assert!(registry.script.contains("bake-registry-login"));
}

#[test]
fn every_rendered_policy_passes_parliament_and_cloudsplaining_or_is_listed_with_a_reason() {
    let have = Command::new("python3").args(["-c", "import parliament, cloudsplaining"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !have && std::env::var_os("BAKE_SKIP_POLICY_LINT").is_some() {
        eprintln!("parliament/cloudsplaining not installed; skipped (BAKE_SKIP_POLICY_LINT)");
        return;
    }
    assert!(have, "install the IAM linters: python3 -m pip install -r tests/policies/requirements.txt (or set BAKE_SKIP_POLICY_LINT=1)");
    let out = Command::new("python3").arg(repo().join("tests/policies/lint.py")).arg(env!("CARGO_BIN_EXE_bake")).arg(repo()).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    // With shared state (bake.toml [state], a KMS key by alias): the state policy too, and the
    // operator's and roller's still fit.
    let dir = project_copy();
    std::fs::write(dir.path().join("bake.toml"), "[state]\ns3 = \"s3://acme-bake-state/golden\"\nregion = \"us-east-1\"\nkms_key_id = \"alias/bake-state\"\n")
        .unwrap();
    let out = Command::new("python3").arg(repo().join("tests/policies/lint.py")).arg(env!("CARGO_BIN_EXE_bake")).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let state = bake(dir.path(), &["policy", "state", "--account", "111122223333"]);
    let doc: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap_or_else(|_| panic!("{}", text(&state.stderr)));
    let resources: Vec<String> = doc["Statement"].as_array().unwrap().iter().map(|s| s["Resource"].to_string()).collect();
    assert_eq!(
        resources,
        vec!["\"arn:aws:s3:::acme-bake-state/golden/*\"", "\"arn:aws:s3:::acme-bake-state\"", "\"arn:aws:kms:*:111122223333:key/*\""],
        "{doc}"
    );
    assert_eq!(doc["Statement"][1]["Condition"]["StringLike"]["s3:prefix"], "golden/*");
    let none = bake(&repo(), &["policy", "state"]);
    assert_eq!(none.status.code(), Some(1), "no shared state, no policy: {}", text(&none.stderr));
}

#[test]
fn keys_given_by_alias_or_id_and_private_source_parameters_reach_the_operator_policy() {
    let dir = project_copy();
    let root = dir.path();
    common::edit(root, "roles/kaiju.toml", "instance_type = \"t3.small\"", "instance_type = \"t3.small\"\nkms_key_id = \"alias/ebs-golden\"");
    common::edit(
        root,
        "roles/kaiju.toml",
        "image = { regions = [\"us-west-2\"] }",
        "image = { regions = [\"us-west-2\"], kms_keys = { us-west-2 = \"0a1b2c3d-4e5f-6789-abcd-ef0123456789\" } }",
    );
    common::edit(
        root,
        "roles/kaiju.toml",
        "ssm_parameter = \"/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp3/ami-id\"",
        "ssm_parameter = \"/golden/base/ami-id\"\nowners = [\"self\", \"099720109477\"]",
    );
    let out = bake(root, &["policy", "operator", "--role", "kaiju", "--env", "staging", "--account", "123456789012"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sid = |name: &str| doc["Statement"].as_array().unwrap().iter().find(|s| s["Sid"] == name).cloned().unwrap_or_else(|| panic!("no {name}: {doc}"));
    assert_eq!(sid("AliasedKeysThroughEc2")["Condition"]["ForAnyValue:StringEquals"]["kms:ResourceAliases"], serde_json::json!(["alias/ebs-golden"]));
    assert_eq!(sid("KeysThroughEc2")["Resource"], serde_json::json!(["arn:aws:kms:*:123456789012:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789"]));
    assert_eq!(sid("ReadSourceParameters")["Resource"], serde_json::json!(["arn:aws:ssm:*:123456789012:parameter/golden/base/ami-id"]));
    assert_eq!(sid("LaunchSourceImages")["Condition"]["StringEquals"]["ec2:Owner"], serde_json::json!(["123456789012", "099720109477"]), "self is the account");
    // Without --account, `self` is the policy variable for the caller's account.
    let out = bake(root, &["policy", "operator", "--role", "kaiju", "--env", "staging"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc.to_string().contains("\"${aws:PrincipalAccount}\""), "{doc}");
}

#[test]
fn templates_and_files_that_lead_out_of_their_cookbook_are_refused() {
    let dir = project_copy();
    let root = dir.path();
    let secret = root.join("secret.txt");
    std::fs::write(&secret, "not the cookbook's").unwrap();
    // A step template that is a link to a file elsewhere.
    let step = root.join("cookbooks/base/steps/time.sh.hbs");
    std::fs::remove_file(&step).unwrap();
    std::os::unix::fs::symlink(&secret, &step).unwrap();
    let out = bake(root, &["plan", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cookbooks/base/steps/time.sh.hbs is not inside the cookbook"), "{err}");
    // A file that is a link out, and a folder of files that is one.
    let dir2 = project_copy();
    let root2 = dir2.path();
    std::os::unix::fs::symlink(&secret, root2.join("cookbooks/docker/files/leak")).unwrap();
    let out = bake(root2, &["plan", "kaiju", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cookbooks/docker/files/leak: leads out of the cookbook"), "{}", text(&out.stderr));
    let dir3 = project_copy();
    let root3 = dir3.path();
    std::os::unix::fs::symlink("/etc", root3.join("cookbooks/docker/files/etc")).unwrap();
    let out = bake(root3, &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("cookbooks/docker/files/etc: leads out of the cookbook"), "{}", text(&out.stdout));
}

#[test]
fn no_template_prints_an_attribute_raw() {
    // `{{{…}}}` skips the shell escaper: an attribute would reach the script as code.
    let mut raw = Vec::new();
    for cb in std::fs::read_dir(repo().join("cookbooks")).unwrap().flatten() {
        for f in std::fs::read_dir(cb.path().join("steps")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.contains("{{{") || line.contains("{{&") {
                    raw.push(format!("{}:{}: {line}", f.path().display(), i + 1));
                }
            }
        }
    }
    assert!(raw.is_empty(), "raw output in templates:\n{}", raw.join("\n"));
}

#[test]
fn a_command_reaches_docker_word_for_word_and_a_string_splits_at_white_space() {
    // The unit step's own lines that build the command, run as rendered.
    let words = |command: &str| -> Vec<String> {
        let dir = project_copy();
        common::edit(dir.path(), "roles/boxoffice.toml", r#"command = ["bundle", "exec", "puma", "-C", "config/puma.rb"]"#, &format!("command = {command}"));
        let out = bake(dir.path(), &["render", "boxoffice", "--env", "staging", "--step", "app-server/unit"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        let start = script.find("# The command:").expect("the command's lines");
        let end = start + script[start..].find("args+=(\"${cmd[@]}\")").expect("their end");
        let snippet = format!("set -euo pipefail\n{}printf '%s\\0' \"${{cmd[@]}}\"\n", &script[start..end]);
        let out = Command::new("bash").arg("-c").arg(&snippet).output().unwrap();
        assert!(out.status.success(), "{}\n{snippet}", text(&out.stderr));
        text(&out.stdout).split('\0').filter(|w| !w.is_empty()).map(str::to_string).collect()
    };
    assert_eq!(words(r#"["sh", "-c", "a\nb", "$HOME *"]"#), ["sh", "-c", "a\nb", "$HOME *"]);
    assert_eq!(words(r#""node  server.js\n--port 80""#), ["node", "server.js", "--port", "80"]);
}

#[test]
fn a_root_that_is_not_a_project_is_one_clear_line() {
    let empty = tempfile::tempdir().unwrap();
    for (root, want) in [
        (empty.path().join("nope"), "no such folder".to_string()),
        (empty.path().to_path_buf(), format!("{} is not a bake project: it has no roles/ folder", empty.path().display())),
    ] {
        for args in [&["validate"][..], &["plan", "www", "--env", "staging"], &["build", "www", "--env", "staging"]] {
            let out = bake(&root, args);
            let err = text(&out.stderr);
            assert_eq!((out.status.code(), err.lines().count()), (Some(2), 1), "{args:?}: {err}");
            assert!(err.contains(&want), "{args:?}: {err}");
        }
    }
}
