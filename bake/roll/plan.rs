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
    /// A mixed-instances policy or nothing bake can change.
    Unsupported {
        why: String,
    },
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
    /// The tags of the launch template the group uses (empty for other sources).
    pub template_tags: BTreeMap<String, String>,
    /// Instances protected from scale-in, and instances in Standby.
    pub protected: usize,
    pub standby: usize,
    pub instances: usize,
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
            out.push(format!("its launch template {name} lacks {}", l.join(" and ")));
        }
    }
    out
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
    let missing: Vec<String> = groups.iter().flat_map(|g| not_opted_in(role, env, g)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "bake rolls only groups (and their launch templates) that their owners opted in to {role}/{env} with the tags bake:role={role} and bake:env={env}; {} (README, IAM); nothing changed",
            missing.join("; ")
        ));
    }
    let refresh = if opts.patch { spec.patch_refresh.clone() } else { spec.refresh.clone() };
    let mut canaries = Vec::new();
    let mut rest = Vec::new();
    for g in groups {
        let mut notes = Vec::new();
        let mut refresh = refresh.clone();
        let (change, current) = match &g.source {
            Source::Unsupported { why } => return Err(format!("group {} cannot be rolled: {why}", g.name)),
            Source::LaunchTemplate { image, .. } | Source::LaunchConfiguration { image, .. } if image == ami => (Change::Nothing, image.clone()),
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
                    (Change::LaunchConfiguration { from: name.clone(), to: launch_configuration_name(&g.name, ami, roll_id) }, image.clone())
                }
            }
        };
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
            new_image: ami.to_string(),
            change,
            refresh,
            instances: g.instances,
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
            keep_version_alias: false,
            keep_launch_configurations: 3,
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
            protected: 0,
            standby: 0,
            instances: 2,
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
            protected: 0,
            standby: 0,
            instances: 1,
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
        assert!(plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &spec(), vec![], PlanOptions::default()).is_err());
        let e = plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &spec(), vec![lt("other", "ami-0")], PlanOptions::default()).unwrap_err();
        assert!(e.contains("canary group web_canary"), "{e}");
        let mut s = spec();
        s.canaries.clear();
        let p =
            plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![lt("g", "ami-0")], PlanOptions { patch: true, ..Default::default() })
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
        let p = plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![latest.clone(), lt("numbered", "ami-0")], PlanOptions::default())
            .unwrap();
        let (l, n) = (&p.rest[0], &p.rest[1]);
        assert!(!l.refresh.auto_rollback && n.refresh.auto_rollback, "AWS refuses AutoRollback for $Latest/$Default groups only");
        assert!(matches!(&l.change, Change::TemplateVersion { alias: None, .. }), "it moves to the numbered version");
        assert!(p.to_string().contains("uses $Latest (v3): it moves to the new numbered version"), "{p}");
        s.keep_version_alias = true;
        let p = plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![latest], PlanOptions::default()).unwrap();
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
        let p = plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![g.clone()], PlanOptions::default()).unwrap();
        assert!(p.to_string().contains("2 instance(s) protected from scale-in and 1 in Standby: replaced too"), "{p}");
        s.refresh.protected_instances = "wait".into();
        let p = plan("web", "production", "us-east-1", "ami-1", "b-0123456789ab", &s, vec![g], PlanOptions::default()).unwrap();
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
            PlanOptions::default(),
        )
        .unwrap_err();
        assert!(e.contains("group g lacks bake:role=web (it has billing)"), "{e}");
        assert!(e.contains("its launch template web lacks bake:role=web and bake:env=production"), "{e}");
        assert!(!e.contains("group ok") && e.ends_with("nothing changed"), "{e}");
    }
}
