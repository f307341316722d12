//! One bake: the stages in order (source → iam → launch → agent → provision → image →
//! distribute), every created resource journaled first, cleanup always (reverse order).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::aws::{Aws, Clients};
use crate::error::{Error, Result};
use crate::journal::{self, BakeId, Entry, Journal, Kind, Resource};
use crate::manifest::{Manifest, StepRecord};
use crate::plan::Plan;
use crate::progress::Reporter;
use crate::stages;

/// What the operator asked for, beyond the plan.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Keep the builder (and everything else) when a stage fails, for debugging.
    pub keep_on_error: bool,
    pub git_sha: Option<String>,
}

/// A journal shared by the stages (copies run in parallel and journal as they go).
#[derive(Clone)]
pub struct JournalHandle(Arc<Mutex<Journal>>);

impl JournalHandle {
    pub fn new(j: Journal) -> Self {
        JournalHandle(Arc::new(Mutex::new(j)))
    }
    pub fn append(&self, e: Entry) -> Result<()> {
        let mut j = self.0.lock().map_err(|_| Error::Other("the journal lock was poisoned".into()))?;
        j.append(&e)
    }
    pub fn path(&self) -> String {
        self.0.lock().map(|j| j.path.display().to_string()).unwrap_or_default()
    }
    pub fn created(&self, r: Resource) -> Result<()> {
        self.append(Entry::Created { resource: r, at: journal::now_rfc3339() })
    }
}

/// Cancellation: flips to true on Ctrl-C or SIGTERM.
pub type Cancel = watch::Receiver<bool>;

pub async fn cancelled(mut c: Cancel) {
    loop {
        if *c.borrow() {
            return;
        }
        if c.changed().await.is_err() {
            // The sender is gone: nobody can cancel any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Everything a running bake holds.
pub struct Ctx {
    pub id: BakeId,
    pub plan: Plan,
    pub region: String,
    pub aws: Aws,
    pub c: Clients,
    pub journal: JournalHandle,
    pub report: Reporter,
    pub manifest: Manifest,
    pub opts: Options,
    pub source: Option<stages::source::SourceImage>,
    pub fingerprint: String,
    pub instance: Option<String>,
    /// Region → image id, in the order made (build region first).
    pub images: Vec<(String, String)>,
    pub stage_started: Instant,
    /// AMI Block Public Access per region, read before sharing there.
    pub public_access: Mutex<BTreeMap<String, String>>,
}

impl Ctx {
    /// Tags every bake resource carries.
    pub fn base_tags(&self) -> BTreeMap<String, String> {
        let mut t = BTreeMap::new();
        t.insert(crate::tags::ID.to_string(), self.id.to_string());
        t.insert(crate::tags::ROLE.to_string(), self.plan.role.clone());
        t.insert(crate::tags::ENV.to_string(), self.plan.env.clone());
        t.insert(crate::tags::MANAGED.to_string(), "true".to_string());
        t.insert(crate::tags::CREATED.to_string(), self.manifest.started_at.clone());
        t
    }

    /// Tags of the image and its snapshots: the role's, then provenance.
    pub fn image_tags(&self, name: &str) -> BTreeMap<String, String> {
        let mut t: BTreeMap<String, String> = self.plan.image.tags.clone();
        t.extend(self.base_tags());
        t.insert("Name".to_string(), name.to_string());
        if let Some(s) = &self.source {
            t.insert(crate::tags::SOURCE_AMI.to_string(), s.id.clone());
        }
        t.insert(crate::tags::FINGERPRINT.to_string(), self.fingerprint.clone());
        let mut cookbooks = self.plan.run_list.join(",");
        cookbooks.truncate(256);
        t.insert(crate::tags::COOKBOOKS.to_string(), cookbooks);
        if let Some(sha) = &self.opts.git_sha {
            t.insert(crate::tags::GIT_SHA.to_string(), sha.clone());
        }
        t
    }

    pub fn created(&self, kind: Kind, id: &str, region: &str) -> Result<()> {
        self.journal.created(Resource::new(kind, id, region))
    }

    /// Marks the end of a stage in the manifest and starts timing the next.
    pub fn stage(&mut self, name: &str, detail: &str) {
        self.report.stage(name, detail);
        self.stage_started = Instant::now();
    }

    pub fn stage_done(&mut self, name: &str) {
        let secs = self.stage_started.elapsed().as_secs_f64();
        *self.manifest.stages.entry(name.to_string()).or_default() += secs;
    }
}

/// Runs the stages; on success the images are kept and the temporaries removed; on failure or
/// interruption everything this bake made is removed (unless `keep_on_error`, for failures).
pub async fn run(ctx: &mut Ctx, cancel: Cancel) -> Result<()> {
    ctx.manifest.steps = ctx
        .plan
        .steps
        .iter()
        .map(|s| StepRecord { cookbook: s.cookbook.clone(), step: s.step.clone(), sha256: s.sha256.clone(), status: "not-run".into(), ..Default::default() })
        .collect();
    let result = tokio::select! {
        r = stages(ctx) => r,
        _ = cancelled(cancel) => Err(Error::Interrupted),
    };
    finish(ctx, result).await
}

/// Brings an unchanged image's distribution up to date (its images are `ctx.images`): copies to
/// regions without one, shares, deprecation, parameters. Journaled and cleaned up as a bake is:
/// on failure the new copies go and the parameters are put back.
pub async fn redistribute(ctx: &mut Ctx, cancel: Cancel) -> Result<()> {
    let result = tokio::select! {
        r = async {
            ctx.stage("distribute", "copying, sharing, publishing the unchanged image");
            stages::distribute::run(ctx).await?;
            ctx.stage_done("distribute");
            Ok(())
        } => r,
        _ = cancelled(cancel) => Err(Error::Interrupted),
    };
    finish(ctx, result).await
}

/// After the stages: on success the products are kept and the temporaries removed; on failure
/// or interruption everything this bake made is removed (unless `keep_on_error`, for failures).
async fn finish(ctx: &mut Ctx, result: Result<()>) -> Result<()> {
    let interrupted = matches!(result, Err(Error::Interrupted));
    match &result {
        Ok(()) => {
            ctx.stage("cleanup", "removing the builder and its temporary role");
            let errs = stages::cleanup::after_success(ctx).await;
            ctx.stage_done("cleanup");
            // The image exists; what cleanup could not remove is named, the bake ends with exit
            // 1, and `bake cleanup ID` finishes it (keeping the image and its parameters: the
            // journal says the bake succeeded).
            for e in &errs {
                ctx.report.info(&format!("cleanup left {e}"));
            }
            ctx.manifest.leftovers = errs.iter().map(|e| e.to_string()).collect();
            let status = if errs.is_empty() { "succeeded" } else { "leftovers" };
            ctx.journal.append(Entry::Finished { status: status.into(), at: journal::now_rfc3339() })?;
        }
        Err(e) => {
            if ctx.opts.keep_on_error && !interrupted {
                ctx.report.info(&format!(
                    "failed: {e}\n  everything is kept for debugging (builder {}); remove it with: bake cleanup {}",
                    ctx.instance.as_deref().unwrap_or("-"),
                    ctx.id
                ));
                ctx.journal.append(Entry::Finished { status: "failed-kept".into(), at: journal::now_rfc3339() })?;
                return result;
            }
            ctx.stage("cleanup", "removing everything this bake made");
            let errs = stages::cleanup::after_failure(ctx).await;
            ctx.stage_done("cleanup");
            for e in &errs {
                ctx.report.info(&format!("cleanup: {e}"));
            }
            let status = if interrupted { "interrupted" } else { "failed" };
            if errs.is_empty() {
                ctx.journal.append(Entry::Finished { status: status.into(), at: journal::now_rfc3339() })?;
            } else {
                ctx.report.info(&format!("some resources remain; finish with: bake cleanup {}", ctx.id));
            }
        }
    }
    result
}

async fn stages(ctx: &mut Ctx) -> Result<()> {
    ctx.stage("iam", "creating the builder's temporary role and instance profile");
    let (role, profile) = stages::iam::create(ctx).await?;
    ctx.stage_done("iam");

    ctx.stage("launch", "launching the builder");
    stages::launch::launch(ctx, &role, &profile).await?;
    ctx.stage_done("launch");

    ctx.stage("agent", "waiting for the SSM agent");
    stages::launch::wait_agent(ctx, None).await?;
    ctx.stage_done("agent");

    stages::provision::run_all(ctx).await?;

    ctx.stage("image", "stopping the builder");
    stages::image::create(ctx).await?;
    ctx.stage_done("image");

    ctx.stage("distribute", "copying, sharing, publishing");
    stages::distribute::run(ctx).await?;
    ctx.stage_done("distribute");
    Ok(())
}

impl Ctx {
    /// The role's variables, for the image name template.
    pub fn plan_vars(&self) -> &std::collections::BTreeMap<String, String> {
        &self.plan.vars
    }
}
