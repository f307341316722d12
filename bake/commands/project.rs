//! Commands that read the project only: validate, plan, render, policy; and bootstrap, which
//! creates the boundary the policies name.

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{failed, json, out, problems, runtime, var_inputs, ExitStatus, Global, Output, RoleEnv};
use crate::config::{Problem, Problems, Project, VarInputs};

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Roles to check (default: all, and every cookbook)
    pub roles: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub target: RoleEnv,
    /// Only this step, as COOKBOOK/STEP
    #[arg(long, value_name = "COOKBOOK/STEP")]
    pub step: Option<String>,
    /// The architecture, for a role that bakes several (default: its first)
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// What whoever bakes needs: build, patch, ls, prune, cleanup (least privilege, by tag)
    Operator,
    /// What whoever rolls needs besides: roll, build --roll, patch --roll
    Roller,
    /// What the role bake assumes in a workload account needs (--account, one of rollout.accounts)
    Target,
    /// What the shared state of bake.toml [state] needs (attach it beside operator and roller)
    State,
    /// One role's builder policy
    Builder,
    /// The permissions boundary of every builder role (what `bake bootstrap` creates)
    Boundary,
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    pub kind: PolicyKind,
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long, requires = "role")]
    pub env: Option<String>,
    /// Account id to put in ARNs (default *)
    #[arg(long)]
    pub account: Option<String>,
}

/// Problems as the command's end: printed, a failure.
fn settle(r: Result<(), Problems>) -> ExitStatus {
    match r {
        Ok(()) => ExitStatus::Success,
        Err(p) => problems(&p),
    }
}

pub fn validate(g: &Global, a: &ValidateArgs) -> ExitStatus {
    let report = match var_inputs(g) {
        Ok(vars) => crate::validate::run(&Project::new(&g.root), &a.roles, &vars),
        Err(p) => crate::validate::Report { problems: p.0, ..Default::default() },
    };
    match g.output {
        Output::Json => out(&json(&report.to_json())),
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
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    }
}

pub fn plan(g: &Global, a: &RoleEnv) -> ExitStatus {
    settle((|| {
        let vars = var_inputs(g)?;
        let plans = Project::new(&g.root).plans(&a.role, &a.env, &vars)?;
        match (g.output, plans.as_slice()) {
            (Output::Json, [one]) => out(&json(one)),
            (Output::Json, many) => out(&json(&many)),
            (Output::Text, many) => out(&many.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")),
        }
        Ok(())
    })())
}

pub fn render(g: &Global, a: &RenderArgs) -> ExitStatus {
    settle((|| {
        let RoleEnv { role, env } = &a.target;
        let vars = var_inputs(g)?;
        let plans = Project::new(&g.root).plans(role, env, &vars)?;
        let arches: Vec<String> = plans.iter().filter(|p| p.architectures.len() > 1).filter_map(|p| p.arch.clone()).collect();
        let plan = match &a.arch {
            None => plans.into_iter().next(),
            Some(x) => plans.into_iter().find(|p| p.arch.as_ref() == Some(x) && p.architectures.len() > 1),
        };
        let Some(plan) = plan else {
            let why = if arches.is_empty() { "bakes one architecture: leave --arch out".to_string() } else { format!("bakes {}", arches.join(", ")) };
            return Err(Problem::new(format!("roles/{role}.toml"), "architectures", format!("{why} (--arch {})", a.arch.clone().unwrap_or_default())).into());
        };
        if let Some(id) = &a.step {
            let Some(s) = plan.steps.iter().find(|s| s.id() == *id) else {
                let ids: Vec<String> = plan.steps.iter().map(|s| s.id()).collect();
                return Err(Problem::new(format!("roles/{role}.toml"), "", format!("no step `{id}` in this run list (steps: {})", ids.join(", "))).into());
            };
            match g.output {
                Output::Json => out(&json(&json!({"step": s.id(), "sha256": s.sha256, "script": s.script}))),
                Output::Text => out(&s.script),
            }
            return Ok(());
        }
        match g.output {
            Output::Json => {
                let v: Vec<_> = plan.steps.iter().map(|s| json!({"step": s.id(), "sha256": s.sha256, "script": s.script})).collect();
                out(&json(&v));
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
    })())
}

pub fn policy(g: &Global, a: &PolicyArgs) -> ExitStatus {
    settle((|| {
        let project = Project::new(&g.root);
        let vars = var_inputs(g)?;
        let (role, env, account) = (a.role.as_deref(), a.env.as_deref(), a.account.as_deref());
        let doc = match a.kind {
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
                let name = if a.kind == PolicyKind::Operator { "operator" } else { "roller" };
                policies.render(name, &ctx).map_err(Problems::from)?.unwrap_or_default()
            }
            PolicyKind::Target => {
                let Some(account) = account else {
                    return Err(Problem::new("(command line)", "", "bake policy target needs --account ACCOUNT (one of a role's rollout.accounts)").into());
                };
                let ctx = crate::config::policy::target_context(&project, role, env, account, &vars)?;
                project.policies()?.render("roller", &ctx).map_err(Problems::from)?.unwrap_or_default()
            }
            PolicyKind::State => {
                let Some(ctx) = crate::config::policy::state_context(&project, account)? else {
                    return Err(Problem::new(
                        "(command line)",
                        "",
                        "this project keeps no shared state (no bake.toml with a [state]): there is no state policy",
                    )
                    .into());
                };
                project.policies()?.render("state", &ctx).map_err(Problems::from)?.unwrap_or_default()
            }
            PolicyKind::Boundary => {
                if role.is_some() {
                    return Err(Problem::new("(command line)", "", "the boundary covers every role: bake policy boundary takes no --role").into());
                }
                boundary_document(&project, account, &vars)?
            }
        };
        out(&json(&doc));
        Ok(())
    })())
}

/// The boundary as `bake bootstrap` creates it.
fn boundary_document(project: &Project, account: Option<&str>, vars: &VarInputs) -> Result<serde_json::Value, Problems> {
    let ctx = crate::config::policy::boundary_context(project, account, vars)?;
    let policies = project.policies()?;
    Ok(policies.render("boundary", &ctx).map_err(Problems::from)?.unwrap_or_default())
}

pub fn bootstrap(g: &Global) -> ExitStatus {
    let doc = match var_inputs(g).and_then(|v| boundary_document(&Project::new(&g.root), None, &v)) {
        Ok(d) => d,
        Err(p) => return problems(&p),
    };
    let r = runtime().block_on(async {
        let aws = crate::aws::Aws::load(&super::connection(g)).await;
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
                Output::Json => out(&json(&json!({"boundary": arn, "status": what}))),
                Output::Text => out(&format!("permissions boundary {arn}: {what}")),
            }
            ExitStatus::Success
        }
        Err(e) => failed(e),
    }
}
