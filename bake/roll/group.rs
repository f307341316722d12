//! One group's move: a new launch template version (or launch configuration copy), an instance
//! refresh watched to its end, and the way back. [`Rolling`] is what a running roll shares.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_autoscaling::types::{
    AlarmSpecification, DesiredConfiguration, InstanceRefreshStatus, LaunchTemplateSpecification, RefreshPreferences, ScaleInProtectedInstances,
    StandbyInstances, Tag as AsgTag,
};
use aws_sdk_ec2::types::RequestLaunchTemplateData;

use super::discover::is_active;
use super::plan::{self as rollout, Change, GroupPlan, RolloutPlan};
use super::{asg_err, InProgress, Request, TAG_IMAGE, TAG_PREVIOUS_IMAGE, TAG_PREVIOUS_LC, TAG_PREVIOUS_VERSION, TAG_PREVIOUS_VERSIONS, TAG_ROLL};
use crate::aws::Clients;
use crate::error::{Error, Result};
use crate::manifest::{GroupOutcome, GroupRecord};
use crate::plan::Plan;
use crate::progress::{Progress, Reporter};
use crate::signals::{cancelled, Cancel};

/// Auto Scaling's answer while a launch template bake just made is not visible to it yet.
fn template_not_visible_yet(e: &Error) -> bool {
    matches!(e, Error::Aws { code: Some(c), detail, .. } if c == "ValidationError" && detail.contains("launch template") && detail.contains("does not exist"))
}

/// Everything a running rollout shares.
pub(super) struct Rolling {
    pub(super) c: Clients,
    pub(super) report: Progress,
    pub(super) cancel: Cancel,
    /// Set when any group fails (in any region the roll covers): the other groups' refreshes stop.
    pub(super) failed: Arc<tokio::sync::watch::Sender<bool>>,
    /// How the progress lines name this region (` (eu-west-1)`), empty when the roll covers one.
    pub(super) suffix: String,
    pub(super) timeout: Duration,
    pub(super) in_progress: InProgress,
    pub(super) keep_lcs: u32,
    /// The CloudWatch alarms that gate the roll's refreshes (rollout.alarms).
    pub(super) alarms: Vec<String>,
    pub(super) new_versions: NewVersions,
    /// What the roll made and could not remove (one sentence each): the roll ends with exit 1.
    pub(super) leftovers: std::sync::Mutex<Vec<String>>,
}

/// The launch template versions this rollout made, by (template, source version, image): groups
/// that share a template version and move to the same image share the new version too, so a
/// cluster of twenty groups on one template gets one version, not twenty identical ones.
pub(super) type NewVersions = tokio::sync::Mutex<BTreeMap<(String, i64, String), Arc<tokio::sync::OnceCell<i64>>>>;

pub(super) enum Ended {
    Successful,
    /// The refresh failed; AWS put the group back (AutoRollback).
    RolledBackByAws(String),
    Failed(String),
    /// Another group failed (or Ctrl-C): this refresh was cancelled.
    Stopped,
}

impl Rolling {
    /// The context of a roll in `c`'s region; `failed` is shared by every region the roll covers.
    pub(super) fn new(
        c: &Clients,
        plan: &Plan,
        req: &Request,
        progress: &Progress,
        cancel: Cancel,
        failed: &Arc<tokio::sync::watch::Sender<bool>>,
        many: bool,
    ) -> Rolling {
        Rolling {
            c: c.clone(),
            report: progress.clone(),
            cancel,
            failed: failed.clone(),
            suffix: if many { format!(" ({})", c.place()) } else { String::new() },
            timeout: req.timeout,
            in_progress: req.in_progress,
            keep_lcs: plan.rollout.keep_launch_configurations.max(1),
            alarms: plan.rollout.alarms.clone(),
            new_versions: NewVersions::default(),
            leftovers: Default::default(),
        }
    }

    /// Records something the roll made and could not remove.
    pub(super) fn left(&self, what: String) {
        self.report.task(&self.c.place()).info(&format!("left behind: {what}"));
        if let Ok(mut l) = self.leftovers.lock() {
            l.push(what);
        }
    }

    pub(super) fn take_leftovers(&self) -> Vec<String> {
        self.leftovers.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }

    /// Deletes launch configuration `name` (one bake made); what cannot be deleted is a leftover.
    pub(super) async fn delete_launch_configuration(&self, name: &str) {
        match self.c.asg.delete_launch_configuration().launch_configuration_name(name).send().await {
            Ok(_) => {}
            Err(e) if matches!(aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e), Some("ResourceInUse")) => {}
            Err(e) if crate::error::is_not_found(aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e)) => {}
            Err(e) => self.left(Error::aws("autoscaling:DeleteLaunchConfiguration", format!("launch configuration {name}"), &self.c.region, &e).to_string()),
        }
    }

    /// The numbered version of template `id` made from version `from` with `image`: created (and
    /// made default when asked) by the first group that needs it, reused by the others.
    pub(super) async fn new_template_version(&self, plan: &RolloutPlan, id: &str, name: &str, from: i64, image: &str, set_default: bool) -> Result<i64> {
        let cell = {
            let mut made = self.new_versions.lock().await;
            made.entry((id.to_string(), from, image.to_string())).or_default().clone()
        };
        let region = self.c.region.as_str();
        let n = cell
            .get_or_try_init(|| async {
                let v = self
                    .c
                    .ec2
                    .create_launch_template_version()
                    .launch_template_id(id)
                    .source_version(from.to_string())
                    .version_description(format!("bake {}: {image} for {}/{} (from v{from})", plan.roll_id, plan.role, plan.env))
                    .launch_template_data(RequestLaunchTemplateData::builder().image_id(image).build())
                    .send()
                    .await
                    .map_err(|e| Error::aws("ec2:CreateLaunchTemplateVersion", format!("launch template {name}"), region, &e))?;
                let n = v.launch_template_version().and_then(|v| v.version_number()).unwrap_or(0);
                if set_default {
                    self.c
                        .ec2
                        .modify_launch_template()
                        .launch_template_id(id)
                        .default_version(n.to_string())
                        .send()
                        .await
                        .map_err(|e| Error::aws("ec2:ModifyLaunchTemplate", format!("launch template {name}"), region, &e))?;
                }
                Ok::<i64, Error>(n)
            })
            .await?;
        Ok(*n)
    }

    /// A new version of template `id` with the settings of version `from`: for a group that
    /// follows `$Latest`, so that `$Latest` means the old image again.
    pub(super) async fn copy_template_version(&self, plan: &RolloutPlan, id: &str, name: &str, from: i64) -> Result<i64> {
        let v = self
            .c
            .ec2
            .create_launch_template_version()
            .launch_template_id(id)
            .source_version(from.to_string())
            .version_description(format!("bake {}: back to v{from} for {}/{}", plan.roll_id, plan.role, plan.env))
            .launch_template_data(RequestLaunchTemplateData::builder().build())
            .send()
            .await
            .map_err(|e| Error::aws("ec2:CreateLaunchTemplateVersion", format!("launch template {name}"), &self.c.region, &e))?;
        v.launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or_else(|| Error::Other(format!("ec2:CreateLaunchTemplateVersion on {name} in {} answered without a version number", self.c.region)))
    }

    /// Deletes the launch template a failed migration made (it is not used: the group is back
    /// on its launch configuration).
    pub(super) async fn delete_migrated_template(&self, template: &str) {
        if let Err(e) = self.c.ec2.delete_launch_template().launch_template_name(template).send().await {
            if !crate::error::is_not_found(aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e)) {
                self.left(
                    Error::aws("ec2:DeleteLaunchTemplate", format!("launch template {template} (made by the migration)"), &self.c.region, &e).to_string(),
                );
            }
        }
    }

    pub(super) fn reporter(&self, group: &str) -> Reporter {
        self.report.task(&format!("{group}{}", self.suffix))
    }

    pub(super) fn fail(&self) {
        self.failed.send_replace(true);
    }

    pub(super) fn has_failed(&self) -> bool {
        *self.failed.borrow()
    }

    /// Waits for refresh `id` of `group` to end. An `interruptible` wait cancels the refresh
    /// when the rollout is stopping (another group failed, or Ctrl-C); the way back after a
    /// failure or a Ctrl-C is not interruptible (a second Ctrl-C exits at once).
    pub(super) async fn wait_refresh(&self, group: &str, id: &str, rep: &Reporter, rec: &mut GroupRecord, interruptible: bool) -> Result<Ended> {
        let stop = {
            let mut failed = self.failed.subscribe();
            let cancel = self.cancel.clone();
            async move {
                if !interruptible {
                    return std::future::pending::<()>().await;
                }
                tokio::select! {
                    _ = failed.wait_for(|f| *f) => {}
                    _ = cancelled(cancel) => {}
                }
            }
        };
        let mut last = (String::new(), -1, -1, None);
        let mut warm_pct = None;
        let refreshes = crate::wait::watcher::of(&self.c).refreshes.clone();
        let watch = crate::wait::follow(&refreshes, &self.c.calls, group, self.timeout, |all| {
            let Some(rf) = all.and_then(|all| all.iter().find(|r| r.instance_refresh_id() == Some(id))) else { return Ok(None) };
            let status = rf.status().cloned().unwrap_or(InstanceRefreshStatus::Pending);
            let pct = rf.percentage_complete().unwrap_or(0);
            let left = rf.instances_to_update().unwrap_or(0);
            let warm = rf
                .progress_details()
                .and_then(|d| d.warm_pool_progress())
                .map(|w| (w.percentage_complete().unwrap_or(0), w.instances_to_update().unwrap_or(0)));
            let now = (status.as_str().to_string(), pct, left, warm);
            if last != now {
                let warm_text = warm.map(|(p, l)| format!("; warm pool {p}%, {l} left")).unwrap_or_default();
                rep.stage("refresh", &format!("{} {pct}% complete, {left} instance(s) left{warm_text}", status.as_str()));
                last = now;
            }
            warm_pct = warm.map(|(p, _)| p);
            if is_active(Some(&status)) {
                return Ok(None);
            }
            Ok(Some((status, pct, rf.status_reason().unwrap_or_default().to_string())))
        });
        let outcome = tokio::select! {
            r = watch => r?,
            _ = stop => {
                let _ = self.c.asg.cancel_instance_refresh().auto_scaling_group_name(group).send().await;
                rep.stage("refresh", "cancelled: the rollout is stopping");
                self.settle(group).await?;
                return Ok(Ended::Stopped);
            }
        };
        let Some((status, pct, reason)) = outcome else {
            let _ = self.c.asg.cancel_instance_refresh().auto_scaling_group_name(group).send().await;
            return Ok(Ended::Failed(format!("refresh {id} did not end within {}s", self.timeout.as_secs())));
        };
        rec.percentage_complete = pct;
        rec.warm_pool_percentage_complete = warm_pct;
        Ok(match status {
            InstanceRefreshStatus::Successful => Ended::Successful,
            InstanceRefreshStatus::RollbackSuccessful => Ended::RolledBackByAws(reason),
            other => Ended::Failed(format!("refresh {id} ended {}: {reason}", other.as_str())),
        })
    }

    /// Waits until no refresh of `group` is active (after a cancel).
    pub(super) async fn settle(&self, group: &str) -> Result<()> {
        let refreshes = crate::wait::watcher::of(&self.c).refreshes.clone();
        crate::wait::follow(&refreshes, &self.c.calls, group, self.timeout, |all| {
            Ok((!all.is_some_and(|all| all.iter().any(|x| is_active(x.status())))).then_some(()))
        })
        .await?
        .ok_or_else(|| Error::Other(format!("group {group} still has an instance refresh running after {}s", self.timeout.as_secs())))
    }

    /// Starts a refresh of `g`; a `gated` one carries the role's alarms (a refresh that puts a
    /// group back does not: the alarm that stopped the roll must not stop the way back).
    pub(super) async fn start_refresh(
        &self,
        g: &GroupPlan,
        desired: Option<DesiredConfiguration>,
        auto_rollback: bool,
        skip_matching: bool,
        gated: bool,
    ) -> Result<String> {
        let r = &g.refresh;
        let mut prefs = RefreshPreferences::builder()
            .min_healthy_percentage(r.min_healthy_percentage as i32)
            .skip_matching(skip_matching)
            .auto_rollback(auto_rollback && desired.is_some());
        if let Some(m) = r.max_healthy_percentage {
            prefs = prefs.max_healthy_percentage(m as i32);
        }
        if let Some(w) = r.instance_warmup {
            prefs = prefs.instance_warmup(w.0 as i32);
        }
        if let Some(b) = r.bake_time.filter(|_| gated) {
            prefs = prefs.bake_time(b.0 as i32);
        }
        if !r.checkpoint_percentages.is_empty() {
            prefs = prefs.set_checkpoint_percentages(Some(r.checkpoint_percentages.iter().map(|c| *c as i32).collect()));
            prefs = prefs.checkpoint_delay(r.checkpoint_delay.map(|d| d.0 as i32).unwrap_or(3600));
        }
        let (protected, standby) = match r.protected_instances.as_str() {
            "ignore" => (ScaleInProtectedInstances::Ignore, StandbyInstances::Ignore),
            "wait" => (ScaleInProtectedInstances::Wait, StandbyInstances::Wait),
            _ => (ScaleInProtectedInstances::Refresh, StandbyInstances::Terminate),
        };
        prefs = prefs.scale_in_protected_instances(protected).standby_instances(standby);
        if gated && !self.alarms.is_empty() {
            prefs = prefs.alarm_specification(AlarmSpecification::builder().set_alarms(Some(self.alarms.clone())).build());
        }
        let mut req = self.c.asg.start_instance_refresh().auto_scaling_group_name(&g.name).preferences(prefs.build());
        if let Some(d) = desired {
            req = req.desired_configuration(d);
        }
        // A launch template bake just made may not be visible to Auto Scaling yet.
        let start = || async { req.clone().send().await.map_err(|e| asg_err("autoscaling:StartInstanceRefresh", &g.name, &self.c.region, &e)) };
        let out = crate::wait::visible_when(template_not_visible_yet, start).await?;
        out.instance_refresh_id()
            .map(str::to_string)
            .ok_or_else(|| Error::Other(format!("autoscaling:StartInstanceRefresh on group {} in {} answered without a refresh id", g.name, self.c.region)))
    }

    pub(super) async fn tag(&self, group: &str, tags: &[(&str, String)]) -> Result<()> {
        let t: Vec<AsgTag> = tags
            .iter()
            .map(|(k, v)| AsgTag::builder().resource_id(group).resource_type("auto-scaling-group").key(*k).value(v).propagate_at_launch(false).build())
            .collect();
        self.c.asg.create_or_update_tags().set_tags(Some(t)).send().await.map_err(|e| asg_err("autoscaling:CreateOrUpdateTags", group, &self.c.region, &e))?;
        Ok(())
    }

    /// Tags the group with what the roll did, for `--rollback`: the roll, the new image, the
    /// previous image and `previous` (its template version or launch configuration).
    pub(super) async fn record_move(&self, plan: &RolloutPlan, g: &GroupPlan, previous: (&str, String)) -> Result<()> {
        self.tag(&g.name, &[(TAG_ROLL, plan.roll_id.clone()), (TAG_IMAGE, g.new_image.clone()), (TAG_PREVIOUS_IMAGE, g.current_image.clone()), previous]).await
    }

    pub(super) async fn delete_tags(&self, group: &str, keys: &[&str]) -> Result<()> {
        let t: Vec<AsgTag> = keys.iter().map(|k| AsgTag::builder().resource_id(group).resource_type("auto-scaling-group").key(*k).build()).collect();
        self.c.asg.delete_tags().set_tags(Some(t)).send().await.map_err(|e| asg_err("autoscaling:DeleteTags", group, &self.c.region, &e))?;
        Ok(())
    }

    /// Handles a refresh already running on the group: fail, wait, or cancel it.
    pub(super) async fn clear_in_progress(&self, g: &GroupPlan, rep: &Reporter) -> Result<()> {
        let Some(id) = &g.refresh_in_progress else { return Ok(()) };
        match self.in_progress {
            InProgress::Fail => Err(Error::Other(format!(
                "group {} has instance refresh {id} in progress; wait for it (--wait-in-progress) or cancel it (--replace-in-progress)",
                g.name
            ))),
            InProgress::Wait => {
                rep.stage("refresh", &format!("waiting for refresh {id} already in progress"));
                self.settle(&g.name).await
            }
            InProgress::Replace => {
                rep.stage("refresh", &format!("cancelling refresh {id} already in progress"));
                match self.c.asg.cancel_instance_refresh().auto_scaling_group_name(&g.name).send().await {
                    Ok(_) => {}
                    Err(e) if aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e) == Some("ActiveInstanceRefreshNotFound") => {}
                    Err(e) => return Err(asg_err("autoscaling:CancelInstanceRefresh", &g.name, &self.c.region, &e)),
                }
                self.settle(&g.name).await
            }
        }
    }
}

/// A desired configuration of one numbered launch template version.
fn template_desired(id: &str, version: i64) -> DesiredConfiguration {
    DesiredConfiguration::builder().launch_template(LaunchTemplateSpecification::builder().launch_template_id(id).version(version.to_string()).build()).build()
}

/// `name vN, name vM` of a mixed group's templates.
fn versions_text(templates: &[rollout::TemplateMove], version: impl Fn(&rollout::TemplateMove) -> i64) -> String {
    templates.iter().map(|t| format!("{} v{}", t.name, version(t))).collect::<Vec<_>>().join(", ")
}

/// Moves one group onto its new image. Records in `rec`; `Ok(true)` when the group moved (and
/// is to be put back should the rollout fail).
pub(super) async fn roll_group(cx: &Rolling, plan: &RolloutPlan, g: &GroupPlan, rec: &mut GroupRecord) -> Result<bool> {
    let rep = cx.reporter(&format!("{} {}", plan.role, g.name));
    rec.name = g.name.clone();
    rec.canary = g.canary;
    rec.previous_image = g.current_image.clone();
    rec.new_image = g.new_image.clone();
    if g.change == Change::Nothing {
        rec.outcome = GroupOutcome::Unchanged;
        rep.finish("already on this image");
        return Ok(false);
    }
    if cx.has_failed() || *cx.cancel.borrow() {
        rec.outcome = GroupOutcome::NotStarted;
        rep.finish("not started: the rollout is stopping");
        return Ok(false);
    }
    cx.clear_in_progress(g, &rep).await?;
    let region = cx.c.region.as_str();
    let (desired, auto_rollback) = match &g.change {
        Change::TemplateVersion { id, name, from, set_default, alias } => {
            rec.kind = "launch-template".into();
            rec.previous = format!("v{from}");
            rep.stage("template", &format!("new version of {name} from v{from} with {}", g.new_image));
            let n = cx.new_template_version(plan, id, name, *from, &g.new_image, *set_default).await?;
            rec.new = match alias {
                Some(a) => format!("{a} (v{n})"),
                None => format!("v{n}"),
            };
            cx.record_move(plan, g, (TAG_PREVIOUS_VERSION, from.to_string())).await?;
            // A group that keeps its alias follows it: the refresh names no configuration.
            let desired = if alias.is_some() { None } else { Some(template_desired(id, n)) };
            (desired, g.refresh.auto_rollback)
        }
        Change::Mixed { templates, set_default, policy } => {
            rec.kind = "mixed-instances".into();
            rec.previous = versions_text(templates, |t| t.from);
            let with = |t: &rollout::TemplateMove| {
                if t.image.is_empty() || t.image == g.new_image {
                    t.name.clone()
                } else {
                    format!("{} (with {})", t.name, t.image)
                }
            };
            rep.stage("template", &format!("new versions of {} with {}", templates.iter().map(with).collect::<Vec<_>>().join(", "), g.new_image));
            let mut made = BTreeMap::new();
            for t in templates {
                let image = if t.image.is_empty() { &g.new_image } else { &t.image };
                let n = cx.new_template_version(plan, &t.id, &t.name, t.from, image, *set_default).await?;
                made.insert(t.id.clone(), n);
            }
            rec.new = versions_text(templates, |t| made.get(&t.id).copied().unwrap_or(0));
            cx.record_move(plan, g, (TAG_PREVIOUS_VERSIONS, rollout::previous_versions_tag(templates))).await?;
            let p = rollout::policy_with_versions(policy, templates, &made);
            (Some(DesiredConfiguration::builder().mixed_instances_policy(p.0).build()), g.refresh.auto_rollback)
        }
        Change::LaunchConfiguration { from, to } => {
            rec.kind = "launch-configuration".into();
            rec.previous = from.clone();
            rec.new = to.clone();
            rep.stage("configuration", &format!("{from} → {to}"));
            cx.copy_launch_configuration(from, to, &g.new_image).await?;
            cx.c.asg
                .update_auto_scaling_group()
                .auto_scaling_group_name(&g.name)
                .launch_configuration_name(to)
                .send()
                .await
                .map_err(|e| asg_err("autoscaling:UpdateAutoScalingGroup", &g.name, region, &e))?;
            rec.moved = true;
            cx.record_move(plan, g, (TAG_PREVIOUS_LC, from.clone())).await?;
            (None, false)
        }
        Change::MigrateToTemplate { from, template } => {
            rec.kind = "launch-template".into();
            rec.previous = from.clone();
            rep.stage("template", &format!("migrating {from} to a new launch template {template}"));
            let id = cx.template_from_configuration(from, template, &g.new_image, &plan.roll_id, &plan.role, &plan.env).await?;
            rec.new = format!("{template} v1");
            // The group moves to the template only when the refresh succeeds (its desired
            // configuration), so AWS's rollback returns it to the launch configuration.
            cx.record_move(plan, g, (TAG_PREVIOUS_LC, from.clone())).await?;
            (Some(template_desired(&id, 1)), g.refresh.auto_rollback)
        }
        Change::Nothing => unreachable!("handled above"),
    };
    let id = cx.start_refresh(g, desired, auto_rollback, g.refresh.skip_matching, true).await?;
    rec.moved = true;
    rec.refresh_ids.push(id.clone());
    rep.stage("refresh", &format!("{id} started"));
    match cx.wait_refresh(&g.name, &id, &rep, rec, true).await? {
        Ended::Successful => {
            rec.outcome = GroupOutcome::Rolled;
            if let Change::LaunchConfiguration { to, .. } = &g.change {
                cx.prune_launch_configurations(&g.name, to).await;
            }
            rep.finish(&format!("on {}", g.new_image));
            Ok(true)
        }
        Ended::RolledBackByAws(reason) => {
            rec.outcome = GroupOutcome::RolledBackByAws;
            rec.error = Some(reason.clone());
            cx.fail();
            rep.finish(&format!("failed and rolled back by AWS: {reason}"));
            Err(Error::Other(format!("group {}: instance refresh {id} failed and AWS rolled it back: {reason}", g.name)))
        }
        Ended::Failed(why) => {
            rec.outcome = GroupOutcome::Failed;
            rec.error = Some(why.clone());
            cx.fail();
            rep.finish(&format!("failed: {why}"));
            Err(Error::Other(format!("group {}: {why}", g.name)))
        }
        Ended::Stopped => {
            rec.outcome = GroupOutcome::Cancelled;
            Ok(true)
        }
    }
}

/// Puts a group back on its previous image.
pub(super) async fn restore(cx: &Rolling, plan: &RolloutPlan, g: &GroupPlan, rec: &mut GroupRecord) -> Result<()> {
    let rep = cx.reporter(&format!("{} {}", plan.role, g.name));
    if rec.outcome == GroupOutcome::RolledBackByAws {
        if let Change::MigrateToTemplate { template, .. } = &g.change {
            cx.delete_migrated_template(template).await;
        }
        return Ok(());
    }
    cx.settle(&g.name).await?;
    let region = cx.c.region.as_str();
    rep.stage("rollback", &format!("back to {}", g.current_image));
    let desired = match &g.change {
        Change::TemplateVersion { id, name, from, alias, .. } => match alias.as_deref() {
            // The group follows its alias: point the alias back at the old settings.
            Some("$Default") => {
                cx.c.ec2
                    .modify_launch_template()
                    .launch_template_id(id)
                    .default_version(from.to_string())
                    .send()
                    .await
                    .map_err(|e| Error::aws("ec2:ModifyLaunchTemplate", format!("launch template {name}"), region, &e))?;
                None
            }
            Some(_) => {
                cx.copy_template_version(plan, id, name, *from).await?;
                None
            }
            None => Some(template_desired(id, *from)),
        },
        // Every template back on the version it was on.
        Change::Mixed { templates, policy, .. } => {
            let back: BTreeMap<String, i64> = templates.iter().map(|t| (t.id.clone(), t.from)).collect();
            Some(DesiredConfiguration::builder().mixed_instances_policy(rollout::policy_with_versions(policy, templates, &back).0).build())
        }
        // Back to a launch configuration: a copy bake names (the operator may point groups only at
        // those, policies/roller.json.hbs) of the one the group is on (or left), with the old image.
        Change::LaunchConfiguration { to: copy_of, .. } | Change::MigrateToTemplate { from: copy_of, .. } => {
            let back = rollout::launch_configuration_name(&g.name, &g.current_image, &plan.roll_id);
            rep.stage("configuration", &format!("{back} (from {copy_of})"));
            cx.copy_launch_configuration(copy_of, &back, &g.current_image).await?;
            cx.c.asg
                .update_auto_scaling_group()
                .auto_scaling_group_name(&g.name)
                .launch_configuration_name(&back)
                .send()
                .await
                .map_err(|e| asg_err("autoscaling:UpdateAutoScalingGroup", &g.name, region, &e))?;
            None
        }
        Change::Nothing => return Ok(()),
    };
    // Only what the rollout replaced goes back, where AWS can tell (a launch template in the
    // desired configuration): instances still on the old image stay.
    let skip_matching = desired.is_some() || matches!(g.change, Change::TemplateVersion { .. });
    let id = cx.start_refresh(g, desired, false, skip_matching, false).await?;
    rec.refresh_ids.push(id.clone());
    match cx.wait_refresh(&g.name, &id, &rep, rec, false).await? {
        Ended::Successful => {
            rec.outcome = GroupOutcome::RolledBack;
            cx.tag(&g.name, &[(TAG_IMAGE, g.current_image.clone())]).await?;
            cx.delete_tags(&g.name, &[TAG_PREVIOUS_IMAGE, TAG_PREVIOUS_VERSION, TAG_PREVIOUS_VERSIONS, TAG_PREVIOUS_LC]).await?;
            match &g.change {
                Change::LaunchConfiguration { to, .. } if rollout::is_bake_launch_configuration(&g.name, to) => cx.delete_launch_configuration(to).await,
                Change::MigrateToTemplate { template, .. } => cx.delete_migrated_template(template).await,
                _ => {}
            }
            rep.finish(&format!("back on {}", g.current_image));
            Ok(())
        }
        Ended::RolledBackByAws(r) | Ended::Failed(r) => {
            rec.outcome = GroupOutcome::RollbackFailed;
            rec.error = Some(r.clone());
            Err(Error::Other(format!("group {}: rolling back failed: {r}", g.name)))
        }
        Ended::Stopped => Err(Error::Interrupted),
    }
}
