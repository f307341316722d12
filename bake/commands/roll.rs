//! `bake roll`: move a role's groups onto an image, or back (`--rollback`), or show how (`--plan`).

use std::path::PathBuf;

use clap::Args;

use super::{json, out, problems, runtime, var_inputs, wait_limit, write_manifest, ExitStatus, Global, Output, RoleEnv};
use crate::config::{Project, Secs};
use crate::manifest::{RollManifest, RollStatus};
use crate::roll::InProgress;

#[derive(Args, Debug)]
pub struct RollArgs {
    #[command(flatten)]
    pub target: RoleEnv,
    /// The image (default: the newest one bake made for this role and env)
    #[arg(long, value_name = "AMI_ID")]
    pub ami: Option<String>,
    /// Show what would change, per group, and change nothing
    #[arg(long)]
    pub plan: bool,
    /// Put every group back on the previous image bake recorded on it
    #[arg(long, conflicts_with_all = ["ami", "plan", "migrate_to_launch_template"])]
    pub rollback: bool,
    /// Move launch-configuration groups to a new launch template with the same settings
    #[arg(long)]
    pub migrate_to_launch_template: bool,
    /// When a group has a refresh in progress, wait for it to end
    #[arg(long, conflicts_with = "replace_in_progress")]
    pub wait_in_progress: bool,
    /// When a group has a refresh in progress, cancel it
    #[arg(long)]
    pub replace_in_progress: bool,
    /// Give up on a group's refresh after this long
    #[arg(long, default_value = "3h", value_name = "DURATION", value_parser = wait_limit)]
    pub timeout: Secs,
    /// Also write the roll's manifest (JSON) to this file
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Stop (exit 1) instead of waiting when a bake, patch or roll of this role and env runs here
    #[arg(long)]
    pub no_wait: bool,
}

pub fn roll(g: &Global, a: &RollArgs) -> ExitStatus {
    let plan = match var_inputs(g).and_then(|v| Project::new(&g.root).plan(&a.target.role, &a.target.env, &v)) {
        Ok(p) => p,
        Err(p) => return problems(&p),
    };
    let in_progress = if a.wait_in_progress {
        InProgress::Wait
    } else if a.replace_in_progress {
        InProgress::Replace
    } else {
        InProgress::Fail
    };
    let req = crate::roll::Request {
        ami: a.ami.clone(),
        plan_only: a.plan,
        rollback: a.rollback,
        migrate: a.migrate_to_launch_template,
        in_progress,
        timeout: a.timeout.as_duration(),
        region: g.region.clone(),
        patch: false,
    };
    let progress = crate::progress::Progress::new(g.quiet, g.output == Output::Json);
    let rt = runtime();
    if let Err(code) = super::shared_state(g, &rt) {
        return code;
    }
    let m = rt.block_on(async {
        let aws = crate::aws::Aws::load(&super::connection(g)).await;
        let cancel = crate::signals::watch(std::sync::Arc::default());
        // One change of a role and env at a time: a roll waits for a bake or patch of it (every
        // architecture's) and for another roll, and holds their locks to its end. --plan changes
        // nothing and takes none.
        let mut held = Vec::new();
        if !a.plan {
            let what = format!("bake roll {}/{}", plan.role, plan.env);
            let envs: Vec<String> =
                if plan.architectures.len() > 1 { plan.architectures.iter().map(|x| format!("{}.{x}", plan.env)).collect() } else { vec![plan.env.clone()] };
            for env in envs {
                match crate::lock::acquire(&g.root, &plan.role, &env, &what, !a.no_wait, &progress.task(&plan.role), cancel.clone()).await {
                    Ok(l) => held.push(l),
                    Err(e) => {
                        let status = if matches!(e, crate::error::Error::Interrupted) { RollStatus::Interrupted } else { RollStatus::Failed };
                        return RollManifest { role: plan.role.clone(), env: plan.env.clone(), status, error: Some(e.to_string()), ..Default::default() };
                    }
                }
            }
        }
        let m = crate::roll::run(&aws, &plan, &req, progress, cancel).await;
        // With shared state the roll's record is kept there (`bake ls --history`).
        if let (Some(r), false) = (crate::remote::get(), a.plan || m.roll_id.is_empty()) {
            let rec = serde_json::json!({"kind": if a.rollback { "rollback" } else { "roll" }, "at": crate::journal::now_rfc3339(), "by": super::who(g), "manifest": &m});
            if let Err(e) = r.put_manifest(&m.role, &m.env, &m.roll_id, &rec).await {
                eprintln!("warning: the record of roll {} was not kept in the shared state: {e}", m.roll_id);
            }
        }
        m
    });
    report(g, &m, a.manifest.as_deref())
}

fn report(g: &Global, m: &RollManifest, manifest_file: Option<&std::path::Path>) -> ExitStatus {
    let text = json(m);
    write_manifest(&text, manifest_file);
    match g.output {
        Output::Json => out(&text),
        Output::Text => {
            if m.status != RollStatus::Planned {
                let mut text = String::new();
                for gr in &m.groups {
                    let now = match gr.running.len() {
                        0 if gr.final_image.is_empty() || gr.final_image == "unknown" => "now unknown".to_string(),
                        0 => format!("no instances; configured with {}", gr.final_image),
                        1 => format!("now on {}", gr.final_image),
                        _ => format!("now mixed: {}", gr.running.iter().map(|(i, n)| format!("{i} ×{n}")).collect::<Vec<_>>().join(", ")),
                    };
                    // The region, when the roll covered several or one other than the build region.
                    let elsewhere = m.regions.len() > 1 || m.regions.first().is_some_and(|r| *r != m.region);
                    let region = match (&gr.account, elsewhere) {
                        (Some(a), _) => format!(" ({} of {a})", gr.region),
                        (None, true) => format!(" ({})", gr.region),
                        (None, false) => String::new(),
                    };
                    text.push_str(&format!("{}{region}{}: {} ({now})\n", gr.name, if gr.canary { " [canary]" } else { "" }, gr.outcome));
                }
                if !text.is_empty() {
                    out(&text);
                }
            }
        }
    }
    if let Some(e) = &m.error {
        eprintln!("error: roll of {}/{}: {e}", m.role, m.env);
    }
    for l in &m.leftovers {
        eprintln!("  left: {l}");
    }
    match m.status {
        RollStatus::Interrupted => ExitStatus::Interrupted,
        RollStatus::Failed | RollStatus::Leftovers => ExitStatus::Failure,
        _ => ExitStatus::Success,
    }
}
