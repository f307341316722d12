//! `bake roll`: move a role's Auto Scaling groups onto an image. Canary groups first; the rest
//! after the canaries succeed (and an optional bake time), a few at a time. Launch-template groups
//! get a new numbered version made from the one they use; launch-configuration groups a copy of
//! theirs. Instance refresh replaces the instances; when any group fails, every group that moved
//! goes back to its previous image.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tracing::Instrument;

use crate::aws::{Aws, Clients};
use crate::error::{Error, Result};
use crate::journal::BakeId;
use crate::manifest::{GroupOutcome, GroupRecord, RollManifest, RollStatus};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::signals::{cancelled, Cancel};
mod discover;
mod group;
mod launch_config;
pub mod plan;

pub use discover::newest_image;
use discover::{architectures, census, check_image, configured_images, discover, template_version};
use group::{restore, roll_group, Rolling};
use plan::{self as rollout, Change, GroupPlan, GroupState, PlanOptions, RolloutPlan, Source};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InProgress {
    Fail,
    Wait,
    Replace,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub ami: Option<String>,
    pub plan_only: bool,
    pub rollback: bool,
    pub migrate: bool,
    pub in_progress: InProgress,
    pub timeout: Duration,
    pub region: Option<String>,
    pub patch: bool,
}

pub(crate) const TAG_IMAGE: &str = crate::tags::IMAGE;
pub(crate) const TAG_PREVIOUS_IMAGE: &str = crate::tags::PREVIOUS_IMAGE;
pub(crate) const TAG_PREVIOUS_VERSION: &str = crate::tags::PREVIOUS_VERSION;
pub(crate) const TAG_PREVIOUS_VERSIONS: &str = crate::tags::PREVIOUS_VERSIONS;
pub(crate) const TAG_PREVIOUS_LC: &str = crate::tags::PREVIOUS_LAUNCH_CONFIGURATION;
pub(crate) const TAG_ROLL: &str = crate::tags::ROLL_ID;

pub(crate) fn asg_err<E>(
    action: &str,
    group: &str,
    region: &str,
    e: &aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> Error
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    Error::aws(action, format!("group {group}"), region, e)
}

/// Runs a rollout plan: canaries, bake time, the rest; everything back on any failure.
async fn execute(cx: &Rolling, plan: &RolloutPlan) -> (Vec<GroupRecord>, Result<()>) {
    let conc = plan.concurrency as usize;
    let run = |gs: Vec<GroupPlan>| async move {
        stream::iter(gs.into_iter().map(|g| async move {
            let mut rec = GroupRecord::default();
            let r = roll_group(cx, plan, &g, &mut rec).instrument(tracing::debug_span!("group", name = %g.name)).await;
            if let Err(e) = &r {
                cx.fail();
                if rec.error.is_none() {
                    rec.error = Some(e.to_string());
                }
                if rec.outcome == GroupOutcome::Pending {
                    rec.outcome = GroupOutcome::Failed;
                }
            }
            (g, rec, r)
        }))
        .buffer_unordered(conc)
        .collect::<Vec<_>>()
        .await
    };
    let mut done = run(plan.canaries.clone()).await;
    let canaries_ok = done.iter().all(|(_, _, r)| r.is_ok());
    // An alarm that fires during the canaries' bake time stops the roll.
    let mut gate: Option<String> = None;
    if canaries_ok && !*cx.cancel.borrow() && !plan.rest.is_empty() && plan.canary_bake_time.0 > 0 && !plan.canaries.is_empty() {
        let watching = if plan.alarms.is_empty() { String::new() } else { format!(", watching {}", plan.alarms.join(", ")) };
        cx.report.task(&plan.role).info(&format!("canaries healthy; waiting {} before the rest{watching}", plan.canary_bake_time));
        tokio::select! {
            r = crate::wait::alarms_quiet(&cx.c, &plan.alarms, plan.canary_bake_time.as_duration()) => match r {
                Ok(None) => {}
                Ok(Some(fired)) => gate = Some(format!("{fired}, during the canaries' bake time: the canaries go back and no other group starts")),
                Err(e) => gate = Some(format!("watching the alarms failed: {e}")),
            },
            _ = cancelled(cx.cancel.clone()) => {},
        }
    }
    if canaries_ok && gate.is_none() && !*cx.cancel.borrow() && !plan.rest.is_empty() {
        done.extend(run(plan.rest.clone()).await);
    } else {
        for g in &plan.rest {
            done.push((
                g.clone(),
                GroupRecord {
                    name: g.name.clone(),
                    canary: false,
                    outcome: GroupOutcome::NotStarted,
                    previous_image: g.current_image.clone(),
                    new_image: g.new_image.clone(),
                    ..Default::default()
                },
                Ok(false),
            ));
        }
    }
    let interrupted = *cx.cancel.borrow();
    let failure = gate.or_else(|| done.iter().find_map(|(_, _, r)| r.as_ref().err().map(|e| e.to_string())));
    if failure.is_none() && !interrupted {
        let recs = done.into_iter().map(|(_, r, _)| r).collect();
        return (recs, Ok(()));
    }
    // Everything that moved goes back.
    let back = stream::iter(done.into_iter().map(|(g, mut rec, r)| async move {
        let moved = match &r {
            Ok(m) => *m,
            Err(_) => rec.moved,
        };
        if moved {
            if let Err(e) = restore(cx, plan, &g, &mut rec).instrument(tracing::debug_span!("rollback", group = %g.name)).await {
                rec.outcome = GroupOutcome::RollbackFailed;
                rec.error = Some(e.to_string());
            }
        } else if rec.outcome == GroupOutcome::Pending {
            rec.outcome = GroupOutcome::NotStarted;
        }
        rec
    }))
    .buffer_unordered(conc)
    .collect::<Vec<_>>()
    .await;
    let err = if interrupted { Error::Interrupted } else { Error::Other(failure.unwrap_or_else(|| "the rollout failed".into())) };
    (back, Err(err))
}

/// `bake roll` (and the roll of `bake build --roll`).
pub async fn run(base: &Aws, plan: &Plan, req: &Request, progress: Progress, cancel: Cancel) -> RollManifest {
    let started = Instant::now();
    let aws = base.counted();
    let roll_id = BakeId::new();
    let mut m = RollManifest { roll_id: roll_id.to_string(), role: plan.role.clone(), env: plan.env.clone(), ..Default::default() };
    let region = req.region.clone().or_else(|| plan.builder.spec.region.clone()).or_else(|| aws.default_region());
    let Some(region) = region else {
        m.status = RollStatus::Failed;
        m.error = Some("no region: give --region, set builder.region in the role, or configure AWS_REGION".into());
        return m;
    };
    m.region = region.clone();
    let c = aws.clients(&region);
    let result: Result<()> = async {
        crate::aws::usable_region(region.clone(), "--region, builder.region or the AWS configuration")?;
        let groups = discover(&c, plan).await?;
        if req.rollback {
            return rollback_on_demand(&c, plan, groups, &progress, cancel.clone(), req, &mut m).await;
        }
        let ami = match &req.ami {
            Some(a) => a.clone(),
            None => newest_image(&c, &plan.role, &plan.env).await?,
        };
        let arch = check_image(&c, &ami).await?;
        m.ami = ami.clone();
        // Every instance type a group launches must run the image's architecture.
        let mut types: Vec<String> = groups
            .iter()
            .flat_map(|g| match &g.source {
                Source::Mixed { templates, .. } => templates.iter().flat_map(|t| t.instance_types.clone()).collect::<Vec<String>>(),
                _ => g.instance_type.iter().cloned().collect(),
            })
            .collect();
        types.sort();
        types.dedup();
        if !types.is_empty() {
            let arch_of = architectures(&c, &types).await.map_err(|e| Error::Other(format!("the groups' instance types: {e}; nothing changed")))?;
            rollout::check_architectures(&groups, &ami, &arch, &arch_of).map_err(Error::Other)?;
        }
        // The alarms that gate the roll exist here, and none fires now.
        if !plan.rollout.alarms.is_empty() {
            let states = c.alarm_states(&plan.rollout.alarms).await?;
            for a in &plan.rollout.alarms {
                match states.get(a) {
                    None => {
                        return Err(Error::Other(format!(
                            "rollout.alarms of roles/{}.toml: CloudWatch has no alarm named {a} in {region}; nothing changed",
                            plan.role
                        )))
                    }
                    Some((state, reason)) if state == "ALARM" => {
                        return Err(Error::Other(format!(
                            "alarm {a} is in ALARM in {region} ({}): bake starts no roll while it fires; nothing changed",
                            crate::error::one_line(reason)
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        let rp = rollout::plan(
            &plan.role,
            &plan.env,
            &region,
            &ami,
            roll_id.as_str(),
            &plan.rollout,
            groups,
            PlanOptions { migrate_to_launch_template: req.migrate, patch: req.patch },
        )
        .map_err(Error::Other)?;
        if req.plan_only {
            m.status = RollStatus::Planned;
            for g in rp.groups() {
                m.groups.push(GroupRecord {
                    name: g.name.clone(),
                    canary: g.canary,
                    previous_image: g.current_image.clone(),
                    new_image: g.new_image.clone(),
                    outcome: if g.change == Change::Nothing { GroupOutcome::Unchanged } else { GroupOutcome::Planned },
                    final_image: g.current_image.clone(),
                    ..Default::default()
                });
            }
            progress.task(&plan.role).info(&rp.to_string());
            return Ok(());
        }
        let cx = Rolling::new(&c, plan, req, &progress, cancel.clone());
        let (recs, r) = execute(&cx, &rp).await;
        m.groups = recs;
        m.leftovers = cx.take_leftovers();
        r
    }
    .await;
    // What each group runs when the roll ends: a census of its instances, not what was meant.
    if m.status != RollStatus::Planned && !m.groups.is_empty() {
        let names: Vec<String> = m.groups.iter().map(|g| g.name.clone()).collect();
        match census(&c, &names).await {
            Ok(running) => {
                let configured = configured_images(&c, plan, names.clone()).await;
                for g in &mut m.groups {
                    g.running = running.get(&g.name).cloned().unwrap_or_default();
                    g.final_image = match g.running.len() {
                        0 => configured.get(&g.name).cloned().unwrap_or_default(),
                        1 => g.running.keys().next().cloned().unwrap_or_default(),
                        _ => "mixed".into(),
                    };
                }
            }
            Err(e) => {
                for g in &mut m.groups {
                    g.final_image = "unknown".into();
                }
                progress.task(&plan.role).info(&format!("could not tell what the groups run now: {e}"));
            }
        }
    }
    m.groups.sort_by(|a, b| b.canary.cmp(&a.canary).then(a.name.cmp(&b.name)));
    match result {
        Ok(()) if m.status == RollStatus::Running && !m.leftovers.is_empty() => {
            m.status = RollStatus::Leftovers;
            m.error = Some(format!("every group rolled, but {} thing(s) the roll made could not be removed (listed as leftovers)", m.leftovers.len()));
        }
        Ok(()) if m.status == RollStatus::Running => {
            m.status = if m.groups.iter().all(|g| g.outcome == GroupOutcome::Unchanged) { RollStatus::Unchanged } else { RollStatus::Succeeded };
        }
        Ok(()) => {}
        Err(Error::Interrupted) => {
            m.status = RollStatus::Interrupted;
            m.error = Some("interrupted; every group that moved was put back".into());
        }
        Err(e) => {
            m.status = RollStatus::Failed;
            m.error = Some(e.to_string());
        }
    }
    m.duration_secs = started.elapsed().as_secs_f64();
    m.api_calls = aws.calls.snapshot();
    m
}

/// `bake roll --rollback`: every target group back to the previous image bake recorded on it.
async fn rollback_on_demand(
    c: &Clients,
    plan: &Plan,
    groups: Vec<GroupState>,
    progress: &Progress,
    cancel: Cancel,
    req: &Request,
    m: &mut RollManifest,
) -> Result<()> {
    let missing: Vec<String> = groups.iter().flat_map(|g| rollout::not_opted_in(&plan.role, &plan.env, g)).collect();
    if !missing.is_empty() {
        return Err(Error::Other(format!(
            "bake rolls back only groups their owners opted in to {}/{} (bake:role and bake:env tags); {}; nothing changed",
            plan.role,
            plan.env,
            missing.join("; ")
        )));
    }
    let mut gplans = Vec::new();
    for g in &groups {
        let recorded = g
            .tags
            .get(TAG_PREVIOUS_IMAGE)
            .cloned()
            .ok_or_else(|| Error::Other(format!("group {} has no previous image recorded by bake (tag {TAG_PREVIOUS_IMAGE}); nothing changed", g.name)))?;
        let change = match &g.source {
            Source::LaunchTemplate { id, name, .. } => {
                let from: i64 =
                    g.tags.get(TAG_PREVIOUS_VERSION).and_then(|v| v.parse().ok()).ok_or_else(|| {
                        Error::Other(format!("group {} has no previous launch template version recorded (tag {TAG_PREVIOUS_VERSION})", g.name))
                    })?;
                if let Some(lc) = g.tags.get(TAG_PREVIOUS_LC) {
                    Change::MigrateToTemplate { from: lc.clone(), template: name.clone() }
                } else {
                    Change::TemplateVersion { id: id.clone(), name: name.clone(), from, set_default: false, alias: None }
                }
            }
            Source::LaunchConfiguration { name, .. } => {
                let from = g
                    .tags
                    .get(TAG_PREVIOUS_LC)
                    .cloned()
                    .ok_or_else(|| Error::Other(format!("group {} has no previous launch configuration recorded (tag {TAG_PREVIOUS_LC})", g.name)))?;
                Change::LaunchConfiguration { from, to: name.clone() }
            }
            Source::Mixed { templates, policy, .. } => {
                let tag = g.tags.get(TAG_PREVIOUS_VERSIONS);
                let from = tag.and_then(|t| rollout::parse_previous_versions(t)).ok_or_else(|| {
                    Error::Other(format!("group {} has no previous launch template versions recorded (tag {TAG_PREVIOUS_VERSIONS}); nothing changed", g.name))
                })?;
                let mut moves = Vec::new();
                for t in templates {
                    let f = from.get(&t.id).copied().ok_or_else(|| {
                        Error::Other(format!(
                            "group {}: tag {TAG_PREVIOUS_VERSIONS} records no version of its launch template {}; nothing changed",
                            g.name, t.name
                        ))
                    })?;
                    moves.push(rollout::TemplateMove { id: t.id.clone(), name: t.name.clone(), from: f });
                }
                Change::Mixed { templates: moves, set_default: false, policy: policy.clone() }
            }
            Source::Unsupported { why } => return Err(Error::Other(format!("group {}: {why}", g.name))),
        };
        // The image the group goes back to is what its previous version or configuration
        // launches (the tag only says which that is), and it must still exist: every group's is
        // checked before anything changes.
        let prev_image = match &change {
            Change::TemplateVersion { id, from, .. } => template_version(c, id, &from.to_string()).await?.1,
            // What the policy's own template launched (every template's image is checked).
            Change::Mixed { templates, .. } => {
                let mut main = String::new();
                for t in templates {
                    let image = template_version(c, &t.id, &t.from.to_string()).await?.1;
                    check_image(c, &image).await.map_err(|e| Error::Other(format!("group {} cannot go back: {e}; nothing changed", g.name)))?;
                    if main.is_empty() {
                        main = image;
                    }
                }
                main
            }
            Change::LaunchConfiguration { from, .. } | Change::MigrateToTemplate { from, .. } => c
                .launch_configurations_named(std::slice::from_ref(from))
                .await?
                .first()
                .and_then(|l| l.image_id())
                .map(str::to_string)
                .unwrap_or_else(|| recorded.clone()),
            Change::Nothing => recorded.clone(),
        };
        if prev_image.is_empty() {
            return Err(Error::Other(format!("group {}: its previous version names no image; nothing changed", g.name)));
        }
        check_image(c, &prev_image).await.map_err(|e| Error::Other(format!("group {} cannot go back: {e}; nothing changed", g.name)))?;
        if prev_image != recorded {
            progress
                .task(&g.name)
                .info(&format!("goes back to {prev_image}, what its previous configuration launches (its tag {TAG_PREVIOUS_IMAGE} says {recorded})"));
        }
        gplans.push((
            GroupPlan {
                name: g.name.clone(),
                canary: plan.rollout.canaries.contains(&g.name),
                current_image: prev_image,
                new_image: g.source.image().unwrap_or_default().to_string(),
                change,
                refresh: plan.rollout.refresh.clone(),
                instances: g.instances,
                warm_pool: g.warm_pool,
                refresh_in_progress: g.refresh_in_progress.clone(),
                notes: Vec::new(),
            },
            g.tags.contains_key(TAG_PREVIOUS_VERSION) && g.tags.contains_key(TAG_PREVIOUS_LC),
        ));
    }
    let cx = Rolling::new(c, plan, req, progress, cancel);
    let rp = RolloutPlan {
        role: plan.role.clone(),
        env: plan.env.clone(),
        region: c.region.clone(),
        ami: String::new(),
        roll_id: m.roll_id.clone(),
        canaries: vec![],
        rest: vec![],
        concurrency: plan.rollout.concurrency.max(1),
        canary_bake_time: crate::config::Secs(0),
        alarms: Vec::new(),
    };
    let mut failed = None;
    for (g, _) in gplans {
        cx.clear_in_progress(&g, &cx.reporter(&g.name)).await?;
        let mut rec = GroupRecord {
            name: g.name.clone(),
            canary: g.canary,
            previous_image: g.new_image.clone(),
            new_image: g.current_image.clone(),
            ..Default::default()
        };
        if let Err(e) = restore(&cx, &rp, &g, &mut rec).await {
            failed.get_or_insert(e.to_string());
        }
        m.groups.push(rec);
    }
    m.leftovers = cx.take_leftovers();
    match failed {
        Some(e) => Err(Error::Other(e)),
        None => Ok(()),
    }
}
