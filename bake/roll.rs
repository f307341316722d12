//! `bake roll`: move a role's Auto Scaling groups onto an image. Canary groups first; the rest
//! after the canaries succeed (and an optional bake time), a few at a time. Launch-template groups
//! get a new numbered version made from the one they use; launch-configuration groups a copy of
//! theirs. Instance refresh replaces the instances; when any group fails, every group that moved
//! goes back to its previous image.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::{
    DesiredConfiguration, Filter as AsgFilter, InstanceRefreshStatus, LaunchTemplateSpecification, LifecycleState, RefreshPreferences,
    ScaleInProtectedInstances, StandbyInstances, Tag as AsgTag,
};
use aws_sdk_ec2::types::{Filter, ImageState, RequestLaunchTemplateData};
use futures::stream::{self, StreamExt};

use crate::aws::{Aws, Clients};
use crate::error::{Error, Result};
use crate::journal::BakeId;
use crate::manifest::{GroupRecord, RollManifest};
use crate::pipeline::{cancelled, Cancel};
use crate::plan::Plan;
use crate::progress::{Progress, Reporter};
use crate::rollout::{self, Change, GroupPlan, GroupState, PlanOptions, RolloutPlan, Source};
use crate::tags;
use crate::wait::{poll, Poll};

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

const TAG_IMAGE: &str = crate::tags::IMAGE;
const TAG_PREVIOUS_IMAGE: &str = crate::tags::PREVIOUS_IMAGE;
const TAG_PREVIOUS_VERSION: &str = crate::tags::PREVIOUS_VERSION;
const TAG_PREVIOUS_LC: &str = crate::tags::PREVIOUS_LAUNCH_CONFIGURATION;
const TAG_ROLL: &str = crate::tags::ROLL_ID;

fn asg_err<E>(
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

/// The newest finished image bake made for this role and env.
pub async fn newest_image(c: &Clients, role: &str, env: &str) -> Result<String> {
    let images = c
        .images(
            &format!("images of {role}/{env}"),
            &["self".to_string()],
            vec![
                Filter::builder().name(format!("tag:{}", tags::ROLE)).values(role).build(),
                Filter::builder().name(format!("tag:{}", tags::ENV)).values(env).build(),
                Filter::builder().name(format!("tag:{}", tags::COMPLETE)).values("true").build(),
            ],
        )
        .await?;
    images
        .iter()
        .filter(|i| i.state() == Some(&ImageState::Available))
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
        .and_then(|i| i.image_id().map(str::to_string))
        .ok_or_else(|| Error::Other(format!("no image of {role}/{env} in {}: bake one first, or give --ami", c.region)))
}

async fn check_image(c: &Clients, ami: &str) -> Result<()> {
    let r = c.ec2.describe_images().image_ids(ami).send().await.map_err(|e| Error::aws("ec2:DescribeImages", format!("image {ami}"), &c.region, &e))?;
    match r.images().first().and_then(|i| i.state()) {
        Some(ImageState::Available) => Ok(()),
        Some(s) => Err(Error::Other(format!("image {ami} in {} is {}, not available", c.region, s.as_str()))),
        None => Err(Error::Other(format!("image {ami} does not exist in {}", c.region))),
    }
}

/// The image a launch template version launches, and its number.
async fn template_version(c: &Clients, id: &str, version: &str) -> Result<(i64, String, RequestLaunchTemplateData)> {
    let r = c
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(id)
        .versions(version)
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeLaunchTemplateVersions", format!("launch template {id}"), &c.region, &e))?;
    let v = r.launch_template_versions().first().ok_or_else(|| Error::Other(format!("launch template {id} has no version {version}")))?;
    let data = v.launch_template_data();
    let image = data.and_then(|d| d.image_id()).unwrap_or_default().to_string();
    Ok((v.version_number().unwrap_or(0), image, RequestLaunchTemplateData::builder().build()))
}

/// Describes the groups a role's rollout targets: names, tag filters, or `<role>_<env>`.
pub async fn discover(c: &Clients, plan: &Plan) -> Result<Vec<GroupState>> {
    let spec = &plan.rollout;
    let region = c.region.as_str();
    let mut groups: Vec<aws_sdk_autoscaling::types::AutoScalingGroup> = Vec::new();
    let mut names: Vec<String> = spec.groups.clone();
    if names.is_empty() && spec.group_tags.is_empty() {
        names.push(format!("{}_{}", plan.role, plan.env));
    }
    if !names.is_empty() {
        let named = c.groups_named(&names).await?;
        let found: Vec<String> = named.iter().filter_map(|g| g.auto_scaling_group_name().map(str::to_string)).collect();
        let missing: Vec<&String> = names.iter().filter(|n| !found.contains(n)).collect();
        if !missing.is_empty() {
            let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            return Err(Error::Other(format!(
                "no Auto Scaling group named {} in {region} (roles/{}.toml rollout.groups, or the convention {}_{}); nothing changed",
                missing.join(", "),
                plan.role,
                plan.role,
                plan.env
            )));
        }
        groups.extend(named);
    }
    if !spec.group_tags.is_empty() {
        let filters: Vec<AsgFilter> = spec.group_tags.iter().map(|(k, v)| AsgFilter::builder().name(format!("tag:{k}")).values(v).build()).collect();
        let matched = c.groups("groups by tag", filters).await?;
        if matched.is_empty() && groups.is_empty() {
            let tags: Vec<String> = spec.group_tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(Error::Other(format!("no Auto Scaling group tagged {} in {region}; nothing changed", tags.join(", "))));
        }
        for g in matched {
            if !groups.iter().any(|x| x.auto_scaling_group_name() == g.auto_scaling_group_name()) {
                groups.push(g);
            }
        }
    }
    // One group's launch source and refreshes at a time is slow with many groups: describe them
    // concurrently (a few at once, well under the APIs' rate limits).
    let versions = VersionCache::default();
    let described: Vec<Result<GroupState>> = stream::iter(groups.into_iter().map(|g| describe_group(c, g, &versions))).buffered(8).collect().await;
    let mut states: Vec<GroupState> = described.into_iter().collect::<Result<_>>()?;
    // The launch templates' own tags (their owners opt them in to bake).
    let mut ids: Vec<String> = states
        .iter()
        .filter_map(|g| match &g.source {
            Source::LaunchTemplate { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    if !ids.is_empty() {
        let templates: Vec<aws_sdk_ec2::types::LaunchTemplate> = c
            .ec2
            .describe_launch_templates()
            .set_launch_template_ids(Some(ids))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("ec2:DescribeLaunchTemplates", "the groups' launch templates", region, &e))?;
        for g in &mut states {
            if let Source::LaunchTemplate { id, .. } = &g.source {
                if let Some(t) = templates.iter().find(|t| t.launch_template_id() == Some(id.as_str())) {
                    g.template_tags = t.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect();
                }
            }
        }
    }
    Ok(states)
}

/// Launch template versions already described (groups often share a template).
#[derive(Default)]
struct VersionCache(tokio::sync::Mutex<BTreeMap<(String, String), (i64, String)>>);

impl VersionCache {
    async fn get(&self, c: &Clients, id: &str, version: &str) -> Result<(i64, String)> {
        let key = (id.to_string(), version.to_string());
        let mut map = self.0.lock().await;
        if let Some(v) = map.get(&key) {
            return Ok(v.clone());
        }
        let (n, image, _) = template_version(c, id, version).await?;
        map.insert(key, (n, image.clone()));
        Ok((n, image))
    }
}

async fn describe_group(c: &Clients, g: aws_sdk_autoscaling::types::AutoScalingGroup, versions: &VersionCache) -> Result<GroupState> {
    let region = c.region.as_str();
    let name = g.auto_scaling_group_name().unwrap_or_default().to_string();
    let tags: BTreeMap<String, String> = g.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect();
    let source = if let Some(lt) = g.launch_template() {
        let id = match lt.launch_template_id() {
            Some(id) => id.to_string(),
            None => {
                let n = lt.launch_template_name().unwrap_or_default();
                let r = c
                    .ec2
                    .describe_launch_templates()
                    .launch_template_names(n)
                    .send()
                    .await
                    .map_err(|e| Error::aws("ec2:DescribeLaunchTemplates", format!("launch template {n}"), region, &e))?;
                r.launch_templates().first().and_then(|t| t.launch_template_id()).unwrap_or_default().to_string()
            }
        };
        let configured = lt.version().unwrap_or("$Default").to_string();
        let (version, image) = versions.get(c, &id, &configured).await?;
        let lt_name = lt.launch_template_name().unwrap_or_default().to_string();
        Source::LaunchTemplate { id, name: lt_name, version, configured, image }
    } else if let Some(lc) = g.launch_configuration_name() {
        let r = c
            .asg
            .describe_launch_configurations()
            .launch_configuration_names(lc)
            .send()
            .await
            .map_err(|e| Error::aws("autoscaling:DescribeLaunchConfigurations", format!("launch configuration {lc}"), region, &e))?;
        let image = r.launch_configurations().first().and_then(|l| l.image_id()).unwrap_or_default().to_string();
        Source::LaunchConfiguration { name: lc.to_string(), image }
    } else {
        Source::Unsupported { why: "it uses a mixed instances policy, which bake does not roll yet".into() }
    };
    let refreshes = c.instance_refreshes(&name).await?;
    let active = refreshes.iter().find(|r| is_active(r.status())).and_then(|r| r.instance_refresh_id().map(str::to_string));
    let protected = g.instances().iter().filter(|i| i.protected_from_scale_in() == Some(true)).count();
    let standby = g.instances().iter().filter(|i| matches!(i.lifecycle_state(), Some(LifecycleState::Standby | LifecycleState::EnteringStandby))).count();
    Ok(GroupState { name, source, tags, template_tags: BTreeMap::new(), protected, standby, instances: g.instances().len(), refresh_in_progress: active })
}

/// Auto Scaling's answer while a launch template bake just made is not visible to it yet.
fn template_not_visible_yet(e: &Error) -> bool {
    matches!(e, Error::Aws { code: Some(c), detail, .. } if c == "ValidationError" && detail.contains("launch template") && detail.contains("does not exist"))
}

fn is_active(s: Option<&InstanceRefreshStatus>) -> bool {
    matches!(
        s,
        Some(InstanceRefreshStatus::Pending)
            | Some(InstanceRefreshStatus::InProgress)
            | Some(InstanceRefreshStatus::Cancelling)
            | Some(InstanceRefreshStatus::RollbackInProgress)
            | Some(InstanceRefreshStatus::Baking)
    )
}

/// Everything a running rollout shares.
struct Cx {
    c: Clients,
    report: Progress,
    cancel: Cancel,
    /// Set when any group fails: the other groups' refreshes stop.
    failed: tokio::sync::watch::Sender<bool>,
    timeout: Duration,
    in_progress: InProgress,
    keep_lcs: u32,
    new_versions: NewVersions,
    /// What the roll made and could not remove (one sentence each): the roll ends with exit 1.
    leftovers: std::sync::Mutex<Vec<String>>,
}

/// The launch template versions this rollout made, by (template, source version, image): groups
/// that share a template version and move to the same image share the new version too, so a
/// cluster of twenty groups on one template gets one version, not twenty identical ones.
type NewVersions = tokio::sync::Mutex<BTreeMap<(String, i64, String), Arc<tokio::sync::OnceCell<i64>>>>;

enum Ended {
    Successful,
    /// The refresh failed; AWS put the group back (AutoRollback).
    RolledBackByAws(String),
    Failed(String),
    /// Another group failed (or Ctrl-C): this refresh was cancelled.
    Stopped,
}

impl Cx {
    fn new(c: &Clients, plan: &Plan, req: &Request, progress: &Progress, cancel: Cancel) -> Cx {
        Cx {
            c: c.clone(),
            report: progress.clone(),
            cancel,
            failed: tokio::sync::watch::Sender::new(false),
            timeout: req.timeout,
            in_progress: req.in_progress,
            keep_lcs: plan.rollout.keep_launch_configurations.max(1),
            new_versions: NewVersions::default(),
            leftovers: Default::default(),
        }
    }

    /// Records something the roll made and could not remove.
    fn left(&self, what: String) {
        self.report.bake(&self.c.region).info(&format!("left behind: {what}"));
        if let Ok(mut l) = self.leftovers.lock() {
            l.push(what);
        }
    }

    fn take_leftovers(&self) -> Vec<String> {
        self.leftovers.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }

    /// Deletes launch configuration `name` (one bake made); what cannot be deleted is a leftover.
    async fn delete_launch_configuration(&self, name: &str) {
        match self.c.asg.delete_launch_configuration().launch_configuration_name(name).send().await {
            Ok(_) => {}
            Err(e) if matches!(aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e), Some("ResourceInUse")) => {}
            Err(e) if crate::error::is_not_found(aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e)) => {}
            Err(e) => self.left(Error::aws("autoscaling:DeleteLaunchConfiguration", format!("launch configuration {name}"), &self.c.region, &e).to_string()),
        }
    }

    /// The numbered version of template `id` made from version `from` with `image`: created (and
    /// made default when asked) by the first group that needs it, reused by the others.
    async fn new_template_version(&self, plan: &RolloutPlan, id: &str, name: &str, from: i64, image: &str, set_default: bool) -> Result<i64> {
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
    async fn copy_template_version(&self, plan: &RolloutPlan, id: &str, name: &str, from: i64) -> Result<i64> {
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
    async fn delete_migrated_template(&self, template: &str) {
        if let Err(e) = self.c.ec2.delete_launch_template().launch_template_name(template).send().await {
            if !crate::error::is_not_found(aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e)) {
                self.left(
                    Error::aws("ec2:DeleteLaunchTemplate", format!("launch template {template} (made by the migration)"), &self.c.region, &e).to_string(),
                );
            }
        }
    }

    fn reporter(&self, group: &str) -> Reporter {
        self.report.bake(group)
    }

    fn fail(&self) {
        self.failed.send_replace(true);
    }

    fn has_failed(&self) -> bool {
        *self.failed.borrow()
    }

    /// Waits for refresh `id` of `group` to end. An `interruptible` wait cancels the refresh
    /// when the rollout is stopping (another group failed, or Ctrl-C); the way back after a
    /// failure or a Ctrl-C is not interruptible (a second Ctrl-C exits at once).
    async fn wait_refresh(&self, group: &str, id: &str, rep: &Reporter, rec: &mut GroupRecord, interruptible: bool) -> Result<Ended> {
        let asg = self.c.asg.clone();
        let region = self.c.region.clone();
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
        let last = Arc::new(std::sync::Mutex::new((String::new(), -1, -1)));
        let watch = poll(Poll::new(Duration::from_secs(1), Duration::from_secs(10), self.timeout).after_first_interval(), || {
            let asg = asg.clone();
            let region = region.clone();
            let rep = rep.clone();
            let last = last.clone();
            async move {
                let r = asg
                    .describe_instance_refreshes()
                    .auto_scaling_group_name(group)
                    .instance_refresh_ids(id)
                    .send()
                    .await
                    .map_err(|e| asg_err("autoscaling:DescribeInstanceRefreshes", group, &region, &e))?;
                let Some(rf) = r.instance_refreshes().first() else { return Ok(None) };
                let status = rf.status().cloned().unwrap_or(InstanceRefreshStatus::Pending);
                let pct = rf.percentage_complete().unwrap_or(0);
                let left = rf.instances_to_update().unwrap_or(0);
                let now = (status.as_str().to_string(), pct, left);
                if let Ok(mut l) = last.lock() {
                    if *l != now {
                        rep.stage("refresh", &format!("{} {pct}% complete, {left} instance(s) left", status.as_str()));
                        *l = now;
                    }
                }
                if is_active(Some(&status)) {
                    return Ok(None);
                }
                Ok(Some((status, pct, rf.status_reason().unwrap_or_default().to_string())))
            }
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
        Ok(match status {
            InstanceRefreshStatus::Successful => Ended::Successful,
            InstanceRefreshStatus::RollbackSuccessful => Ended::RolledBackByAws(reason),
            other => Ended::Failed(format!("refresh {id} ended {}: {reason}", other.as_str())),
        })
    }

    /// Waits until no refresh of `group` is active (after a cancel).
    async fn settle(&self, group: &str) -> Result<()> {
        let asg = self.c.asg.clone();
        let region = self.c.region.clone();
        poll(Poll::new(Duration::from_secs(1), Duration::from_secs(10), self.timeout), || {
            let asg = asg.clone();
            let region = region.clone();
            async move {
                let r = asg
                    .describe_instance_refreshes()
                    .auto_scaling_group_name(group)
                    .send()
                    .await
                    .map_err(|e| asg_err("autoscaling:DescribeInstanceRefreshes", group, &region, &e))?;
                Ok((!r.instance_refreshes().iter().any(|x| is_active(x.status()))).then_some(()))
            }
        })
        .await?
        .ok_or_else(|| Error::Other(format!("group {group} still has an instance refresh running after {}s", self.timeout.as_secs())))
    }

    async fn start_refresh(&self, g: &GroupPlan, desired: Option<(String, i64)>, auto_rollback: bool, skip_matching: bool) -> Result<String> {
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
        let mut req = self.c.asg.start_instance_refresh().auto_scaling_group_name(&g.name).preferences(prefs.build());
        if let Some((id, version)) = desired {
            req = req.desired_configuration(
                DesiredConfiguration::builder()
                    .launch_template(LaunchTemplateSpecification::builder().launch_template_id(id).version(version.to_string()).build())
                    .build(),
            );
        }
        // A launch template bake just made may not be visible to Auto Scaling yet.
        let start = || async { req.clone().send().await.map_err(|e| asg_err("autoscaling:StartInstanceRefresh", &g.name, &self.c.region, &e)) };
        let out = crate::wait::visible_when(template_not_visible_yet, start).await?;
        out.instance_refresh_id()
            .map(str::to_string)
            .ok_or_else(|| Error::Other(format!("autoscaling:StartInstanceRefresh on group {} in {} answered without a refresh id", g.name, self.c.region)))
    }

    async fn tag(&self, group: &str, tags: &[(&str, String)]) -> Result<()> {
        let t: Vec<AsgTag> = tags
            .iter()
            .map(|(k, v)| AsgTag::builder().resource_id(group).resource_type("auto-scaling-group").key(*k).value(v).propagate_at_launch(false).build())
            .collect();
        self.c.asg.create_or_update_tags().set_tags(Some(t)).send().await.map_err(|e| asg_err("autoscaling:CreateOrUpdateTags", group, &self.c.region, &e))?;
        Ok(())
    }

    async fn delete_tags(&self, group: &str, keys: &[&str]) -> Result<()> {
        let t: Vec<AsgTag> = keys.iter().map(|k| AsgTag::builder().resource_id(group).resource_type("auto-scaling-group").key(*k).build()).collect();
        self.c.asg.delete_tags().set_tags(Some(t)).send().await.map_err(|e| asg_err("autoscaling:DeleteTags", group, &self.c.region, &e))?;
        Ok(())
    }

    /// Handles a refresh already running on the group: fail, wait, or cancel it.
    async fn clear_in_progress(&self, g: &GroupPlan, rep: &Reporter) -> Result<()> {
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

    async fn launch_configuration(&self, name: &str) -> Result<aws_sdk_autoscaling::types::LaunchConfiguration> {
        let region = self.c.region.as_str();
        let r = self
            .c
            .asg
            .describe_launch_configurations()
            .launch_configuration_names(name)
            .send()
            .await
            .map_err(|e| Error::aws("autoscaling:DescribeLaunchConfigurations", format!("launch configuration {name}"), region, &e))?;
        r.launch_configurations().first().cloned().ok_or_else(|| Error::Other(format!("launch configuration {name} does not exist in {region}")))
    }

    /// Copies a launch configuration with another image and name.
    async fn copy_launch_configuration(&self, from: &str, to: &str, ami: &str) -> Result<aws_sdk_autoscaling::types::LaunchConfiguration> {
        let region = self.c.region.as_str();
        let lc = self.launch_configuration(from).await?;
        let req = self
            .c
            .asg
            .create_launch_configuration()
            .launch_configuration_name(to)
            .image_id(ami)
            .set_key_name(lc.key_name().map(str::to_string))
            .set_security_groups(Some(lc.security_groups().to_vec()).filter(|v| !v.is_empty()))
            .set_classic_link_vpc_id(lc.classic_link_vpc_id().map(str::to_string))
            .set_classic_link_vpc_security_groups(Some(lc.classic_link_vpc_security_groups().to_vec()).filter(|v| !v.is_empty()))
            .set_user_data(lc.user_data().map(str::to_string).filter(|u| !u.is_empty()))
            .set_instance_type(lc.instance_type().map(str::to_string))
            .set_kernel_id(lc.kernel_id().map(str::to_string).filter(|k| !k.is_empty()))
            .set_ramdisk_id(lc.ramdisk_id().map(str::to_string).filter(|k| !k.is_empty()))
            .set_block_device_mappings(Some(lc.block_device_mappings().to_vec()).filter(|v| !v.is_empty()))
            .set_instance_monitoring(lc.instance_monitoring().cloned())
            .set_spot_price(lc.spot_price().map(str::to_string))
            .set_iam_instance_profile(lc.iam_instance_profile().map(str::to_string))
            .set_ebs_optimized(lc.ebs_optimized())
            .set_associate_public_ip_address(lc.associate_public_ip_address())
            .set_placement_tenancy(lc.placement_tenancy().map(str::to_string))
            .set_metadata_options(lc.metadata_options().cloned());
        req.send().await.map_err(|e| Error::aws("autoscaling:CreateLaunchConfiguration", format!("launch configuration {to}"), region, &e))?;
        Ok(lc)
    }

    /// A launch template with a launch configuration's settings and `ami`.
    async fn template_from_configuration(&self, lc: &str, name: &str, ami: &str, roll_id: &str, role: &str, env: &str) -> Result<String> {
        use aws_sdk_ec2::types as t;
        let region = self.c.region.as_str();
        let l = self.launch_configuration(lc).await?;
        let mut data = t::RequestLaunchTemplateData::builder().image_id(ami);
        if let Some(it) = l.instance_type() {
            data = data.instance_type(t::InstanceType::from(it));
        }
        if let Some(k) = l.key_name().filter(|k| !k.is_empty()) {
            data = data.key_name(k);
        }
        if !l.security_groups().is_empty() {
            data = data.set_security_group_ids(Some(l.security_groups().to_vec()));
        }
        if let Some(u) = l.user_data().filter(|u| !u.is_empty()) {
            data = data.user_data(u);
        }
        if let Some(p) = l.iam_instance_profile() {
            let spec = if p.starts_with("arn:") {
                t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder().arn(p).build()
            } else {
                t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder().name(p).build()
            };
            data = data.iam_instance_profile(spec);
        }
        if let Some(m) = l.metadata_options() {
            let mut mo = t::LaunchTemplateInstanceMetadataOptionsRequest::builder();
            if let Some(h) = m.http_tokens() {
                mo = mo.http_tokens(t::LaunchTemplateHttpTokensState::from(h.as_str()));
            }
            if let Some(h) = m.http_put_response_hop_limit() {
                mo = mo.http_put_response_hop_limit(h);
            }
            if let Some(e) = m.http_endpoint() {
                mo = mo.http_endpoint(t::LaunchTemplateInstanceMetadataEndpointState::from(e.as_str()));
            }
            data = data.metadata_options(mo.build());
        }
        if let Some(e) = l.ebs_optimized() {
            data = data.ebs_optimized(e);
        }
        if let Some(m) = l.instance_monitoring().and_then(|m| m.enabled()) {
            data = data.monitoring(t::LaunchTemplatesMonitoringRequest::builder().enabled(m).build());
        }
        for b in l.block_device_mappings() {
            let mut m = t::LaunchTemplateBlockDeviceMappingRequest::builder().set_device_name(b.device_name().map(str::to_string));
            if let Some(v) = b.virtual_name() {
                m = m.virtual_name(v);
            }
            if let Some(e) = b.ebs() {
                let mut eb = t::LaunchTemplateEbsBlockDeviceRequest::builder();
                if let Some(s) = e.volume_size() {
                    eb = eb.volume_size(s);
                }
                if let Some(v) = e.volume_type() {
                    eb = eb.volume_type(t::VolumeType::from(v));
                }
                if let Some(s) = e.snapshot_id() {
                    eb = eb.snapshot_id(s);
                }
                if let Some(d) = e.delete_on_termination() {
                    eb = eb.delete_on_termination(d);
                }
                if let Some(x) = e.encrypted() {
                    eb = eb.encrypted(x);
                }
                if let Some(i) = e.iops() {
                    eb = eb.iops(i);
                }
                m = m.ebs(eb.build());
            }
            data = data.block_device_mappings(m.build());
        }
        let out = self
            .c
            .ec2
            .create_launch_template()
            .launch_template_name(name)
            .version_description(format!("bake {roll_id}: {ami}, migrated from launch configuration {lc}"))
            .launch_template_data(data.build())
            .tag_specifications(
                t::TagSpecification::builder()
                    .resource_type(t::ResourceType::LaunchTemplate)
                    .set_tags(Some(
                        [
                            (tags::MANAGED, "true"),
                            (tags::ID, roll_id),
                            (tags::ROLE, role),
                            (tags::ENV, env),
                            (tags::CREATED, &crate::journal::now_rfc3339()),
                            (tags::MIGRATED_FROM, lc),
                        ]
                        .iter()
                        .map(|(k, v)| t::Tag::builder().key(*k).value(*v).build())
                        .collect(),
                    ))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::aws("ec2:CreateLaunchTemplate", format!("launch template {name}"), region, &e))?;
        Ok(out.launch_template().and_then(|t| t.launch_template_id()).unwrap_or_default().to_string())
    }

    /// Keeps the newest `keep_lcs` launch configurations bake made for `group`; deletes the rest
    /// (what it cannot is a leftover: the group has rolled all the same).
    async fn prune_launch_configurations(&self, group: &str, in_use: &str) {
        let all = match self.c.launch_configurations().await {
            Ok(a) => a,
            Err(e) => return self.left(format!("the old launch configurations of {group} (listing them failed: {e})")),
        };
        let mut mine: Vec<_> = all
            .into_iter()
            .filter(|l| l.launch_configuration_name().map(|n| rollout::is_bake_launch_configuration(group, n) && n != in_use).unwrap_or(false))
            .collect();
        mine.sort_by(|a, b| b.created_time().cmp(&a.created_time()));
        for l in mine.into_iter().skip(self.keep_lcs.saturating_sub(1) as usize) {
            if let Some(n) = l.launch_configuration_name() {
                self.delete_launch_configuration(n).await;
            }
        }
    }
}

/// Moves one group onto its new image. Records in `rec`; `Ok(true)` when the group moved (and
/// is to be put back should the rollout fail).
async fn roll_group(cx: &Cx, plan: &RolloutPlan, g: &GroupPlan, rec: &mut GroupRecord) -> Result<bool> {
    let rep = cx.reporter(&format!("{} {}", plan.role, g.name));
    rec.name = g.name.clone();
    rec.canary = g.canary;
    rec.previous_image = g.current_image.clone();
    rec.new_image = g.new_image.clone();
    if g.change == Change::Nothing {
        rec.outcome = "unchanged".into();
        rep.finish("already on this image");
        return Ok(false);
    }
    if cx.has_failed() || *cx.cancel.borrow() {
        rec.outcome = "not-started".into();
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
            cx.tag(
                &g.name,
                &[
                    (TAG_ROLL, plan.roll_id.clone()),
                    (TAG_IMAGE, g.new_image.clone()),
                    (TAG_PREVIOUS_IMAGE, g.current_image.clone()),
                    (TAG_PREVIOUS_VERSION, from.to_string()),
                ],
            )
            .await?;
            // A group that keeps its alias follows it: the refresh names no configuration.
            let desired = if alias.is_some() { None } else { Some((id.clone(), n)) };
            (desired, g.refresh.auto_rollback)
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
            cx.tag(
                &g.name,
                &[
                    (TAG_ROLL, plan.roll_id.clone()),
                    (TAG_IMAGE, g.new_image.clone()),
                    (TAG_PREVIOUS_IMAGE, g.current_image.clone()),
                    (TAG_PREVIOUS_LC, from.clone()),
                ],
            )
            .await?;
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
            cx.tag(
                &g.name,
                &[
                    (TAG_ROLL, plan.roll_id.clone()),
                    (TAG_IMAGE, g.new_image.clone()),
                    (TAG_PREVIOUS_IMAGE, g.current_image.clone()),
                    (TAG_PREVIOUS_LC, from.clone()),
                ],
            )
            .await?;
            (Some((id, 1)), g.refresh.auto_rollback)
        }
        Change::Nothing => unreachable!("handled above"),
    };
    let id = cx.start_refresh(g, desired, auto_rollback, g.refresh.skip_matching).await?;
    rec.moved = true;
    rec.refresh_ids.push(id.clone());
    rep.stage("refresh", &format!("{id} started"));
    match cx.wait_refresh(&g.name, &id, &rep, rec, true).await? {
        Ended::Successful => {
            rec.outcome = "rolled".into();
            if let Change::LaunchConfiguration { to, .. } = &g.change {
                cx.prune_launch_configurations(&g.name, to).await;
            }
            rep.finish(&format!("on {}", g.new_image));
            Ok(true)
        }
        Ended::RolledBackByAws(reason) => {
            rec.outcome = "rolled-back-by-aws".into();
            rec.error = Some(reason.clone());
            cx.fail();
            rep.finish(&format!("failed and rolled back by AWS: {reason}"));
            Err(Error::Other(format!("group {}: instance refresh {id} failed and AWS rolled it back: {reason}", g.name)))
        }
        Ended::Failed(why) => {
            rec.outcome = "failed".into();
            rec.error = Some(why.clone());
            cx.fail();
            rep.finish(&format!("failed: {why}"));
            Err(Error::Other(format!("group {}: {why}", g.name)))
        }
        Ended::Stopped => {
            rec.outcome = "cancelled".into();
            Ok(true)
        }
    }
}

/// Puts a group back on its previous image.
async fn restore(cx: &Cx, plan: &RolloutPlan, g: &GroupPlan, rec: &mut GroupRecord) -> Result<()> {
    let rep = cx.reporter(&format!("{} {}", plan.role, g.name));
    if rec.outcome == "rolled-back-by-aws" {
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
            None => Some((id.clone(), *from)),
        },
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
    let id = cx.start_refresh(g, desired, false, skip_matching).await?;
    rec.refresh_ids.push(id.clone());
    match cx.wait_refresh(&g.name, &id, &rep, rec, false).await? {
        Ended::Successful => {
            rec.outcome = "rolled-back".into();
            cx.tag(&g.name, &[(TAG_IMAGE, g.current_image.clone())]).await?;
            cx.delete_tags(&g.name, &[TAG_PREVIOUS_IMAGE, TAG_PREVIOUS_VERSION, TAG_PREVIOUS_LC]).await?;
            match &g.change {
                Change::LaunchConfiguration { to, .. } if rollout::is_bake_launch_configuration(&g.name, to) => cx.delete_launch_configuration(to).await,
                Change::MigrateToTemplate { template, .. } => cx.delete_migrated_template(template).await,
                _ => {}
            }
            rep.finish(&format!("back on {}", g.current_image));
            Ok(())
        }
        Ended::RolledBackByAws(r) | Ended::Failed(r) => {
            rec.outcome = "rollback-failed".into();
            rec.error = Some(r.clone());
            Err(Error::Other(format!("group {}: rolling back failed: {r}", g.name)))
        }
        Ended::Stopped => Err(Error::Interrupted),
    }
}

/// What the instances of each group run: image → instances, for every instance that is not
/// terminating (an instance EC2 does not list yet counts as `unknown`).
async fn census(c: &Clients, names: &[String]) -> Result<BTreeMap<String, BTreeMap<String, u32>>> {
    let groups = c.groups_named(names).await?;
    let mut members: Vec<(String, String)> = Vec::new();
    for g in &groups {
        let name = g.auto_scaling_group_name().unwrap_or_default();
        for i in g.instances() {
            let state = i.lifecycle_state().map(|s| s.as_str()).unwrap_or_default();
            if let (Some(id), false) = (i.instance_id(), state.starts_with("Terminat")) {
                members.push((name.to_string(), id.to_string()));
            }
        }
    }
    let mut image_of: BTreeMap<String, String> = BTreeMap::new();
    let ids: Vec<String> = members.iter().map(|(_, i)| i.clone()).collect();
    for chunk in ids.chunks(200) {
        let filter = aws_sdk_ec2::types::Filter::builder().name("instance-id").set_values(Some(chunk.to_vec())).build();
        for i in c.instances("the groups' instances", vec![filter]).await? {
            if let (Some(id), Some(image)) = (i.instance_id(), i.image_id()) {
                image_of.insert(id.to_string(), image.to_string());
            }
        }
    }
    let mut out: BTreeMap<String, BTreeMap<String, u32>> = names.iter().map(|n| (n.clone(), BTreeMap::new())).collect();
    for (group, id) in members {
        let image = image_of.get(&id).cloned().unwrap_or_else(|| "unknown".into());
        *out.entry(group).or_default().entry(image).or_default() += 1;
    }
    Ok(out)
}

/// The image each group is configured with now.
async fn configured_images(c: &Clients, plan: &Plan, names: Vec<String>) -> BTreeMap<String, String> {
    let mut p = plan.clone();
    p.rollout.groups = names;
    p.rollout.group_tags.clear();
    match discover(c, &p).await {
        Ok(gs) => gs.into_iter().filter_map(|g| g.source.image().map(|i| (g.name.clone(), i.to_string()))).collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Runs a rollout plan: canaries, bake time, the rest; everything back on any failure.
async fn execute(cx: &Cx, plan: &RolloutPlan) -> (Vec<GroupRecord>, Result<()>) {
    let conc = plan.concurrency as usize;
    let run = |gs: Vec<GroupPlan>| async move {
        stream::iter(gs.into_iter().map(|g| async move {
            let mut rec = GroupRecord::default();
            let r = roll_group(cx, plan, &g, &mut rec).await;
            if let Err(e) = &r {
                cx.fail();
                if rec.error.is_none() {
                    rec.error = Some(e.to_string());
                }
                if rec.outcome.is_empty() {
                    rec.outcome = "failed".into();
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
    if canaries_ok && !*cx.cancel.borrow() && !plan.rest.is_empty() {
        if plan.canary_bake_time.0 > 0 && !plan.canaries.is_empty() {
            cx.report.bake(&plan.role).info(&format!("canaries healthy; waiting {} before the rest", plan.canary_bake_time));
            tokio::select! {
                _ = tokio::time::sleep(plan.canary_bake_time.as_duration()) => {},
                _ = cancelled(cx.cancel.clone()) => {},
            }
        }
        done.extend(run(plan.rest.clone()).await);
    } else {
        for g in &plan.rest {
            done.push((
                g.clone(),
                GroupRecord {
                    name: g.name.clone(),
                    canary: false,
                    outcome: "not-started".into(),
                    previous_image: g.current_image.clone(),
                    new_image: g.new_image.clone(),
                    ..Default::default()
                },
                Ok(false),
            ));
        }
    }
    let interrupted = *cx.cancel.borrow();
    let failure = done.iter().find_map(|(_, _, r)| r.as_ref().err().map(|e| e.to_string()));
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
            if let Err(e) = restore(cx, plan, &g, &mut rec).await {
                rec.outcome = "rollback-failed".into();
                rec.error = Some(e.to_string());
            }
        } else if rec.outcome.is_empty() {
            rec.outcome = "not-started".into();
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
        m.status = "failed".into();
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
        check_image(&c, &ami).await?;
        m.ami = ami.clone();
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
            m.status = "planned".into();
            for g in rp.groups() {
                m.groups.push(GroupRecord {
                    name: g.name.clone(),
                    canary: g.canary,
                    previous_image: g.current_image.clone(),
                    new_image: g.new_image.clone(),
                    outcome: if g.change == Change::Nothing { "unchanged".into() } else { "planned".into() },
                    final_image: g.current_image.clone(),
                    ..Default::default()
                });
            }
            progress.bake(&plan.role).info(&rp.to_string());
            return Ok(());
        }
        let cx = Cx::new(&c, plan, req, &progress, cancel.clone());
        let (recs, r) = execute(&cx, &rp).await;
        m.groups = recs;
        m.leftovers = cx.take_leftovers();
        r
    }
    .await;
    // What each group runs when the roll ends: a census of its instances, not what was meant.
    if m.status != "planned" && !m.groups.is_empty() {
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
                progress.bake(&plan.role).info(&format!("could not tell what the groups run now: {e}"));
            }
        }
    }
    m.groups.sort_by(|a, b| b.canary.cmp(&a.canary).then(a.name.cmp(&b.name)));
    match result {
        Ok(()) if m.status.is_empty() && !m.leftovers.is_empty() => {
            m.status = "leftovers".into();
            m.error = Some(format!("every group rolled, but {} thing(s) the roll made could not be removed (listed as leftovers)", m.leftovers.len()));
        }
        Ok(()) if m.status.is_empty() => {
            m.status = if m.groups.iter().all(|g| g.outcome == "unchanged") { "unchanged".into() } else { "succeeded".into() };
        }
        Ok(()) => {}
        Err(Error::Interrupted) => {
            m.status = "interrupted".into();
            m.error = Some("interrupted; every group that moved was put back".into());
        }
        Err(e) => {
            m.status = "failed".into();
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
            Source::Unsupported { why } => return Err(Error::Other(format!("group {}: {why}", g.name))),
        };
        // The image the group goes back to is what its previous version or configuration
        // launches (the tag only says which that is), and it must still exist: every group's is
        // checked before anything changes.
        let prev_image = match &change {
            Change::TemplateVersion { id, from, .. } => template_version(c, id, &from.to_string()).await?.1,
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
                .bake(&g.name)
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
                refresh_in_progress: g.refresh_in_progress.clone(),
                notes: Vec::new(),
            },
            g.tags.contains_key(TAG_PREVIOUS_VERSION) && g.tags.contains_key(TAG_PREVIOUS_LC),
        ));
    }
    let cx = Cx::new(c, plan, req, progress, cancel);
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
