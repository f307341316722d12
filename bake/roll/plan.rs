//! The rollout plan: which groups move, from what to what, with which refresh preferences. Pure:
//! built from the groups as described and the role's rollout settings; printed by `--plan`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::config::role::{RefreshSpec, RolloutSpec};
use crate::config::Secs;

/// Where a group's instances come from today.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    LaunchTemplate {
        id: String,
        name: String,
        version: i64,
        configured: String,
        image: String,
    },
    LaunchConfiguration {
        name: String,
        image: String,
    },
    /// A mixed-instances policy: its launch template and those of its overrides.
    Mixed {
        templates: Vec<MixedTemplate>,
        /// What the policy's own template launches.
        image: String,
        #[serde(skip)]
        policy: Policy,
    },
    /// Nothing bake can change.
    Unsupported {
        why: String,
    },
}

/// A mixed-instances group's policy, as AWS describes it (the refresh's desired configuration
/// carries all of it).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy(pub aws_sdk_autoscaling::types::MixedInstancesPolicy);

impl Eq for Policy {}

/// One launch template a mixed-instances group launches from: the policy's own (`main`) or an
/// override's.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct MixedTemplate {
    pub id: String,
    pub name: String,
    pub version: i64,
    pub configured: String,
    pub image: String,
    pub main: bool,
    /// The instance types launched from it (its overrides'; the template's own when none).
    pub instance_types: Vec<String>,
}

/// A template of a mixed-instances group moving to a new version.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct TemplateMove {
    pub id: String,
    pub name: String,
    pub from: i64,
    /// The image its new version launches (its instance types' architecture's).
    pub image: String,
}

/// The tag recording a mixed group's versions before a roll: `id=from,id=from`.
pub fn previous_versions_tag(templates: &[TemplateMove]) -> String {
    templates.iter().map(|t| format!("{}={}", t.id, t.from)).collect::<Vec<_>>().join(",")
}

/// The versions [`previous_versions_tag`] recorded, by template id; `None` when it is not one.
pub fn parse_previous_versions(tag: &str) -> Option<BTreeMap<String, i64>> {
    tag.split(',').map(|kv| kv.split_once('=').and_then(|(k, v)| Some((k.trim().to_string(), v.trim().parse::<i64>().ok().filter(|n| *n > 0)?)))).collect()
}

/// The policy with each template (by id, or by name through `templates`) at `version_of` its id.
pub fn policy_with_versions(p: &Policy, templates: &[TemplateMove], version_of: &BTreeMap<String, i64>) -> Policy {
    let mut p = p.clone();
    let set = |spec: &mut aws_sdk_autoscaling::types::LaunchTemplateSpecification| {
        let id = spec.launch_template_id.clone().or_else(|| {
            let name = spec.launch_template_name.as_deref()?;
            templates.iter().find(|t| t.name == name).map(|t| t.id.clone())
        });
        if let Some((id, n)) = id.and_then(|id| version_of.get(&id).map(|n| (id, *n))) {
            spec.launch_template_id = Some(id);
            spec.launch_template_name = None;
            spec.version = Some(n.to_string());
        }
    };
    if let Some(lt) = p.0.launch_template.as_mut() {
        if let Some(spec) = lt.launch_template_specification.as_mut() {
            set(spec);
        }
        for o in lt.overrides.iter_mut().flatten() {
            if let Some(spec) = o.launch_template_specification.as_mut() {
                set(spec);
            }
        }
    }
    p
}

impl Source {
    pub fn image(&self) -> Option<&str> {
        match self {
            Source::LaunchTemplate { image, .. } | Source::LaunchConfiguration { image, .. } | Source::Mixed { image, .. } => Some(image),
            Source::Unsupported { .. } => None,
        }
    }
}

/// A group as AWS describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupState {
    pub name: String,
    pub source: Source,
    pub tags: BTreeMap<String, String>,
    /// The tags of the launch template the group uses (empty for other sources).
    pub template_tags: BTreeMap<String, String>,
    /// A mixed-instances group's: each template's tags, by id.
    pub mixed_template_tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Instances protected from scale-in, and instances in Standby.
    pub protected: usize,
    pub standby: usize,
    pub instances: usize,
    /// Instances in the group's warm pool (`None`: it has none).
    pub warm_pool: Option<usize>,
    /// The instance type of a launch-template or launch-configuration group's source, when it
    /// names one (a mixed group's are its templates').
    pub instance_type: Option<String>,
    pub refresh_in_progress: Option<String>,
}

/// What bake will change on a group.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// A new version from the one the group uses, with the new image; the group moves to it, or
    /// keeps following `alias` (`$Latest`, `$Default`) when the role says so.
    TemplateVersion {
        id: String,
        name: String,
        from: i64,
        set_default: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        alias: Option<String>,
    },
    /// A copy of the group's launch configuration with the new image.
    LaunchConfiguration { from: String, to: String },
    /// A new launch template with the launch configuration's settings and the new image.
    MigrateToTemplate { from: String, template: String },
    /// A new version of every template of a mixed-instances policy; the refresh's desired
    /// configuration is the policy on those versions.
    Mixed {
        templates: Vec<TemplateMove>,
        set_default: bool,
        #[serde(skip)]
        policy: Policy,
    },
    /// Already on the image.
    Nothing,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct GroupPlan {
    pub name: String,
    pub canary: bool,
    pub current_image: String,
    pub new_image: String,
    pub change: Change,
    pub refresh: RefreshSpec,
    pub instances: usize,
    /// Instances in its warm pool, which the refresh replaces too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<usize>,
    pub refresh_in_progress: Option<String>,
    /// What the operator should know: a version alias left behind, AWS unable to roll back,
    /// protected instances.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RolloutPlan {
    pub role: String,
    pub env: String,
    pub region: String,
    pub ami: String,
    pub roll_id: String,
    pub canaries: Vec<GroupPlan>,
    pub rest: Vec<GroupPlan>,
    pub concurrency: u32,
    pub canary_bake_time: Secs,
    /// CloudWatch alarms that gate the roll (rollout.alarms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<String>,
    /// Target groups in this region whose canary instances are watched (rollout.target_groups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_groups: Vec<String>,
}

impl RolloutPlan {
    pub fn groups(&self) -> impl Iterator<Item = &GroupPlan> {
        self.canaries.iter().chain(&self.rest)
    }
}

/// The name bake gives a new launch configuration: `<group>-<ami>-<roll id>`, at most 255.
pub fn launch_configuration_name(group: &str, ami: &str, roll_id: &str) -> String {
    let suffix = format!("-{ami}-{roll_id}");
    let keep = 255usize.saturating_sub(suffix.len());
    let g: String = group.chars().take(keep).collect();
    format!("{g}{suffix}")
}

/// True for launch configurations bake made for `group` (named by [`launch_configuration_name`]).
pub fn is_bake_launch_configuration(group: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(group).and_then(|r| r.strip_prefix("-ami-")) else { return false };
    let parts: Vec<&str> = rest.split("-b-").collect();
    parts.len() == 2 && parts[1].len() == 12 && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The ownership tags a group and the launch template it uses must carry for bake to roll it
/// for `role`/`env`; what is missing, as sentences.
pub fn not_opted_in(role: &str, env: &str, g: &GroupState) -> Vec<String> {
    let lacks = |tags: &BTreeMap<String, String>| -> Vec<String> {
        [(crate::tags::ROLE, role), (crate::tags::ENV, env)]
            .iter()
            .filter(|(k, v)| tags.get(*k).map(String::as_str) != Some(*v))
            .map(|(k, v)| match tags.get(*k) {
                Some(other) => format!("{k}={v} (it has {other})"),
                None => format!("{k}={v}"),
            })
            .collect()
    };
    let mut out = Vec::new();
    let l = lacks(&g.tags);
    if !l.is_empty() {
        out.push(format!("group {} lacks {}", g.name, l.join(" and ")));
    }
    if let Source::LaunchTemplate { name, .. } = &g.source {
        let l = lacks(&g.template_tags);
        if !l.is_empty() {
            out.push(format!("launch template {name} of group {} lacks {}", g.name, l.join(" and ")));
        }
    }
    if let Source::Mixed { templates, .. } = &g.source {
        for t in templates {
            let l = lacks(g.mixed_template_tags.get(&t.id).unwrap_or(&BTreeMap::new()));
            if !l.is_empty() {
                out.push(format!("launch template {} of group {} lacks {}", t.name, g.name, l.join(" and ")));
            }
        }
    }
    out
}

/// The images a group gets: one for the group (a mixed group's policy template), and a mixed
/// group's per template (by id).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GroupImages {
    pub main: String,
    pub templates: BTreeMap<String, String>,
}

/// Gives each group, and each template of a mixed-instances group, the image of its instance
/// types' architecture. `images`: architecture → image (one per architecture the role bakes);
/// `arch_of`: each instance type's architectures, as DescribeInstanceTypes answered. Refuses,
/// before anything changes, a type no image runs (a Graviton override for an x86_64-only role), a
/// template whose types share no architecture, and an unknown type.
pub fn choose_images(
    groups: &[GroupState],
    images: &BTreeMap<String, String>,
    arch_of: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, GroupImages>, String> {
    let baked = images.iter().map(|(a, i)| format!("{i} ({a})")).collect::<Vec<_>>().join(", ");
    let pick = |g: &GroupState, types: &[String], what: &str| -> Result<String, String> {
        let only = (images.len() == 1).then(|| images.iter().next()).flatten();
        if types.is_empty() {
            return match only {
                Some((_, i)) => Ok(i.clone()),
                None => Err(format!("group {}: {what} names no instance type, so bake cannot tell which of {baked} it needs; nothing changed", g.name)),
            };
        }
        let mut common: Option<Vec<String>> = None;
        for ty in types {
            let a = arch_of.get(ty).ok_or_else(|| format!("group {}: EC2 does not know instance type {ty} ({what}); nothing changed", g.name))?;
            if !a.iter().any(|x| images.contains_key(x)) {
                return Err(match only {
                    Some((arch, image)) => format!(
                        "group {}: instance type {ty} of {what} runs {}, but {image} is {arch}: give the group an instance type that runs {arch}, or bake the role for {} too ([architectures]); nothing changed",
                        g.name,
                        a.join("/"),
                        a.join("/")
                    ),
                    None => format!("group {}: instance type {ty} of {what} runs {}, but the role's images are {baked}; nothing changed", g.name, a.join("/")),
                });
            }
            common = Some(match common {
                None => a.clone(),
                Some(c) => c.into_iter().filter(|x| a.contains(x)).collect(),
            });
        }
        common.unwrap_or_default().iter().find_map(|a| images.get(a)).cloned().ok_or_else(|| {
            let kinds: Vec<String> = types.iter().map(|t| format!("{t} {}", arch_of.get(t).map(|a| a.join("/")).unwrap_or_default())).collect();
            format!("group {}: {what} launches instance types of different architectures ({}): one template holds one image; give each architecture its own template; nothing changed", g.name, kinds.join(", "))
        })
    };
    let mut out = BTreeMap::new();
    for g in groups {
        let chosen = match &g.source {
            Source::LaunchTemplate { name, .. } => {
                GroupImages { main: pick(g, &g.instance_type.iter().cloned().collect::<Vec<_>>(), &format!("launch template {name}"))?, ..Default::default() }
            }
            Source::LaunchConfiguration { name, .. } => GroupImages {
                main: pick(g, &g.instance_type.iter().cloned().collect::<Vec<_>>(), &format!("launch configuration {name}"))?,
                ..Default::default()
            },
            Source::Mixed { templates, .. } => {
                let mut gi = GroupImages::default();
                for t in templates {
                    let image = pick(g, &t.instance_types, &format!("launch template {}", t.name))?;
                    if t.main {
                        gi.main = image.clone();
                    }
                    gi.templates.insert(t.id.clone(), image);
                }
                gi
            }
            Source::Unsupported { .. } => continue,
        };
        out.insert(g.name.clone(), chosen);
    }
    Ok(out)
}

/// Where a roll looks and what it rolls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regions {
    /// Where the role's groups may be (the build region and every copy's): a group or canary the
    /// role names must be in one of them.
    pub candidates: Vec<String>,
    /// What this roll covers.
    pub roll: Vec<String>,
    /// The operator chose `roll` (`--region`, rollout.regions): each must have the image and groups.
    pub named: bool,
}

/// The regions of a roll: `--region` alone (one of rollout.regions when the role narrows them);
/// else `rollout.regions`; else the build region and every region the image is copied to.
pub fn regions(role: &str, home: &str, copies: &[String], narrowed: &[String], flag: Option<&str>) -> Result<Regions, String> {
    let mut candidates = vec![home.to_string()];
    candidates.extend(copies.iter().filter(|r| r.as_str() != home).cloned());
    if let Some(r) = narrowed.iter().find(|r| !candidates.contains(r)) {
        return Err(format!(
            "rollout.regions of roles/{role}.toml names {r}, but the image is built in {home} and copied to {}: a roll goes only where the image is; nothing changed",
            if copies.is_empty() { "no other region".to_string() } else { copies.join(", ") }
        ));
    }
    if let Some(r) = flag {
        if !narrowed.is_empty() && !narrowed.iter().any(|n| n == r) {
            return Err(format!("--region {r} is not one of rollout.regions ({}) of roles/{role}.toml; nothing changed", narrowed.join(", ")));
        }
        if !candidates.iter().any(|c| c == r) {
            // A region the role does not copy to: the operator's to name (its own images there).
            candidates = vec![r.to_string()];
        }
        return Ok(Regions { candidates, roll: vec![r.to_string()], named: true });
    }
    if !narrowed.is_empty() {
        return Ok(Regions { candidates, roll: narrowed.to_vec(), named: true });
    }
    Ok(Regions { roll: candidates.clone(), candidates, named: false })
}

/// With several regions: every group the role names, and every canary, is in one of them.
/// `found`: each region and the names of the groups found there.
pub fn check_found(role: &str, env: &str, spec: &RolloutSpec, found: &[(String, Vec<String>)]) -> Result<(), String> {
    let anywhere = |n: &String| found.iter().any(|(_, names)| names.contains(n));
    let mut wanted: Vec<String> = spec.groups.clone();
    if wanted.is_empty() && spec.group_tags.is_empty() {
        wanted.push(format!("{role}_{env}"));
    }
    let regions: Vec<&str> = found.iter().map(|(r, _)| r.as_str()).collect();
    let nowhere: Vec<&String> = wanted.iter().filter(|n| !anywhere(n)).collect();
    if !nowhere.is_empty() && (!spec.groups.is_empty() || found.iter().all(|(_, names)| names.is_empty())) {
        let what = if !spec.group_tags.is_empty() && spec.groups.is_empty() {
            format!("no Auto Scaling group tagged {}", spec.group_tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))
        } else {
            format!("no Auto Scaling group named {}", nowhere.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
        };
        return Err(format!("{what} in {} (roles/{role}.toml rollout.groups, or the convention {role}_{env}); nothing changed", regions.join(", ")));
    }
    if found.iter().all(|(_, names)| names.is_empty()) {
        return Err(format!(
            "no Auto Scaling group tagged {} in {}; nothing changed",
            spec.group_tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
            regions.join(", ")
        ));
    }
    if let Some(c) = spec.canaries.iter().find(|c| !anywhere(c)) {
        return Err(format!("canary group {c} (rollout.canaries) is not among the target groups in {}; nothing changed", regions.join(", ")));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PlanOptions {
    pub migrate_to_launch_template: bool,
    /// `bake patch --roll`: the role's patch preferences.
    pub patch: bool,
}

/// Plans the rollout of `ami` onto `groups` (already found from the role's targets).
#[allow(clippy::too_many_arguments)] // plain inputs of a pure function; a struct would only rename them
pub fn plan(
    role: &str,
    env: &str,
    region: &str,
    ami: &str,
    roll_id: &str,
    spec: &RolloutSpec,
    groups: Vec<GroupState>,
    images: &BTreeMap<String, GroupImages>,
    opts: PlanOptions,
) -> Result<RolloutPlan, String> {
    if groups.is_empty() {
        return Err("no Auto Scaling group to roll".into());
    }
    for c in &spec.canaries {
        if !groups.iter().any(|g| &g.name == c) {
            return Err(format!("canary group {c} (rollout.canaries) is not among the target groups"));
        }
    }
    let missing: Vec<String> = groups.iter().flat_map(|g| not_opted_in(role, env, g)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "bake rolls only groups (and their launch templates) that their owners opted in to {role}/{env} with the tags bake:role={role} and bake:env={env}; {} (README, IAM); nothing changed",
            missing.join("; ")
        ));
    }
    let mut refresh = if opts.patch { spec.patch_refresh.clone() } else { spec.refresh.clone() };
    // Alarms gate the refreshes: AWS rolls a refresh back when one fires (where it can).
    if !spec.alarms.is_empty() {
        refresh.auto_rollback = true;
    }
    let mut canaries = Vec::new();
    let mut rest = Vec::new();
    for g in groups {
        let mut notes = Vec::new();
        let mut refresh = refresh.clone();
        // The image of the group's architecture (of each template's, for a mixed group).
        let chosen = images.get(&g.name);
        let target = chosen.map(|c| c.main.clone()).unwrap_or_else(|| ami.to_string());
        let image_of = |id: &str| chosen.and_then(|c| c.templates.get(id)).cloned().unwrap_or_else(|| target.clone());
        let (change, current) = match &g.source {
            Source::Unsupported { why } => return Err(format!("group {} cannot be rolled: {why}", g.name)),
            Source::Mixed { templates, image, .. } if templates.iter().all(|t| t.image == image_of(&t.id)) => (Change::Nothing, image.clone()),
            Source::LaunchTemplate { image, .. } | Source::LaunchConfiguration { image, .. } if *image == target => (Change::Nothing, image.clone()),
            Source::Mixed { templates, image, policy } => {
                let aliased: Vec<String> =
                    templates.iter().filter(|t| t.configured.starts_with('$')).map(|t| format!("{} ({})", t.name, t.configured)).collect();
                if !aliased.is_empty() {
                    // AWS refuses AutoRollback for a group on $Latest or $Default.
                    refresh.auto_rollback = false;
                    notes.push(format!(
                        "its policy uses {}: it moves to the new numbered versions; AWS cannot roll it back this time (bake puts it back itself, on the numbered versions it was on)",
                        aliased.join(", ")
                    ));
                }
                let moves =
                    templates.iter().map(|t| TemplateMove { id: t.id.clone(), name: t.name.clone(), from: t.version, image: image_of(&t.id) }).collect();
                (Change::Mixed { templates: moves, set_default: spec.set_default_version, policy: policy.clone() }, image.clone())
            }
            Source::LaunchTemplate { id, name, version, configured, image } => {
                let alias = configured.starts_with('$').then(|| configured.clone());
                if let Some(a) = &alias {
                    // AWS refuses AutoRollback for a group that uses $Latest or $Default.
                    refresh.auto_rollback = false;
                    if spec.keep_version_alias {
                        notes.push(format!(
                            "uses {a}: it keeps following it (rollout.keep_version_alias), so every group on {a} of {name} gets the image at its next launch; AWS cannot roll it back (bake puts it back itself)"
                        ));
                    } else {
                        notes.push(format!(
                            "uses {a} (v{version}): it moves to the new numbered version; AWS cannot roll it back this time (bake puts it back itself)"
                        ));
                    }
                }
                let change = Change::TemplateVersion {
                    id: id.clone(),
                    name: name.clone(),
                    from: *version,
                    set_default: spec.set_default_version || (spec.keep_version_alias && alias.as_deref() == Some("$Default")),
                    alias: alias.filter(|_| spec.keep_version_alias),
                };
                (change, image.clone())
            }
            Source::LaunchConfiguration { name, image } => {
                if opts.migrate_to_launch_template {
                    (Change::MigrateToTemplate { from: name.clone(), template: g.name.clone() }, image.clone())
                } else {
                    // Without a launch template in the desired configuration AWS neither rolls
                    // back nor skips matching instances: every instance is replaced.
                    refresh.auto_rollback = false;
                    refresh.skip_matching = false;
                    (Change::LaunchConfiguration { from: name.clone(), to: launch_configuration_name(&g.name, &target, roll_id) }, image.clone())
                }
            }
        };
        if let (Some(n), false) = (g.warm_pool, change == Change::Nothing) {
            notes.push(format!("its warm pool ({n} instance(s)) is refreshed too, after the instances in service"));
        }
        if change != Change::Nothing && g.protected + g.standby > 0 {
            let what = match (g.protected, g.standby) {
                (p, 0) => format!("{p} instance(s) protected from scale-in"),
                (0, s) => format!("{s} instance(s) in Standby"),
                (p, s) => format!("{p} instance(s) protected from scale-in and {s} in Standby"),
            };
            notes.push(match refresh.protected_instances.as_str() {
                "ignore" => format!("{what}: left on the old image (rollout.refresh.protected_instances = \"ignore\")"),
                "wait" => format!("{what}: AWS waits for them an hour, then the refresh fails (rollout.refresh.protected_instances = \"wait\")"),
                _ => format!("{what}: replaced too (rollout.refresh.protected_instances = \"refresh\")"),
            });
        }
        let gp = GroupPlan {
            canary: spec.canaries.contains(&g.name),
            name: g.name,
            current_image: current,
            new_image: target.clone(),
            change,
            refresh,
            instances: g.instances,
            warm_pool: g.warm_pool,
            refresh_in_progress: g.refresh_in_progress,
            notes,
        };
        if gp.canary {
            canaries.push(gp);
        } else {
            rest.push(gp);
        }
    }
    canaries.sort_by(|a, b| a.name.cmp(&b.name));
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(RolloutPlan {
        role: role.into(),
        env: env.into(),
        region: region.into(),
        ami: ami.into(),
        roll_id: roll_id.into(),
        canaries,
        rest,
        concurrency: spec.concurrency.max(1),
        canary_bake_time: spec.canary_bake_time,
        alarms: spec.alarms.clone(),
        target_groups: spec.target_groups.iter().filter(|a| crate::config::limits::target_group_region(a) == region).cloned().collect(),
    })
}

fn prefs_text(r: &RefreshSpec) -> String {
    let mut p = vec![format!("min healthy {}%", r.min_healthy_percentage)];
    if let Some(m) = r.max_healthy_percentage {
        p.push(format!("max healthy {m}%"));
    }
    if let Some(w) = r.instance_warmup {
        p.push(format!("warmup {w}"));
    }
    if !r.checkpoint_percentages.is_empty() {
        let cps: Vec<String> = r.checkpoint_percentages.iter().map(|c| format!("{c}%")).collect();
        p.push(format!("checkpoints {} every {}", cps.join(","), r.checkpoint_delay.map(|d| d.to_string()).unwrap_or_else(|| "1h".into())));
    }
    if let Some(b) = r.bake_time {
        p.push(format!("bake time {b}"));
    }
    if r.skip_matching {
        p.push("skip matching".into());
    }
    if r.auto_rollback {
        p.push("auto rollback".into());
    }
    if r.protected_instances != "refresh" {
        p.push(format!("protected and standby instances: {}", r.protected_instances));
    }
    p.join(", ")
}

fn write_group(f: &mut fmt::Formatter<'_>, g: &GroupPlan) -> fmt::Result {
    let change = match &g.change {
        Change::TemplateVersion { name, from, set_default, alias, .. } => format!(
            "launch template {name}: new version from v{from}{}{}",
            if *set_default { ", made default" } else { "" },
            alias.as_ref().map(|a| format!(", the group keeps {a}")).unwrap_or_default()
        ),
        Change::LaunchConfiguration { from, to } => format!("launch configuration {from} → {to}"),
        Change::MigrateToTemplate { from, template } => format!("launch configuration {from} → new launch template {template}"),
        Change::Mixed { templates, set_default, .. } => format!(
            "mixed instances policy: new versions of {}{}",
            templates
                .iter()
                .map(|t| if t.image == g.new_image { format!("{} (from v{})", t.name, t.from) } else { format!("{} (from v{}, {})", t.name, t.from, t.image) })
                .collect::<Vec<_>>()
                .join(", "),
            if *set_default { ", made default" } else { "" }
        ),
        Change::Nothing => "already on this image: nothing to do".into(),
    };
    writeln!(f, "  {}{} ({} instances)", g.name, if g.canary { " [canary]" } else { "" }, g.instances)?;
    writeln!(f, "    image:   {} → {}", g.current_image, g.new_image)?;
    writeln!(f, "    change:  {change}")?;
    if g.change != Change::Nothing {
        writeln!(f, "    refresh: {}", prefs_text(&g.refresh))?;
    }
    if let Some(r) = &g.refresh_in_progress {
        writeln!(f, "    note:    refresh {r} is in progress")?;
    }
    for n in &g.notes {
        writeln!(f, "    note:    {n}")?;
    }
    Ok(())
}

impl fmt::Display for RolloutPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Rollout of {} to role {} in env {} ({})", self.ami, self.role, self.env, self.region)?;
        if !self.alarms.is_empty() {
            writeln!(
                f,
                "gated by the alarms {}: AWS rolls a refresh back when one fires",
                self.alarms.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
            )?;
        }
        for t in &self.target_groups {
            writeln!(f, "the canaries' instances watched in target group {t} during the bake time")?;
        }
        if !self.canaries.is_empty() {
            writeln!(f, "canaries first:")?;
            for g in &self.canaries {
                write_group(f, g)?;
            }
            if self.canary_bake_time.0 > 0 {
                writeln!(f, "then wait {} before the rest", self.canary_bake_time)?;
            }
            if !self.alarms.is_empty() && self.canary_bake_time.0 > 0 {
                writeln!(f, "  (watching the alarms meanwhile: one in ALARM puts the canaries back and starts nothing else)")?;
            }
        }
        if !self.rest.is_empty() {
            writeln!(f, "{} ({} at a time):", if self.canaries.is_empty() { "groups" } else { "then" }, self.concurrency)?;
            for g in &self.rest {
                write_group(f, g)?;
            }
        }
        write!(f, "no change has been made")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            groups: vec![],
            group_tags: BTreeMap::new(),
            canaries: vec!["web_canary".into()],
            canary_bake_time: Secs(60),
            concurrency: 2,
            set_default_version: false,
            keep_version_alias: false,
            keep_launch_configurations: 3,
            alarms: vec![],
            regions: vec![],
            target_groups: vec![],
            accounts: vec![],
            refresh: RefreshSpec { min_healthy_percentage: 90, auto_rollback: true, skip_matching: true, ..Default::default() },
            patch_refresh: RefreshSpec { min_healthy_percentage: 50, ..Default::default() },
        }
    }

    fn owned(role: &str, env: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(crate::tags::ROLE.to_string(), role.to_string()), (crate::tags::ENV.to_string(), env.to_string())])
    }

    fn lt(name: &str, image: &str) -> GroupState {
        GroupState {
            name: name.into(),
            source: Source::LaunchTemplate { id: "lt-1".into(), name: "web".into(), version: 3, configured: "3".into(), image: image.into() },
            tags: owned("web", "production"),
            template_tags: owned("web", "production"),
            mixed_template_tags: BTreeMap::new(),
            protected: 0,
            standby: 0,
            instances: 2,
            warm_pool: None,
            instance_type: None,
            refresh_in_progress: None,
        }
    }

    #[test]
    fn canaries_first_each_kind_gets_its_change() {
        let lc = GroupState {
            name: "legacy".into(),
            source: Source::LaunchConfiguration { name: "legacy-lc".into(), image: "ami-old".into() },
            tags: owned("web", "production"),
            template_tags: BTreeMap::new(),
            mixed_template_tags: BTreeMap::new(),
            protected: 0,
            standby: 0,
            instances: 1,
            warm_pool: None,
            instance_type: None,
            refresh_in_progress: None,
        };
        let p = plan(
            "web",
            "production",
            "us-east-1",
            "ami-new",
            "b-0123456789ab",
            &spec(),
            vec![lt("web_main", "ami-old"), lt("web_canary", "ami-old"), lc, lt("web_done", "ami-new")],
            &BTreeMap::new(),
            PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(p.canaries.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["web_canary"]);
        assert_eq!(p.rest.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["legacy", "web_done", "web_main"]);
        assert_eq!(p.rest[0].change, Change::LaunchConfiguration { from: "legacy-lc".into(), to: "legacy-ami-new-b-0123456789ab".into() });
        assert!(!p.rest[0].refresh.auto_rollback, "no AWS rollback for launch configurations");
        assert!(!p.rest[0].refresh.skip_matching, "no skip matching without a launch template");
        assert_eq!(p.rest[1].change, Change::Nothing);
        assert!(matches!(p.rest[2].change, Change::TemplateVersion { from: 3, .. }));
        let text = p.to_string();
        assert!(text.contains("web_canary [canary]") && text.contains("ami-old → ami-new") && text.contains("then wait 1m"), "{text}");
        assert!(is_bake_launch_configuration("legacy", "legacy-ami-new-b-0123456789ab"));
        assert!(!is_bake_launch_configuration("legacy", "legacy-lc"));
    }

    #[test]
    fn bad_targets_are_errors() {
        assert!(plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &spec(), vec![], &BTreeMap::new(), PlanOptions::default()).is_err());
        let e =
            plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &spec(), vec![lt("other", "ami-0")], &BTreeMap::new(), PlanOptions::default())
                .unwrap_err();
        assert!(e.contains("canary group web_canary"), "{e}");
        let mut s = spec();
        s.canaries.clear();
        let p = plan(
            "web",
            "production",
            "us-east-1",
            "ami-1",
            "b-0123456789ab",
            &s,
            vec![lt("g", "ami-0")],
            &BTreeMap::new(),
            PlanOptions { patch: true, ..Default::default() },
        )
        .unwrap();
        assert_eq!(p.rest[0].refresh.min_healthy_percentage, 50, "patch preferences");
    }

    #[test]
    fn groups_on_a_version_alias_get_no_aws_rollback_and_say_where_they_go() {
        let mut s = spec();
        s.canaries.clear();
        let mut latest = lt("latest", "ami-0");
        if let Source::LaunchTemplate { configured, .. } = &mut latest.source {
            *configured = "$Latest".into();
        }
        let p = plan(
            "web",
            "production",
            "us-east-1",
            "ami-1",
            "b-0123456789ab",
            &s,
            vec![latest.clone(), lt("numbered", "ami-0")],
            &BTreeMap::new(),
            PlanOptions::default(),
        )
        .unwrap();
        let (l, n) = (&p.rest[0], &p.rest[1]);
        assert!(!l.refresh.auto_rollback && n.refresh.auto_rollback, "AWS refuses AutoRollback for $Latest/$Default groups only");
        assert!(matches!(&l.change, Change::TemplateVersion { alias: None, .. }), "it moves to the numbered version");
        assert!(p.to_string().contains("uses $Latest (v3): it moves to the new numbered version"), "{p}");
        s.keep_version_alias = true;
        let p = plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![latest], &BTreeMap::new(), PlanOptions::default()).unwrap();
        assert!(matches!(&p.rest[0].change, Change::TemplateVersion { alias: Some(a), .. } if a == "$Latest"));
        assert!(p.to_string().contains("every group on $Latest of web gets the image at its next launch"), "{p}");
    }

    #[test]
    fn protected_and_standby_instances_are_named_with_what_happens_to_them() {
        let mut s = spec();
        s.canaries.clear();
        let mut g = lt("g", "ami-0");
        g.protected = 2;
        g.standby = 1;
        let p = plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![g.clone()], &BTreeMap::new(), PlanOptions::default()).unwrap();
        assert!(p.to_string().contains("2 instance(s) protected from scale-in and 1 in Standby: replaced too"), "{p}");
        s.refresh.protected_instances = "wait".into();
        let p = plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![g], &BTreeMap::new(), PlanOptions::default()).unwrap();
        assert!(p.to_string().contains("AWS waits for them an hour, then the refresh fails"), "{p}");
    }

    #[test]
    fn only_groups_and_templates_their_owners_opted_in_are_rolled() {
        let mut s = spec();
        s.canaries.clear();
        let mut other_team = lt("g", "ami-0");
        other_team.tags = owned("billing", "production");
        let mut untagged_template = lt("h", "ami-0");
        untagged_template.template_tags.clear();
        let e = plan(
            "web",
            "production",
            "us-east-1",
            "ami-1",
            "b-0123456789ab",
            &s,
            vec![other_team, untagged_template, lt("ok", "ami-0")],
            &BTreeMap::new(),
            PlanOptions::default(),
        )
        .unwrap_err();
        assert!(e.contains("group g lacks bake:role=web (it has billing)"), "{e}");
        assert!(e.contains("launch template web of group h lacks bake:role=web and bake:env=production"), "{e}");
        assert!(!e.contains("group ok") && e.ends_with("nothing changed"), "{e}");
    }

    fn mixed(name: &str, image: &str, arm_override: bool) -> GroupState {
        use aws_sdk_autoscaling::types as t;
        let spec = |id: &str, v: &str| t::LaunchTemplateSpecification::builder().launch_template_id(id).version(v).build();
        let p = t::MixedInstancesPolicy::builder()
            .launch_template(
                t::LaunchTemplate::builder()
                    .launch_template_specification(t::LaunchTemplateSpecification::builder().launch_template_name("web").version("$Latest").build())
                    .overrides(t::LaunchTemplateOverrides::builder().instance_type("m5.large").build())
                    .overrides(t::LaunchTemplateOverrides::builder().instance_type("m6g.large").launch_template_specification(spec("lt-arm", "4")).build())
                    .build(),
            )
            .instances_distribution(t::InstancesDistribution::builder().on_demand_base_capacity(1).build())
            .build();
        let tpl = |id: &str, n: &str, v: i64, c: &str, ty: &str, main: bool| MixedTemplate {
            id: id.into(),
            name: n.into(),
            version: v,
            configured: c.into(),
            image: image.into(),
            main,
            instance_types: vec![ty.into()],
        };
        let mut templates = vec![tpl("lt-1", "web", 3, "$Latest", "m5.large", true)];
        if arm_override {
            templates.push(tpl("lt-arm", "web-arm", 4, "4", "m6g.large", false));
        }
        GroupState {
            source: Source::Mixed { templates, image: image.into(), policy: Policy(p) },
            template_tags: BTreeMap::new(),
            mixed_template_tags: BTreeMap::from([("lt-1".to_string(), owned("web", "production")), ("lt-arm".to_string(), owned("web", "production"))]),
            ..lt(name, image)
        }
    }

    #[test]
    fn a_mixed_group_moves_every_template_and_its_policy_names_the_new_versions() {
        let spec = RolloutSpec { canaries: vec![], ..spec() };
        let p = plan(
            "web",
            "production",
            "us-east-1",
            "ami-new",
            "b-1",
            &spec,
            vec![mixed("web-mixed", "ami-old", true)],
            &BTreeMap::new(),
            PlanOptions::default(),
        )
        .unwrap();
        let g = &p.rest[0];
        let Change::Mixed { templates, policy, .. } = &g.change else { panic!("{:?}", g.change) };
        assert_eq!(templates.iter().map(|t| (t.id.as_str(), t.from)).collect::<Vec<_>>(), [("lt-1", 3), ("lt-arm", 4)]);
        assert!(!g.refresh.auto_rollback, "a policy on $Latest cannot be rolled back by AWS");
        assert!(g.notes.iter().any(|n| n.contains("web ($Latest)")), "{:?}", g.notes);
        assert!(p.to_string().contains("mixed instances policy: new versions of web (from v3), web-arm (from v4)"), "{p}");
        // The new policy: the main template by id (named by name before), both on the new numbers.
        let made = BTreeMap::from([("lt-1".to_string(), 7), ("lt-arm".to_string(), 9)]);
        let np = policy_with_versions(policy, templates, &made).0;
        let lt = np.launch_template().unwrap();
        let main = lt.launch_template_specification().unwrap();
        assert_eq!((main.launch_template_id(), main.launch_template_name(), main.version()), (Some("lt-1"), None, Some("7")));
        assert_eq!(lt.overrides()[1].launch_template_specification().unwrap().version(), Some("9"));
        assert_eq!(lt.overrides()[0].launch_template_specification(), None, "an override without a template stays so");
        assert_eq!(np.instances_distribution().unwrap().on_demand_base_capacity(), Some(1));
        // The tag that lets --rollback find the versions again.
        let tag = previous_versions_tag(templates);
        assert_eq!(tag, "lt-1=3,lt-arm=4");
        assert_eq!(parse_previous_versions(&tag), Some(BTreeMap::from([("lt-1".to_string(), 3), ("lt-arm".to_string(), 4)])));
        for bad in ["", "lt-1", "lt-1=x", "lt-1=-2", "lt-1=3,,"] {
            assert_eq!(parse_previous_versions(bad), None, "{bad:?}");
        }
        // Already on the image everywhere: nothing.
        let p = plan(
            "web",
            "production",
            "us-east-1",
            "ami-new",
            "b-1",
            &spec,
            vec![mixed("web-mixed", "ami-new", true)],
            &BTreeMap::new(),
            PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(p.rest[0].change, Change::Nothing);
    }

    #[test]
    fn every_template_of_a_mixed_group_must_be_opted_in_and_run_the_images_architecture() {
        let mut g = mixed("web-mixed", "ami-old", true);
        g.mixed_template_tags.remove("lt-arm");
        let e = plan(
            "web",
            "production",
            "us-east-1",
            "ami-new",
            "b-1",
            &RolloutSpec { canaries: vec![], ..spec() },
            vec![g],
            &BTreeMap::new(),
            PlanOptions::default(),
        )
        .unwrap_err();
        assert!(e.contains("launch template web-arm of group web-mixed lacks bake:role=web"), "{e}");
        let arch_of = BTreeMap::from([("m5.large".to_string(), vec!["x86_64".to_string()]), ("m6g.large".to_string(), vec!["arm64".to_string()])]);
        let x86 = BTreeMap::from([("x86_64".to_string(), "ami-new".to_string())]);
        let e = choose_images(&[mixed("web-mixed", "ami-old", true)], &x86, &arch_of).unwrap_err();
        assert!(e.starts_with("group web-mixed: instance type m6g.large of launch template web-arm runs arm64, but ami-new is x86_64"), "{e}");
        assert!(choose_images(&[mixed("web-mixed", "ami-old", false)], &x86, &arch_of).is_ok());
        // A plain launch-template group on a Graviton type: refused the same way.
        let mut plain = lt("web-arm", "ami-old");
        plain.instance_type = Some("m6g.large".into());
        let e = choose_images(&[plain.clone()], &x86, &arch_of).unwrap_err();
        assert!(e.starts_with("group web-arm: instance type m6g.large of launch template web runs arm64, but ami-new is x86_64"), "{e}");
        let e = choose_images(&[mixed("web-mixed", "ami-old", true)], &x86, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("EC2 does not know instance type m5.large"), "{e}");
        // A role that bakes both: each template gets its architecture's image, and the plan moves
        // the Graviton override's template to the arm64 image.
        let both = BTreeMap::from([("x86_64".to_string(), "ami-x".to_string()), ("arm64".to_string(), "ami-a".to_string())]);
        let chosen = choose_images(&[mixed("web-mixed", "ami-old", true), plain], &both, &arch_of).unwrap();
        assert_eq!(chosen["web-mixed"].main, "ami-x");
        assert_eq!(chosen["web-mixed"].templates, BTreeMap::from([("lt-1".to_string(), "ami-x".to_string()), ("lt-arm".to_string(), "ami-a".to_string())]));
        assert_eq!(chosen["web-arm"].main, "ami-a");
        let s = RolloutSpec { canaries: vec![], ..spec() };
        let p = plan("web", "production", "us-east-1", "ami-x", "b-1", &s, vec![mixed("web-mixed", "ami-old", true)], &chosen, PlanOptions::default()).unwrap();
        let Change::Mixed { templates, .. } = &p.rest[0].change else { panic!("{:?}", p.rest[0].change) };
        assert_eq!(templates.iter().map(|t| (t.name.as_str(), t.image.as_str())).collect::<Vec<_>>(), [("web", "ami-x"), ("web-arm", "ami-a")]);
        assert!(p.to_string().contains("web-arm (from v4, ami-a)"), "{p}");
        // One template whose types run different architectures cannot hold one image.
        let mut two = mixed("web-two", "ami-old", false);
        if let Source::Mixed { templates, .. } = &mut two.source {
            templates[0].instance_types.push("m6g.large".into());
        }
        let e = choose_images(&[two], &both, &arch_of).unwrap_err();
        assert!(e.contains("launch template web launches instance types of different architectures (m5.large x86_64, m6g.large arm64)"), "{e}");
    }

    #[test]
    fn a_roll_covers_the_build_region_and_every_copy_unless_narrowed() {
        let copies = vec!["eu-west-1".to_string(), "us-east-1".to_string()];
        let v = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = v(&["us-east-1", "eu-west-1"]);
        assert_eq!(regions("web", "us-east-1", &copies, &[], None).unwrap(), Regions { candidates: all.clone(), roll: all.clone(), named: false });
        assert_eq!(
            regions("web", "us-east-1", &copies, &[], Some("eu-west-1")).unwrap(),
            Regions { candidates: all.clone(), roll: v(&["eu-west-1"]), named: true }
        );
        assert_eq!(
            regions("web", "us-east-1", &copies, &v(&["eu-west-1"]), None).unwrap(),
            Regions { candidates: all.clone(), roll: v(&["eu-west-1"]), named: true }
        );
        let e = regions("web", "us-east-1", &copies, &v(&["ap-south-1"]), None).unwrap_err();
        assert!(e.contains("rollout.regions of roles/web.toml names ap-south-1") && e.contains("nothing changed"), "{e}");
        let e = regions("web", "us-east-1", &copies, &v(&["us-east-1"]), Some("eu-west-1")).unwrap_err();
        assert!(e.starts_with("--region eu-west-1 is not one of rollout.regions (us-east-1) of roles/web.toml"), "{e}");
        // A region the role does not copy to, named on the command line: that region alone.
        let r = regions("web", "us-east-1", &copies, &[], Some("ap-south-1")).unwrap();
        assert_eq!((r.candidates, r.roll), (v(&["ap-south-1"]), v(&["ap-south-1"])));
    }

    #[test]
    fn across_regions_each_named_group_and_canary_is_somewhere() {
        let mut s = spec();
        s.groups = vec!["web_a".into(), "web_canary".into()];
        let found = |a: &[&str], b: &[&str]| {
            vec![("us-east-1".to_string(), a.iter().map(|s| s.to_string()).collect()), ("eu-west-1".to_string(), b.iter().map(|s| s.to_string()).collect())]
        };
        assert!(check_found("web", "prod", &s, &found(&["web_a"], &["web_canary"])).is_ok());
        let e = check_found("web", "prod", &s, &found(&["web_a"], &[])).unwrap_err();
        assert!(e.contains("no Auto Scaling group named web_canary in us-east-1, eu-west-1"), "{e}");
        assert!(check_found("web", "prod", &s, &found(&["web_a", "web_canary"], &[])).is_ok());
        s.groups.clear();
        s.group_tags = BTreeMap::from([("team".to_string(), "web".to_string())]);
        let e = check_found("web", "prod", &s, &found(&[], &[])).unwrap_err();
        assert!(e.contains("no Auto Scaling group tagged team=web in us-east-1, eu-west-1"), "{e}");
        let e = check_found("web", "prod", &s, &found(&["web_a"], &[])).unwrap_err();
        assert!(e.contains("canary group web_canary"), "{e}");
    }
}
