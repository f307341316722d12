//! Signing in and not reaching AWS: a `credential_process` profile signs bake in (against the
//! sandbox, which says who called), an SSO profile without a session says how to sign in, and
//! what is not an AWS answer (no credentials, nothing listening, an HTML page, an empty body, an
//! unknown region) is one sentence saying what to do — never the SDK's debug dump.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use common::sandbox::Sandbox;
use common::{project_copy, text};
use serde_json::json;

/// bake with only the environment given (no AWS_* or BAKE_* from outside, no instance metadata).
fn bake_with(root: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bake"));
    cmd.arg("--root").arg(root).args(args).current_dir(root);
    for (k, _) in std::env::vars() {
        if k.starts_with("BAKE_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    // One attempt: what is retried (an endpoint that refuses, a 5xx) would only take longer.
    cmd.env("HOME", &home).env("AWS_EC2_METADATA_DISABLED", "true").env("AWS_MAX_ATTEMPTS", "1");
    cmd.env("AWS_CONFIG_FILE", home.join("config")).env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// One `error:` line holding `expect`, nothing on stdout, exit `code`, no Debug dump.
fn one_clear_line(out: &Output, code: i32, expect: &str) {
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(expect), "expected `{expect}` in: {err}");
    for dump in ["DispatchFailure {", "ConnectorError {", "Some(", "source:", "panicked"] {
        assert!(!err.contains(dump), "debug output `{dump}` in: {err}");
    }
}

/// A loopback server answering every request with `status`, `content_type` and `body`, until the
/// test ends (its thread dies with the process). Its URL.
fn answering(status: &'static str, content_type: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    url
}

/// A loopback port nothing listens on.
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn keys() -> Vec<(&'static str, String)> {
    vec![("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE".into()), ("AWS_SECRET_ACCESS_KEY", "secret".into())]
}

#[test]
fn what_is_not_an_aws_answer_is_one_sentence_saying_what_to_do() {
    let dir = project_copy();
    let root = dir.path();

    // An unknown region, before any call.
    let out = bake_with(root, &keys(), &["ls", "--region", "us-east-9"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("error: --region: `us-east-9` is not a region AWS has"), "{}", text(&out.stderr));
    // From the configuration: the same, naming where it came from.
    let out = bake_with(root, &[&keys()[..], &[("AWS_REGION", "moon-1".to_string())]].concat(), &["ls"]);
    one_clear_line(&out, 2, "region `moon-1` (from AWS_REGION");

    // A describe budget that is no number of calls a second bake can keep to (issue 14).
    for rate in ["abc", "0", "1e-30", "21", "NaN"] {
        let out = bake_with(root, &[&keys()[..], &[("BAKE_DESCRIBE_RATE", rate.to_string())]].concat(), &["ls", "--region", "us-east-1"]);
        one_clear_line(&out, 2, &format!("BAKE_DESCRIBE_RATE: `{rate}` is not a number of describe calls a second"));
    }

    // No region at all: ls does not quietly list only the copies.
    let out = bake_with(root, &keys(), &["ls", "kaiju"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("builder.region: no region for where it builds"), "{}", text(&out.stderr));

    // No credentials anywhere.
    let out = bake_with(root, &[("AWS_ENDPOINT_URL", closed_port())], &["ls", "--region", "us-east-1"]);
    one_clear_line(&out, 1, "no AWS credentials");
    assert!(text(&out.stderr).contains("aws sso login"), "{}", text(&out.stderr));

    // Nothing listening where the endpoint says.
    let url = closed_port();
    let out = bake_with(root, &[&keys()[..], &[("AWS_ENDPOINT_URL", url.clone())]].concat(), &["ls", "--region", "us-east-1"]);
    one_clear_line(&out, 1, &format!("could not reach {url}"));

    // A proxy's HTML page, and an empty body.
    let url = answering("502 Bad Gateway", "text/html", "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>");
    let out = bake_with(root, &[&keys()[..], &[("AWS_ENDPOINT_URL", url.clone())]].concat(), &["ls", "--region", "us-east-1"]);
    one_clear_line(&out, 1, &format!("{url} answered HTTP 502 with an HTML page, not an AWS answer"));
    let url = answering("403 Forbidden", "text/plain", "");
    let out = bake_with(root, &[&keys()[..], &[("AWS_ENDPOINT_URL", url.clone())]].concat(), &["ls", "--region", "us-east-1"]);
    one_clear_line(&out, 1, &format!("{url} answered HTTP 403 with an empty body"));
}

#[test]
fn an_sso_profile_without_a_session_says_how_to_sign_in() {
    let dir = project_copy();
    let root = dir.path();
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("config"),
        "[profile team]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Baker\nregion = us-east-1\n\n\
         [sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = us-east-1\n",
    )
    .unwrap();
    let out = bake_with(root, &[("AWS_ENDPOINT_URL", closed_port())], &["ls", "--profile", "team"]);
    one_clear_line(&out, 1, "no AWS credentials");
    let err = text(&out.stderr);
    assert!(!err.contains("cargo feature"), "SSO is compiled in: {err}");
    assert!(err.contains("no AWS credentials for profile team (failed to load the cached SSO token): sign in (aws sso login --profile team"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_process_profile_signs_bake_in() {
    let mut sb = Sandbox::start_enforcing();
    let reader = sb
        .create_user(
            "lister",
            &[("read", json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:DescribeImages", "ec2:DescribeRegions", "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeLaunchConfigurations", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeInstances"], "Resource": "*"}]}))],
        )
        .await;
    let dir = project_copy();
    let root = dir.path();
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    // As aws-vault, granted or 1Password do it: a program that prints the keys.
    let helper = home.join("creds.sh");
    std::fs::write(
        &helper,
        format!("#!/bin/sh\nprintf '%s' '{}'\n", json!({"Version": 1, "AccessKeyId": reader.access_key_id, "SecretAccessKey": reader.secret_access_key})),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(home.join("config"), format!("[profile vault]\ncredential_process = {}\nregion = us-east-1\n", helper.display())).unwrap();
    sb.clear_decisions();
    let out = bake_with(root, &[("AWS_ENDPOINT_URL", sb.endpoint.clone())], &["ls", "--profile", "vault", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let who: std::collections::BTreeSet<String> = sb.decisions(false).iter().map(|d| d["principal"].as_str().unwrap().to_string()).collect();
    assert_eq!(who, std::collections::BTreeSet::from([reader.arn.clone()]), "every call signed with the profile's keys");
    sb.stop();
}
