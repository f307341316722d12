//! Runs a parsed command line: reads the edges (environment, var files), calls the library,
//! prints results, and maps failures to exit codes.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use crate::cli::{Cli, Command, Global, Output, PolicyKind};
use crate::config::{Problem, Problems, Project, VarInputs};

pub fn init_tracing(g: &Global) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "bake=debug,info",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
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
    let result = match cli.command {
        Command::Validate { roles } => return validate(&g, &roles),
        Command::Plan { role, env } => plan(&g, &role, &env),
        Command::Render { role, env, step } => render(&g, &role, &env, step.as_deref()),
        Command::Policy { kind, role, env, account } => policy(&g, kind, role.as_deref(), env.as_deref(), account.as_deref()),
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
            plan.builder.inline_policy.unwrap_or_else(|| json!({"Version": "2012-10-17", "Statement": []}))
        }
        PolicyKind::Operator => {
            let ctx = crate::config::policy::operator_context(&project, role, env, account, &vars)?;
            let policies = project.policies()?;
            policies.render("operator", &ctx).map_err(Problems::from)?.unwrap_or_default()
        }
    };
    out(&serde_json::to_string_pretty(&doc).unwrap_or_default());
    Ok(())
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
