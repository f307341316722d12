//! One bake, start to end: resolve the source image, reuse an unchanged image (or only bring its
//! distribution up to date), else start the journal and run the stages in order (iam → launch →
//! agent → provision → image → distribute), every created resource journaled first; teardown
//! always (the temporaries after success; everything after a failure or an interruption).

use std::path::Path;
use std::time::Instant;

use tracing::Instrument;

use crate::aws::Aws;
use crate::error::{Error, Result};
use crate::journal::{self, BakeId, Entry, Journal, JournalHandle};
use crate::manifest::{Manifest, StepRecord};
use crate::plan::{bake_fingerprint, Plan};
use crate::progress::Reporter;
use crate::signals::{cancelled, Active, Cancel};
use crate::stages::{self, Baking, Options};
use crate::status::{Finish, Status};

/// Where and how one bake runs.
pub struct Bake<'a> {
    /// The project folder (its `.bake/journal` holds the journal).
    pub root: &'a Path,
    pub aws: &'a Aws,
    pub region: String,
    pub plan: &'a Plan,
    pub opts: Options,
    pub report: Reporter,
    /// The bakes running in this process, for the second Ctrl-C's message.
    pub active: Active,
    /// The role/env lock this bake holds: it is told the bake's id once there is one.
    pub lock: Option<&'a crate::lock::Held>,
}

/// Bakes `b.plan` in `b.region` (or reuses / redistributes its unchanged image), filling in
/// `manifest`; its status is left empty for a bake that ran its stages (the caller decides
/// `succeeded` or `leftovers`).
pub async fn bake(b: Bake<'_>, manifest: &mut Manifest, cancel: Cancel) -> Result<()> {
    let span = tracing::debug_span!("bake", role = %b.plan.role, env = %b.plan.env, region = %b.region);
    bake_in(b, manifest, cancel).instrument(span).await
}

async fn bake_in(b: Bake<'_>, manifest: &mut Manifest, cancel: Cancel) -> Result<()> {
    let Bake { root, aws, region, plan, opts, report, active, lock } = b;
    let c = aws.clients(&region);
    report.stage("source", "resolving the source image");
    let t = Instant::now();
    let source = stages::source::resolve(&c, &plan.source).instrument(tracing::debug_span!("stage", name = "source")).await?;
    manifest.source = Some(source.record(&plan.source));
    manifest.stages.insert("source".into(), t.elapsed().as_secs_f64());
    // An architecture's bake starts from an image of that architecture: a mislabelled source
    // would publish an image under the wrong architecture's parameter.
    if let Some(a) = plan.arch.as_ref().filter(|_| plan.architectures.len() > 1) {
        if source.architecture != *a {
            return Err(Error::Other(format!(
                "source image {} ({}) is {}, not {a}: roles/{}.toml architectures.{a} must name a {a} source; nothing was created",
                source.id,
                source.name,
                if source.architecture.is_empty() { "of no stated architecture" } else { source.architecture.as_str() },
                plan.role
            )));
        }
    }
    // Every workload account's role can be assumed: a denial is found before anything exists.
    for a in &plan.rollout.accounts {
        stages::distribute::assume(aws, a, &plan.role, "check").await.map_err(|e| Error::Other(format!("{e}; nothing was created")))?;
    }
    if opts.patch {
        manifest.lineage = stages::source::lineage(&c, &source.id).await;
    }
    let fingerprint = bake_fingerprint(&plan.fingerprint, &source.id);
    manifest.fingerprint = fingerprint.clone();
    report.stage("source", &format!("{} ({})", source.id, source.name));
    // An unchanged role reuses its image; when only its distribution changed (regions, shares,
    // deprecation, parameter), that is brought up to date without baking.
    let mut redistribute = None;
    if !opts.force {
        if let Some(img) = stages::source::finished_image(&c, plan, &fingerprint).await? {
            let present = stages::distribute::present(aws, plan, (&region, &img), &fingerprint).await?;
            let id = crate::aws::required(img.image_id(), "ec2:DescribeImages", "the image id of the unchanged image", &region)?;
            if present.gaps.is_empty() {
                manifest.status = Status::Reused;
                manifest.images = present.images.into_iter().collect();
                report.info(&format!("unchanged: {id} already has fingerprint {fingerprint}; nothing launched (use --force to bake again)"));
                return Ok(());
            }
            report.info(&format!("unchanged: {id} already has fingerprint {fingerprint}; redistributing it ({})", present.gaps.join("; ")));
            redistribute = Some(present);
        }
    }
    if *cancel.borrow() {
        return Err(Error::Interrupted);
    }
    let id = BakeId::new();
    manifest.bake_id = id.to_string();
    let mut j = Journal::create(root, &id)?;
    manifest.journal = j.path.display().to_string();
    j.append(&Entry::Started {
        bake_id: id.clone(),
        role: plan.role.clone(),
        env: plan.env.clone(),
        region: region.clone(),
        pid: std::process::id(),
        host: journal::hostname(),
        at: journal::now_rfc3339(),
        regions: std::iter::once(region.clone()).chain(plan.image.regions.iter().cloned()).collect(),
    })?;
    if let Some(l) = lock {
        if let Err(e) = l.attach(id.as_str()).await {
            report.info(&format!("warning: the lock does not name bake {id}: {e}"));
        }
    }
    if let Some(r) = crate::remote::get() {
        if let Err(e) = r.record_started(root, manifest).await {
            report.info(&format!("warning: the start of bake {id} was not recorded in the shared state: {e}"));
        }
    }
    if let Ok(mut a) = active.lock() {
        a.push(id.clone());
    }
    report.info(&format!("bake {id} started (journal {})", j.path.display()));
    let mut ctx = Baking {
        id: id.clone(),
        root: root.to_path_buf(),
        plan: plan.clone(),
        region,
        aws: aws.clone(),
        c,
        journal: JournalHandle::new(j),
        report,
        manifest: std::mem::take(manifest),
        opts,
        source,
        fingerprint,
        stage_started: Instant::now(),
        public_access: Default::default(),
        fresh: Default::default(),
    };
    let r = match redistribute {
        Some(present) => {
            ctx.manifest.images = present.images.into_iter().collect();
            ctx.manifest.status = Status::Redistributed;
            run(&mut ctx, cancel, Work::Redistribute).await
        }
        None => run(&mut ctx, cancel, Work::Bake).await,
    };
    *manifest = ctx.manifest;
    if let Ok(mut a) = active.lock() {
        a.retain(|x| *x != id);
    }
    r
}

/// What a started bake does: every stage, or only the distribution of an unchanged image.
enum Work {
    Bake,
    Redistribute,
}

/// Runs the work; on success the products are kept and the temporaries removed; on failure or
/// interruption everything this bake made is removed (unless `keep_on_error`, for failures).
async fn run(ctx: &mut Baking, cancel: Cancel, work: Work) -> Result<()> {
    if matches!(work, Work::Bake) {
        ctx.manifest.steps = ctx
            .plan
            .steps
            .iter()
            .map(|s| StepRecord {
                cookbook: s.cookbook.clone(),
                step: s.step.clone(),
                sha256: s.sha256.clone(),
                status: "not-run".into(),
                ..Default::default()
            })
            .collect();
    }
    let result = tokio::select! {
        r = async {
            match work {
                Work::Bake => stages(ctx).await,
                Work::Redistribute => {
                    ctx.stage("distribute", "copying, sharing, publishing the unchanged image");
                    stages::distribute::run(ctx).await?;
                    ctx.stage_done("distribute");
                    Ok(())
                }
            }
        } => r,
        _ = cancelled(cancel) => Err(Error::Interrupted),
    };
    finish(ctx, result).await
}

/// After the stages: on success the products are kept and the temporaries removed; on failure
/// or interruption everything this bake made is removed (unless `keep_on_error`, for failures).
async fn finish(ctx: &mut Baking, result: Result<()>) -> Result<()> {
    let interrupted = matches!(result, Err(Error::Interrupted));
    match &result {
        Ok(()) => {
            ctx.stage("cleanup", "removing the builder and its temporary role");
            let errs = stages::teardown::after_success(ctx).instrument(tracing::debug_span!("stage", name = "cleanup")).await;
            ctx.stage_done("cleanup");
            // The image exists; what cleanup could not remove is named, the bake ends with exit
            // 1, and `bake cleanup ID` finishes it (keeping the image and its parameters: the
            // journal says the bake succeeded).
            for e in &errs {
                ctx.report.info(&format!("cleanup left {e}"));
            }
            ctx.manifest.leftovers = errs.iter().map(|e| e.to_string()).collect();
            let status = if errs.is_empty() && ctx.manifest.unpublished.is_empty() { Finish::Succeeded } else { Finish::Leftovers };
            ctx.journal.append(Entry::Finished { status, at: journal::now_rfc3339() })?;
        }
        Err(e) => {
            if ctx.opts.keep_on_error && !interrupted {
                ctx.report.info(&format!(
                    "failed: {e}\n  everything is kept for debugging (builder {}); remove it with: bake cleanup {}",
                    ctx.manifest.builder.as_ref().map(|b| b.instance_id.as_str()).unwrap_or("-"),
                    ctx.id
                ));
                ctx.journal.append(Entry::Finished { status: Finish::FailedKept, at: journal::now_rfc3339() })?;
                return result;
            }
            ctx.stage("cleanup", "removing everything this bake made");
            let left = stages::teardown::after_failure(ctx).instrument(tracing::debug_span!("stage", name = "cleanup")).await;
            ctx.stage_done("cleanup");
            for e in &left.errors {
                ctx.report.info(&format!("cleanup: {e}"));
            }
            let status = if interrupted { Finish::Interrupted } else { Finish::Failed };
            if !left.errors.is_empty() {
                ctx.report.info(&format!("some resources remain; finish with: bake cleanup {}", ctx.id));
            } else if let Some(e) = &left.unchecked {
                // The journal stays open: `bake cleanup ID` looks again.
                ctx.report.info(&format!("cleanup could not look for anything else tagged with this bake ({e}); check with: bake cleanup {}", ctx.id));
            } else {
                ctx.journal.append(Entry::Finished { status, at: journal::now_rfc3339() })?;
            }
        }
    }
    result
}

async fn stages(ctx: &mut Baking) -> Result<()> {
    ctx.stage("iam", "creating the builder's temporary role and instance profile");
    let identity = stages::iam::create(ctx).instrument(stage("iam")).await?;
    ctx.stage_done("iam");

    ctx.stage("launch", "launching the builder");
    let builder = stages::launch::launch(ctx, &identity).instrument(stage("launch")).await?;
    ctx.stage_done("launch");

    ctx.stage("agent", "waiting for the SSM agent");
    stages::launch::wait_agent(ctx, &builder, None).instrument(stage("agent")).await?;
    ctx.stage_done("agent");

    stages::provision::run_all(ctx, &builder).instrument(stage("provision")).await?;

    ctx.stage("inventory", "listing what the image holds");
    stages::inventory::take(ctx, &builder).instrument(stage("inventory")).await?;
    ctx.stage_done("inventory");

    ctx.stage("image", "stopping the builder");
    stages::image::create(ctx, &builder).instrument(stage("image")).await?;
    ctx.stage_done("image");

    ctx.stage("distribute", "copying, sharing, publishing");
    stages::distribute::run(ctx).instrument(stage("distribute")).await?;
    ctx.stage_done("distribute");
    Ok(())
}

/// A stage's span: with `-v`, where the bake's time goes (closed spans print their busy and idle time).
fn stage(name: &'static str) -> tracing::Span {
    tracing::debug_span!("stage", name)
}
