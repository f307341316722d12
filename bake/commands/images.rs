//! `bake ls` and `bake prune`: the images bake made, what uses each, and removing the old ones.

use clap::Args;
use serde_json::json;

use super::{duration, failed, json, out, problems, runtime, var_inputs, ExitStatus, Global, Output};
use crate::catalog::{Action, Decision, ImageInfo};
use crate::config::{Problems, Project, Secs};

/// Which roles and envs a listing covers (every one by default).
#[derive(Args, Debug)]
pub struct Scope {
    pub role: Option<String>,
    #[arg(long)]
    pub env: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Past bakes, patches and rolls from the shared state (bake.toml [state]): who, from where,
    /// status, image; newest first
    #[arg(long)]
    pub history: bool,
    /// With --history: at most this many records, the newest (1 to 1000)
    #[arg(long, default_value_t = 20, requires = "history", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub last: u16,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// PACKAGE<VERSION: images holding PACKAGE below VERSION (the first fixed version)
    #[arg(value_name = "PACKAGE<VERSION")]
    pub specs: Vec<String>,
    /// The CVE, with --package and --fixed
    #[arg(long, value_name = "CVE-YYYY-NNNN", requires_all = ["package", "fixed"])]
    pub cve: Option<String>,
    /// With --fixed: the package
    #[arg(long, requires = "fixed")]
    pub package: Option<String>,
    /// With --package: the first version that fixes it
    #[arg(long, requires = "package", value_name = "VERSION")]
    pub fixed: Option<String>,
    /// A file of `PACKAGE<VERSION [CVE-ID]` lines (# comments)
    #[arg(long, value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
    /// Only this role's images
    #[arg(long)]
    pub role: Option<String>,
    /// Only this env's images
    #[arg(long)]
    pub env: Option<String>,
    /// Exit 0 (not 1) when nothing is affected though some images could not be audited (no
    /// inventory: made before bake kept them, or kept on another machine)
    #[arg(long)]
    pub ignore_unaudited: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Keep the newest N per role, env and region
    #[arg(long)]
    pub keep: Option<usize>,
    /// Only images older than this
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub older_than: Option<Secs>,
    /// Remove without asking
    #[arg(long)]
    pub yes: bool,
    /// Only show what would be removed
    #[arg(long)]
    pub plan: bool,
    /// Bring back an image prune disabled and has not deregistered yet
    #[arg(long, value_name = "AMI_ID", conflicts_with_all = ["keep", "older_than", "plan"])]
    pub restore: Option<String>,
}

/// Where a listing looks: regions, the parameters bake publishes, each role's `image.keep`.
struct Where {
    regions: Vec<String>,
    parameters: std::collections::BTreeSet<String>,
    /// Workload accounts (rollout.accounts) whose groups and parameters may use the images, each
    /// with the parameters published there.
    accounts: Vec<(crate::config::role::TargetAccount, std::collections::BTreeSet<String>)>,
    keep: std::collections::BTreeMap<(String, String), usize>,
    /// Each role's and env's `image.retire_after`.
    retire_after: std::collections::BTreeMap<(String, String), std::time::Duration>,
}

fn scope(g: &Global, s: &Scope, default_region: Option<String>) -> Result<Where, Problems> {
    let project = Project::new(&g.root);
    let vars = var_inputs(g)?;
    let roles = match &s.role {
        Some(r) => vec![r.to_string()],
        None => project.role_names().map_err(Problems::from)?,
    };
    let mut regions = std::collections::BTreeSet::new();
    let mut parameters = std::collections::BTreeSet::new();
    let mut keep = std::collections::BTreeMap::new();
    let mut retire_after = std::collections::BTreeMap::new();
    let mut accounts: Vec<(crate::config::role::TargetAccount, std::collections::BTreeSet<String>)> = Vec::new();
    if let Some(env) = &s.env {
        let mut known = false;
        for r in &roles {
            known |= project.role(r)?.envs.iter().any(|e| e == env);
        }
        if !known {
            let why = match &s.role {
                Some(r) => format!("roles/{r}.toml has no environment `{}`", crate::error::one_line(env)),
                None => format!("no role has an environment `{}`", crate::error::one_line(env)),
            };
            return Err(crate::config::Problem::new("(command line)", "--env", why).into());
        }
    }
    for r in &roles {
        let rf = project.role(r)?;
        for e in rf.envs.iter().filter(|e| s.env.as_ref().map(|x| x == *e).unwrap_or(true)) {
            let resolved = rf.resolve(e, &vars)?;
            match g.region.clone().or_else(|| resolved.builder.region.clone()).or_else(|| default_region.clone()) {
                Some(region) => {
                    regions.insert(region);
                }
                // Where it builds is where most of its images are: never leave it out silently.
                None => {
                    return Err(rf
                        .problem_at(
                            e,
                            &crate::config::tomlfile::KeyPath::root().key("builder").key("region"),
                            "no region for where it builds: give --region, set builder.region, or configure AWS_REGION",
                        )
                        .into())
                }
            }
            if g.region.is_none() {
                regions.extend(resolved.image.regions.iter().cloned());
            }
            // Each architecture's parameter holds an image in use (here and in its accounts).
            for variant in rf.resolve_all(e, &vars)? {
                parameters.insert(variant.image.ssm_parameter.clone());
                for a in &variant.rollout.accounts {
                    match accounts.iter_mut().find(|(x, _)| x.id == a.id) {
                        Some((_, ps)) => {
                            ps.insert(variant.image.ssm_parameter.clone());
                        }
                        None => accounts.push((a.clone(), [variant.image.ssm_parameter.clone()].into())),
                    }
                }
            }
            if let Some(k) = resolved.image.keep {
                keep.insert((r.clone(), e.clone()), k as usize);
            }
            retire_after.insert((r.clone(), e.clone()), resolved.image.retire_after.as_duration());
        }
    }
    if let Some(r) = &g.region {
        regions = [r.clone()].into();
    }
    Ok(Where { regions: regions.into_iter().collect(), parameters, accounts, keep, retire_after })
}

/// The images bake made in the scope, with what uses each.
fn listed(g: &Global, s: &Scope) -> Result<(tokio::runtime::Runtime, crate::aws::Aws, Where, Vec<ImageInfo>), ExitStatus> {
    let rt = runtime();
    let aws = rt.block_on(crate::aws::Aws::load(&super::connection(g)));
    let w = scope(g, s, aws.default_region()).map_err(|p| problems(&p))?;
    let images = rt.block_on(crate::catalog::list(&aws, &w.regions, s.role.as_deref(), s.env.as_deref(), &w.parameters, &w.accounts)).map_err(failed)?;
    Ok((rt, aws, w, images))
}

/// `bake ls --history`: the records kept in the shared state, newest first.
fn history(g: &Global, a: &LsArgs) -> ExitStatus {
    let rt = runtime();
    match crate::config::state::load(&g.root) {
        Err(p) => return problems(&p),
        Ok(None) => {
            return failed(format!(
                "--history reads the shared state, and this project has no {} with a [state] (README: shared state)",
                crate::config::state::FILE
            ))
        }
        Ok(Some(_)) => {}
    }
    if let Err(code) = super::shared_state(g, &rt) {
        return code;
    }
    let Some(r) = crate::remote::get() else { return failed("the shared state is not connected") };
    let under = match (&a.scope.role, &a.scope.env) {
        (Some(role), Some(env)) => format!("manifests/{role}/{env}/"),
        (Some(role), None) => format!("manifests/{role}/"),
        (None, _) => "manifests/".to_string(),
    };
    if let Some(role) = &a.scope.role {
        if let Err(p) = Project::new(&g.root).role(role) {
            return problems(&p);
        }
    }
    // The newest records by when S3 last wrote them (one listing), and only those are read.
    let records: Result<Vec<serde_json::Value>, crate::error::Error> = rt.block_on(async {
        let mut keys = r.list_written(&under).await?;
        keys.retain(|(key, _)| a.scope.env.is_none() || a.scope.role.is_some() || key.split('/').nth(2) == a.scope.env.as_deref());
        keys.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        let mut out = Vec::new();
        for (key, _) in keys {
            if out.len() >= a.last as usize {
                break;
            }
            if let Some((body, _)) = r.read(&key).await? {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v) => out.push(v),
                    Err(e) => eprintln!("warning: {} is not a record bake wrote ({e}); left out", r.url(&key)),
                }
            }
        }
        Ok(out)
    });
    let mut records = match records {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    // A record still `running` whose process holds no lock any more: its runner died before the
    // bake ended (`bake cleanup ID` finishes it and marks it cleaned).
    if records.iter().any(|v| v["manifest"]["status"] == "running") {
        let held = match rt.block_on(r.held()) {
            Ok(h) => h,
            Err(e) => return failed(e),
        };
        for v in records.iter_mut().filter(|v| v["manifest"]["status"] == "running") {
            let (host, pid) = (v["by"]["host"].as_str().unwrap_or_default().to_string(), v["by"]["pid"].as_u64());
            if !held.iter().any(|l| l.holder.host == host && Some(u64::from(l.holder.pid)) == pid) {
                let id = v["manifest"]["bake_id"].as_str().unwrap_or_default().to_string();
                v["manifest"]["status"] = "unfinished".into();
                v["manifest"]["error"] = format!("its runner stopped before it ended and its lock's lease is over; finish it with: bake cleanup {id}").into();
            }
        }
    }
    let when = |v: &serde_json::Value| v["at"].as_str().unwrap_or_default().to_string();
    records.sort_by_key(|v| std::cmp::Reverse(when(v)));

    match g.output {
        Output::Json => out(&json(&records)),
        Output::Text => {
            if records.is_empty() {
                out("no bake or roll recorded in the shared state");
                return ExitStatus::Success;
            }
            let mut text = format!("{:<28} {:<8} {:<22} {:<13} {:<24} {:<16} {}\n", "WHEN", "KIND", "ROLE/ENV", "STATUS", "IMAGE", "ID", "BY");
            for v in &records {
                let m = &v["manifest"];
                let image = m["ami"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| m["images"][m["region"].as_str().unwrap_or_default()]["ami_id"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let id = m["bake_id"].as_str().or_else(|| m["roll_id"].as_str()).unwrap_or_default();
                text.push_str(&format!(
                    "{:<28} {:<8} {:<22} {:<13} {:<24} {:<16} {}@{} ({})\n",
                    when(v),
                    v["kind"].as_str().unwrap_or_default(),
                    format!("{}/{}", m["role"].as_str().unwrap_or_default(), m["env"].as_str().unwrap_or_default()),
                    m["status"].as_str().unwrap_or_default(),
                    image,
                    id,
                    v["by"]["user"].as_str().unwrap_or_default(),
                    v["by"]["host"].as_str().unwrap_or_default(),
                    v["by"]["folder"].as_str().unwrap_or_default(),
                ));
            }
            out(text.trim_end());
        }
    }
    ExitStatus::Success
}

pub fn ls(g: &Global, a: &LsArgs) -> ExitStatus {
    if a.history {
        return history(g, a);
    }
    let s = &a.scope;
    let images = match listed(g, s) {
        Ok((_, _, _, i)) => i,
        Err(code) => return code,
    };
    match g.output {
        Output::Json => out(&json(&images)),
        Output::Text => {
            if images.is_empty() {
                out("no image made by bake");
                return ExitStatus::Success;
            }
            let mut text = format!(
                "{:<22} {:<12} {:<22} {:>6}  {:<6} {:<9} {:<10} {:<13} {:<22} {:<18} {:<25} {}\n",
                "ROLE/ENV", "REGION", "IMAGE", "AGE", "KIND", "STATE", "PROTECTED", "INVENTORY", "PARENT", "CVE", "DEPRECATED", "USED BY"
            );
            for i in &images {
                let protected = match i.protection.as_str() {
                    p if p.starts_with("enabled") => "yes",
                    p if p.starts_with("disabled after") => "cooldown",
                    _ => "no",
                };
                text.push_str(&format!(
                    "{:<22} {:<12} {:<22} {:>5.1}d  {:<6} {:<9} {:<10} {:<13} {:<22} {:<18} {:<25} {}\n",
                    match &i.arch {
                        Some(a) => format!("{}/{} ({a})", i.role, i.env),
                        None => format!("{}/{}", i.role, i.env),
                    },
                    i.region,
                    i.id,
                    i.age_days,
                    i.kind,
                    i.state,
                    protected,
                    i.inventory.as_deref().map(|d| d.chars().take(12).collect::<String>()).unwrap_or_else(|| "-".into()),
                    i.parent.clone().unwrap_or_else(|| "-".into()),
                    if i.cves.is_empty() { "-".to_string() } else { i.cves.join(",") },
                    i.deprecation_time.clone().unwrap_or_else(|| "-".into()),
                    if i.used_by.is_empty() { "-".to_string() } else { i.used_by.join(", ") },
                ));
            }
            out(&text);
        }
    }
    ExitStatus::Success
}

pub fn prune(g: &Global, a: &PruneArgs) -> ExitStatus {
    if let Some(ami) = &a.restore {
        return restore(g, a, ami);
    }
    let older = a.older_than.map(|s| s.0 as f64 / 86_400.0);
    let (rt, aws, w, images) = match listed(g, &a.scope) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let keep_of = |r: &str, e: &str| a.keep.or_else(|| w.keep.get(&(r.to_string(), e.to_string())).copied()).unwrap_or(3);
    let week = std::time::Duration::from_secs(crate::config::limits::RETIRE_AFTER_DEFAULT);
    let retire_of = |r: &str, e: &str| w.retire_after.get(&(r.to_string(), e.to_string())).copied().unwrap_or(week);
    let decisions = crate::catalog::decide(images, &keep_of, older, &retire_of, std::time::SystemTime::now());
    let doomed: Vec<&Decision> = decisions.iter().filter(|d| d.delete).collect();
    if g.output == Output::Json {
        out(&json(&json!({"decisions": decisions, "removing": !a.plan && a.yes})));
    } else {
        let mut text = String::new();
        for d in &decisions {
            text.push_str(&format!(
                "{} {} {} ({}/{}{}, {:.1} days): {}\n",
                match d.action {
                    Action::Keep => "keep      ",
                    Action::Retire => "retire    ",
                    Action::Deregister => "deregister",
                },
                d.image.id,
                d.image.region,
                d.image.role,
                d.image.env,
                d.image.arch.as_ref().map(|a| format!(" {a}")).unwrap_or_default(),
                d.image.age_days,
                d.why
            ));
        }
        text.push_str(&format!("{} image(s) to retire or deregister, {} kept", doomed.len(), decisions.len() - doomed.len()));
        out(&text);
    }
    if a.plan || doomed.is_empty() {
        return ExitStatus::Success;
    }
    if !a.yes && !confirmed(doomed.len()) {
        return ExitStatus::Success;
    }
    let mut status = ExitStatus::Success;
    let say = |s: String| {
        if !g.quiet && g.output == Output::Text {
            out(&s);
        }
    };
    for d in doomed {
        let i = &d.image;
        let now = d.action == Action::Deregister || retire_of(&i.role, &i.env).is_zero();
        if d.action == Action::Retire {
            if let Err(e) = rt.block_on(crate::catalog::retire(&aws, i)) {
                status = failed(e);
                continue;
            }
            if !now {
                say(format!(
                    "disabled {} in {}: deregistered by a prune after {} (bake prune --restore {} brings it back)",
                    i.id,
                    i.region,
                    crate::config::Secs(retire_of(&i.role, &i.env).as_secs()),
                    i.id
                ));
                continue;
            }
        }
        match rt.block_on(crate::catalog::remove(&aws, i)) {
            Ok(crate::catalog::Removal::Done) => say(format!("removed {} in {} and {} snapshot(s)", i.id, i.region, i.snapshots.len())),
            Ok(crate::catalog::Removal::Protected(until)) => {
                say(format!("disabled {} in {}: protected from deregistration until {until} (AWS's cooldown); a prune after that removes it", i.id, i.region))
            }
            Err(e) => status = failed(e),
        }
    }
    status
}

/// `bake prune --restore AMI`: looks for it in the scope's regions (or --region).
fn restore(g: &Global, a: &PruneArgs, ami: &str) -> ExitStatus {
    if !(ami.starts_with("ami-") && ami.len() <= 21 && ami[4..].bytes().all(|b| b.is_ascii_hexdigit()) && ami.len() > 4) {
        eprintln!("error: --restore `{}` is not an image id (ami- and hex digits)", crate::error::one_line(ami));
        return ExitStatus::Usage;
    }
    let rt = runtime();
    let aws = rt.block_on(crate::aws::Aws::load(&super::connection(g)));
    let w = match scope(g, &a.scope, aws.default_region()) {
        Ok(w) => w,
        Err(p) => return problems(&p),
    };
    for region in &w.regions {
        match rt.block_on(crate::catalog::restore(&aws, region, ami)) {
            Ok(true) => {
                if !g.quiet {
                    out(&format!("restored {ami} in {region}: enabled again; prune leaves it alone for image.retire_after"));
                }
                return ExitStatus::Success;
            }
            Ok(false) => {}
            Err(e) => return failed(e),
        }
    }
    failed(format!("image {ami}: not found among this account's images in {} (give --region)", w.regions.join(", ")))
}

/// Asks on a terminal; elsewhere (CI, a pipe) removes nothing without --yes.
fn confirmed(n: usize) -> bool {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        eprintln!("nothing removed: run again with --yes to remove them");
        return false;
    }
    eprint!("remove {n} image(s) and their snapshots? [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        eprintln!("nothing removed");
        return false;
    }
    true
}

/// What `bake audit` asks, from its command line: every problem names its argument.
fn vulnerabilities(a: &AuditArgs) -> Result<Vec<crate::inventory::Vulnerable>, String> {
    use crate::inventory::Vulnerable;
    let mut out = Vec::new();
    for s in &a.specs {
        out.push(Vulnerable::parse(s)?);
    }
    if let (Some(p), Some(f)) = (&a.package, &a.fixed) {
        let mut v = Vulnerable::parse(&format!("{p}<{f}")).map_err(|e| format!("--package/--fixed: {e}"))?;
        if let Some(c) = &a.cve {
            if !crate::patch::valid_cve(c) {
                return Err(format!("--cve `{}` is not a CVE id (CVE-YYYY-NNNN)", crate::error::one_line(c)));
            }
            v.cve = Some(c.clone());
        }
        out.push(v);
    }
    if let Some(f) = &a.file {
        // At most 16 MiB (a device such as /dev/zero never ends): plenty for advisories.
        const MAX: u64 = 16 << 20;
        let file = std::fs::File::open(f).map_err(|e| format!("{}: cannot read it: {e}", f.display()))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX + 1), &mut text).map_err(|e| format!("{}: cannot read it: {e}", f.display()))?;
        if text.len() as u64 > MAX {
            return Err(format!("{}: more than {} MiB; an advisory file is a list of PACKAGE<VERSION lines", f.display(), MAX >> 20));
        }
        out.extend(Vulnerable::parse_file(&text, &f.display().to_string())?);
    }
    if out.is_empty() {
        return Err("name what to look for: PACKAGE<VERSION, --package P --fixed V [--cve ID], or --file FILE".into());
    }
    Ok(out)
}

/// Lists the images in scope (with what uses them) and audits them.
pub(super) fn audit_report(
    g: &Global,
    rt: &tokio::runtime::Runtime,
    role: Option<String>,
    env: Option<String>,
    vulns: &[crate::inventory::Vulnerable],
) -> Result<crate::audit::Report, ExitStatus> {
    let aws = rt.block_on(crate::aws::Aws::load(&super::connection(g)));
    let s = Scope { role, env };
    let w = scope(g, &s, aws.default_region()).map_err(|p| problems(&p))?;
    let images = rt.block_on(crate::catalog::list(&aws, &w.regions, s.role.as_deref(), s.env.as_deref(), &w.parameters, &w.accounts)).map_err(failed)?;
    rt.block_on(crate::audit::run(&g.root, images, vulns)).map_err(failed)
}

pub fn audit(g: &Global, a: &AuditArgs) -> ExitStatus {
    let vulns = match vulnerabilities(a) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitStatus::Usage;
        }
    };
    let rt = runtime();
    if let Err(code) = super::shared_state(g, &rt) {
        return code;
    }
    let r = match audit_report(g, &rt, a.role.clone(), a.env.clone(), &vulns) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match g.output {
        Output::Json => out(&json(&r)),
        Output::Text => {
            let mut text = String::new();
            if !r.affected.is_empty() {
                text.push_str(&format!("{:<22} {:<12} {:<22} {:<40} {}\n", "ROLE/ENV", "REGION", "IMAGE", "HOLDS", "USED BY"));
            }
            for x in &r.affected {
                let holds: Vec<String> =
                    x.hits.iter().map(|h| format!("{} {} (<{})", h.package, h.version, h.below.split('<').nth(1).unwrap_or_default())).collect();
                text.push_str(&format!(
                    "{:<22} {:<12} {:<22} {:<40} {}\n",
                    format!("{}/{}", x.image.role, x.image.env),
                    x.image.region,
                    x.image.id,
                    holds.join(", "),
                    if x.image.used_by.is_empty() { "-".to_string() } else { x.image.used_by.join(", ") }
                ));
            }
            for u in &r.unknown {
                text.push_str(&format!("unknown: {} in {} ({}/{}): {}\n", u.id, u.region, u.role, u.env, u.why));
            }
            // What was found, once each, a few named.
            let mut found: Vec<&str> = r.affected.iter().flat_map(|a| a.hits.iter().map(|h| h.below.as_str())).collect();
            found.sort();
            found.dedup();
            let named = if found.len() > 5 { format!("{} and {} more", found[..5].join(", "), found.len() - 5) } else { found.join(", ") };
            text.push_str(&format!(
                "{} of {} image(s) hold a package below its fix{}{}",
                r.affected.len(),
                r.checked,
                if found.is_empty() { String::new() } else { format!(" ({named})") },
                if r.unknown.is_empty() { String::new() } else { format!("; {} not audited", r.unknown.len()) }
            ));
            out(&text);
        }
    }
    if !r.affected.is_empty() {
        ExitStatus::Affected
    } else if !r.unknown.is_empty() && !a.ignore_unaudited {
        eprintln!(
            "error: nothing affected among the audited images, but {} image(s) could not be audited (first: {} in {}: {}); --ignore-unaudited accepts that",
            r.unknown.len(),
            r.unknown[0].id,
            r.unknown[0].region,
            r.unknown[0].why
        );
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    }
}
