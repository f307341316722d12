//! `bake roll`: move a role's Auto Scaling groups onto an image. Canary groups first; the rest
//! after the canaries succeed (and an optional bake time), a few at a time. Launch-template groups
//! get a new numbered version made from the one they use; launch-configuration groups a copy of
//! theirs. Instance refresh replaces the instances; when any group fails, every group that moved
//! goes back to its previous image.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tracing::Instrument;

use crate::aws::{Aws, Clients};
use crate::config::role::RolloutSpec;
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

use discover::{architectures, census, check_image, configured_images, copy_of, discover_in, image_facts, members, template_version};
pub use discover::{newest_image, newest_image_of};
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

/// One region a roll covers: its context and its groups' plan.
struct Site {
    cx: Rolling,
    plan: RolloutPlan,
}

/// A group once its turn ended: its site, plan, record, and whether it moved (or why it failed).
type Done = (usize, GroupPlan, GroupRecord, Result<bool>);

/// Runs every region's plan as one rollout: the canaries (of every region), their bake time with
/// the alarms and target groups watched, then the rest, `concurrency` groups at a time across
/// regions; on any failure every group that moved, in every region, goes back.
async fn execute(sites: &[Site], spec: &RolloutSpec, role: &str, progress: &Progress, cancel: &Cancel) -> (Vec<GroupRecord>, Result<()>) {
    let conc = spec.concurrency.max(1) as usize;
    let run = |gs: Vec<(usize, GroupPlan)>| async move {
        stream::iter(gs.into_iter().map(|(i, g)| async move {
            let Site { cx, plan } = &sites[i];
            let mut rec = GroupRecord::default();
            let r = roll_group(cx, plan, &g, &mut rec).instrument(tracing::debug_span!("group", name = %g.name, region = %cx.c.place())).await;
            // With several regions (or accounts) a group's name may be in each: its failure names its place.
            let r = match r {
                Err(Error::Other(e)) if sites.len() > 1 => Err(Error::Other(format!("{}: {e}", cx.c.place()))),
                r => r,
            };
            rec.region = cx.c.region.clone();
            rec.account = cx.c.account.clone();
            if let Err(e) = &r {
                cx.fail();
                if rec.error.is_none() {
                    rec.error = Some(e.to_string());
                }
                if rec.outcome == GroupOutcome::Pending {
                    rec.outcome = GroupOutcome::Failed;
                }
            }
            (i, g, rec, r)
        }))
        .buffer_unordered(conc)
        .collect::<Vec<Done>>()
        .await
    };
    let pick = |canary: bool| -> Vec<(usize, GroupPlan)> {
        sites.iter().enumerate().flat_map(|(i, s)| (if canary { &s.plan.canaries } else { &s.plan.rest }).iter().map(move |g| (i, g.clone()))).collect()
    };
    let (canaries, rest) = (pick(true), pick(false));
    let mut done = run(canaries.clone()).await;
    let canaries_ok = done.iter().all(|(_, _, _, r)| r.is_ok());
    // An alarm that fires, or a canary instance its target group finds unhealthy, during the
    // canaries' bake time stops the roll.
    let mut gate: Option<String> = None;
    if canaries_ok && !*cancel.borrow() && !rest.is_empty() && spec.canary_bake_time.0 > 0 && !canaries.is_empty() {
        match canary_watches(sites, spec, &canaries).await {
            Err(e) => gate = Some(format!("{e}: the canaries go back and no other group starts")),
            Ok(watches) => {
                let watching: Vec<String> = watches.iter().map(|w| w.to_string()).collect();
                let watching = if watching.is_empty() { String::new() } else { format!(", watching {}", watching.join("; ")) };
                progress.task(role).info(&format!("canaries healthy; waiting {} before the rest{watching}", spec.canary_bake_time));
                tokio::select! {
                    r = crate::wait::canaries_healthy(&watches, spec.canary_bake_time.as_duration()) => match r {
                        Ok(None) => {}
                        Ok(Some(hurt)) => gate = Some(format!("{hurt}, during the canaries' bake time: the canaries go back and no other group starts")),
                        Err(e) => gate = Some(format!("watching the canaries failed: {e}")),
                    },
                    _ = cancelled(cancel.clone()) => {},
                }
            }
        }
    }
    if canaries_ok && gate.is_none() && !*cancel.borrow() && !rest.is_empty() {
        done.extend(run(rest).await);
    } else {
        for (i, g) in rest {
            let rec = GroupRecord {
                name: g.name.clone(),
                region: sites[i].cx.c.region.clone(),
                account: sites[i].cx.c.account.clone(),
                canary: false,
                outcome: GroupOutcome::NotStarted,
                previous_image: g.current_image.clone(),
                new_image: g.new_image.clone(),
                ..Default::default()
            };
            done.push((i, g, rec, Ok(false)));
        }
    }
    let interrupted = *cancel.borrow();
    let failure = gate.or_else(|| done.iter().find_map(|(_, _, _, r)| r.as_ref().err().map(|e| e.to_string())));
    if failure.is_none() && !interrupted {
        return (done.into_iter().map(|(_, _, r, _)| r).collect(), Ok(()));
    }
    // Everything that moved, in every region, goes back.
    let back = stream::iter(done.into_iter().map(|(i, g, mut rec, r)| async move {
        let Site { cx, plan } = &sites[i];
        let moved = match &r {
            Ok(m) => *m,
            Err(_) => rec.moved,
        };
        if moved {
            if let Err(e) = restore(cx, plan, &g, &mut rec).instrument(tracing::debug_span!("rollback", group = %g.name, region = %cx.c.region)).await {
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

/// What the canaries' bake time watches: the role's alarms in every region rolled, and each
/// target group (rollout.target_groups) for the canary instances registered in it. A target group
/// that holds none of them cannot tell whether they are healthy: that stops the roll (the
/// canaries go back), as an error.
async fn canary_watches(sites: &[Site], spec: &RolloutSpec, canaries: &[(usize, GroupPlan)]) -> std::result::Result<Vec<crate::wait::Watch>, String> {
    let mut watches = Vec::new();
    if !spec.alarms.is_empty() {
        for s in sites {
            watches.push(crate::wait::Watch::Alarms { c: s.cx.c.clone(), names: spec.alarms.clone() });
        }
    }
    for arn in &spec.target_groups {
        let region = crate::config::limits::target_group_region(arn);
        // Checked before the roll started: every target group is in a region it covers.
        let Some((i, site)) = sites.iter().enumerate().find(|(_, s)| holds_target_group(&s.cx.c, arn, spec)) else { continue };
        let names: Vec<String> = canaries.iter().filter(|(j, _)| *j == i).map(|(_, g)| g.name.clone()).collect();
        let mut members = if names.is_empty() {
            Vec::new()
        } else {
            members(&site.cx.c, &names).await.map_err(|e| format!("listing the canaries' instances failed: {e}"))?
        };
        let registered = site.cx.c.target_health(arn).await.map_err(|e| format!("reading target group {arn} failed: {e}"))?;
        members.retain(|(id, _)| registered.iter().any(|(t, ..)| t == id));
        if members.is_empty() {
            return Err(format!(
                "target group {arn} holds none of the canaries' instances in {region} ({}), so it cannot tell whether they are healthy",
                if names.is_empty() { "no canary rolled there".to_string() } else { names.join(", ") }
            ));
        }
        watches.push(crate::wait::Watch::Targets { c: site.cx.c.clone(), arn: arn.clone(), instances: members });
    }
    Ok(watches)
}

/// Whether target group `arn` is where these clients act: its region, and its account (one of
/// rollout.accounts, or else bake's own).
fn holds_target_group(c: &Clients, arn: &str, spec: &RolloutSpec) -> bool {
    let account = crate::config::limits::target_group_account(arn);
    let theirs = spec.accounts.iter().any(|a| a.id == account);
    c.region == crate::config::limits::target_group_region(arn) && (if theirs { c.account.as_deref() == Some(account) } else { c.account.is_none() })
}

/// Another account (`c`'s) can launch `ami`: bake shared it there (every account in
/// rollout.accounts, when the image was built or redistributed).
async fn shared_with(c: &Clients, ami: &str, account: &str, role: &str) -> Result<()> {
    match c.ec2.describe_images().image_ids(ami).send().await {
        Ok(r) if r.images().iter().any(|i| i.image_id() == Some(ami) && i.state() == Some(&aws_sdk_ec2::types::ImageState::Available)) => {
            // Its snapshots too: an account launches an encrypted image only with them (and the
            // key) shared, and AWS shares none under the AWS managed key.
            let snaps: Vec<String> = r.images().iter().flat_map(crate::aws::snapshot_ids).collect();
            if snaps.is_empty() {
                return Ok(());
            }
            match c.ec2.describe_snapshots().set_snapshot_ids(Some(snaps.clone())).send().await {
                Ok(_) => Ok(()),
                Err(e) if code_starts(&e, "InvalidSnapshot") => {
                    Err(Error::Other(format!(
                        "the snapshots of image {ami} ({}) are not shared with account {account} in {}, so it cannot launch it (AWS shares none under the AWS managed key): `bake build {role}` shares them; nothing changed",
                        snaps.join(", "),
                        c.region
                    )))
                }
                Err(e) => Err(Error::aws("ec2:DescribeSnapshots", format!("the snapshots of image {ami} (as account {account})"), &c.region, &e)),
            }
        }
        Ok(_) => Err(Error::Other(format!("image {ami} is not available to account {account} in {}; nothing changed", c.region))),
        Err(e) if code_starts(&e, "InvalidAMIID") => Err(Error::Other(format!(
            "image {ami} is not shared with account {account} in {}: `bake build {role}` shares it with every account in rollout.accounts; nothing changed",
            c.region
        ))),
        Err(e) => Err(Error::aws("ec2:DescribeImages", format!("image {ami} (as account {account})"), &c.region, &e)),
    }
}

/// Whether AWS answered `e` with an error code starting with `prefix` (EC2's `InvalidAMIID.*`).
fn code_starts<E: aws_sdk_ec2::error::ProvideErrorMetadata>(
    e: &aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
    prefix: &str,
) -> bool {
    e.as_service_error().and_then(|s| s.code()).is_some_and(|c| c.starts_with(prefix))
}

fn way_back_lost(group: &str, place: &str, image: &str, account: &str) -> String {
    format!(
        "group {group} ({place}) runs {image}, which account {account} can no longer launch (not shared with it any more): a failed roll could not put it back; nothing changed"
    )
}

/// The groups a roll finds in one region.
struct Found {
    c: Clients,
    groups: Vec<GroupState>,
}

/// `bake roll` (and the roll of `bake build --roll`).
pub async fn run(base: &Aws, plan: &Plan, req: &Request, progress: Progress, cancel: Cancel) -> RollManifest {
    let started = Instant::now();
    let aws = base.counted();
    let roll_id = BakeId::new();
    let mut m = RollManifest { roll_id: roll_id.to_string(), role: plan.role.clone(), env: plan.env.clone(), ..Default::default() };
    // The build region: where the image the roll names is, its copies found from it. `--region`
    // only picks what to roll, unless it names a region the role does not copy to (then that
    // region's own images).
    let build = plan.builder.spec.region.clone().or_else(|| aws.default_region());
    let home = match (&req.region, build) {
        (Some(r), Some(b)) if *r == b || plan.image.regions.contains(r) => Some(b),
        (Some(r), _) => Some(r.clone()),
        (None, b) => b,
    };
    let Some(home) = home else {
        m.status = RollStatus::Failed;
        m.error = Some("no region: give --region, set builder.region in the role, or configure AWS_REGION".into());
        return m;
    };
    m.region = home.clone();
    let failed = Arc::new(tokio::sync::watch::Sender::new(false));
    // The regions whose groups the roll found (for the census), filled as they are.
    let mut covered: Vec<Clients> = Vec::new();
    let result: Result<()> = async {
        crate::aws::usable_region(home.clone(), "--region, builder.region or the AWS configuration")?;
        let regions =
            rollout::regions(&plan.role, &home, &plan.image.regions, &plan.rollout.regions, req.region.as_deref()).map_err(Error::Other)?;
        let named = regions.named;
        // The groups in every region they may be in, concurrently: a group or canary the role
        // names need only be in one of them (a role built and rolled in one region: in that one).
        // `--region` rolls what that region has of them.
        let strict = regions.candidates.len() == 1 && plan.image.regions.is_empty() && plan.rollout.accounts.is_empty();
        // Every other account's role is assumed first: a denial stops the roll before anything
        // changes. Each covers its own regions (default: all the roll's candidates).
        let mut places: Vec<Clients> = regions.candidates.iter().map(|r| aws.clients(r)).collect();
        for a in &plan.rollout.accounts {
            let there = aws
                .assume(&a.id, &a.role_arn, a.external_id.as_deref(), &format!("bake-{}", roll_id.as_str()))
                .await
                .map_err(|e| Error::Other(format!("rollout.accounts.{} of roles/{}.toml: {e}; nothing changed", a.id, plan.role)))?;
            for r in regions.candidates.iter().filter(|r| a.regions.is_empty() || a.regions.contains(r)) {
                places.push(there.clients(r));
            }
        }
        let found = futures::future::join_all(places.into_iter().map(|c| async move { discover_in(&c, plan, strict).await.map(|groups| Found { c, groups }) }))
            .await
            .into_iter()
            .collect::<Result<Vec<Found>>>()?;
        if !strict && req.region.is_none() {
            rollout::check_found(
                &plan.role,
                &plan.env,
                &plan.rollout,
                &found.iter().map(|f| (f.c.place(), f.groups.iter().map(|g| g.name.clone()).collect())).collect::<Vec<_>>(),
            )
            .map_err(Error::Other)?;
        }
        let found: Vec<Found> = found.into_iter().filter(|f| regions.roll.contains(&f.c.region)).collect();
        for f in found.iter().filter(|f| f.groups.is_empty()) {
            if named && f.c.account.is_none() {
                return Err(Error::Other(format!(
                    "{} ({} of roles/{}.toml) has none of the role's Auto Scaling groups; nothing changed",
                    f.c.region,
                    if req.region.is_some() { "--region" } else { "rollout.regions" },
                    plan.role
                )));
            }
            progress.task(&plan.role).info(&format!("{} is skipped: none of the role's Auto Scaling groups is there", f.c.place()));
        }
        let mut found: Vec<Found> = found.into_iter().filter(|f| !f.groups.is_empty()).collect();
        // Region names in messages and progress only when the roll covers more than one.
        let many = found.len() > 1;
        m.regions = found.iter().map(|f| f.c.place()).collect();
        covered = found.iter().map(|f| f.c.clone()).collect();
        if req.rollback {
            return rollback_on_demand(plan, found, many, &progress, cancel.clone(), req, &failed, &mut m).await;
        }
        // The image: the one asked for or the newest in the build region; every other region
        // rolls the copy of the same bake.
        let home_c = aws.clients(&home);
        // Architecture → (image, the bake that made it): the one asked for, or the newest of each
        // architecture the role bakes.
        let mut home_images: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
        let several = plan.architectures.len() > 1;
        // --ami pins the image of its own architecture.
        if let Some(a) = &req.ami {
            let facts = image_facts(&home_c, a).await?;
            home_images.insert(facts.arch, (a.clone(), facts.bake_id));
        }
        // The newest of every other architecture the role bakes (of the role, with one).
        let wanted: Vec<Option<&str>> = if several {
            plan.architectures.iter().filter(|a| !home_images.contains_key(*a)).map(|a| Some(a.as_str())).collect()
        } else if home_images.is_empty() {
            vec![None]
        } else {
            vec![]
        };
        for arch in wanted {
            match newest_image_of(&home_c, &plan.role, &plan.env, arch).await {
                Ok(i) => {
                    let f = image_facts(&home_c, &i).await?;
                    home_images.insert(f.arch, (i, f.bake_id));
                }
                Err(e) if several => progress.task(&plan.role).info(&format!("{e}: groups that need {} cannot roll", arch.unwrap_or_default())),
                Err(e) => return Err(e),
            }
        }
        if home_images.is_empty() {
            return Err(Error::Other(format!("no image of {}/{} in {home}: bake one first, or give --ami", plan.role, plan.env)));
        }
        m.ami = home_images.values().map(|(a, _)| a.as_str()).collect::<Vec<_>>().join(",");
        let mut sites_images: Vec<(Found, BTreeMap<String, String>)> = Vec::new();
        'regions: for f in found.drain(..) {
            let region = f.c.region.clone();
            let mut here = BTreeMap::new();
            for (arch, (image, bake_id)) in &home_images {
                // Copies are this account's images: another account's groups get the same one,
                // shared with it.
                let copy = if region == home {
                    Some(image.clone())
                } else {
                    match bake_id {
                        Some(id) => copy_of(&aws.clients(&region), &plan.role, &plan.env, id).await?,
                        None => None,
                    }
                };
                if let (Some(i), Some(account)) = (&copy, &f.c.account) {
                    shared_with(&f.c, i, account, &plan.role).await?;
                }
                match copy {
                    Some(i) => {
                        here.insert(arch.clone(), i);
                    }
                    None if named => {
                        return Err(Error::Other(format!(
                            "{region} (rollout.regions of roles/{}.toml) has no copy of {image}{}; nothing changed",
                            plan.role,
                            if bake_id.is_none() { ", an image bake did not make" } else { "" }
                        )))
                    }
                    None => {
                        progress.task(&plan.role).info(&format!("{} is skipped: it has no available copy of {image} (a copy still pending or failed is not rolled)", f.c.place()));
                        continue 'regions;
                    }
                }
            }
            // The way back too: another account's groups must still be able to launch what they
            // run now, or a failure could not put them back.
            if let Some(account) = &f.c.account {
                for g in &f.groups {
                    let Some(cur) = g.source.image() else { continue };
                    if here.values().any(|i| i == cur) {
                        continue;
                    }
                    match f.c.ec2.describe_images().image_ids(cur).send().await {
                        Ok(r) if !r.images().is_empty() => {}
                        Ok(_) => return Err(Error::Other(way_back_lost(&g.name, &f.c.place(), cur, account))),
                        Err(e) if code_starts(&e, "InvalidAMIID") => {
                            return Err(Error::Other(way_back_lost(&g.name, &f.c.place(), cur, account)))
                        }
                        Err(e) => return Err(Error::aws("ec2:DescribeImages", format!("image {cur} (as account {account})"), &f.c.region, &e)),
                    }
                }
            }
            sites_images.push((f, here));
        }
        let mut sites: Vec<Site> = Vec::new();
        for (f, images) in sites_images {
            let rp = prepare(&f, plan, req, &images, roll_id.as_str(), many, !strict).await?;
            m.images.insert(f.c.place(), images);
            let cx = Rolling::new(&f.c, plan, req, &progress, cancel.clone(), &failed, many);
            sites.push(Site { cx, plan: rp });
        }
        m.regions = sites.iter().map(|s| s.cx.c.place()).collect();
        covered = sites.iter().map(|s| s.cx.c.clone()).collect();
        // The target groups watched during the canaries' bake time are in regions this roll
        // covers, and exist: checked before anything changes.
        for arn in &plan.rollout.target_groups {
            let region = crate::config::limits::target_group_region(arn);
            let Some(site) = sites.iter().find(|s| holds_target_group(&s.cx.c, arn, &plan.rollout)) else {
                return Err(Error::Other(format!(
                    "target group {arn} (rollout.target_groups of roles/{}.toml) is in {region}, but this roll covers {}: its canaries could not be watched; nothing changed",
                    plan.role,
                    m.regions.join(", ")
                )));
            };
            site.cx.c.target_health(arn).await.map_err(|e| Error::Other(format!("{e}; nothing changed")))?;
        }
        if req.plan_only {
            m.status = RollStatus::Planned;
            for s in &sites {
                for g in s.plan.groups() {
                    m.groups.push(GroupRecord {
                        name: g.name.clone(),
                        region: s.cx.c.region.clone(),
                        account: s.cx.c.account.clone(),
                        canary: g.canary,
                        previous_image: g.current_image.clone(),
                        new_image: g.new_image.clone(),
                        outcome: if g.change == Change::Nothing { GroupOutcome::Unchanged } else { GroupOutcome::Planned },
                        final_image: g.current_image.clone(),
                        ..Default::default()
                    });
                }
                progress.task(&plan.role).info(&s.plan.to_string());
            }
            return Ok(());
        }
        let (recs, r) = execute(&sites, &plan.rollout, &plan.role, &progress, &cancel).await;
        m.groups = recs;
        m.leftovers = sites.iter().flat_map(|s| s.cx.take_leftovers()).collect();
        r
    }
    .await;
    // What each group runs when the roll ends: a census of its instances, not what was meant.
    if m.status != RollStatus::Planned && !m.groups.is_empty() {
        for c in &covered {
            let at = |g: &GroupRecord| g.region == c.region && g.account == c.account;
            let names: Vec<String> = m.groups.iter().filter(|g| at(g)).map(|g| g.name.clone()).collect();
            if names.is_empty() {
                continue;
            }
            match census(c, &names).await {
                Ok(running) => {
                    let configured = configured_images(c, plan, names.clone()).await;
                    for g in m.groups.iter_mut().filter(|g| at(g)) {
                        g.running = running.get(&g.name).cloned().unwrap_or_default();
                        g.final_image = match g.running.len() {
                            0 => configured.get(&g.name).cloned().unwrap_or_default(),
                            1 => g.running.keys().next().cloned().unwrap_or_default(),
                            _ => "mixed".into(),
                        };
                    }
                }
                Err(e) => {
                    for g in m.groups.iter_mut().filter(|g| at(g)) {
                        g.final_image = "unknown".into();
                    }
                    progress.task(&plan.role).info(&format!("could not tell what the groups in {} run now: {e}", c.place()));
                }
            }
        }
    }
    m.groups.sort_by(|a, b| b.canary.cmp(&a.canary).then(a.name.cmp(&b.name)).then(a.account.cmp(&b.account)).then(a.region.cmp(&b.region)));
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

/// One region's rollout plan, after the checks that come before any change there: every
/// instance type runs the architecture of one of the images (`images`: architecture → image), each
/// group and template gets its architecture's, and the gating alarms exist and are quiet.
#[allow(clippy::too_many_arguments)] // the roll's context, passed through
async fn prepare(f: &Found, plan: &Plan, req: &Request, images: &BTreeMap<String, String>, roll_id: &str, many: bool, spread: bool) -> Result<RolloutPlan> {
    let (c, groups) = (&f.c, &f.groups);
    let region = c.region.as_str();
    let place = c.place();
    let here = |e: String| Error::Other(if many { format!("{place}: {e}") } else { e });
    let mut types: Vec<String> = groups
        .iter()
        .flat_map(|g| match &g.source {
            Source::Mixed { templates, .. } => templates.iter().flat_map(|t| t.instance_types.clone()).collect::<Vec<String>>(),
            _ => g.instance_type.iter().cloned().collect(),
        })
        .collect();
    types.sort();
    types.dedup();
    let arch_of = if types.is_empty() {
        BTreeMap::new()
    } else {
        architectures(c, &types).await.map_err(|e| Error::Other(format!("the groups' instance types: {e}; nothing changed")))?
    };
    let chosen = rollout::choose_images(groups, images, &arch_of).map_err(here)?;
    if !plan.rollout.alarms.is_empty() {
        let states = c.alarm_states(&plan.rollout.alarms).await?;
        for a in &plan.rollout.alarms {
            match states.get(a) {
                None => {
                    return Err(Error::Other(format!(
                        "rollout.alarms of roles/{}.toml: CloudWatch has no alarm named {a} in {place}; nothing changed",
                        plan.role
                    )))
                }
                Some((state, reason)) if state == "ALARM" => {
                    return Err(Error::Other(format!(
                        "alarm {a} is in ALARM in {place} ({}): bake starts no roll while it fires; nothing changed",
                        crate::error::one_line(reason)
                    )))
                }
                Some(_) => {}
            }
        }
    }
    // A canary need only be in one of the regions (checked across them before, unless --region
    // picked this one).
    let mut spec = plan.rollout.clone();
    if spread {
        spec.canaries.retain(|n| groups.iter().any(|g| &g.name == n));
    }
    let ami = images.values().next().cloned().unwrap_or_default();
    let shown = if images.len() > 1 { images.iter().map(|(a, i)| format!("{i} ({a})")).collect::<Vec<_>>().join(", ") } else { ami.clone() };
    rollout::plan(
        &plan.role,
        &plan.env,
        region,
        &ami,
        roll_id,
        &spec,
        groups.clone(),
        &chosen,
        PlanOptions { migrate_to_launch_template: req.migrate, patch: req.patch },
    )
    .map(|rp| RolloutPlan {
        ami: shown,
        // Another account's plan says so; its target groups are the ones in that account.
        target_groups: rp.target_groups.iter().filter(|a| holds_target_group(c, a, &plan.rollout)).cloned().collect(),
        region: place.clone(),
        ..rp
    })
    .map_err(here)
}

/// `bake roll --rollback`: every target group, in every region the roll covers, back to the
/// previous image bake recorded on it. Every group's way back is checked before any changes; with
/// several regions, one whose groups bake never rolled is skipped.
#[allow(clippy::too_many_arguments)] // the roll's context, passed through
async fn rollback_on_demand(
    plan: &Plan,
    found: Vec<Found>,
    many: bool,
    progress: &Progress,
    cancel: Cancel,
    req: &Request,
    failed: &Arc<tokio::sync::watch::Sender<bool>>,
    m: &mut RollManifest,
) -> Result<()> {
    let mut sites = Vec::new();
    for f in found {
        if many && f.groups.iter().all(|g| !g.tags.contains_key(TAG_PREVIOUS_IMAGE)) {
            progress
                .task(&plan.role)
                .info(&format!("{} is skipped: none of its groups has a previous image recorded by bake (tag {TAG_PREVIOUS_IMAGE})", f.c.place()));
            continue;
        }
        let gplans = back_plans(&f.c, plan, &f.groups, progress).await.map_err(|e| match e {
            Error::Other(s) if many => Error::Other(format!("{}: {s}", f.c.place())),
            e => e,
        })?;
        sites.push((f.c, gplans));
    }
    m.regions = sites.iter().map(|(c, _)| c.place()).collect();
    let mut failure = None;
    for (c, gplans) in sites {
        let cx = Rolling::new(&c, plan, req, progress, cancel.clone(), failed, many);
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
            target_groups: Vec::new(),
        };
        for g in gplans {
            cx.clear_in_progress(&g, &cx.reporter(&g.name)).await?;
            let mut rec = GroupRecord {
                name: g.name.clone(),
                region: c.region.clone(),
                account: c.account.clone(),
                canary: g.canary,
                previous_image: g.new_image.clone(),
                new_image: g.current_image.clone(),
                ..Default::default()
            };
            if let Err(e) = restore(&cx, &rp, &g, &mut rec).await {
                failure.get_or_insert(e.to_string());
            }
            m.groups.push(rec);
        }
        m.leftovers.extend(cx.take_leftovers());
    }
    match failure {
        Some(e) => Err(Error::Other(e)),
        None => Ok(()),
    }
}

/// How each of a region's groups goes back: its previous version, configuration or versions,
/// launching an image that still exists.
async fn back_plans(c: &Clients, plan: &Plan, groups: &[GroupState], progress: &Progress) -> Result<Vec<GroupPlan>> {
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
    for g in groups {
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
                    moves.push(rollout::TemplateMove { id: t.id.clone(), name: t.name.clone(), from: f, image: String::new() });
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
        gplans.push(GroupPlan {
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
        });
    }
    Ok(gplans)
}
