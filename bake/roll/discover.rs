//! Discovery: the groups a role's rollout targets, as AWS describes them (launch source, the
//! image it launches, refreshes, protected and Standby instances), and what their instances run.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_autoscaling::types::{Filter as AsgFilter, InstanceRefreshStatus, LifecycleState};
use aws_sdk_ec2::types::{Filter, ImageState};
use futures::stream::{self, StreamExt};

use super::plan::{GroupState, MixedTemplate, Policy, Source};
use crate::aws::Clients;
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::tags;

/// The newest finished image bake made for this role and env.
pub async fn newest_image(c: &Clients, role: &str, env: &str) -> Result<String> {
    newest_image_of(c, role, env, None).await
}

/// [`newest_image`] of one architecture (`bake:arch`) of a role that bakes several.
pub async fn newest_image_of(c: &Clients, role: &str, env: &str, arch: Option<&str>) -> Result<String> {
    let mut filters = vec![
        Filter::builder().name(format!("tag:{}", tags::ROLE)).values(role).build(),
        Filter::builder().name(format!("tag:{}", tags::ENV)).values(env).build(),
        Filter::builder().name(format!("tag:{}", tags::COMPLETE)).values("true").build(),
    ];
    if let Some(a) = arch {
        filters.push(Filter::builder().name(format!("tag:{}", tags::ARCH)).values(a).build());
    }
    let what = match arch {
        Some(a) => format!("{role}/{env} ({a})"),
        None => format!("{role}/{env}"),
    };
    let images = c.images(&format!("images of {what}"), &["self".to_string()], filters).await?;

    let available: Vec<&aws_sdk_ec2::types::Image> = images.iter().filter(|i| i.state() == Some(&ImageState::Available)).collect();
    let newest = available.iter().map(|i| i.creation_date()).max().flatten();
    let ids: Vec<&str> = available.iter().filter(|i| i.creation_date().is_some() && i.creation_date() == newest).filter_map(|i| i.image_id()).collect();
    match ids.as_slice() {
        [] => Err(Error::Other(format!("no image of {what} in {}: bake one first, or give --ami", c.region))),
        [one] => Ok(one.to_string()),
        // CreationDate counts seconds: two images of one second cannot be told apart.
        many => Err(Error::Other(format!(
            "the newest images of {what} in {} ({}) were made in the same second ({}): give --ami",
            c.region,
            many.join(", "),
            newest.unwrap_or_default()
        ))),
    }
}

/// The copy in `c`'s region of the bake whose id is `bake_id` (image.regions): `None` when that
/// region has no finished, available copy.
pub(super) async fn copy_of(c: &Clients, role: &str, env: &str, bake_id: &str) -> Result<Option<String>> {
    let images = c
        .images(
            &format!("the copy of bake {bake_id}"),
            &["self".to_string()],
            vec![
                Filter::builder().name(format!("tag:{}", tags::ID)).values(bake_id).build(),
                Filter::builder().name(format!("tag:{}", tags::ROLE)).values(role).build(),
                Filter::builder().name(format!("tag:{}", tags::ENV)).values(env).build(),
                Filter::builder().name(format!("tag:{}", tags::COMPLETE)).values("true").build(),
            ],
        )
        .await?;
    Ok(images.iter().filter(|i| i.state() == Some(&ImageState::Available)).find_map(|i| i.image_id().map(str::to_string)))
}

/// An image as a roll needs it: its architecture and the bake that made it (`None`: not bake's).
pub(super) struct ImageFacts {
    pub arch: String,
    pub bake_id: Option<String>,
}

/// The image exists and is available: its architecture.
pub(super) async fn check_image(c: &Clients, ami: &str) -> Result<String> {
    Ok(image_facts(c, ami).await?.arch)
}

/// [`check_image`], with the bake that made the image.
pub(super) async fn image_facts(c: &Clients, ami: &str) -> Result<ImageFacts> {
    let r = c.ec2.describe_images().image_ids(ami).send().await.map_err(|e| Error::aws("ec2:DescribeImages", format!("image {ami}"), &c.region, &e))?;
    let image = r.images().first();
    match image.and_then(|i| i.state()) {
        Some(ImageState::Available) => Ok(ImageFacts {
            arch: crate::aws::required(
                image.and_then(|i| i.architecture()).map(|a| a.as_str()),
                "ec2:DescribeImages",
                &format!("the architecture of {ami}"),
                &c.region,
            )?,
            bake_id: image.and_then(|i| i.tags().iter().find(|t| t.key() == Some(tags::ID)).and_then(|t| t.value()).map(str::to_string)),
        }),
        Some(s) => Err(Error::Other(format!("image {ami} in {} is {}, not available", c.region, s.as_str()))),
        None => Err(Error::Other(format!("image {ami} does not exist in {}", c.region))),
    }
}

/// A launch template version's number, the image it launches and its instance type.
pub(super) async fn template_version(c: &Clients, id: &str, version: &str) -> Result<(i64, String, Option<String>)> {
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
    let itype = data.and_then(|d| d.instance_type()).map(|t| t.as_str().to_string());
    Ok((v.version_number().unwrap_or(0), image, itype))
}

/// The architectures each instance type runs (DescribeInstanceTypes, every page). A type EC2 does
/// not know is left out (the plan then names the group and template that use it): EC2 refuses the
/// whole call for one unknown type, so the types of that call are asked one by one.
pub(super) async fn architectures(c: &Clients, types: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    // DescribeInstanceTypes takes at most 100 types a call.
    for chunk in types.chunks(100) {
        match instance_types(c, chunk).await {
            Ok(found) => out.extend(found),
            Err(e) if e.code() == Some("InvalidInstanceType") => {
                for t in chunk {
                    match instance_types(c, std::slice::from_ref(t)).await {
                        Ok(found) => out.extend(found),
                        Err(e) if e.code() == Some("InvalidInstanceType") => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn instance_types(c: &Clients, types: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
    let wanted: Vec<aws_sdk_ec2::types::InstanceType> = types.iter().map(|t| aws_sdk_ec2::types::InstanceType::from(t.as_str())).collect();
    let found: Vec<aws_sdk_ec2::types::InstanceTypeInfo> = c
        .ec2
        .describe_instance_types()
        .set_instance_types(Some(wanted))
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Error::aws("ec2:DescribeInstanceTypes", format!("instance types {}", types.join(", ")), &c.region, &e))?;
    let mut out = BTreeMap::new();
    for t in found {
        let Some(name) = t.instance_type() else { continue };
        let arch = t.processor_info().map(|p| p.supported_architectures().iter().map(|a| a.as_str().to_string()).collect()).unwrap_or_default();
        out.insert(name.as_str().to_string(), arch);
    }
    Ok(out)
}

/// Describes the groups a role's rollout targets: names, tag filters, or `<role>_<env>`; a name
/// not found is an error.
pub async fn discover(c: &Clients, plan: &Plan) -> Result<Vec<GroupState>> {
    discover_in(c, plan, true).await
}

/// [`discover`] in one of the regions a roll covers: `strict` (a region the operator named, or
/// the only one) makes a name not found an error; otherwise the groups found are returned (the
/// caller checks each name is in some region).
pub(super) async fn discover_in(c: &Clients, plan: &Plan, strict: bool) -> Result<Vec<GroupState>> {
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
        if strict && !missing.is_empty() {
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
        if matched.is_empty() && groups.is_empty() && strict {
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
        .flat_map(|g| match &g.source {
            Source::LaunchTemplate { id, .. } => vec![id.clone()],
            Source::Mixed { templates, .. } => templates.iter().map(|t| t.id.clone()).collect(),
            _ => Vec::new(),
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
        let tags_of = |id: &str| -> BTreeMap<String, String> {
            templates
                .iter()
                .find(|t| t.launch_template_id() == Some(id))
                .map(|t| t.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect())
                .unwrap_or_default()
        };
        for g in &mut states {
            match &mut g.source {
                Source::LaunchTemplate { id, .. } => g.template_tags = tags_of(id),
                Source::Mixed { templates: ts, .. } => {
                    for t in ts.iter_mut() {
                        // A template named by id only is shown by its name.
                        if let Some(n) = templates.iter().find(|x| x.launch_template_id() == Some(t.id.as_str())).and_then(|x| x.launch_template_name()) {
                            t.name = n.to_string();
                        }
                        g.mixed_template_tags.insert(t.id.clone(), tags_of(&t.id));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(states)
}

/// Launch template versions already described (groups often share a template).
#[derive(Default)]
pub(super) struct VersionCache(std::sync::Mutex<BTreeMap<(String, String), Described>>);

/// A version's number, the image it launches and its instance type, once described.
type Described = Arc<tokio::sync::OnceCell<(i64, String, Option<String>)>>;

impl VersionCache {
    /// Each version is described once; different versions are described concurrently (the map's
    /// lock is never held across a call).
    async fn get(&self, c: &Clients, id: &str, version: &str) -> Result<(i64, String, Option<String>)> {
        let cell = {
            let mut map = self.0.lock().map_err(|_| Error::Other("the launch template version cache lock was poisoned".into()))?;
            map.entry((id.to_string(), version.to_string())).or_default().clone()
        };
        let v = cell.get_or_try_init(|| template_version(c, id, version)).await?;
        Ok(v.clone())
    }
}

/// The id of the template a group's specification names (by id, or by name).
async fn template_id(c: &Clients, lt: &aws_sdk_autoscaling::types::LaunchTemplateSpecification) -> Result<String> {
    if let Some(id) = lt.launch_template_id() {
        return Ok(id.to_string());
    }
    let n = lt.launch_template_name().unwrap_or_default();
    let r = c
        .ec2
        .describe_launch_templates()
        .launch_template_names(n)
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeLaunchTemplates", format!("launch template {n}"), &c.region, &e))?;
    let t = r.launch_templates().first();
    let id = crate::aws::required(t.and_then(|t| t.launch_template_id()), "ec2:DescribeLaunchTemplates", &format!("the id of launch template {n}"), &c.region)?;
    Ok(id)
}

/// A mixed-instances policy's templates: its own, and each override's that names another.
async fn mixed_templates(
    c: &Clients,
    group: &str,
    p: &aws_sdk_autoscaling::types::MixedInstancesPolicy,
    versions: &VersionCache,
) -> Result<Vec<MixedTemplate>> {
    let lt = p.launch_template();
    let main = lt
        .and_then(|l| l.launch_template_specification())
        .ok_or_else(|| Error::Other(format!("group {group} in {}: its mixed instances policy names no launch template", c.region)))?;
    let overrides = lt.map(|l| l.overrides()).unwrap_or_default();
    // Each specification's template id, resolved once (a name costs a DescribeLaunchTemplates).
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    let mut resolve = async |spec: &aws_sdk_autoscaling::types::LaunchTemplateSpecification| -> Result<String> {
        if let Some(name) = spec.launch_template_id().is_none().then(|| spec.launch_template_name()).flatten() {
            if let Some(id) = by_name.get(name) {
                return Ok(id.clone());
            }
            let id = template_id(c, spec).await?;
            by_name.insert(name.to_string(), id.clone());
            return Ok(id);
        }
        template_id(c, spec).await
    };
    let main_id = resolve(main).await?;
    // (override, the id of the template it launches from: its own, else the policy's)
    let mut launched: Vec<(&aws_sdk_autoscaling::types::LaunchTemplateOverrides, String)> = Vec::new();
    let mut specs = vec![(main, main_id.clone())];
    for o in overrides {
        let id = match o.launch_template_specification() {
            Some(s) => {
                let id = resolve(s).await?;
                specs.push((s, id.clone()));
                id
            }
            None => main_id.clone(),
        };
        launched.push((o, id));
    }
    let mut out: Vec<MixedTemplate> = Vec::new();
    for (spec, id) in specs {
        if out.iter().any(|t| t.id == id) {
            continue;
        }
        let configured = spec.version().unwrap_or("$Default").to_string();
        let (version, image, own_type) = versions.get(c, &id, &configured).await?;
        // The instance types it launches: the overrides that launch from it, else its own.
        let mut types: Vec<String> = launched.iter().filter(|(_, t)| *t == id).filter_map(|(o, _)| o.instance_type().map(str::to_string)).collect();
        if types.is_empty() {
            types.extend(own_type);
        }
        types.sort();
        types.dedup();
        let name = spec.launch_template_name().map(str::to_string).unwrap_or_else(|| id.clone());
        out.push(MixedTemplate { id: id.clone(), name, version, configured, image, main: id == main_id, instance_types: types });
    }
    Ok(out)
}

pub(super) async fn describe_group(c: &Clients, g: aws_sdk_autoscaling::types::AutoScalingGroup, versions: &VersionCache) -> Result<GroupState> {
    let region = c.region.as_str();
    let name = crate::aws::required(g.auto_scaling_group_name(), "autoscaling:DescribeAutoScalingGroups", "a group name", region)?;
    let tags: BTreeMap<String, String> = g.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect();
    let mut instance_type = None;
    let source = if let Some(lt) = g.launch_template() {
        let id = template_id(c, lt).await?;
        let configured = lt.version().unwrap_or("$Default").to_string();
        let (version, image, itype) = versions.get(c, &id, &configured).await?;
        instance_type = itype;
        let lt_name = lt.launch_template_name().unwrap_or_default().to_string();
        Source::LaunchTemplate { id, name: lt_name, version, configured, image }
    } else if let Some(p) = g.mixed_instances_policy() {
        let templates = mixed_templates(c, &name, p, versions).await?;
        let image = templates.first().map(|t| t.image.clone()).unwrap_or_default();
        Source::Mixed { templates, image, policy: Policy(p.clone()) }
    } else if let Some(lc) = g.launch_configuration_name() {
        let r = c
            .asg
            .describe_launch_configurations()
            .launch_configuration_names(lc)
            .send()
            .await
            .map_err(|e| Error::aws("autoscaling:DescribeLaunchConfigurations", format!("launch configuration {lc}"), region, &e))?;
        let image = r.launch_configurations().first().and_then(|l| l.image_id()).unwrap_or_default().to_string();
        instance_type = r.launch_configurations().first().and_then(|l| l.instance_type()).map(str::to_string);
        Source::LaunchConfiguration { name: lc.to_string(), image }
    } else {
        Source::Unsupported { why: "it names neither a launch template, a mixed instances policy nor a launch configuration".into() }
    };
    let refreshes = c.instance_refreshes(&name).await?;
    let active = refreshes.iter().find(|r| is_active(r.status())).and_then(|r| r.instance_refresh_id().map(str::to_string));
    let protected = g.instances().iter().filter(|i| i.protected_from_scale_in() == Some(true)).count();
    let standby = g.instances().iter().filter(|i| matches!(i.lifecycle_state(), Some(LifecycleState::Standby | LifecycleState::EnteringStandby))).count();
    Ok(GroupState {
        name,
        source,
        tags,
        template_tags: BTreeMap::new(),
        mixed_template_tags: BTreeMap::new(),
        protected,
        standby,
        instances: g.instances().len(),
        instance_type,
        warm_pool: g.warm_pool_configuration().map(|_| g.warm_pool_size().unwrap_or(0).max(0) as usize),
        refresh_in_progress: active,
    })
}

pub(super) fn is_active(s: Option<&InstanceRefreshStatus>) -> bool {
    matches!(
        s,
        Some(InstanceRefreshStatus::Pending)
            | Some(InstanceRefreshStatus::InProgress)
            | Some(InstanceRefreshStatus::Cancelling)
            | Some(InstanceRefreshStatus::RollbackInProgress)
            | Some(InstanceRefreshStatus::Baking)
    )
}

/// The instances of groups `names` that are not leaving: (instance id, group).
pub(super) async fn members(c: &Clients, names: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for g in c.groups_named(names).await? {
        let name = g.auto_scaling_group_name().unwrap_or_default().to_string();
        for i in g.instances() {
            let leaving = i.lifecycle_state().is_some_and(|s| s.as_str().starts_with("Terminat"));
            if let (Some(id), false) = (i.instance_id(), leaving) {
                out.push((id.to_string(), name.clone()));
            }
        }
    }
    Ok(out)
}

/// What the instances of each group run: image → instances, for every instance that is not
/// terminating (an instance EC2 does not list yet counts as `unknown`).
pub(super) async fn census(c: &Clients, names: &[String]) -> Result<BTreeMap<String, BTreeMap<String, u32>>> {
    let members: Vec<(String, String)> = members(c, names).await?.into_iter().map(|(id, group)| (group, id)).collect();
    let mut image_of: BTreeMap<String, String> = BTreeMap::new();
    let ids: Vec<String> = members.iter().map(|(_, i)| i.clone()).collect();
    for chunk in ids.chunks(crate::config::limits::EC2_FILTER_VALUES) {
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
pub(super) async fn configured_images(c: &Clients, plan: &Plan, names: Vec<String>) -> BTreeMap<String, String> {
    let mut p = plan.clone();
    p.rollout.groups = names;
    p.rollout.group_tags.clear();
    match discover(c, &p).await {
        Ok(gs) => gs.into_iter().filter_map(|g| g.source.image().map(|i| (g.name.clone(), i.to_string()))).collect(),
        Err(_) => BTreeMap::new(),
    }
}
