//! Runs a parsed command line: reads the edges (environment, var files), calls the library,
//! prints results, and maps failures to exit codes.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use crate::cli::{Cli, Command, Global, OnError, Output, PolicyKind};
use crate::config::{Problem, Problems, Project, VarInputs};

pub fn init_tracing(g: &Global) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "error,bake=warn",
        (false, 1) => "bake=debug,info",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAKE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// Variables from the environment, var files and flags.
pub fn var_inputs(g: &Global) -> Result<VarInputs, Problems> {
    let mut problems = Problems::default();
    let mut inputs = VarInputs { env: VarInputs::from_env(std::env::vars()), ..Default::default() };
    for f in &g.var_files {
        match VarInputs::read_file(&g.root, f) {
            Ok(m) => inputs.files.push((f.clone(), m)),
            Err(p) => problems.push(p),
        }
    }
    for v in &g.vars {
        match VarInputs::parse_flag(v) {
            Ok(kv) => inputs.flags.push(kv),
            Err(e) => problems.push(Problem::new("(command line)", "", e)),
        }
    }
    problems.into_result(inputs)
}

fn print_problems(problems: &Problems) {
    let mut err = std::io::stderr().lock();
    for p in dedup(problems) {
        let _ = writeln!(err, "error: {p}");
    }
}

fn dedup(problems: &Problems) -> Vec<&Problem> {
    let mut seen = BTreeSet::new();
    problems.iter().filter(|p| seen.insert(p.to_string())).collect()
}

fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = o.write_all(b"\n");
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let g = cli.global.clone();
    // Every command but cleanup reads the project.
    if !matches!(cli.command, Command::Cleanup { .. }) {
        if !g.root.is_dir() {
            eprintln!("error: --root {}: no such folder (the project folder holds roles/, cookbooks/ and policies/)", g.root.display());
            return ExitCode::from(2);
        }
        if !g.root.join("roles").exists() {
            eprintln!("error: {} is not a bake project: it has no roles/ folder (run bake in the project, or give --root or BAKE_ROOT)", g.root.display());
            return ExitCode::from(2);
        }
    }
    if let Some(why) = g.region.as_deref().and_then(crate::config::limits::region_problem) {
        eprintln!("error: --region: {why}");
        return ExitCode::from(2);
    }
    let talks_to_aws = matches!(
        cli.command,
        Command::Ls { .. }
            | Command::Prune { .. }
            | Command::Patch { .. }
            | Command::Roll { .. }
            | Command::Build { .. }
            | Command::Cleanup { .. }
            | Command::Bootstrap
    );
    if g.region.is_none() && talks_to_aws {
        if let Some((r, why)) = configured_region(&g).and_then(|r| crate::config::limits::region_problem(&r).map(|w| (r, w))) {
            let from = match &g.profile {
                Some(p) => format!("profile {p}, AWS_REGION or AWS_DEFAULT_REGION"),
                None => "AWS_REGION, AWS_DEFAULT_REGION or the default profile".to_string(),
            };
            eprintln!("error: region `{r}` (from {from}): {why}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Validate { roles } => return validate(&g, &roles),
        Command::Plan { role, env } => plan(&g, &role, &env),
        Command::Render { role, env, step } => render(&g, &role, &env, step.as_deref()),
        Command::Policy { kind, role, env, account } => policy(&g, kind, role.as_deref(), env.as_deref(), account.as_deref()),
        Command::Ls { role, env } => return ls(&g, role.as_deref(), env.as_deref()),
        Command::Prune { role, env, keep, older_than, yes, plan } => return prune(&g, role.as_deref(), env.as_deref(), keep, older_than.as_deref(), yes, plan),
        Command::Patch { role, env, packages, upgrade_all, script, cves, from, roll, force, on_error, manifest, no_wait } => {
            return patch(&g, &role, &env, packages, upgrade_all, script, cves, from, roll, force, on_error == OnError::Abort, manifest.as_deref(), no_wait);
        }
        Command::Roll { role, env, ami, plan, rollback, migrate_to_launch_template, wait_in_progress, replace_in_progress, timeout, manifest } => {
            let in_progress = if wait_in_progress {
                crate::roll::InProgress::Wait
            } else if replace_in_progress {
                crate::roll::InProgress::Replace
            } else {
                crate::roll::InProgress::Fail
            };
            return roll(&g, &role, &env, ami, plan, rollback, migrate_to_launch_template, in_progress, &timeout, manifest.as_deref());
        }
        Command::Build { roles, env, all, on_error, force, manifest, jobs, roll, no_wait } => {
            let req = crate::build::Request {
                roles,
                all,
                env,
                force,
                keep_on_error: on_error == OnError::Abort,
                jobs,
                region: g.region.clone(),
                roll,
                patch: None,
                wait_for_lock: !no_wait,
            };
            return build(&g, req, manifest.as_deref());
        }
        Command::Cleanup { bake_id, orphans, older_than, yes } => return cleanup(&g, bake_id.as_deref(), orphans, &older_than, yes),
        Command::Bootstrap => return bootstrap(&g),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(p) => {
            print_problems(&p);
            ExitCode::from(1)
        }
    }
}

fn plan(g: &Global, role: &str, env: &str) -> Result<(), Problems> {
    let vars = var_inputs(g)?;
    let plan = Project::new(&g.root).plan(role, env, &vars)?;
    match g.output {
        Output::Json => out(&serde_json::to_string_pretty(&plan).unwrap_or_default()),
        Output::Text => out(&plan.to_string()),
    }
    Ok(())
}

fn render(g: &Global, role: &str, env: &str, step: Option<&str>) -> Result<(), Problems> {
    let vars = var_inputs(g)?;
    let plan = Project::new(&g.root).plan(role, env, &vars)?;
    if let Some(id) = step {
        let Some(s) = plan.steps.iter().find(|s| s.id() == id) else {
            let ids: Vec<String> = plan.steps.iter().map(|s| s.id()).collect();
            return Err(Problem::new(format!("roles/{role}.toml"), "", format!("no step `{id}` in this run list (steps: {})", ids.join(", "))).into());
        };
        match g.output {
            Output::Json => out(&serde_json::to_string_pretty(&json!({"step": s.id(), "sha256": s.sha256, "script": s.script})).unwrap_or_default()),
            Output::Text => out(&s.script),
        }
        return Ok(());
    }
    match g.output {
        Output::Json => {
            let v: Vec<_> = plan.steps.iter().map(|s| json!({"step": s.id(), "sha256": s.sha256, "script": s.script})).collect();
            out(&serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Text => {
            let mut text = String::new();
            for s in &plan.steps {
                text.push_str(&format!("##### {} (sha256 {})\n{}\n", s.id(), s.sha256, s.script));
            }
            out(&text);
        }
    }
    Ok(())
}

fn policy(g: &Global, kind: PolicyKind, role: Option<&str>, env: Option<&str>, account: Option<&str>) -> Result<(), Problems> {
    let project = Project::new(&g.root);
    let vars = var_inputs(g)?;
    let doc = match kind {
        PolicyKind::Builder => {
            let (Some(role), Some(env)) = (role, env) else {
                return Err(Problem::new("(command line)", "", "bake policy builder needs --role ROLE --env ENV").into());
            };
            let plan = project.plan(role, env, &vars)?;
            match plan.builder.inline_policy {
                Some(doc) => doc,
                None => {
                    // IAM refuses a policy without statements: there is nothing to print.
                    eprintln!("{role}/{env} needs no builder policy: its builder gets only {}", crate::plan::SSM_CORE_POLICY);
                    return Ok(());
                }
            }
        }
        PolicyKind::Operator | PolicyKind::Roller => {
            let ctx = crate::config::policy::operator_context(&project, role, env, account, &vars)?;
            let policies = project.policies()?;
            let name = if kind == PolicyKind::Operator { "operator" } else { "roller" };
            policies.render(name, &ctx).map_err(Problems::from)?.unwrap_or_default()
        }
        PolicyKind::Boundary => {
            if role.is_some() {
                return Err(Problem::new("(command line)", "", "the boundary covers every role: bake policy boundary takes no --role").into());
            }
            boundary_document(&project, account, &vars)?
        }
    };
    out(&serde_json::to_string_pretty(&doc).unwrap_or_default());
    Ok(())
}

/// The boundary as `bake bootstrap` creates it.
fn boundary_document(project: &Project, account: Option<&str>, vars: &VarInputs) -> Result<serde_json::Value, Problems> {
    let ctx = crate::config::policy::boundary_context(project, account, vars)?;
    let policies = project.policies()?;
    Ok(policies.render("boundary", &ctx).map_err(Problems::from)?.unwrap_or_default())
}

fn bootstrap(g: &Global) -> ExitCode {
    let doc = match var_inputs(g).and_then(|v| boundary_document(&Project::new(&g.root), None, &v)) {
        Ok(d) => d,
        Err(p) => {
            print_problems(&p);
            return ExitCode::from(1);
        }
    };
    let rt = runtime();
    let r = rt.block_on(async {
        let aws = crate::aws::Aws::load(&connection(g)).await;
        let Some(region) = aws.default_region() else {
            return Err(crate::error::Error::Other("no region: give --region or configure AWS_REGION".into()));
        };
        crate::bootstrap::run(&aws, &region, &doc).await
    });
    match r {
        Ok(o) => {
            use crate::bootstrap::Outcome;
            let (what, arn) = match &o {
                Outcome::Created(a) => ("created", a),
                Outcome::Updated(a) => ("updated", a),
                Outcome::Unchanged(a) => ("unchanged", a),
            };
            match g.output {
                Output::Json => out(&serde_json::to_string_pretty(&json!({"boundary": arn, "status": what})).unwrap_or_default()),
                Output::Text => out(&format!("permissions boundary {arn}: {what}")),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn validate(g: &Global, only: &[String]) -> ExitCode {
    let report = match var_inputs(g) {
        Ok(vars) => crate::validate::run(&Project::new(&g.root), only, &vars),
        Err(p) => crate::validate::Report { problems: p.0, ..Default::default() },
    };
    match g.output {
        Output::Json => out(&serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()),
        Output::Text => {
            let mut text = String::new();
            for p in &report.problems {
                text.push_str(&format!("{p}\n"));
            }
            if report.problems.is_empty() {
                text.push_str(&report.summary());
            } else {
                text.push_str(&format!("{} problem(s) found", report.problems.len()));
            }
            out(&text);
        }
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the async runtime")
    // ok: no runtime, no bake
}

/// The region the environment or the shared config names (not instance metadata), as the SDK
/// will read it.
fn configured_region(g: &Global) -> Option<String> {
    use aws_config::meta::region::ProvideRegion;
    runtime().block_on(async {
        let from_env = aws_config::environment::region::EnvironmentVariableRegionProvider::new().region().await;
        if let Some(r) = from_env {
            return Some(r.to_string());
        }
        let mut profile = aws_config::profile::ProfileFileRegionProvider::builder();
        if let Some(p) = &g.profile {
            profile = profile.profile_name(p);
        }
        profile.build().region().await.map(|r| r.to_string())
    })
}

fn connection(g: &Global) -> crate::aws::Connection {
    crate::aws::Connection { region: g.region.clone(), profile: g.profile.clone(), endpoint_url: g.endpoint_url.clone() }
}

fn build(g: &Global, req: crate::build::Request, manifest_file: Option<&std::path::Path>) -> ExitCode {
    if req.roles.is_empty() && !req.all {
        print_problems(&Problem::new("(command line)", "", "name the roles to bake, or --all").into());
        return ExitCode::from(2);
    }
    let vars = match var_inputs(g) {
        Ok(v) => v,
        Err(p) => {
            print_problems(&p);
            return ExitCode::from(1);
        }
    };
    let project = Project::new(&g.root);
    let (plans, skipped) = match crate::build::plans(&project, &req, &vars) {
        Ok(p) => p,
        Err(p) => {
            print_problems(&p);
            return ExitCode::from(1);
        }
    };
    let progress = crate::progress::Progress::new(g.quiet, g.output == Output::Json);
    for s in skipped {
        if !g.quiet {
            eprintln!("note: role {s} has no environment {}: skipped", req.env);
        }
    }
    let manifests = runtime().block_on(crate::build::run(&g.root, &connection(g), req, plans, progress));
    report_builds(g, &manifests, manifest_file)
}

/// `--manifest FILE`: the same JSON `--output json` prints, for CI to pick up.
fn write_manifest(json: &str, manifest_file: Option<&std::path::Path>) {
    if let Some(f) = manifest_file {
        if let Err(e) = std::fs::write(f, format!("{json}\n")) {
            eprintln!("error: cannot write the manifest {}: {e}", f.display());
        }
    }
}

fn report_builds(g: &Global, manifests: &[crate::manifest::Manifest], manifest_file: Option<&std::path::Path>) -> ExitCode {
    let json = if manifests.len() == 1 { serde_json::to_string_pretty(&manifests[0]) } else { serde_json::to_string_pretty(&manifests) }.unwrap_or_default();
    write_manifest(&json, manifest_file);
    match g.output {
        Output::Json => out(&json),
        Output::Text => {
            let mut text = String::new();
            for m in manifests {
                let images: Vec<String> = m.images.iter().map(|(r, i)| format!("{} in {r}", i.ami_id)).collect();
                match m.status.as_str() {
                    "succeeded" => text.push_str(&format!("{}/{}: baked {} (bake {}, {:.0}s)\n", m.role, m.env, images.join(", "), m.bake_id, m.duration_secs)),
                    "reused" => text.push_str(&format!("{}/{}: unchanged, {}\n", m.role, m.env, images.join(", "))),
                    "redistributed" => text.push_str(&format!("{}/{}: unchanged, redistributed {} (bake {})\n", m.role, m.env, images.join(", "), m.bake_id)),
                    _ => {}
                }
            }
            if !text.is_empty() {
                out(&text);
            }
        }
    }
    for m in manifests {
        if m.status == "failed" || m.status == "interrupted" || m.status == "leftovers" {
            eprintln!("error: {}/{}: {}", m.role, m.env, m.error.clone().unwrap_or_else(|| m.status.clone()));
        }
        for l in &m.leftovers {
            eprintln!("  left: {l}");
        }
    }
    if manifests.iter().any(|m| m.status == "interrupted") {
        ExitCode::from(130)
    } else if manifests.iter().any(|m| m.status == "failed" || m.status == "leftovers") {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn cleanup(g: &Global, bake_id: Option<&str>, orphans: bool, older_than: &str, yes: bool) -> ExitCode {
    let older = match crate::config::duration::parse(older_than) {
        Ok(s) => std::time::Duration::from_secs(s),
        Err(e) => {
            eprintln!("error: --older-than: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = runtime();
    let aws = rt.block_on(crate::aws::Aws::load(&connection(g)));
    if orphans {
        let regions = match &g.region {
            Some(r) => vec![r.clone()],
            None => match rt.block_on(crate::sweep::all_regions(&aws)) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            },
        };
        let sweep = match rt.block_on(crate::sweep::find_orphans(&aws, &g.root, &regions, older)) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let found = sweep.orphans;
        if g.output == Output::Json {
            let v: Vec<_> = found.iter().map(|o| json!({"type": o.resource.kind, "id": o.resource.id, "region": o.resource.region, "bake_id": o.bake_id, "age_secs": o.age.map(|a| a.as_secs())})).collect();
            let skipped: Vec<_> = sweep.skipped.iter().map(|(r, why)| json!({"type": r.kind, "id": r.id, "region": r.region, "why": why})).collect();
            out(&serde_json::to_string_pretty(&json!({"orphans": v, "skipped": skipped, "removed": yes})).unwrap_or_default());
        } else {
            let mut text = String::new();
            for (r, why) in &sweep.skipped {
                text.push_str(&format!("skipped {r}: {why}\n"));
            }
            if found.is_empty() {
                text.push_str(&format!("no orphans older than {older_than}"));
            }
            for o in &found {
                text.push_str(&format!("{} (bake {})\n", o.resource, o.bake_id));
            }
            out(&text);
        }
        if found.is_empty() {
            return ExitCode::SUCCESS;
        }
        if !yes {
            if g.output == Output::Text {
                out(&format!("{} orphan(s); run again with --yes to remove them", found.len()));
            }
            return ExitCode::SUCCESS;
        }
        let errors = rt.block_on(crate::sweep::remove_orphans(&aws, &g.root, found));
        for e in &errors {
            eprintln!("error: {e}");
        }
        return if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    let Some(id) = bake_id.and_then(crate::journal::BakeId::parse) else {
        eprintln!("error: {} is not a bake id (b- and 12 hex digits)", bake_id.unwrap_or(""));
        return ExitCode::from(2);
    };
    let extra: Vec<String> = g.region.iter().cloned().collect();
    match rt.block_on(crate::sweep::replay(&aws, &g.root, &id, &extra)) {
        Ok(o) if !o.journal && o.removed.is_empty() && o.errors.is_empty() => {
            eprintln!(
                "error: bake {id}: no journal in {} and nothing tagged with it in {}: nothing to clean up (is this the project folder and the region the bake ran in?)",
                crate::journal::journal_dir(&g.root).display(),
                if o.regions.is_empty() { "any region (none known: give --region)".to_string() } else { o.regions.join(", ") }
            );
            ExitCode::from(1)
        }
        Ok(o) => {
            if !g.quiet {
                let mut text = String::new();
                for r in &o.removed {
                    text.push_str(&format!("removed {r}\n"));
                }
                text.push_str(&format!("bake {id}: {} resource(s) handled", o.removed.len()));
                out(&text);
            }
            for e in &o.errors {
                eprintln!("error: {e}");
            }
            if o.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn roll(
    g: &Global,
    role: &str,
    env: &str,
    ami: Option<String>,
    plan_only: bool,
    rollback: bool,
    migrate: bool,
    in_progress: crate::roll::InProgress,
    timeout: &str,
    manifest_file: Option<&std::path::Path>,
) -> ExitCode {
    let timeout = match crate::config::duration::parse(timeout) {
        Ok(s) if s > crate::config::limits::WAIT_MAX => {
            eprintln!("error: --timeout: {} is more than the week bake waits for anything", crate::config::Secs(s));
            return ExitCode::from(2);
        }
        Ok(0) => {
            eprintln!("error: --timeout: must be longer than 0s");
            return ExitCode::from(2);
        }
        Ok(s) => std::time::Duration::from_secs(s),
        Err(e) => {
            eprintln!("error: --timeout: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = match var_inputs(g).and_then(|v| Project::new(&g.root).plan(role, env, &v)) {
        Ok(p) => p,
        Err(p) => {
            print_problems(&p);
            return ExitCode::from(1);
        }
    };
    let req = crate::roll::Request { ami, plan_only, rollback, migrate, in_progress, timeout, region: g.region.clone(), patch: false };
    let progress = crate::progress::Progress::new(g.quiet, g.output == Output::Json);
    let m = runtime().block_on(async {
        let aws = crate::aws::Aws::load(&connection(g)).await;
        let cancel = crate::signals::watch(std::sync::Arc::default());
        crate::roll::run(&aws, &plan, &req, progress, cancel).await
    });
    finish_roll(g, &m, manifest_file)
}

fn finish_roll(g: &Global, m: &crate::manifest::RollManifest, manifest_file: Option<&std::path::Path>) -> ExitCode {
    let json = serde_json::to_string_pretty(m).unwrap_or_default();
    write_manifest(&json, manifest_file);
    match g.output {
        Output::Json => out(&json),
        Output::Text => {
            if m.status != "planned" {
                let mut text = String::new();
                for gr in &m.groups {
                    let now = match gr.running.len() {
                        0 if gr.final_image.is_empty() || gr.final_image == "unknown" => "now unknown".to_string(),
                        0 => format!("no instances; configured with {}", gr.final_image),
                        1 => format!("now on {}", gr.final_image),
                        _ => format!("now mixed: {}", gr.running.iter().map(|(i, n)| format!("{i} ×{n}")).collect::<Vec<_>>().join(", ")),
                    };
                    text.push_str(&format!("{}{}: {} ({now})\n", gr.name, if gr.canary { " [canary]" } else { "" }, gr.outcome));
                }
                if !text.is_empty() {
                    out(&text);
                }
            }
        }
    }
    if let Some(e) = &m.error {
        eprintln!("error: roll of {}/{}: {e}", m.role, m.env);
    }
    for l in &m.leftovers {
        eprintln!("  left: {l}");
    }
    match m.status.as_str() {
        "interrupted" => ExitCode::from(130),
        "failed" | "leftovers" => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

#[allow(clippy::too_many_arguments)]
fn patch(
    g: &Global,
    role: &str,
    env: &str,
    packages: Option<String>,
    upgrade_all: bool,
    script: Option<std::path::PathBuf>,
    cves: Vec<String>,
    from: Option<String>,
    roll: bool,
    force: bool,
    keep_on_error: bool,
    manifest_file: Option<&std::path::Path>,
    no_wait: bool,
) -> ExitCode {
    let what = if let Some(p) = packages {
        match crate::patch::packages(&p) {
            Ok(v) => crate::patch::What::Packages(v),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else if upgrade_all {
        crate::patch::What::All
    } else if let Some(f) = script {
        match std::fs::read_to_string(&f) {
            Ok(c) => crate::patch::What::Script(f.display().to_string(), c),
            Err(e) => {
                eprintln!("error: {}: cannot read the patch script: {e}", f.display());
                return ExitCode::from(1);
            }
        }
    } else {
        eprintln!("error: give --packages, --upgrade-all or --script");
        return ExitCode::from(2);
    };
    if let Err(p) = crate::patch::check(&cves) {
        print_problems(&p.into());
        return ExitCode::from(2);
    }
    let project = Project::new(&g.root);
    let vars = match var_inputs(g) {
        Ok(v) => v,
        Err(p) => {
            print_problems(&p);
            return ExitCode::from(1);
        }
    };
    // Bad configuration is reported before anything reaches AWS.
    let base = match project.plan(role, env, &vars) {
        Ok(p) => p,
        Err(p) => {
            print_problems(&p);
            return ExitCode::from(1);
        }
    };
    let progress = crate::progress::Progress::new(g.quiet, g.output == Output::Json);
    let rt = runtime();
    let conn = connection(g);
    let parent = match from {
        Some(a) => a,
        None => {
            let r = rt.block_on(async {
                let aws = crate::aws::Aws::load(&conn).await;
                let region = g.region.clone().or_else(|| base.builder.spec.region.clone()).or_else(|| aws.default_region());
                match region {
                    Some(region) => crate::roll::newest_image(&aws.clients(&region), role, env).await,
                    None => Err(crate::error::Error::Other("no region: give --region, set builder.region in the role, or configure AWS_REGION".into())),
                }
            });
            match r {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let plan = match crate::patch::plan(&project, role, env, &vars, &what, &parent, &cves) {
        Ok(p) => p,
        Err(p) => {
            print_problems(&p);
            return ExitCode::from(1);
        }
    };
    let req = crate::build::Request {
        roles: vec![role.to_string()],
        all: false,
        env: env.to_string(),
        force,
        keep_on_error,
        jobs: 1,
        region: g.region.clone(),
        roll,
        patch: Some(crate::manifest::PatchRecord { parent, cves, packages: what.label().split(',').map(str::to_string).collect() }),
        wait_for_lock: !no_wait,
    };
    let manifests = rt.block_on(crate::build::run(&g.root, &conn, req, vec![plan], progress));
    report_builds(g, &manifests, manifest_file)
}

/// The roles and envs a listing covers: regions to look in, parameters bake publishes, `keep`.
struct Scope {
    regions: Vec<String>,
    parameters: std::collections::BTreeSet<String>,
    keep: std::collections::BTreeMap<(String, String), usize>,
}

fn scope(g: &Global, role: Option<&str>, env: Option<&str>, default_region: Option<String>) -> Result<Scope, Problems> {
    let project = Project::new(&g.root);
    let vars = var_inputs(g)?;
    let roles = match role {
        Some(r) => vec![r.to_string()],
        None => project.role_names().map_err(Problems::from)?,
    };
    let mut regions = std::collections::BTreeSet::new();
    let mut parameters = std::collections::BTreeSet::new();
    let mut keep = std::collections::BTreeMap::new();
    for r in &roles {
        let rf = project.role(r)?;
        for e in rf.envs.iter().filter(|e| env.map(|x| x == e.as_str()).unwrap_or(true)) {
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
            parameters.insert(resolved.image.ssm_parameter.clone());
            if let Some(k) = resolved.image.keep {
                keep.insert((r.clone(), e.clone()), k as usize);
            }
        }
    }
    if let Some(r) = &g.region {
        regions = [r.clone()].into();
    }
    Ok(Scope { regions: regions.into_iter().collect(), parameters, keep })
}

/// The images bake made in the scope of `role` / `env`, with what uses each.
fn listed(
    g: &Global,
    role: Option<&str>,
    env: Option<&str>,
) -> Result<(tokio::runtime::Runtime, crate::aws::Aws, Scope, Vec<crate::images::ImageInfo>), ExitCode> {
    let rt = runtime();
    let aws = rt.block_on(crate::aws::Aws::load(&connection(g)));
    let sc = scope(g, role, env, aws.default_region()).map_err(|p| {
        print_problems(&p);
        ExitCode::from(1)
    })?;
    let images = rt.block_on(crate::images::list(&aws, &sc.regions, role, env, &sc.parameters)).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })?;
    Ok((rt, aws, sc, images))
}

fn ls(g: &Global, role: Option<&str>, env: Option<&str>) -> ExitCode {
    let images = match listed(g, role, env) {
        Ok((_, _, _, i)) => i,
        Err(code) => return code,
    };
    match g.output {
        Output::Json => out(&serde_json::to_string_pretty(&images).unwrap_or_default()),
        Output::Text => {
            if images.is_empty() {
                out("no image made by bake");
                return ExitCode::SUCCESS;
            }
            let mut text = format!(
                "{:<22} {:<12} {:<22} {:>6}  {:<6} {:<22} {:<18} {:<25} {}\n",
                "ROLE/ENV", "REGION", "IMAGE", "AGE", "KIND", "PARENT", "CVE", "DEPRECATED", "USED BY"
            );
            for i in &images {
                text.push_str(&format!(
                    "{:<22} {:<12} {:<22} {:>5.1}d  {:<6} {:<22} {:<18} {:<25} {}\n",
                    format!("{}/{}", i.role, i.env),
                    i.region,
                    i.id,
                    i.age_days,
                    i.kind,
                    i.parent.clone().unwrap_or_else(|| "-".into()),
                    if i.cves.is_empty() { "-".to_string() } else { i.cves.join(",") },
                    i.deprecation_time.clone().unwrap_or_else(|| "-".into()),
                    if i.used_by.is_empty() { "-".to_string() } else { i.used_by.join(", ") },
                ));
            }
            out(&text);
        }
    }
    ExitCode::SUCCESS
}

fn prune(g: &Global, role: Option<&str>, env: Option<&str>, keep: Option<usize>, older_than: Option<&str>, yes: bool, plan_only: bool) -> ExitCode {
    let older = match older_than.map(crate::config::duration::parse) {
        None => None,
        Some(Ok(s)) => Some(s as f64 / 86_400.0),
        Some(Err(e)) => {
            eprintln!("error: --older-than: {e}");
            return ExitCode::from(2);
        }
    };
    let (rt, aws, sc, images) = match listed(g, role, env) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let keep_of = |r: &str, e: &str| keep.or_else(|| sc.keep.get(&(r.to_string(), e.to_string())).copied()).unwrap_or(3);
    let decisions = crate::images::decide(images, &keep_of, older);
    let doomed: Vec<&crate::images::Decision> = decisions.iter().filter(|d| d.delete).collect();
    if g.output == Output::Json {
        out(&serde_json::to_string_pretty(&json!({"decisions": decisions, "removing": !plan_only && yes})).unwrap_or_default());
    } else {
        let mut text = String::new();
        for d in &decisions {
            text.push_str(&format!(
                "{} {} {} ({}/{}, {:.1} days): {}\n",
                if d.delete { "remove" } else { "keep  " },
                d.image.id,
                d.image.region,
                d.image.role,
                d.image.env,
                d.image.age_days,
                d.why
            ));
        }
        text.push_str(&format!("{} image(s) to remove, {} kept", doomed.len(), decisions.len() - doomed.len()));
        out(&text);
    }
    if plan_only || doomed.is_empty() {
        return ExitCode::SUCCESS;
    }
    if !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            eprintln!("nothing removed: run again with --yes to remove them");
            return ExitCode::SUCCESS;
        }
        eprint!("remove {} image(s) and their snapshots? [y/N] ", doomed.len());
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing removed");
            return ExitCode::SUCCESS;
        }
    }
    let mut failed = 0;
    for d in doomed {
        match rt.block_on(crate::images::remove(&aws, &d.image)) {
            Ok(()) => {
                if !g.quiet && g.output == Output::Text {
                    out(&format!("removed {} in {} and {} snapshot(s)", d.image.id, d.image.region, d.image.snapshots.len()));
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
