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
    LaunchTemplate { id: String, name: String, version: i64, configured: String, image: String },
    LaunchConfiguration { name: String, image: String },
    /// A mixed-instances policy or nothing bake can change.
    Unsupported { why: String },
}

impl Source {
    pub fn image(&self) -> Option<&str> {
        match self {
            Source::LaunchTemplate { image, .. } | Source::LaunchConfiguration { image, .. } => Some(image),
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
    pub instances: usize,
    pub refresh_in_progress: Option<String>,
}

/// What bake will change on a group.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// A new version from the one the group uses, with the new image; the group moves to it.
    TemplateVersion { id: String, name: String, from: i64, set_default: bool },
    /// A copy of the group's launch configuration with the new image.
    LaunchConfiguration { from: String, to: String },
    /// A new launch template with the launch configuration's settings and the new image.
    MigrateToTemplate { from: String, template: String },
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
    pub refresh_in_progress: Option<String>,
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
    let refresh = if opts.patch { spec.patch_refresh.clone() } else { spec.refresh.clone() };
    let mut canaries = Vec::new();
    let mut rest = Vec::new();
    for g in groups {
        let (change, current, refresh) = match &g.source {
            Source::Unsupported { why } => return Err(format!("group {} cannot be rolled: {why}", g.name)),
            Source::LaunchTemplate { image, .. } | Source::LaunchConfiguration { image, .. } if image == ami => {
                (Change::Nothing, image.clone(), refresh.clone())
            }
            Source::LaunchTemplate { id, name, version, image, .. } => (
                Change::TemplateVersion { id: id.clone(), name: name.clone(), from: *version, set_default: spec.set_default_version },
                image.clone(),
                refresh.clone(),
            ),
            Source::LaunchConfiguration { name, image } => {
                if opts.migrate_to_launch_template {
                    (Change::MigrateToTemplate { from: name.clone(), template: g.name.clone() }, image.clone(), refresh.clone())
                } else {
                    // AWS does not roll launch configurations back by itself.
                    let mut r = refresh.clone();
                    r.auto_rollback = false;
                    (Change::LaunchConfiguration { from: name.clone(), to: launch_configuration_name(&g.name, ami, roll_id) }, image.clone(), r)
                }
            }
        };
        let gp = GroupPlan {
            canary: spec.canaries.contains(&g.name),
            name: g.name,
            current_image: current,
            new_image: ami.to_string(),
            change,
            refresh,
            instances: g.instances,
            refresh_in_progress: g.refresh_in_progress,
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
    if r.skip_matching {
        p.push("skip matching".into());
    }
    if r.auto_rollback {
        p.push("auto rollback".into());
    }
    p.join(", ")
}

fn write_group(f: &mut fmt::Formatter<'_>, g: &GroupPlan) -> fmt::Result {
    let change = match &g.change {
        Change::TemplateVersion { name, from, set_default, .. } => {
            format!("launch template {name}: new version from v{from}{}", if *set_default { ", made default" } else { "" })
        }
        Change::LaunchConfiguration { from, to } => format!("launch configuration {from} → {to}"),
        Change::MigrateToTemplate { from, template } => format!("launch configuration {from} → new launch template {template}"),
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
    Ok(())
}

impl fmt::Display for RolloutPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Rollout of {} to role {} in env {} ({})", self.ami, self.role, self.env, self.region)?;
        if !self.canaries.is_empty() {
            writeln!(f, "canaries first:")?;
            for g in &self.canaries {
                write_group(f, g)?;
            }
            if self.canary_bake_time.0 > 0 {
                writeln!(f, "then wait {} before the rest", self.canary_bake_time)?;
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
            keep_launch_configurations: 3,
            refresh: RefreshSpec { min_healthy_percentage: 90, auto_rollback: true, skip_matching: true, ..Default::default() },
            patch_refresh: RefreshSpec { min_healthy_percentage: 50, ..Default::default() },
        }
    }

    fn lt(name: &str, image: &str) -> GroupState {
        GroupState {
            name: name.into(),
            source: Source::LaunchTemplate { id: "lt-1".into(), name: "web".into(), version: 3, configured: "3".into(), image: image.into() },
            tags: BTreeMap::new(),
            instances: 2,
            refresh_in_progress: None,
        }
    }

    #[test]
    fn canaries_first_each_kind_gets_its_change() {
        let lc = GroupState {
            name: "legacy".into(),
            source: Source::LaunchConfiguration { name: "legacy-lc".into(), image: "ami-old".into() },
            tags: BTreeMap::new(),
            instances: 1,
            refresh_in_progress: None,
        };
        let p = plan("web", "production", "us-east-1", "ami-new", "b-0123456789ab", &spec(),
            vec![lt("web_main", "ami-old"), lt("web_canary", "ami-old"), lc, lt("web_done", "ami-new")], PlanOptions::default()).unwrap();
        assert_eq!(p.canaries.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["web_canary"]);
        assert_eq!(p.rest.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["legacy", "web_done", "web_main"]);
        assert_eq!(p.rest[0].change, Change::LaunchConfiguration { from: "legacy-lc".into(), to: "legacy-ami-new-b-0123456789ab".into() });
        assert!(!p.rest[0].refresh.auto_rollback, "no AWS rollback for launch configurations");
        assert_eq!(p.rest[1].change, Change::Nothing);
        assert!(matches!(p.rest[2].change, Change::TemplateVersion { from: 3, .. }));
        let text = p.to_string();
        assert!(text.contains("web_canary [canary]") && text.contains("ami-old → ami-new") && text.contains("then wait 1m"), "{text}");
        assert!(is_bake_launch_configuration("legacy", "legacy-ami-new-b-0123456789ab"));
        assert!(!is_bake_launch_configuration("legacy", "legacy-lc"));
    }

    #[test]
    fn bad_targets_are_errors() {
        assert!(plan("r", "e", "us-east-1", "ami-1", "b-0123456789ab", &spec(), vec![], PlanOptions::default()).is_err());
        let e = plan("r", "e", "us-east-1", "ami-1", "b-0123456789ab", &spec(), vec![lt("other", "ami-0")], PlanOptions::default()).unwrap_err();
        assert!(e.contains("canary group web_canary"), "{e}");
        let mut s = spec();
        s.canaries.clear();
        let p = plan("r", "e", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![lt("g", "ami-0")], PlanOptions { patch: true, ..Default::default() }).unwrap();
        assert_eq!(p.rest[0].refresh.min_healthy_percentage, 50, "patch preferences");
    }
}
