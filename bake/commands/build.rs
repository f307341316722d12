//! `bake build` and `bake patch`: plan, bake (each role under its lock), roll when asked, report.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{failed, json, out, problems, runtime, var_inputs, write_manifest, ExitStatus, Global, Output};
use crate::config::{Problem, Project};
use crate::manifest::{Manifest, Status};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Remove everything the failed bake made (default)
    Cleanup,
    /// Keep the builder and everything else for debugging; `bake cleanup ID` removes it later
    Abort,
}

/// What build and patch share.
#[derive(Args, Debug)]
pub struct BakeOptions {
    /// What to do with a failed bake's resources
    #[arg(long, value_enum, default_value_t = OnError::Cleanup)]
    pub on_error: OnError,
    /// Bake even when an image made from the same inputs exists
    #[arg(long)]
    pub force: bool,
    /// Also write the manifest (JSON) to this file
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Then roll the role's Auto Scaling groups onto the new image (see `bake roll`; a patch with the role's patch preferences)
    #[arg(long)]
    pub roll: bool,
    /// When this role and env is being baked here already, stop (exit 1) instead of waiting for it
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Roles to bake
    pub roles: Vec<String>,
    #[arg(long)]
    pub env: String,
    /// Every role that has ENV
    #[arg(long, conflicts_with = "roles")]
    pub all: bool,
    /// How many roles bake at once (1 to 256)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    #[command(flatten)]
    pub bake: BakeOptions,
}

#[derive(Args, Debug)]
pub struct PatchArgs {
    /// The role to patch
    #[arg(required_unless_present = "affected", conflicts_with = "affected")]
    pub role: Option<String>,
    #[arg(long, required_unless_present = "affected", conflicts_with = "affected")]
    pub env: Option<String>,
    /// Patch every role and env with an image in use that holds PACKAGE below VERSION (what `bake
    /// audit PACKAGE<VERSION` finds), upgrading PACKAGE, each from its newest image, in parallel
    #[arg(long, value_name = "PACKAGE<VERSION", conflicts_with_all = ["packages", "upgrade_all", "script", "from", "arch"])]
    pub affected: Option<String>,
    /// With --affected: how many patches run at once (1 to 64)
    #[arg(long, default_value_t = 4, requires = "affected", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Upgrade exactly these packages (comma-separated)
    #[arg(long, value_name = "PKG,PKG")]
    pub packages: Option<String>,
    /// Upgrade every package
    #[arg(long)]
    pub upgrade_all: bool,
    /// Run this script instead of the security-patch cookbook
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// The CVEs this patch fixes (repeatable); tagged on the image
    #[arg(long = "cve", value_name = "CVE-YYYY-NNNN")]
    pub cves: Vec<String>,
    /// Start from this image (default: the newest one bake made for the role and env)
    #[arg(long, value_name = "AMI_ID")]
    pub from: Option<String>,
    /// Which architecture to patch, for a role that bakes several (x86_64, arm64)
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    #[command(flatten)]
    pub bake: BakeOptions,
}

fn request(g: &Global, o: &BakeOptions, roles: Vec<String>, all: bool, env: &str, jobs: usize) -> crate::build::Request {
    crate::build::Request {
        roles,
        all,
        env: env.to_string(),
        force: o.force,
        keep_on_error: o.on_error == OnError::Abort,
        jobs,
        region: g.region.clone(),
        roll: o.roll,
        patch: None,
        wait_for_lock: !o.no_wait,
        fixes: Vec::new(),
    }
}

pub fn build(g: &Global, a: &BuildArgs) -> ExitStatus {
    if a.roles.is_empty() && !a.all {
        problems(&Problem::new("(command line)", "", "name the roles to bake, or --all").into());
        return ExitStatus::Usage;
    }
    let req = request(g, &a.bake, a.roles.clone(), a.all, &a.env, a.jobs as usize);
    let vars = match var_inputs(g) {
        Ok(v) => v,
        Err(p) => return problems(&p),
    };
    let project = Project::new(&g.root);
    let (plans, skipped) = match crate::build::plans(&project, &req, &vars) {
        Ok(p) => p,
        Err(p) => return problems(&p),
    };
    let progress = crate::progress::Progress::new(g.quiet, g.output == Output::Json);
    for s in skipped {
        if !g.quiet {
            eprintln!("note: role {s} has no environment {}: skipped", req.env);
        }
    }
    let rt = runtime();
    if let Err(code) = super::shared_state(g, &rt) {
        return code;
    }
    let manifests = rt.block_on(crate::build::run(&g.root, &super::connection(g), req, plans, progress));
    rt.block_on(record(g, &manifests));
    report(g, &manifests, a.bake.manifest.as_deref())
}

/// With shared state, each bake's manifest is kept there (`bake ls --history`).
async fn record(g: &Global, manifests: &[crate::manifest::Manifest]) {
    let Some(r) = crate::remote::get() else { return };
    for m in manifests.iter().filter(|m| !m.bake_id.is_empty()) {
        let rec = serde_json::json!({"kind": m.kind, "at": m.started_at, "by": super::who(g), "manifest": m});
        if let Err(e) = r.put_manifest(&m.role, &m.env, &m.bake_id, &rec).await {
            eprintln!("warning: the record of bake {} was not kept in the shared state: {e}", m.bake_id);
        }
    }
}

pub fn patch(g: &Global, a: &PatchArgs) -> ExitStatus {
    if let Some(spec) = &a.affected {
        return patch_affected(g, a, spec);
    }
    let (Some(role), Some(env)) = (&a.role, &a.env) else {
        eprintln!("error: name the role and --env to patch, or give --affected PACKAGE<VERSION");
        return ExitStatus::Usage;
    };
    let what = if let Some(p) = &a.packages {
        match crate::patch::packages(p) {
            Ok(v) => crate::patch::What::Packages(v),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitStatus::Usage;
            }
        }
    } else if a.upgrade_all {
        crate::patch::What::All
    } else if let Some(f) = &a.script {
        match std::fs::read_to_string(f) {
            Ok(c) => crate::patch::What::Script(f.display().to_string(), c),
            Err(e) => return failed(format!("{}: cannot read the patch script: {e}", f.display())),
        }
    } else {
        eprintln!("error: give --packages, --upgrade-all or --script");
        return ExitStatus::Usage;
    };
    if let Err(p) = crate::patch::check(&a.cves) {
        problems(&p.into());
        return ExitStatus::Usage;
    }
    let project = Project::new(&g.root);
    let vars = match var_inputs(g) {
        Ok(v) => v,
        Err(p) => return problems(&p),
    };
    // Bad configuration is reported before anything reaches AWS.
    let plans = match project.plans(role, env, &vars) {
        Ok(p) => p,
        Err(p) => return problems(&p),
    };
    let arches: Vec<String> = plans.iter().filter_map(|p| p.arch.clone()).collect();
    let arch = match (&a.arch, plans.len() > 1) {
        (None, true) => {
            eprintln!("error: roles/{role}.toml bakes {}: give --arch (each architecture is patched from its own image)", arches.join(", "));
            return ExitStatus::Usage;
        }
        (Some(x), true) if !arches.contains(x) => {
            eprintln!("error: roles/{role}.toml bakes {}, not {x}", arches.join(", "));
            return ExitStatus::Usage;
        }
        (Some(x), false) => {
            eprintln!("error: --arch {x}: roles/{role}.toml bakes one architecture ([architectures] names several)");
            return ExitStatus::Usage;
        }
        (x, _) => x.clone(),
    };
    let Some(base) = plans.into_iter().find(|p| arch.is_none() || p.arch == arch) else {
        return failed(format!("roles/{role}.toml has no plan for that architecture"));
    };
    let progress = crate::progress::Progress::new(g.quiet, g.output == Output::Json);
    let rt = runtime();
    if let Err(code) = super::shared_state(g, &rt) {
        return code;
    }
    let conn = super::connection(g);
    let parent = match &a.from {
        Some(a) => a.clone(),
        None => match rt.block_on(newest_image(g, &conn, &base, role, env, arch.as_deref())) {
            Ok(a) => a,
            Err(e) => return failed(e),
        },
    };
    let plan = match crate::patch::plan(&project, role, env, arch.as_deref(), &vars, &what, &parent, &a.cves) {
        Ok(p) => p,
        Err(p) => return problems(&p),
    };
    let mut req = request(g, &a.bake, vec![role.clone()], false, env, 1);
    req.patch = Some(crate::manifest::PatchRecord { parent, cves: a.cves.clone(), packages: what.label().split(',').map(str::to_string).collect() });
    let manifests = rt.block_on(crate::build::run(&g.root, &conn, req, vec![plan], progress));
    rt.block_on(record(g, &manifests));
    report(g, &manifests, a.bake.manifest.as_deref())
}

/// `bake patch --affected PACKAGE<VERSION`: audit, then patch every role and env whose image in
/// use is affected, each from its newest image, in parallel; each new image must no longer hold
/// the package below the version before it rolls. One manifest: the audit and every patch.
fn patch_affected(g: &Global, a: &PatchArgs, spec: &str) -> ExitStatus {
    let vuln = match crate::inventory::Vulnerable::parse(spec) {
        Ok(mut v) => {
            v.cve = a.cves.first().cloned();
            v
        }
        Err(e) => {
            eprintln!("error: --affected {e}");
            return ExitStatus::Usage;
        }
    };
    if let Err(p) = crate::patch::check(&a.cves) {
        problems(&p.into());
        return ExitStatus::Usage;
    }
    let project = Project::new(&g.root);
    let vars = match var_inputs(g) {
        Ok(v) => v,
        Err(p) => return problems(&p),
    };
    let rt = runtime();
    if let Err(code) = super::shared_state(g, &rt) {
        return code;
    }
    let report_of = match super::images::audit_report(g, &rt, None, None, std::slice::from_ref(&vuln)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    for u in &report_of.unknown {
        eprintln!("warning: {} in {} ({}/{}) is not audited: {}", u.id, u.region, u.role, u.env, u.why);
    }
    let targets = crate::audit::in_use(&report_of);
    // An image in use that could not be audited may well hold it: never "nothing to patch".
    let unaudited: Vec<String> = report_of
        .unknown
        .iter()
        .filter(|u| crate::audit::running(&u.used_by))
        .map(|u| format!("{} in {} ({}/{}: {})", u.id, u.region, u.role, u.env, u.why))
        .collect();
    if targets.is_empty() && !unaudited.is_empty() {
        return failed(format!(
            "{} image(s) in use could not be audited, so whether they hold {vuln} is unknown: {}; nothing was patched",
            unaudited.len(),
            unaudited.join("; ")
        ));
    }
    if targets.is_empty() {
        if g.output == Output::Json {
            out(&json(&serde_json::json!({"audit": report_of, "patches": []})));
        } else {
            out(&format!("no image in use holds {vuln}: nothing to patch ({} image(s) checked)", report_of.checked));
        }
        return ExitStatus::Success;
    }
    let what = crate::patch::What::Packages(vec![vuln.package.clone()]);
    let conn = super::connection(g);
    let mut plans = Vec::new();
    for (role, env, arch) in &targets {
        let base = match project.plans(role, env, &vars) {
            Ok(p) => p.into_iter().find(|p| arch.is_none() || p.arch == *arch),
            Err(p) => return problems(&p),
        };
        let Some(base) = base else { return failed(format!("roles/{role}.toml has no plan for {env}")) };
        let parent = match rt.block_on(newest_image(g, &conn, &base, role, env, arch.as_deref())) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        match crate::patch::plan(&project, role, env, arch.as_deref(), &vars, &what, &parent, &a.cves) {
            Ok(p) => plans.push(p),
            Err(p) => return problems(&p),
        }
    }
    if !g.quiet {
        let names: Vec<String> = targets.iter().map(|(r, e, a)| format!("{r}/{e}{}", a.as_ref().map(|a| format!(" ({a})")).unwrap_or_default())).collect();
        eprintln!("patching {} for {vuln}: {}", names.len(), names.join(", "));
    }
    let progress = crate::progress::Progress::new(g.quiet, g.output == Output::Json);
    let mut req = request(g, &a.bake, targets.iter().map(|t| t.0.clone()).collect(), false, "", a.jobs as usize);
    req.patch = Some(crate::manifest::PatchRecord { parent: String::new(), cves: a.cves.clone(), packages: vec![vuln.package.clone()] });
    req.fixes = vec![vuln];
    let manifests = rt.block_on(crate::build::run(&g.root, &conn, req, plans, progress));
    rt.block_on(record(g, &manifests));
    let whole = serde_json::json!({"audit": report_of, "patches": manifests});
    write_manifest(&json(&whole), a.bake.manifest.as_deref());
    if g.output == Output::Json {
        out(&json(&whole));
        return conclude(&manifests);
    }
    report(g, &manifests, None)
}

/// The newest image bake made for `role`/`env` (and `arch`) where it builds: what a patch starts
/// from.
async fn newest_image(
    g: &Global,
    conn: &crate::aws::Connection,
    base: &crate::plan::Plan,
    role: &str,
    env: &str,
    arch: Option<&str>,
) -> crate::error::Result<String> {
    let aws = crate::aws::Aws::load(conn).await;
    match g.region.clone().or_else(|| base.builder.spec.region.clone()).or_else(|| aws.default_region()) {
        Some(region) => crate::roll::newest_image_of(&aws.clients(&region), role, env, arch).await,
        None => Err(crate::error::Error::Other(format!("{role}/{env}: no region: give --region, set builder.region in the role, or configure AWS_REGION"))),
    }
}

fn report(g: &Global, manifests: &[Manifest], manifest_file: Option<&std::path::Path>) -> ExitStatus {
    let text = if manifests.len() == 1 { json(&manifests[0]) } else { json(&manifests) };
    write_manifest(&text, manifest_file);
    match g.output {
        Output::Json => out(&text),
        Output::Text => {
            let mut text = String::new();
            for m in manifests {
                let images: Vec<String> = m.images.iter().map(|(r, i)| format!("{} in {r}", i.ami_id)).collect();
                let env = match &m.arch {
                    Some(a) => format!("{} ({a})", m.env),
                    None => m.env.clone(),
                };
                let m = &crate::manifest::Manifest { env, ..m.clone() };
                match m.status {
                    Status::Succeeded => {
                        text.push_str(&format!("{}/{}: baked {} (bake {}, {:.0}s)\n", m.role, m.env, images.join(", "), m.bake_id, m.duration_secs))
                    }
                    Status::Reused => text.push_str(&format!("{}/{}: unchanged, {}\n", m.role, m.env, images.join(", "))),
                    Status::Redistributed => {
                        text.push_str(&format!("{}/{}: unchanged, redistributed {} (bake {})\n", m.role, m.env, images.join(", "), m.bake_id))
                    }
                    _ => {}
                }
            }
            if !text.is_empty() {
                out(&text);
            }
        }
    }
    conclude(manifests)
}

/// Each failure and leftover on stderr, and the exit status of the whole.
fn conclude(manifests: &[Manifest]) -> ExitStatus {
    for m in manifests {
        if m.status.is_failure() {
            let arch = m.arch.as_ref().map(|a| format!(" ({a})")).unwrap_or_default();
            eprintln!("error: {}/{}{arch}: {}", m.role, m.env, m.error.clone().unwrap_or_else(|| m.status.to_string()));
        }
        for l in &m.leftovers {
            eprintln!("  left: {l}");
        }
    }
    if manifests.iter().any(|m| m.status == Status::Interrupted) {
        ExitStatus::Interrupted
    } else if manifests.iter().any(|m| m.status.is_failure()) {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    }
}
