//! `bake build`: plans every role asked, then bakes them concurrently (bounded), one builder
//! each; an unchanged fingerprint reuses the existing image. One role failing neither stops nor
//! leaks the others.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};

use crate::aws::{Aws, Connection};
use crate::config::{CookbookCache, Problems, Project, VarInputs};
use crate::error::Error;
use crate::journal::{self};
use crate::manifest::{Manifest, RollStatus, Status};
use crate::pipeline;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::signals::{Active, Cancel};
use crate::stages::Options;

#[derive(Clone, Debug)]
pub struct Request {
    pub roles: Vec<String>,
    pub all: bool,
    pub env: String,
    pub force: bool,
    pub keep_on_error: bool,
    pub jobs: usize,
    pub region: Option<String>,
    /// Roll each role's groups onto its image afterwards.
    pub roll: bool,
    /// `bake patch`: what the patch is (its plan already holds the patch step).
    pub patch: Option<crate::manifest::PatchRecord>,
    /// When this role and env is being baked on this machine already: wait for it (else fail).
    pub wait_for_lock: bool,
    /// `bake patch --affected`: what the new image must no longer hold; checked in the builder's
    /// inventory before any image is made (a patch that did not fix it fails and leaves nothing).
    pub fixes: Vec<crate::inventory::Vulnerable>,
}

/// Plans for every role asked (all roles with `all`); every problem, or the plans.
pub fn plans(project: &Project, req: &Request, vars: &VarInputs) -> std::result::Result<(Vec<Plan>, Vec<String>), Problems> {
    let names = if req.all { project.role_names().map_err(Problems::from)? } else { req.roles.clone() };
    let mut problems = Problems::default();
    let mut plans = Vec::new();
    let mut skipped = Vec::new();
    let policies = project.policies()?;
    let mut cache = CookbookCache::default();
    for name in &names {
        let rf = match project.role(name) {
            Ok(rf) => rf,
            Err(p) => {
                problems.extend(p);
                continue;
            }
        };
        if req.all && !rf.envs.contains(&req.env) {
            skipped.push(name.clone());
            continue;
        }
        // One plan per architecture the role bakes.
        match rf.resolve_all(&req.env, vars) {
            Ok(roles) => {
                for r in roles {
                    match project.plan_with(&rf, &r, &mut cache, &policies) {
                        Ok(p) => plans.push(p),
                        Err(p) => problems.extend(p),
                    }
                }
            }
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() && plans.is_empty() {
        problems.push(crate::config::Problem::new("roles", "", format!("no role has an environment `{}`", req.env)));
    }
    problems.into_result((plans, skipped))
}

/// `git rev-parse HEAD` of the project, `+dirty` when tracked files changed.
pub fn git_sha(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git").arg("-C").arg(root).args(["rev-parse", "HEAD"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{sha}+dirty") } else { sha })
}

#[allow(clippy::too_many_arguments)]
async fn bake_one(root: PathBuf, base: Aws, plan: Plan, req: Request, progress: Progress, cancel: Cancel, active: Active, git: Option<String>) -> Manifest {
    let started = Instant::now();
    let label = plan.label();
    let report = progress.task(&label);
    let aws = base.counted();
    let mut manifest = Manifest {
        kind: if req.patch.is_some() { "patch".into() } else { "bake".into() },
        // A patch's parent is its plan's source (patches of several roles run at once).
        patch: req.patch.clone().map(|mut p| {
            if let crate::config::role::SourceSpec::Ami { id } = &plan.source {
                p.parent = id.clone();
            }
            p
        }),
        role: plan.role.clone(),
        env: plan.env.clone(),
        arch: plan.arch.clone().filter(|_| plan.architectures.len() > 1),
        started_at: journal::now_rfc3339(),
        plan_fingerprint: plan.fingerprint.clone(),
        git_sha: git.clone(),
        ..Default::default()
    };
    let region = req.region.clone().or_else(|| plan.builder.spec.region.clone()).or_else(|| aws.default_region());
    let Some(region) = region else {
        manifest.status = Status::Failed;
        manifest.error = Some("no region: give --region, set builder.region in the role, or configure AWS_REGION".into());
        report.finish(&format!("failed: {}", manifest.error.clone().unwrap_or_default()));
        return manifest;
    };
    manifest.region = region.clone();
    // Held to the end of this bake (its roll included): one bake of a role and env at a time here.
    let what = format!("bake {} {}", if req.patch.is_some() { "patch" } else { "build" }, plan.label());
    // Each architecture of a role is its own bake, under its own lock.
    let lock_env = match &plan.arch {
        Some(a) if plan.architectures.len() > 1 => format!("{}.{a}", plan.env),
        _ => plan.env.clone(),
    };
    let lock = match crate::lock::acquire(&root, &plan.role, &lock_env, &what, req.wait_for_lock, &report, cancel.clone()).await {
        Ok(l) => l,
        Err(e) => {
            manifest.status = if matches!(e, Error::Interrupted) { Status::Interrupted } else { Status::Failed };
            manifest.error = Some(e.to_string());
            report.finish(&format!("{}: {e}", manifest.status));
            return manifest;
        }
    };
    let bake = pipeline::Bake {
        root: &root,
        aws: &aws,
        region: region.clone(),
        plan: &plan,
        opts: Options { keep_on_error: req.keep_on_error, force: req.force, patch: req.patch.is_some(), git_sha: git.clone(), fixes: req.fixes.clone() },
        report: report.clone(),
        active,
        lock: Some(&lock),
    };
    let result = match crate::aws::usable_region(region.clone(), "--region, builder.region or the AWS configuration") {
        Ok(_) => pipeline::bake(bake, &mut manifest, cancel.clone()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            let images: Vec<String> = manifest.images.iter().map(|(r, i)| format!("{} ({r})", i.ami_id)).collect();
            if matches!(manifest.status, Status::Running | Status::Redistributed) && !manifest.unpublished.is_empty() {
                let verb = if manifest.status == Status::Redistributed { "redistributed" } else { "baked" };
                manifest.status = Status::Leftovers;
                let e = format!(
                    "{verb} {}, but {} workload account parameter(s) were not published (the image is kept; build again to publish them): {}",
                    images.join(", "),
                    manifest.unpublished.len(),
                    manifest.unpublished.join("; ")
                );
                report.finish(&e);
                manifest.error = Some(e);
            } else if manifest.status == Status::Running && !manifest.leftovers.is_empty() {
                manifest.status = Status::Leftovers;
                let e = format!(
                    "baked {}, but cleanup left {} resource(s) behind; remove them with: bake cleanup {}",
                    images.join(", "),
                    manifest.leftovers.len(),
                    manifest.bake_id
                );
                report.finish(&e);
                manifest.error = Some(e);
            } else if manifest.status == Status::Running {
                manifest.status = Status::Succeeded;
                report.finish(&format!("baked {} in {:.0}s", images.join(", "), started.elapsed().as_secs_f64()));
            } else if manifest.status == Status::Redistributed && !manifest.leftovers.is_empty() {
                manifest.status = Status::Leftovers;
                manifest.error =
                    Some(format!("redistributed {}, but cleanup left something behind; finish with: bake cleanup {}", images.join(", "), manifest.bake_id));
                report.finish(manifest.error.as_deref().unwrap_or_default());
            } else if manifest.status == Status::Redistributed {
                report.finish(&format!("unchanged, redistributed: {}", images.join(", ")));
            } else {
                report.finish("unchanged");
            }
        }
        Err(Error::Interrupted) => {
            manifest.status = Status::Interrupted;
            manifest.error = Some("interrupted".into());
            report.finish("interrupted; cleaned up");
        }
        Err(e) => {
            manifest.status = Status::Failed;
            manifest.error = Some(e.to_string());
            report.finish(&format!("failed: {e}"));
        }
    }
    if req.roll && manifest.status.has_image() && !*cancel.borrow() {
        // A reused image may have been patched since: roll the newest image of the role then.
        let ami = if manifest.status == Status::Reused { None } else { manifest.images.get(&manifest.region).map(|i| i.ami_id.clone()) };
        let leftovers_before = manifest.status == Status::Leftovers;
        let rreq = crate::roll::Request {
            ami,
            plan_only: false,
            rollback: false,
            migrate: false,
            in_progress: crate::roll::InProgress::Fail,
            timeout: std::time::Duration::from_secs(3 * 3600),
            region: req.region.clone(),
            patch: false,
        };
        let r = crate::roll::run(&base, &plan, &rreq, progress.clone(), cancel.clone()).await;
        if r.status == RollStatus::Failed || r.status == RollStatus::Interrupted {
            manifest.status = if r.status == RollStatus::Interrupted { Status::Interrupted } else { Status::Failed };
            manifest.error = Some(format!("the image was baked, but rolling it out failed: {}", r.error.clone().unwrap_or_default()));
        } else if r.status == RollStatus::Leftovers && !leftovers_before {
            manifest.status = Status::Leftovers;
            manifest.error = r.error.clone();
        }
        manifest.roll = Some(r);
    }
    manifest.finished_at = journal::now_rfc3339();
    manifest.duration_secs = started.elapsed().as_secs_f64();
    manifest.api_calls = aws.calls.snapshot();
    for e in crate::notify::send(&aws, &plan.notify, &manifest).await {
        report.info(&format!("notification failed: {e}"));
    }
    manifest
}

pub async fn run(root: &Path, conn: &Connection, req: Request, plans: Vec<Plan>, progress: Progress) -> Vec<Manifest> {
    let base = Aws::load(conn).await;
    let active: Active = Arc::default();
    let cancel = crate::signals::watch(active.clone());
    let git = git_sha(root);
    let jobs = req.jobs.max(1);
    stream::iter(
        plans.into_iter().map(|p| bake_one(root.to_path_buf(), base.clone(), p, req.clone(), progress.clone(), cancel.clone(), active.clone(), git.clone())),
    )
    .buffer_unordered(jobs)
    .collect()
    .await
}
