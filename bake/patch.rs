//! `bake patch`: an emergency image from the role's current golden image, running only a patch
//! step (the shipped security-patch cookbook, or a script). Everything else is a normal bake.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::config::role::SourceSpec;
use crate::config::{CookbookCache, Problem, Problems, Project, VarInputs};
use crate::plan::{self, Plan, PlannedStep};

/// What to patch.
#[derive(Clone, Debug)]
pub enum What {
    Packages(Vec<String>),
    All,
    /// A script file and its content.
    Script(String, String),
}

impl What {
    /// The `bake:patched-packages` tag value.
    pub fn label(&self) -> String {
        match self {
            What::Packages(p) => p.join(","),
            What::All => "all".into(),
            What::Script(f, _) => format!("script:{f}"),
        }
    }
}

fn valid_package(p: &str) -> bool {
    crate::config::checks::debian_package(p)
}

pub fn valid_cve(c: &str) -> bool {
    let parts: Vec<&str> = c.split('-').collect();
    parts.len() == 3
        && parts[0] == "CVE"
        && parts[1].len() == 4
        && parts[1].bytes().all(|b| b.is_ascii_digit())
        && parts[2].len() >= 4
        && parts[2].bytes().all(|b| b.is_ascii_digit())
}

/// Parses `--packages a,b` (checked as Debian package names).
pub fn packages(arg: &str) -> Result<Vec<String>, String> {
    let v: Vec<String> = arg.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
    if v.is_empty() {
        return Err("--packages: name at least one package".into());
    }
    for p in &v {
        if !valid_package(p) {
            return Err(format!("--packages: `{p}` is not a Debian package name"));
        }
    }
    Ok(v)
}

/// The plan of a patch of `role` in `env` from `parent`.
/// For a role that bakes several architectures, `arch` says which (its parent is of that one).
#[allow(clippy::too_many_arguments)] // plain inputs of a pure function
pub fn plan(
    project: &Project,
    role: &str,
    env: &str,
    arch: Option<&str>,
    vars: &VarInputs,
    what: &What,
    parent: &str,
    cves: &[String],
) -> Result<Plan, Problems> {
    let rf = project.role(role)?;
    let roles = rf.resolve_all(env, vars)?;
    let mut r = match arch {
        Some(a) => roles.into_iter().find(|r| r.arch.as_deref() == Some(a)).ok_or_else(|| {
            Problems::from(crate::config::Problem::new(format!("roles/{role}.toml"), "architectures", format!("the role does not bake `{a}`")))
        })?,
        None => roles.into_iter().next().ok_or_else(|| Problems::from(crate::config::Problem::new(format!("roles/{role}.toml"), "", "no plan")))?,
    };
    r.source = SourceSpec::Ami { id: parent.to_string() };
    r.run_list = vec!["security-patch".to_string()];
    let (packages, all) = match what {
        What::Packages(p) => (p.clone(), false),
        _ => (Vec::new(), matches!(what, What::All)),
    };
    let mut attrs = serde_json::Map::new();
    attrs.insert("security-patch".into(), json!({"packages": packages, "upgrade_all": all}));
    r.attributes = attrs;
    let policies = project.policies()?;
    let mut p = project.plan_with(&rf, &r, &mut CookbookCache::default(), &policies)?;
    if let What::Script(file, content) = what {
        // The security-patch cookbook's step gives the script its timeout.
        let Some(step) = p.steps.first() else {
            return Err(crate::config::Problem::new("cookbooks/security-patch", "", "has no step: the patch script takes its first step's timeout").into());
        };
        let header = format!(
            "#!/bin/bash\nset -euo pipefail\n# bake: role={} env={} patch script {}\n# Delivered by bake patch; do not edit on the builder.\n",
            p.role,
            p.env,
            Path::new(file).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default()
        );
        let script = format!("{header}{}{}\nexit 0\n", crate::template::PRELUDE, content.trim_end());
        let s = PlannedStep {
            cookbook: "patch".into(),
            step: "script".into(),
            description: format!("the patch script {file}"),
            timeout: step.timeout,
            reboot: false,
            sha256: plan::sha256_hex(script.as_bytes()),
            bytes: script.len(),
            script,
        };
        p.steps = vec![s];
        p.run_list = vec!["patch".into()];
        p.fingerprint = plan::fingerprint_of(&p.source, &p.builder, &p.steps, p.arch.as_deref().filter(|_| p.architectures.len() > 1));
    }
    let mut tags: BTreeMap<String, String> = p.image.tags.clone();
    tags.insert(crate::tags::KIND.into(), "patch".into());
    tags.insert(crate::tags::PATCH_OF.into(), parent.to_string());
    if !cves.is_empty() {
        let mut v = cves.join(",");
        v.truncate(256);
        tags.insert(crate::tags::CVE.into(), v);
    }
    let mut label = what.label();
    label.truncate(256);
    tags.insert(crate::tags::PATCHED_PACKAGES.into(), label);
    p.image.tags = tags;
    p.rollout.refresh = p.rollout.patch_refresh.clone();
    Ok(p)
}

/// Checks the patch's command line.
pub fn check(cves: &[String]) -> Result<(), Problem> {
    for c in cves {
        if !valid_cve(c) {
            return Err(Problem::new("(command line)", "", format!("--cve {c}: not a CVE id (CVE-2024-3094)")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(packages("openssl, libssl3").unwrap(), ["openssl", "libssl3"]);
        assert!(packages("openssl;rm").is_err() && packages("").is_err() && packages("-x").is_err());
        assert!(valid_cve("CVE-2024-3094") && valid_cve("CVE-2021-44228"));
        assert!(!valid_cve("CVE-24-3094") && !valid_cve("cve-2024-3094") && !valid_cve("CVE-2024-1"));
    }
}
