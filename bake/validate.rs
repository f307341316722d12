//! `bake validate`: every role in every env, every cookbook, every policy; all problems at once.

use std::collections::BTreeSet;

use serde_json::json;

use crate::config::{CookbookCache, Problem, Problems, Project, VarInputs};
use crate::template::{self, Flavor};

#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub roles: usize,
    pub envs: usize,
    pub cookbooks: usize,
    pub steps: usize,
}

impl Report {
    pub fn summary(&self) -> String {
        format!("ok: {} role(s) in {} env(s), {} cookbook(s), {} rendered step(s), policies", self.roles, self.envs, self.cookbooks, self.steps)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "ok": self.problems.is_empty(),
            "problems": self.problems.iter().map(|p| json!({
                "file": p.file.display().to_string(),
                "line": p.line,
                "key": p.key,
                "message": p.message,
                "text": p.to_string(),
            })).collect::<Vec<_>>(),
            "roles": self.roles,
            "envs": self.envs,
            "cookbooks": self.cookbooks,
            "steps": self.steps,
        })
    }

    fn add(&mut self, seen: &mut BTreeSet<String>, problems: Problems) {
        for p in problems.0 {
            if seen.insert(p.to_string()) {
                self.problems.push(p);
            }
        }
    }
}

/// Checks `only` (or every role and every cookbook when empty).
pub fn run(project: &Project, only: &[String], vars: &VarInputs) -> Report {
    let mut report = Report::default();
    let mut seen = BTreeSet::new();
    // bake.toml (shared state), when there is one.
    if let Err(p) = crate::config::state::load(&project.root) {
        report.add(&mut seen, p);
    }
    let roles = if only.is_empty() {
        match project.role_names() {
            Ok(r) => r,
            Err(p) => {
                report.add(&mut seen, p.into());
                Vec::new()
            }
        }
    } else {
        only.to_vec()
    };
    let policies = match project.policies() {
        Ok(p) => Some(p),
        Err(p) => {
            report.add(&mut seen, p);
            None
        }
    };
    let mut cache = CookbookCache::default();
    // Which role/env publishes each image parameter: two publishing one would overwrite each other.
    let mut publishers: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for name in &roles {
        let rf = match project.role(name) {
            Ok(rf) => rf,
            Err(p) => {
                report.add(&mut seen, p);
                continue;
            }
        };
        report.roles += 1;
        for env in &rf.envs {
            report.envs += 1;
            let roles = match rf.resolve_all(env, vars) {
                Ok(r) => r,
                Err(p) => {
                    report.add(&mut seen, p);
                    continue;
                }
            };
            for role in roles {
                let me = match &role.arch {
                    Some(a) if role.architectures.len() > 1 => format!("{name}/{env} ({a})"),
                    _ => format!("{name}/{env}"),
                };
                match publishers.get(&role.image.ssm_parameter) {
                    Some(other) => report.add(
                        &mut seen,
                        Problem::new(
                            &rf.file.shown,
                            "image.ssm_parameter",
                            format!("{me} publishes `{}`, as {other} does; each role and env needs its own parameter", role.image.ssm_parameter),
                        )
                        .into(),
                    ),
                    None => {
                        publishers.insert(role.image.ssm_parameter.clone(), me);
                    }
                }
                let Some(policies) = &policies else { continue };
                match project.plan_with(&rf, &role, &mut cache, policies) {
                    Ok(plan) => report.steps += plan.steps.len(),
                    Err(p) => report.add(&mut seen, p),
                }
            }
        }
    }
    if only.is_empty() {
        // Cookbooks no role uses still have to load and compile.
        let names = match project.cookbook_names() {
            Ok(n) => n,
            Err(p) => {
                report.add(&mut seen, p.into());
                Vec::new()
            }
        };
        for name in &names {
            match cache.get(project, name) {
                Ok(cb) => {
                    let mut reg = template::registry(Flavor::Shell);
                    for st in &cb.steps {
                        if let Err(e) = reg.register_template_string(&st.name, &st.source) {
                            let (line, why) = template::template_error_text(&e);
                            report.add(&mut seen, Problem::new(&st.template_path, "", why).at_line(line).into());
                        }
                    }
                }
                Err(p) => report.add(&mut seen, p.clone()),
            }
        }
        report.cookbooks = names.len();
    } else {
        report.cookbooks = cache.len();
    }
    // The policies these roles need render and fit: the operator's for every role and for each
    // role alone, and the builders' boundary.
    if let Some(policies) = &policies {
        let scopes: Vec<Option<&str>> = if only.is_empty() {
            std::iter::once(None).chain(roles.iter().map(|r| Some(r.as_str()))).collect()
        } else {
            roles.iter().map(|r| Some(r.as_str())).collect()
        };
        for role in scopes {
            match crate::config::policy::operator_context(project, role, None, None, vars) {
                Ok(ctx) => {
                    for kind in ["operator", "roller"] {
                        if let Err(p) = policies.render(kind, &ctx) {
                            report.add(&mut seen, p.into());
                        }
                    }
                }
                Err(p) => report.add(&mut seen, p),
            }
        }
        if let Ok(Some(ctx)) = crate::config::policy::state_context(project, None) {
            if let Err(p) = policies.render("state", &ctx) {
                report.add(&mut seen, p.into());
            }
        }
        if only.is_empty() {
            match crate::config::policy::boundary_context(project, None, vars) {
                Ok(ctx) => {
                    if let Err(p) = policies.render("boundary", &ctx) {
                        report.add(&mut seen, p.into());
                    }
                }
                Err(p) => report.add(&mut seen, p),
            }
        }
    }
    report
}
