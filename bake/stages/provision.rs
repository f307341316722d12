//! Provision: every rendered step, in run-list order, through SSM Run Command
//! (AWS-RunShellScript). A step that fails stops the bake with its exit code and the end of its
//! stderr. A script too large for one SendCommand goes in parts and is checked by sha256 on the
//! builder before it runs.

use std::time::{Duration, Instant};

use aws_sdk_ssm::types::CommandInvocationStatus;
use base64::Engine as _;

use crate::error::{Error, Result};
use crate::plan::PlannedStep;
use crate::stages::{Baking, Builder};

/// Scripts whose lines take more than this, JSON-encoded as SendCommand sends them (quotes,
/// backslashes and control characters grow), go in parts.
pub const MAX_INLINE: usize = crate::config::limits::SEND_COMMAND_PARAMETERS;
/// Base64 characters per part (base64 needs no escaping).
pub const PART: usize = 40 * 1024;

/// The size of `lines` as SendCommand's `commands` parameter, JSON-encoded.
pub fn encoded_len(lines: &[String]) -> usize {
    serde_json::to_string(lines).map(|s| s.len()).unwrap_or(usize::MAX)
}
/// How often a running step hears of its builder's state (stopped or terminated by EC2): the
/// command's own status comes every tick.
const LOST_CHECK: Duration = Duration::from_secs(5);
/// What AWS keeps of a command's output in GetCommandInvocation.
pub const STDOUT_LIMIT: usize = 24_000;
pub const STDERR_LIMIT: usize = 8_000;
/// A step that prints this line (within the first 24,000 characters of its output) gets a reboot.
pub const REBOOT_MARKER: &str = "bake: reboot required";
/// Where parts are assembled on the builder.
pub const STAGING: &str = "/var/lib/bake/steps";

#[derive(Debug)]
pub struct Outcome {
    pub command_id: String,
    pub status: String,
    pub details: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Where the whole output went, when the role sends it to S3 or CloudWatch Logs.
    pub full_output: Vec<String>,
}

/// The commands that deliver `script` in parts: each appends a base64 chunk to a staging file;
/// the last decodes it, checks its sha256 and runs it.
pub fn delivery_parts(step_id: &str, script: &str, sha256: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
    let name = step_id.replace('/', "-");
    let staged = format!("{STAGING}/{name}.b64");
    let chunks: Vec<&str> = b64.as_bytes().chunks(PART).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    let parts = chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let redirect = if i == 0 { ">" } else { ">>" };
            vec![
                "#!/bin/bash".to_string(),
                "set -euo pipefail".to_string(),
                format!("# bake: part {} of {} of step {step_id}", i + 1, chunks.len()),
                format!("mkdir -p {STAGING} && chmod 700 {STAGING}"),
                format!("printf '%s' '{chunk}' {redirect} {staged}"),
            ]
        })
        .collect();
    let run = vec![
        "#!/bin/bash".to_string(),
        "set -euo pipefail".to_string(),
        format!("# bake: run step {step_id}, delivered in {} parts", chunks.len()),
        format!("base64 -d {staged} > {STAGING}/{name}.sh"),
        format!("echo '{sha256}  {STAGING}/{name}.sh' | sha256sum --check --quiet"),
        format!("chmod 700 {STAGING}/{name}.sh"),
        format!("rm -f {staged}"),
        format!("exec {STAGING}/{name}.sh"),
    ];
    (parts, run)
}

fn comment(ctx: &Baking, what: &str) -> String {
    let mut c = format!("bake {} {what}", ctx.id);
    c.truncate(100);
    c
}

/// Sends one command and waits for it to end.
pub(crate) async fn run_command(ctx: &Baking, builder: &Builder, label: &str, lines: Vec<String>, timeout: Duration) -> Result<Outcome> {
    let instance = builder.instance.clone();
    let region = ctx.region.clone();
    let ssm = ctx.c.ssm.clone();
    let send = || {
        let ssm = ssm.clone();
        let lines = lines.clone();
        let instance = instance.clone();
        let region = region.clone();
        let comment = comment(ctx, label);
        let output = ctx.plan.builder.spec.output.clone();
        async move {
            let mut req = ssm
                .send_command()
                .instance_ids(&instance)
                .document_name("AWS-RunShellScript")
                .comment(comment)
                .timeout_seconds(600)
                .parameters("commands", lines)
                .parameters("executionTimeout", vec![timeout.as_secs().max(1).to_string()]);
            if let Some(bucket) = &output.s3_bucket {
                req = req.output_s3_bucket_name(bucket).output_s3_key_prefix(&output.s3_prefix);
            }
            if let Some(group) = &output.log_group {
                req = req.cloud_watch_output_config(
                    aws_sdk_ssm::types::CloudWatchOutputConfig::builder().cloud_watch_log_group_name(group).cloud_watch_output_enabled(true).build(),
                );
            }
            req.send().await.map_err(|e| Error::aws("ssm:SendCommand", format!("step {label} on builder {instance}"), &region, &e))
        }
    };
    // Right after it registers, SSM may briefly not accept commands for an instance.
    let b = crate::wait::Backoff::times(Duration::from_secs(1), Duration::from_secs(5), 6);
    let sent = crate::wait::retry(b, |e| e.code() == Some("InvalidInstanceId"), |_, _| {}, send).await?;
    let command_id = crate::aws::required(sent.command().and_then(|c| c.command_id()), "ssm:SendCommand", &format!("a command id for {label}"), &ctx.region)?;
    let sent_at = Instant::now();
    let watchers = crate::wait::watcher::of(&ctx.c);
    // The command's status, and the builder's state: one that EC2 stopped or terminated (a Spot
    // interruption, someone else) never reports again, its command would sit InProgress.
    let mut command = watchers.commands.watch(&command_id, &ctx.c.calls);
    let mut builder_state = watchers.instances.watch_every(&instance, &ctx.c.calls, LOST_CHECK);
    let deadline = sent_at + timeout + Duration::from_secs(600);
    let ended = loop {
        tokio::select! {
            r = command.next() => {
                if let Some(e) = r.error {
                    return Err(Error::Other(e));
                }
                match r.seen.as_ref().and_then(|i| i.status()) {
                    // Not listed yet right after SendCommand (eventual consistency).
                    None if sent_at.elapsed() < crate::wait::CONSISTENCY_WINDOW => {}
                    None => return Err(Error::Other(format!("command {command_id} for step {label} on {instance} in {region} is not listed by SSM"))),
                    Some(
                        CommandInvocationStatus::Pending
                        | CommandInvocationStatus::InProgress
                        | CommandInvocationStatus::Delayed
                        | CommandInvocationStatus::Cancelling,
                    ) => {}
                    Some(_) => break true,
                }
            }
            r = builder_state.next() => {
                if let Some(why) = r.seen.as_ref().and_then(lost) {
                    let _ = ctx.c.ssm.cancel_command().command_id(&command_id).send().await;
                    return Err(Error::Other(format!("builder {instance} in {region} {why} during step {label}; the step did not finish")));
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => break false,
        }
    };
    drop((command, builder_state));
    let outcome = if ended { Some(invocation(ctx, &command_id, &instance).await?) } else { None };
    match outcome {
        Some(o) => Ok(o),
        None => {
            let _ = ctx.c.ssm.cancel_command().command_id(&command_id).send().await;
            Err(crate::wait::gave_up(
                format!("step {label}, command"),
                command_id,
                &ctx.region,
                format!("did not end within {}s of its timeout", timeout.as_secs() + 600),
            ))
        }
    }
}

/// How the builder is gone, when EC2 stopped or terminated it: `was terminated (reason)`.
fn lost(i: &aws_sdk_ec2::types::Instance) -> Option<String> {
    let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
    if !matches!(state.as_str(), "shutting-down" | "terminated" | "stopping" | "stopped") {
        return None;
    }
    let reason = i
        .state_reason()
        // EC2's message usually starts with the code already ("Server.SpotInstanceTermination: …").
        .map(|r| match (r.code().unwrap_or_default(), r.message().unwrap_or_default()) {
            (c, m) if m.starts_with(c) => m.to_string(),
            (c, m) => format!("{c}: {m}"),
        })
        .or_else(|| i.state_transition_reason().map(str::to_string))
        .unwrap_or_default();
    let verb = if state.starts_with("stop") { "was stopped" } else { "was terminated" };
    Some(if reason.is_empty() { verb.to_string() } else { format!("{verb} ({reason})") })
}

/// The whole invocation of an ended command: status, exit code, output (as much as the API keeps).
async fn invocation(ctx: &Baking, command_id: &str, instance: &str) -> Result<Outcome> {
    let r = ctx
        .c
        .ssm
        .get_command_invocation()
        .command_id(command_id)
        .instance_id(instance)
        .send()
        .await
        .map_err(|e| Error::aws("ssm:GetCommandInvocation", format!("command {command_id} on {instance}"), &ctx.region, &e))?;
    let status = r.status().cloned().unwrap_or(CommandInvocationStatus::Pending);
    let mut full_output: Vec<String> =
        [r.standard_output_url(), r.standard_error_url()].into_iter().flatten().filter(|u| !u.is_empty()).map(str::to_string).collect();
    if let Some(cw) = r.cloud_watch_output_config().filter(|c| c.cloud_watch_output_enabled()) {
        // SSM names the streams <command>/<instance>/<plugin>/stdout|stderr.
        let group = cw.cloud_watch_log_group_name().unwrap_or_default();
        for stream in ["stdout", "stderr"] {
            full_output.push(format!("cloudwatch-logs://{group}/{command_id}/{instance}/aws-runShellScript/{stream}"));
        }
    }
    Ok(Outcome {
        full_output,
        command_id: command_id.to_string(),
        status: status.as_str().to_string(),
        details: r.status_details().unwrap_or_default().to_string(),
        code: r.response_code(),
        stdout: r.standard_output_content().unwrap_or_default().to_string(),
        stderr: r.standard_error_content().unwrap_or_default().to_string(),
    })
}

fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

/// Runs one step (in parts when large); the outcome of the command that ran it.
async fn run_step(ctx: &mut Baking, builder: &Builder, step: &PlannedStep) -> Result<(Outcome, Vec<String>)> {
    let id = step.id();
    let timeout = step.timeout.as_duration();
    let mut ids = Vec::new();
    let lines: Vec<String> = step.script.lines().map(str::to_string).collect();
    if encoded_len(&lines) <= MAX_INLINE {
        let o = run_command(ctx, builder, &id, lines, timeout).await?;
        ids.push(o.command_id.clone());
        return Ok((o, ids));
    }
    let (parts, run) = delivery_parts(&id, &step.script, &step.sha256);
    let n = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        ctx.report.stage("provision", &format!("{id}: delivering part {}/{n}", i + 1));
        let o = run_command(ctx, builder, &format!("{id} part {}/{n}", i + 1), part, Duration::from_secs(120)).await?;
        ids.push(o.command_id.clone());
        if o.status != "Success" {
            return Ok((o, ids));
        }
    }
    let o = run_command(ctx, builder, &id, run, timeout).await?;
    ids.push(o.command_id.clone());
    Ok((o, ids))
}

pub async fn run_all(ctx: &mut Baking, builder: &Builder) -> Result<()> {
    let steps = ctx.plan.steps.clone();
    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        let id = step.id();
        ctx.stage("provision", &format!("{id} ({}/{total})", i + 1));
        let started = Instant::now();
        let (o, ids) = run_step(ctx, builder, step).await?;
        let secs = started.elapsed().as_secs_f64();
        ctx.report.output(&id, "stdout", &o.stdout);
        ctx.report.output(&id, "stderr", &o.stderr);
        let rec = &mut ctx.manifest.steps[i];
        rec.status = if o.status == "TimedOut" && o.details == "DeliveryTimedOut" { "DeliveryTimedOut".into() } else { o.status.clone() };
        rec.exit_code = Some(o.code);
        rec.duration_secs = secs;
        rec.stdout_truncated = o.stdout.chars().count() >= STDOUT_LIMIT;
        rec.stderr_truncated = o.stderr.chars().count() >= STDERR_LIMIT;
        rec.command_ids = ids;
        rec.full_output = o.full_output.clone();
        let truncated = rec.stdout_truncated || rec.stderr_truncated;
        ctx.stage_done("provision");
        if (truncated || o.status != "Success") && !o.full_output.is_empty() {
            ctx.report.info(&format!("{id}: whole output at {}", o.full_output.join(", ")));
        }
        if o.status != "Success" {
            let mut stderr_tail = tail(&o.stderr, 40);
            if stderr_tail.is_empty() {
                stderr_tail = tail(&o.stdout, 40);
            }
            let status = match (o.status.as_str(), o.details.as_str()) {
                ("TimedOut", "DeliveryTimedOut") => "undeliverable (delivery timed out)".to_string(),
                ("TimedOut", _) => format!("timed out after {}", step.timeout),
                ("Failed", d) if d == "Undeliverable" || d == "Terminated" => format!("failed ({d})"),
                (s, _) => s.to_lowercase(),
            };
            return Err(Error::StepFailed { step: id, instance: builder.instance.clone(), region: ctx.region.clone(), status, exit_code: o.code, stderr_tail });
        }
        ctx.report.info(&format!("{id} done in {secs:.1}s"));
        // A step may ask for a reboot (the security patch does when the kernel or libc changed).
        let asked = o.stdout.lines().any(|l| l.trim() == REBOOT_MARKER);
        if step.reboot || asked {
            ctx.stage("provision", &format!("{id}: rebooting the builder"));
            let since = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
            let since = aws_smithy_types::DateTime::from_secs(since.secs());
            let instance = builder.instance.clone();
            ctx.c
                .ec2
                .reboot_instances()
                .instance_ids(&instance)
                .send()
                .await
                .map_err(|e| Error::aws("ec2:RebootInstances", format!("builder {instance}"), &ctx.region, &e))?;
            // Give the reboot a moment to take the agent down before watching for it.
            tokio::time::sleep(Duration::from_millis(500)).await;
            crate::stages::launch::wait_agent(ctx, builder, Some(since)).await?;
            ctx.manifest.steps[i].rebooted = true;
            ctx.stage_done("provision");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_scripts_go_in_parts_that_reassemble() {
        let script = format!("#!/bin/bash\nset -euo pipefail\n{}", "echo 'x'\n".repeat(30_000));
        let sha = crate::plan::sha256_hex(script.as_bytes());
        let (parts, run) = delivery_parts("base/big", &script, &sha);
        assert!(parts.len() >= 7, "{}", parts.len());
        let mut b64 = String::new();
        for p in &parts {
            assert!(encoded_len(p) < MAX_INLINE, "each part fits in one SendCommand");
            let line = p.iter().find(|l| l.starts_with("printf '%s' '")).unwrap();
            b64.push_str(line.split('\'').nth(3).unwrap());
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(decoded, script.as_bytes());
        assert!(run.iter().any(|l| l.contains(&sha) && l.contains("sha256sum --check")));
        assert_eq!(run.last().unwrap(), "exec /var/lib/bake/steps/base-big.sh");
    }
}
