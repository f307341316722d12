//! `bake ls` and `bake prune`: the images bake made, what uses each, and removing old ones.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, Image};
use serde::Serialize;

use crate::aws::{Aws, Clients};
use crate::error::{Error, Result};
use crate::tags;

#[derive(Serialize, Clone, Debug, Default)]
pub struct ImageInfo {
    pub id: String,
    pub region: String,
    pub name: String,
    pub role: String,
    pub env: String,
    /// The architecture, for a role that bakes several (`bake:arch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// bake or patch
    pub kind: String,
    pub created: String,
    pub age_days: f64,
    pub fingerprint: String,
    pub parent: Option<String>,
    pub cves: Vec<String>,
    pub deprecation_time: Option<String>,
    /// The digest of its package inventory (`bake:inventory`), when bake kept one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<String>,
    /// `available`, or `disabled` (retiring: `bake prune` disabled it).
    pub state: String,
    /// DeregistrationProtection as EC2 reports it: `disabled`, `enabled-with-cooldown`,
    /// `enabled-without-cooldown`, `disabled after <time>` (the cooldown).
    pub protection: String,
    /// ImdsSupport: `v2.0` when instances launched from it must use IMDSv2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imds_support: Option<String>,
    /// When `bake prune` disabled it (`bake:retired-at`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
    /// When `bake prune --restore` brought it back: prune leaves it for `retire_after` from then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<String>,
    pub snapshots: Vec<String>,
    /// `group NAME`, `launch-template NAME vN`, `launch-configuration NAME`, `parameter NAME`
    pub used_by: Vec<String>,
}

fn tag<'a>(i: &'a Image, k: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value())
}

fn age_days(created: &str) -> f64 {
    aws_smithy_types::DateTime::from_str(created, aws_smithy_types::date_time::Format::DateTime)
        .ok()
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs_f64() / 86_400.0)
        .unwrap_or(0.0)
}

/// Finished bake images in one region (optionally one role / env).
async fn images(c: &Clients, role: Option<&str>, env: Option<&str>) -> Result<Vec<ImageInfo>> {
    let mut filters = vec![Filter::builder().name(format!("tag:{}", tags::COMPLETE)).values("true").build()];
    if let Some(r) = role {
        filters.push(Filter::builder().name(format!("tag:{}", tags::ROLE)).values(r).build());
    }
    if let Some(e) = env {
        filters.push(Filter::builder().name(format!("tag:{}", tags::ENV)).values(e).build());
    }
    // Disabled images too: those `bake prune` is retiring.
    let found = c.images_with("bake's images", &["self".to_string()], filters, true).await?;
    found
        .iter()
        .map(|i| {
            let id = crate::aws::required(i.image_id(), "ec2:DescribeImages", "an image id", &c.region)?;
            let created = i.creation_date().unwrap_or_default().to_string();
            Ok(ImageInfo {
                id,
                region: c.region.clone(),
                name: i.name().unwrap_or_default().to_string(),
                role: tag(i, crate::tags::ROLE).unwrap_or_default().to_string(),
                env: tag(i, crate::tags::ENV).unwrap_or_default().to_string(),
                arch: tag(i, crate::tags::ARCH).map(str::to_string),
                kind: tag(i, crate::tags::KIND).unwrap_or("bake").to_string(),
                age_days: age_days(&created),
                created,
                fingerprint: tag(i, crate::tags::FINGERPRINT).unwrap_or_default().to_string(),
                parent: tag(i, crate::tags::PATCH_OF).map(str::to_string),
                cves: tag(i, crate::tags::CVE).map(|c| c.split(',').map(str::to_string).collect()).unwrap_or_default(),
                deprecation_time: i.deprecation_time().map(str::to_string),
                inventory: tag(i, crate::tags::INVENTORY).map(str::to_string),
                state: i.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
                protection: i.deregistration_protection().unwrap_or("disabled").to_string(),
                imds_support: i.imds_support().map(|s| s.as_str().to_string()),
                // Only a disabled image is retiring; an available one may have been restored.
                retired_at: tag(i, crate::tags::RETIRED)
                    .filter(|v| i.state().map(|s| s.as_str()) == Some("disabled") && !v.starts_with(RESTORED))
                    .map(str::to_string),
                restored_at: tag(i, crate::tags::RETIRED)
                    .and_then(|v| v.strip_prefix(RESTORED))
                    .filter(|_| i.state().map(|s| s.as_str()) != Some("disabled"))
                    .map(str::to_string),
                snapshots: i.block_device_mappings().iter().filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string)).collect(),
                used_by: Vec::new(),
            })
        })
        .collect()
}

/// What uses which image in one region: groups (the launch template version or configuration
/// they use), every launch configuration, and the given SSM parameters.
async fn usage(c: &Clients, parameters: &BTreeSet<String>) -> Result<BTreeMap<String, Vec<String>>> {
    let region = c.region.as_str();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lcs: BTreeMap<String, String> = BTreeMap::new();
    for l in c.launch_configurations().await? {
        if let (Some(n), Some(i)) = (l.launch_configuration_name(), l.image_id()) {
            lcs.insert(n.to_string(), i.to_string());
            out.entry(i.to_string()).or_default().push(format!("launch-configuration {n}"));
        }
    }
    let mut versions: BTreeMap<(String, String), (i64, String, String)> = BTreeMap::new();
    {
        for g in &c.groups("every group", Vec::new()).await? {
            let name = g.auto_scaling_group_name().unwrap_or_default();
            // What `bake roll --rollback` would put the group back on.
            if let Some(prev) = g.tags().iter().find(|t| t.key() == Some(crate::tags::PREVIOUS_IMAGE)).and_then(|t| t.value()) {
                out.entry(prev.to_string()).or_default().push(format!("rollback of group {name}"));
            }
            // The group's launch template, or every template of its mixed instances policy.
            let mut specs: Vec<&aws_sdk_autoscaling::types::LaunchTemplateSpecification> = g.launch_template().into_iter().collect();
            if let Some(lt) = g.mixed_instances_policy().and_then(|p| p.launch_template()) {
                specs.extend(lt.launch_template_specification());
                specs.extend(lt.overrides().iter().filter_map(|o| o.launch_template_specification()));
            }
            for lt in &specs {
                let id = lt.launch_template_id().unwrap_or_default().to_string();
                let v = lt.version().unwrap_or("$Default").to_string();
                let key = (if id.is_empty() { lt.launch_template_name().unwrap_or_default().to_string() } else { id.clone() }, v.clone());
                if !versions.contains_key(&key) {
                    let mut q = c.ec2.describe_launch_template_versions().versions(&v);
                    q = if id.is_empty() { q.launch_template_name(lt.launch_template_name().unwrap_or_default()) } else { q.launch_template_id(&id) };
                    let d =
                        q.send().await.map_err(|e| Error::aws("ec2:DescribeLaunchTemplateVersions", format!("group {name}'s launch template"), region, &e))?;
                    if let Some(ver) = d.launch_template_versions().first() {
                        let image = ver.launch_template_data().and_then(|d| d.image_id()).unwrap_or_default().to_string();
                        versions.insert(key.clone(), (ver.version_number().unwrap_or(0), image, ver.launch_template_name().unwrap_or_default().to_string()));
                    }
                }
                if let Some((n, image, lt_name)) = versions.get(&key) {
                    out.entry(image.clone()).or_default().push(format!("group {name}"));
                    out.entry(image.clone()).or_default().push(format!("launch-template {lt_name} v{n}"));
                }
            }
            if let Some(lc) = g.launch_configuration_name() {
                if let Some(image) = lcs.get(lc) {
                    out.entry(image.clone()).or_default().push(format!("group {name}"));
                }
            }
        }
    }
    let names: Vec<String> = parameters.iter().cloned().collect();
    for chunk in names.chunks(10) {
        let r = c
            .ssm
            .get_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| Error::aws("ssm:GetParameters", "bake's parameters", region, &e))?;
        for p in r.parameters() {
            if let (Some(n), Some(v)) = (p.name(), p.value()) {
                out.entry(v.to_string()).or_default().push(format!("parameter {n}"));
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    Ok(out)
}

/// Every finished bake image in `regions`, with what uses it (in this account and in every
/// workload account of `accounts` that covers the region, through its role), newest first. An
/// account whose role cannot be assumed is an error: what it runs would be unknown.
pub async fn list(
    aws: &Aws,
    regions: &[String],
    role: Option<&str>,
    env: Option<&str>,
    parameters: &BTreeSet<String>,
    accounts: &[(crate::config::role::TargetAccount, BTreeSet<String>)],
) -> Result<Vec<ImageInfo>> {
    let mut all = Vec::new();
    let mut assumed: Vec<(&crate::config::role::TargetAccount, Aws)> = Vec::new();
    for region in regions {
        let c = aws.clients(region);
        let mut imgs = images(&c, role, env).await?;
        if imgs.is_empty() {
            continue;
        }
        let mut used = usage(&c, parameters).await?;
        for (a, published) in accounts.iter().filter(|(a, _)| a.regions.is_empty() || a.regions.contains(region)) {
            if !assumed.iter().any(|(x, _)| x.id == a.id) {
                let there = aws.assume(&a.id, &a.role_arn, a.external_id.as_deref(), "bake-catalog").await.map_err(|e| {
                    Error::Other(format!("rollout.accounts.{}: {e}; what that account runs is unknown, so nothing was listed or removed", a.id))
                })?;
                assumed.push((a, there));
            }
            let Some((_, there)) = assumed.iter().find(|(x, _)| x.id == a.id) else { continue };
            for (image, users) in usage(&there.clients(region), published).await? {
                used.entry(image).or_default().extend(users.into_iter().map(|u| format!("{u} (account {})", a.id)));
            }
        }
        for i in &mut imgs {
            i.used_by = used.get(&i.id).cloned().unwrap_or_default();
        }
        all.extend(imgs);
    }
    all.sort_by(|a, b| (&a.role, &a.env, &a.region).cmp(&(&b.role, &b.env, &b.region)).then(b.created.cmp(&a.created)));
    Ok(all)
}

/// What prune does with one image.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    /// Lift its deregistration protection, disable it (DisableImage: no new launches, hidden from
    /// listings), and deregister it `retire_after` later.
    Retire,
    /// Its retirement is over: deregister it and delete its snapshots.
    Deregister,
}

/// What prune decides for one image.
#[derive(Serialize, Clone, Debug)]
pub struct Decision {
    pub image: ImageInfo,
    /// It goes (now or when its retirement ends).
    pub delete: bool,
    pub action: Action,
    pub why: String,
}

/// How `bake:retired-at` marks an image `bake prune --restore` brought back: `restored <time>`.
pub const RESTORED: &str = "restored ";

/// When a retiring image may be deregistered: `retired_at` plus `retire_after`.
fn retirement_ends(retired_at: &str, retire_after: std::time::Duration) -> Option<std::time::SystemTime> {
    let t = aws_smithy_types::DateTime::from_str(retired_at, aws_smithy_types::date_time::Format::DateTime).ok()?;
    std::time::SystemTime::try_from(t).ok()?.checked_add(retire_after)
}

fn rfc3339(t: std::time::SystemTime) -> String {
    aws_smithy_types::DateTime::from(t).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default()
}

/// Pure: per role, env, region (and architecture), keep the newest `keep` available images and
/// whatever is in use or young; retire the rest (disable now, deregister `retire_after(role, env)`
/// after it was disabled, at `now`). `images` is newest first within each group (as `list`
/// returns them).
pub fn decide(
    images: Vec<ImageInfo>,
    keep: &dyn Fn(&str, &str) -> usize,
    older_than_days: Option<f64>,
    retire_after: &dyn Fn(&str, &str) -> std::time::Duration,
    now: std::time::SystemTime,
) -> Vec<Decision> {
    let mut seen: BTreeMap<(String, String, String, Option<String>), usize> = BTreeMap::new();
    let mut out = Vec::new();
    for i in images {
        let disabled = i.state == "disabled";
        let n = seen.entry((i.role.clone(), i.env.clone(), i.region.clone(), i.arch.clone())).or_default();
        // Only available images count among the newest kept: a disabled one cannot be launched.
        if !disabled {
            *n += 1;
        }
        let k = keep(&i.role, &i.env);
        let after = retire_after(&i.role, &i.env);
        let (action, why) = if !i.used_by.is_empty() {
            let restore = if disabled { format!(" (and disabled: bake prune --restore {})", i.id) } else { String::new() };
            (Action::Keep, format!("in use by {}{restore}", i.used_by.join(", ")))
        } else if disabled {
            let began = i.retired_at.as_deref().and_then(|r| retirement_ends(r, std::time::Duration::ZERO));
            match i.retired_at.as_deref().and_then(|r| retirement_ends(r, after)) {
                // Written by a clock that ran ahead: begun again now, else it would never end.
                _ if began.is_some_and(|b| b > now + std::time::Duration::from_secs(3600)) => {
                    (Action::Retire, "its bake:retired-at is in the future (a clock ahead?): its retirement starts again now".to_string())
                }
                Some(end) if end <= now => (Action::Deregister, format!("retired {} ago or more, unused", crate::config::Secs(after.as_secs()))),
                Some(end) => (Action::Keep, format!("retiring: disabled, deregistered after {} (bake prune --restore {} brings it back)", rfc3339(end), i.id)),
                // Disabled by someone else: its retirement starts now.
                None => (Action::Retire, "disabled outside bake, unused: retiring it from now".to_string()),
            }
        } else if let Some(until) = i.restored_at.as_deref().and_then(|r| retirement_ends(r, after)).filter(|u| *u > now) {
            (Action::Keep, format!("restored by bake prune --restore: kept until {}", rfc3339(until)))
        } else if *n <= k {
            (Action::Keep, format!("one of the newest {k}"))
        } else if let Some(days) = older_than_days.filter(|d| i.age_days < *d) {
            (Action::Keep, format!("younger than {days:.0} days"))
        } else {
            let cooldown = if i.protection.starts_with("enabled-with-cooldown") { ", and once AWS's 24-hour protection cooldown has passed" } else { "" };
            (Action::Retire, format!("older than the newest {k}, unused: disabled now, deregistered after {}{cooldown}", crate::config::Secs(after.as_secs())))
        };
        out.push(Decision { image: i, delete: action != Action::Keep, action, why });
    }
    out
}

/// Deregisters an image and deletes its snapshots (through cleanup's deletes: already gone is
/// done, a snapshot still "in use" right after the deregistration is retried); one error stops
/// only this image. Protection is lifted first; while AWS's cooldown still holds it, nothing is
/// done and the error says until when.
pub async fn remove(aws: &Aws, i: &ImageInfo) -> Result<Removal> {
    use crate::journal::{Kind, Resource};
    let c = aws.clients(&i.region);
    if i.protection.starts_with("enabled") {
        unprotect(&c, &i.id).await?;
    }
    // Listed unprotected with no cooldown running: nothing to wait for, no second look.
    let maybe_protected = i.protection != "disabled";
    if let Some(until) = if maybe_protected { cooldown(&c, &i.id).await? } else { None } {
        return Ok(Removal::Protected(until));
    }
    let gone = crate::stages::teardown::delete(aws, &Resource::new(Kind::Image, &i.id, &i.region), None).await?;
    for s in &i.snapshots {
        let r = Resource::new(Kind::Snapshot, s, &i.region);
        if !gone.contains(&r) {
            crate::stages::teardown::delete(aws, &r, None).await?;
        }
    }
    Ok(Removal::Done)
}

/// What [`remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Deregistered, its snapshots deleted.
    Done,
    /// Still protected by AWS's cooldown, until then: left for a later prune.
    Protected(String),
}

async fn unprotect(c: &Clients, image: &str) -> Result<()> {
    c.ec2
        .disable_image_deregistration_protection()
        .image_id(image)
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DisableImageDeregistrationProtection", format!("image {image}"), &c.region, &e))?;
    Ok(())
}

/// When the image's protection cooldown ends, if it still holds (`disabled after <time>`).
async fn cooldown(c: &Clients, image: &str) -> Result<Option<String>> {
    let r = c
        .ec2
        .describe_images()
        .image_ids(image)
        .include_disabled(true)
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeImages", format!("image {image}"), &c.region, &e))?;
    let p = r.images().first().and_then(|i| i.deregistration_protection()).unwrap_or("disabled");
    Ok(match p.strip_prefix("disabled after ") {
        Some(t) => aws_smithy_types::DateTime::from_str(t, aws_smithy_types::date_time::Format::DateTime)
            .ok()
            .and_then(|d| std::time::SystemTime::try_from(d).ok())
            .filter(|d| *d > std::time::SystemTime::now())
            .map(|_| t.to_string()),
        None if p.starts_with("enabled") => Some("protection is lifted".to_string()),
        None => None,
    })
}

/// Starts an image's retirement: protection lifted, the image disabled (no new launches; AWS
/// removes its launch permissions), and tagged with when (`bake:retired-at`).
pub async fn retire(aws: &Aws, i: &ImageInfo) -> Result<()> {
    let c = aws.clients(&i.region);
    if i.protection.starts_with("enabled") {
        unprotect(&c, &i.id).await?;
    }
    if i.state != "disabled" {
        c.ec2.disable_image().image_id(&i.id).send().await.map_err(|e| Error::aws("ec2:DisableImage", format!("image {}", i.id), &i.region, &e))?;
    }
    let tag = aws_sdk_ec2::types::Tag::builder().key(tags::RETIRED).value(crate::journal::now_rfc3339()).build();
    c.ec2.create_tags().resources(&i.id).tags(tag).send().await.map_err(|e| Error::aws("ec2:CreateTags", format!("image {}", i.id), &i.region, &e))?;
    Ok(())
}

/// `bake prune --restore AMI`: a retiring image enabled again, its retirement over. Only one
/// bake made, and only while it is disabled.
pub async fn restore(aws: &Aws, region: &str, image: &str) -> Result<bool> {
    let c = aws.clients(region);
    let r = match c.ec2.describe_images().image_ids(image).owners("self").include_disabled(true).send().await {
        Ok(r) => r,
        // Not in this region.
        Err(e) if crate::error::is_not_found(aws_sdk_ec2::error::ProvideErrorMetadata::code(&e)) => return Ok(false),
        Err(e) => return Err(Error::aws("ec2:DescribeImages", format!("image {image}"), region, &e)),
    };
    let Some(i) = r.images().first() else { return Ok(false) };
    // What prune retires (a finished bake image, `bake:complete`), it restores.
    if tag(i, tags::COMPLETE) != Some("true") {
        return Err(Error::Other(format!("image {image} in {region} is not an image bake made (no {}=true tag): bake restores only its own", tags::COMPLETE)));
    }
    if i.state().map(|s| s.as_str()) != Some("disabled") {
        return Err(Error::Other(format!(
            "image {image} in {region} is {}, not disabled: there is nothing to restore",
            i.state().map(|s| s.as_str()).unwrap_or("in no known state")
        )));
    }
    c.ec2.enable_image().image_id(image).send().await.map_err(|e| Error::aws("ec2:EnableImage", format!("image {image}"), region, &e))?;
    // Marked restored (the same tag, so the operator needs no ec2:DeleteTags): prune leaves it
    // for a whole `retire_after` before it may retire it again.
    let tag = aws_sdk_ec2::types::Tag::builder().key(tags::RETIRED).value(format!("{RESTORED}{}", crate::journal::now_rfc3339())).build();
    c.ec2.create_tags().resources(image).tags(tag).send().await.map_err(|e| Error::aws("ec2:CreateTags", format!("image {image}"), region, &e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, age: f64, used: &[&str]) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            region: "us-east-1".into(),
            role: "web".into(),
            env: "production".into(),
            age_days: age,
            used_by: used.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_newest_in_use_and_young() {
        let imgs = vec![img("a", 1.0, &[]), img("b", 10.0, &[]), img("c", 40.0, &["group web_production"]), img("d", 50.0, &[]), img("e", 5.0, &[])];
        let week = |_: &str, _: &str| std::time::Duration::from_secs(7 * 86_400);
        let now = std::time::SystemTime::now();
        let d = decide(imgs.clone(), &|_, _| 2, None, &week, now);
        let del: Vec<&str> = d.iter().filter(|x| x.delete).map(|x| x.image.id.as_str()).collect();
        assert_eq!(del, ["d", "e"]);
        assert!(d[2].why.contains("in use by group web_production"));
        let d = decide(imgs, &|_, _| 2, Some(30.0), &week, now);
        let del: Vec<&str> = d.iter().filter(|x| x.delete).map(|x| x.image.id.as_str()).collect();
        assert_eq!(del, ["d"], "e is younger than 30 days");
        // A role that bakes two architectures keeps the newest of each.
        let arch = |id: &str, a: &str| ImageInfo { arch: Some(a.into()), ..img(id, 10.0, &[]) };
        let d = decide(vec![arch("x1", "x86_64"), arch("a1", "arm64"), arch("x2", "x86_64"), arch("a2", "arm64")], &|_, _| 1, None, &week, now);
        let del: Vec<&str> = d.iter().filter(|x| x.delete).map(|x| x.image.id.as_str()).collect();
        assert_eq!(del, ["x2", "a2"]);
    }
}
