//! The Plan: everything a bake will do, as plain data. Built from configuration without any I/O;
//! `bake plan` prints it, the pipeline executes it, tests assert on it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::config::role::{BuilderSpec, ImageSpec, NotifySpec, RolloutSpec, SourceSpec};
use crate::config::tomlfile::KeyPath;
use crate::config::{Cookbook, CookbookCache, Policies, Problem, Problems, Project, Role, RoleFile, Secs, VarInputs};
use crate::template::{self, Flavor};

/// Bumped when bake changes how it turns the same inputs into an image (the prelude, the
/// header, the delivery of steps), so that such a change bakes anew.
pub const FORMAT: u32 = 1;

/// The AWS managed policy every builder gets, for the SSM agent.
pub const SSM_CORE_POLICY: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Plan {
    pub role: String,
    pub env: String,
    pub description: String,
    pub source: SourceSpec,
    pub builder: BuilderPlan,
    pub run_list: Vec<String>,
    pub steps: Vec<PlannedStep>,
    pub image: ImageSpec,
    pub rollout: RolloutSpec,
    pub notify: NotifySpec,
    /// Hash of everything that decides the image's content, and nothing else.
    pub fingerprint: String,
    /// The architecture this plan bakes, for a role with `[architectures]` (its image is tagged
    /// `bake:arch`; each architecture is its own bake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Every architecture the role bakes (a roll gives each group the image of its instance
    /// types' architecture).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// The role's variables (for the image name at build time); not printed.
    #[serde(skip)]
    pub vars: BTreeMap<String, String>,
}

impl Plan {
    /// `role/env`, and the architecture when the role bakes several.
    pub fn label(&self) -> String {
        match &self.arch {
            Some(a) if self.architectures.len() > 1 => format!("{}/{} ({a})", self.role, self.env),
            _ => format!("{}/{}", self.role, self.env),
        }
    }
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct BuilderPlan {
    #[serde(flatten)]
    pub spec: BuilderSpec,
    pub managed_policies: Vec<String>,
    /// The builder role's inline policy; none when the steps need no AWS access.
    pub inline_policy: Option<Json>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PlannedStep {
    pub cookbook: String,
    pub step: String,
    pub description: String,
    pub timeout: Secs,
    pub reboot: bool,
    pub sha256: String,
    pub bytes: usize,
    /// The rendered script (printed by `bake render`, not by `bake plan`).
    #[serde(skip)]
    pub script: String,
}

impl PlannedStep {
    pub fn id(&self) -> String {
        format!("{}/{}", self.cookbook, self.step)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deep-merges JSON `over` into `base` (objects key by key; everything else replaced).
pub fn merge_json(base: &mut Json, over: &Json) {
    match (base, over) {
        (Json::Object(b), Json::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => merge_json(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The header every rendered step starts with (after the interpreter line).
fn header(role: &Role, cb: &str, step: &str, n: usize, total: usize) -> String {
    format!(
        "#!/bin/bash\nset -euo pipefail\n# bake: role={} env={} cookbook={} step={} ({}/{})\n# Rendered by bake from cookbooks/{}/; do not edit on the builder.\n",
        role.name, role.env, cb, step, n, total, cb
    )
}

/// The attributes every cookbook sees: cookbook defaults with the role's overrides merged over.
pub fn node_attributes(role: &Role, cookbooks: &[&Cookbook]) -> Json {
    let mut node = serde_json::Map::new();
    for cb in cookbooks {
        let mut attrs = Json::Object(cb.attributes.clone());
        if let Some(over) = role.attributes.get(&cb.name) {
            merge_json(&mut attrs, over);
        }
        node.insert(cb.name.clone(), attrs);
    }
    Json::Object(node)
}

/// Plans come from a project: its role, its cookbooks, its policies.
impl Project {
    /// Loads what one role needs and builds its plan for `env`.
    /// The role's plan, each of its architectures checked (the first's plan: the roll's and the
    /// policies' view of the role).
    pub fn plan(&self, role: &str, env: &str, vars: &VarInputs) -> Result<Plan, Problems> {
        let mut plans = self.plans(role, env, vars)?;
        Ok(plans.remove(0))
    }

    /// One plan per architecture the role bakes (one for a role without `[architectures]`).
    pub fn plans(&self, role: &str, env: &str, vars: &VarInputs) -> Result<Vec<Plan>, Problems> {
        let rf = self.role(role)?;
        let policies = self.policies()?;
        let mut cache = CookbookCache::default();
        let mut problems = Problems::default();
        let mut plans = Vec::new();
        for r in rf.resolve_all(env, vars)? {
            match self.plan_with(&rf, &r, &mut cache, &policies) {
                Ok(p) => plans.push(p),
                Err(p) => problems.extend(p),
            }
        }
        if plans.is_empty() && problems.is_empty() {
            problems.push(crate::config::Problem::new(format!("roles/{role}.toml"), "", "no plan"));
        }
        problems.into_result(plans)
    }

    /// Builds a plan, loading cookbooks through `cache` (each is read once per cache).
    pub fn plan_with(&self, rf: &RoleFile, role: &Role, cache: &mut CookbookCache, policies: &Policies) -> Result<Plan, Problems> {
        let mut cookbooks = BTreeMap::new();
        let mut problems = Problems::default();
        for name in &role.run_list {
            if !crate::config::cookbook::valid_name(name) || !self.root.join("cookbooks").join(name).is_dir() {
                continue; // reported by the plan, against the role file
            }
            match cache.get(self, name) {
                Ok(c) => {
                    cookbooks.insert(name.clone(), c.clone());
                }
                Err(p) => problems.extend(p.clone()),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let known = self.cookbook_names().unwrap_or_default();
        build(rf, role, &cookbooks, &known, policies)
    }
}

/// Builds the plan for one role in one env. `known` lists the project's cookbooks (for
/// messages); `cookbooks` holds at least those in the run list that exist.
pub fn build(rf: &RoleFile, role: &Role, cookbooks: &BTreeMap<String, Cookbook>, known: &[String], policies: &Policies) -> Result<Plan, Problems> {
    let mut problems = Problems::default();
    let rl = KeyPath::root().key("run_list");

    // The run list: every cookbook exists and comes after what it depends on.
    let mut ordered: Vec<&Cookbook> = Vec::new();
    for (i, name) in role.run_list.iter().enumerate() {
        match cookbooks.get(name) {
            Some(cb) => {
                for dep in &cb.depends {
                    if !role.run_list[..i].contains(dep) {
                        problems.push(rf.problem_at(
                            &role.env,
                            &rl.index(i),
                            format!("cookbook `{name}` depends on `{dep}`, which must come earlier in the run list"),
                        ));
                    }
                }
                ordered.push(cb);
            }
            None => {
                problems.push(rf.problem_at(&role.env, &rl.index(i), format!("unknown cookbook `{name}` (cookbooks: {})", crate::config::list_or_none(known))))
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let node = node_attributes(role, &ordered);
    // What each cookbook declares its attributes must be ([checks]), against the values as the
    // role and its env set them: named where they were set.
    for cb in &ordered {
        for (path, check) in &cb.checks {
            let mut v = Some(&node[&cb.name]);
            for seg in path.split('.') {
                v = v.and_then(|x| x.get(seg));
            }
            if let Some((at, why)) = v.and_then(|v| crate::config::checks::problem(check, v)) {
                problems.push(value_origin(rf, role, &ordered, &format!("node.{}.{path}{at}", cb.name), format!("{why} (cookbook {})", cb.name)));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut reg = template::registry(Flavor::Shell);
    for cb in &ordered {
        for st in &cb.steps {
            if let Err(e) = reg.register_template_string(&format!("{}/{}", cb.name, st.name), &st.source) {
                let (line, why) = template::template_error_text(&e);
                problems.push(Problem::new(&st.template_path, "", why).at_line(line));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let total: usize = ordered.iter().map(|c| c.steps.len()).sum();
    let mut steps = Vec::with_capacity(total);
    let mut n = 0;
    for cb in &ordered {
        use base64::Engine as _;
        let files: serde_json::Map<String, Json> =
            cb.files.iter().map(|(k, v)| (k.clone(), Json::String(base64::engine::general_purpose::STANDARD.encode(v)))).collect();
        for st in &cb.steps {
            n += 1;
            let ctx = json!({
                "role": role.name,
                "env": role.env,
                "cookbook": cb.name,
                "step": st.name,
                "attr": node[&cb.name],
                "node": node,
                "vars": role.vars,
                "_files": files,
            });
            match reg.render(&format!("{}/{}", cb.name, st.name), &ctx) {
                Ok(body) => {
                    let script = format!("{}{}{}\nexit 0\n", header(role, &cb.name, &st.name, n, total), template::PRELUDE, body.trim_end());
                    steps.push(PlannedStep {
                        cookbook: cb.name.clone(),
                        step: st.name.clone(),
                        description: st.description.clone(),
                        timeout: st.timeout.unwrap_or(role.builder.step_timeout),
                        reboot: st.reboot,
                        sha256: sha256_hex(script.as_bytes()),
                        bytes: script.len(),
                        script,
                    });
                }
                Err(e) => {
                    let (line, why) = template::render_error_text(&e);
                    problems
                        .push(Problem::new(&st.template_path, "", format!("{why} (cookbook {}, role {}, env {})", cb.name, role.name, role.env)).at_line(line));
                }
            }
        }
    }

    let policy_ctx = policy_context(role, &node);
    let inline_policy = match policies.render("builder", &policy_ctx) {
        Ok(p) => p,
        Err(p) => {
            problems.push(p);
            None
        }
    };
    // An attribute may not widen the builder's policy: a wildcard or an empty segment in a value
    // that becomes a resource is refused, naming where the value was set.
    for (path, value) in policies.values_in_resources("builder", &policy_ctx, &["node", "vars", "image", "builder"]) {
        if let Some(why) = crate::config::policy::too_wide_for_a_resource(&value) {
            problems.push(value_origin(rf, role, &ordered, &path, why));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let builder = BuilderPlan { spec: role.builder.clone(), managed_policies: vec![SSM_CORE_POLICY.to_string()], inline_policy };
    let arch = role.arch.as_deref().filter(|_| role.architectures.len() > 1);
    let fingerprint = fingerprint_of(&role.source, &builder, &steps, arch);
    Ok(Plan {
        role: role.name.clone(),
        env: role.env.clone(),
        description: role.description.clone(),
        source: role.source.clone(),
        builder,
        run_list: role.run_list.clone(),
        steps,
        image: role.image.clone(),
        rollout: role.rollout.clone(),
        notify: role.notify.clone(),
        fingerprint,
        arch: role.arch.clone(),
        architectures: role.architectures.clone(),
        vars: role.vars.clone(),
    })
}

/// The problem for a value at `path` of the policy context (`node.<cookbook>.<key>…`,
/// `builder.output.s3_bucket`, `vars.x`), attributed to where it was set: the role (its env
/// overlay when that sets it) or the cookbook's defaults.
fn value_origin(rf: &RoleFile, role: &Role, cookbooks: &[&Cookbook], path: &str, why: String) -> Problem {
    let segs: Vec<String> = path.split('.').map(str::to_string).collect();
    let keypath = |segs: &[String]| {
        let mut k = KeyPath::root();
        for s in segs {
            match s.split_once('[') {
                Some((name, idx)) => {
                    k = k.key(name);
                    if let Ok(i) = idx.trim_end_matches(']').parse() {
                        k = k.index(i);
                    }
                }
                None => k = k.key(s),
            }
        }
        k
    };
    if segs.first().map(String::as_str) == Some("node") && segs.len() > 2 {
        let cb = &segs[1];
        let mut in_role = role.attributes.get(cb.as_str());
        for s in &segs[2..] {
            in_role = in_role.and_then(|v| v.get(s.split('[').next().unwrap_or(s)));
        }
        if in_role.is_some() {
            let mut rel = vec!["attributes".to_string(), cb.clone()];
            rel.extend(segs[2..].iter().cloned());
            return rf.problem_at(&role.env, &keypath(&rel), why);
        }
        if let Some(c) = cookbooks.iter().find(|c| &c.name == cb) {
            let mut rel = vec!["attributes".to_string()];
            rel.extend(segs[2..].iter().cloned());
            return Problem::new(std::path::Path::new("cookbooks").join(&c.name).join("cookbook.toml"), keypath(&rel).to_string(), why);
        }
    }
    rf.problem_at(&role.env, &keypath(&segs), why)
}

/// What policy templates see.
pub fn policy_context(role: &Role, node: &Json) -> Json {
    json!({
        "role": role.name,
        "env": role.env,
        "partition": "aws",
        // The account the builder runs in, whatever it is: IAM substitutes the variable.
        "account": "${aws:PrincipalAccount}",
        "region": role.builder.region.clone().unwrap_or_else(|| "*".into()),
        "node": node,
        "vars": role.vars,
        "image": {"ssm_parameter": role.image.ssm_parameter, "regions": role.image.regions},
        "builder": {"output": role.builder.output},
    })
}

/// The input fingerprint: the source selector, what the root volume is, and every step's
/// content, name, order and reboot flag, plus bake's format version. Names, tags, regions,
/// shares, timeouts, instance type and rollout do not change what the image holds.
pub fn fingerprint(source: &SourceSpec, builder: &BuilderPlan, steps: &[PlannedStep]) -> String {
    fingerprint_of(source, builder, steps, None)
}

/// [`fingerprint`] of one architecture of a role that bakes several: the architecture is part of
/// what the image is (so an image of one is never reused for the other, nor one made before the
/// role declared architectures).
pub fn fingerprint_of(source: &SourceSpec, builder: &BuilderPlan, steps: &[PlannedStep], arch: Option<&str>) -> String {
    let mut doc = json!({
        "format": FORMAT,
        "source": source,
        "volume": {
            "size": builder.spec.root_volume_size,
            "type": builder.spec.root_volume_type,
            "encrypted": builder.spec.encrypted,
            "kms_key_id": builder.spec.kms_key_id,
        },
        "steps": steps.iter().map(|s| json!([s.cookbook, s.step, s.sha256, s.reboot])).collect::<Vec<_>>(),
    });
    if let Some(a) = arch {
        doc["arch"] = json!(a);
    }
    let canon = serde_json::to_string(&doc).unwrap_or_default(); // ok: plain JSON values
    format!("sha256:{}", &sha256_hex(canon.as_bytes()))
}

/// The fingerprint of an actual bake: the plan's, bound to the source AMI that was resolved
/// (a new weekly distribution image means a new bake).
pub fn bake_fingerprint(plan_fingerprint: &str, source_ami: &str) -> String {
    let short = &sha256_hex(format!("{plan_fingerprint}\n{source_ami}").as_bytes())[..32];
    format!("sha256:{short}")
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.arch {
            Some(a) if self.architectures.len() > 1 => writeln!(f, "Plan for role {} in env {}, architecture {a}", self.role, self.env)?,
            _ => writeln!(f, "Plan for role {} in env {}", self.role, self.env)?,
        }
        if !self.description.is_empty() {
            writeln!(f, "  {}", self.description)?;
        }
        let source = match &self.source {
            SourceSpec::SsmParameter { name } => format!("SSM parameter {name}"),
            SourceSpec::Filter { owners, name, architecture } => {
                format!("newest image named {name} ({architecture}) owned by {}", owners.join(", "))
            }
            SourceSpec::Ami { id } => format!("pinned {id}"),
        };
        writeln!(f, "source:      {source}")?;
        let b = &self.builder.spec;
        writeln!(
            f,
            "builder:     {}{} in {}, root volume {} {}{}, no key pair, no inbound rule{}",
            b.instance_type,
            if b.spot { " (spot)" } else { "" },
            match &b.subnet {
                crate::config::role::SubnetSpec::Default => "the default subnet".to_string(),
                crate::config::role::SubnetSpec::Id { id } => id.clone(),
                crate::config::role::SubnetSpec::Tags { tags } =>
                    format!("a subnet tagged {}", tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")),
            },
            b.root_volume_size.map(|s| format!("{s} GiB")).unwrap_or_else(|| "(source size)".into()),
            b.root_volume_type,
            if b.encrypted { ", encrypted" } else { ", NOT encrypted" },
            if b.security_group_ids.is_empty() { String::new() } else { format!(", groups {}", b.security_group_ids.join(",")) },
        )?;
        writeln!(
            f,
            "builder IAM: AmazonSSMManagedInstanceCore{}",
            if self.builder.inline_policy.is_some() { " + inline policy from policies/builder.json.hbs" } else { "" }
        )?;
        let out = &self.builder.spec.output;
        let places: Vec<String> =
            out.s3_bucket.iter().map(|b| format!("s3://{b}/{}/", out.s3_prefix)).chain(out.log_group.iter().map(|g| format!("CloudWatch Logs {g}"))).collect();
        if !places.is_empty() {
            writeln!(f, "step output: whole, to {}", places.join(" and "))?;
        }
        writeln!(f, "steps:")?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(
                f,
                "  {:>2}. {:<28} timeout {:<6} {}{}",
                i + 1,
                s.id(),
                s.timeout.to_string(),
                &s.sha256[..12],
                if s.reboot { "  then reboot" } else { "" }
            )?;
        }
        let i = &self.image;
        let mut sample = json!({"role": self.role, "env": self.env, "vars": self.vars, "timestamp": "<timestamp>", "bake_id": "<bake id>"});
        if let Some(a) = &self.arch {
            sample["arch"] = json!(a);
        }
        let name = template::render_plain(&i.name, &sample).unwrap_or_else(|_| i.name.clone());
        writeln!(f, "image:       {name}")?;
        if !i.regions.is_empty() {
            writeln!(f, "copies:      {}", i.regions.join(", "))?;
        }
        let shares: Vec<String> = i.share_accounts.iter().chain(&i.share_organizations).chain(&i.share_ous).cloned().collect();
        if !shares.is_empty() {
            writeln!(f, "shared with: {}", shares.join(", "))?;
        }
        if !i.tags.is_empty() {
            writeln!(f, "tags:        {}", i.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))?;
        }
        writeln!(f, "published:   {}", i.ssm_parameter)?;
        let r = &self.rollout;
        let mut targets: Vec<String> = r.groups.clone();
        targets.extend(r.group_tags.iter().map(|(k, v)| format!("tag {k}={v}")));
        if targets.is_empty() {
            targets.push(format!("{}_{} (by convention)", self.role, self.env));
        }
        writeln!(f, "rollout:     {}", targets.join(", "))?;
        if !r.canaries.is_empty() {
            writeln!(f, "canaries:    {}", r.canaries.join(", "))?;
        }
        write!(f, "fingerprint: {}", self.fingerprint)
    }
}
