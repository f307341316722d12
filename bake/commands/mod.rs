//! The command line: global flags, one `Args` struct per command, and the handlers (one file per
//! command or family). A handler reads the edges (environment, var files), calls the library,
//! prints the result and returns an [`ExitStatus`].

mod build;
mod cleanup;
mod images;
mod project;
mod roll;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Problem, Problems, Secs, VarInputs};

#[derive(Parser, Debug)]
#[command(
    name = "bake",
    version,
    about = "Bake golden AMIs from cookbooks and roll Auto Scaling groups onto them",
    after_help = "Examples:\n  bake validate\n  bake plan boxoffice --env staging\n  bake build boxoffice --env staging\n  bake build --all --env production --roll\n\nExit codes: 0 success, 1 failure or bad input, 2 bad command line, 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The project folder holding roles/, cookbooks/ and policies/
    #[arg(long, global = true, env = "BAKE_ROOT", default_value = ".", value_name = "DIR")]
    pub root: PathBuf,
    /// AWS region (default: from the AWS configuration, AWS_REGION or the role's builder.region)
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// AWS shared-config profile
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Send every AWS call to this endpoint (AWS_ENDPOINT_URL works too)
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// More detail on stderr (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print only errors and the final result
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// text for people, json for programs
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Set a variable (repeatable; beats --var-file and BAKE_VAR_<name>)
    #[arg(long = "var", global = true, value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Read variables from a TOML file (repeatable; a later file wins)
    #[arg(long = "var-file", global = true, value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
    /// Where bake keeps its local state, journals and locks (default: DIR/.bake under --root):
    /// a writable folder when the project folder is read-only (a container)
    #[arg(long, global = true, env = "BAKE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check roles, cookbooks and policies; print every problem (file, key, why)
    #[command(after_help = "Examples:\n  bake validate\n  bake validate boxoffice www")]
    Validate(project::ValidateArgs),
    /// Show what a bake of ROLE in ENV would do, and its input fingerprint
    #[command(after_help = "Examples:\n  bake plan boxoffice --env staging\n  bake plan www --env production --output json")]
    Plan(RoleEnv),
    /// Print the rendered step scripts of ROLE in ENV
    #[command(after_help = "Examples:\n  bake render kaiju --env staging\n  bake render www --env production --step docker/daemon | bash -n")]
    Render(project::RenderArgs),
    /// Print a rendered IAM policy: what an operator needs to run bake, or a role's builder policy
    #[command(after_help = "Examples:\n  bake policy operator --account 123456789012\n  bake policy builder --role boxoffice --env production")]
    Policy(project::PolicyArgs),
    /// Once per account, as an administrator: create (or update) the builder roles' permissions boundary
    #[command(
        after_help = "Examples:\n  bake bootstrap --profile admin\n  bake policy boundary --account 123456789012   # the same document, for Terraform or CloudFormation\n\nIt creates the managed policy /bake/bake-builder-boundary from policies/boundary.json.hbs (what\nthe SSM agent needs plus every role's builder policy). Run it again when a role's builder needs\nmore; unchanged, it changes nothing. Exit codes: 0 created, updated or unchanged, 1 a failure."
    )]
    Bootstrap,
    /// Bake golden AMIs: launch a builder, run the role's steps over SSM, create, copy, share and publish the image
    #[command(
        after_help = "Examples:\n  bake build boxoffice --env staging\n  bake build --all --env production --jobs 4 --output json --manifest bake.json\n  bake build kaiju --env staging --var app_tag=v1.4.2 --force\n\nAn unchanged role (same fingerprint, same source image) reuses its image and launches nothing.\nOne bake of a role and env at a time on a machine: a second waits for the first (and then\nreuses its image), or stops with --no-wait.\nExit codes: 0 every role baked or unchanged, 1 a role failed or left something behind, 130 interrupted."
    )]
    Build(build::BuildArgs),
    /// Move a role's Auto Scaling groups onto an image: canaries first, instance refresh, rollback on failure
    #[command(
        after_help = "Examples:\n  bake roll boxoffice --env production --plan\n  bake roll boxoffice --env production\n  bake roll kaiju --env staging --ami ami-0123456789abcdef0 --replace-in-progress\n  bake roll boxoffice --env production --rollback\n\nExit codes: 0 every group on the image, 1 a group failed (every group that moved is back on its previous image), 130 interrupted."
    )]
    Roll(roll::RollArgs),
    /// Ship an emergency patch image: from the role's current golden image, run only a patch step
    #[command(
        group(clap::ArgGroup::new("what").required(true).args(["packages", "upgrade_all", "script", "affected"])),
        after_help = "Examples:\n  bake patch boxoffice --env production --packages openssl,libssl3 --cve CVE-2024-5535 --roll\n  bake patch www --env production --upgrade-all\n  bake patch kaiju --env staging --script fix.sh --from ami-0123456789abcdef0\n\nExit codes: 0 patched (and rolled), 1 a failure, 130 interrupted."
    )]
    Patch(build::PatchArgs),
    /// List the images bake made, with their age, lineage, CVEs and what uses each
    #[command(after_help = "Examples:\n  bake ls\n  bake ls boxoffice --env production --output json")]
    Ls(images::LsArgs),
    /// Which images bake made hold a package below a version, and what uses them
    #[command(
        after_help = "Examples:\n  bake audit 'openssl<3.0.13'\n  bake audit --cve CVE-2024-0727 --package openssl --fixed 3.0.13-0ubuntu3 --output json\n  bake audit --file advisories.txt --role boxoffice --env production\n  bake patch --affected 'openssl<3.0.13' --roll     # then patch and roll everything affected\n\nVersions compare by Debian's rules (epochs, ~, digits as numbers), not as strings. Each image's\npackage inventory is read from this machine's state folder or the shared state (bake.toml).\nExit codes: 0 nothing affected, 3 something affected, 1 a failure, 2 a bad command line."
    )]
    Audit(images::AuditArgs),
    /// Remove old images and their snapshots in every region; never one in use or among the newest
    #[command(
        after_help = "Examples:\n  bake prune --plan\n  bake prune boxoffice --env production --keep 5 --older-than 30d --yes\n\nAn image stays when a group, a launch template version a group uses, a launch configuration\nor the role's SSM parameter points at it, or when it is one of the newest N (--keep, else the\nrole's image.keep, else 3)."
    )]
    Prune(images::PruneArgs),
    /// Remove what a bake left behind: replay its journal, or sweep bake-managed orphans
    #[command(
        after_help = "Examples:\n  bake cleanup b-3f9a1c2e7d4b\n  bake cleanup --orphans --older-than 6h\n  bake cleanup --orphans --older-than 0s --yes --region us-east-1"
    )]
    Cleanup(cleanup::CleanupArgs),
}

/// One role in one environment (shared by plan, render, roll and patch).
#[derive(Args, Debug, Clone)]
pub struct RoleEnv {
    pub role: String,
    #[arg(long)]
    pub env: String,
}

/// How bake ends: the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// A failure, bad input, or something left behind.
    Failure,
    /// A bad command line (also clap's own code).
    Usage,
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// `bake audit`: an image holds a vulnerable package.
    Affected,
}

impl From<ExitStatus> for ExitCode {
    fn from(s: ExitStatus) -> ExitCode {
        match s {
            ExitStatus::Success => ExitCode::SUCCESS,
            ExitStatus::Failure => ExitCode::from(1),
            ExitStatus::Usage => ExitCode::from(2),
            ExitStatus::Interrupted => ExitCode::from(130),
            ExitStatus::Affected => ExitCode::from(3),
        }
    }
}

/// A duration on the command line (`90s`, `15m`, `6h`, `2d`).
pub fn duration(s: &str) -> Result<Secs, String> {
    crate::config::duration::parse(s).map(Secs)
}

/// How long to wait for something: longer than 0 and at most the week bake waits for anything.
pub fn wait_limit(s: &str) -> Result<Secs, String> {
    match duration(s)? {
        Secs(0) => Err("must be longer than 0s".into()),
        Secs(n) if n > crate::config::limits::WAIT_MAX => Err(format!("{} is more than the week bake waits for anything", Secs(n))),
        d => Ok(d),
    }
}

pub fn init_tracing(g: &Global) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "error,bake=warn",
        (false, 1) => "bake=debug,info",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAKE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .try_init();
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

/// Every problem, once each, as `error:` lines; a failure.
fn problems(problems: &Problems) -> ExitStatus {
    let mut err = std::io::stderr().lock();
    let mut seen = BTreeSet::new();
    for p in problems.iter().filter(|p| seen.insert(p.to_string())) {
        let _ = writeln!(err, "error: {p}");
    }
    ExitStatus::Failure
}

/// One `error:` line; a failure.
fn failed(e: impl std::fmt::Display) -> ExitStatus {
    eprintln!("error: {e}");
    ExitStatus::Failure
}

fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = o.write_all(b"\n");
    }
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        // No runtime (no threads, no file descriptors left): nothing has been asked of AWS yet.
        Err(e) => {
            eprintln!("error: cannot start bake's async runtime: {e}; nothing was done");
            std::process::exit(1)
        }
    }
}

/// The project's shared state (bake.toml [state]), checked and connected before anything else
/// reaches AWS: a bad setting or a bucket that cannot be used stops the command here.
fn shared_state(g: &Global, rt: &tokio::runtime::Runtime) -> Result<(), ExitStatus> {
    let spec = crate::config::state::load(&g.root).map_err(|p| problems(&p))?;
    if let Some(s) = spec {
        rt.block_on(async {
            let aws = crate::aws::Aws::load(&connection(g)).await;
            crate::remote::init(&aws, &s).await.map(|_| ())
        })
        .map_err(failed)?;
    }
    Ok(())
}

/// Who runs bake, for the shared records: the user, the machine and the project folder.
fn who(g: &Global) -> serde_json::Value {
    crate::remote::who(&g.root)
}

fn connection(g: &Global) -> crate::aws::Connection {
    crate::aws::Connection { region: g.region.clone(), profile: g.profile.clone(), endpoint_url: g.endpoint_url.clone() }
}

/// `--manifest FILE`: the same JSON `--output json` prints, for CI to pick up.
fn write_manifest(json: &str, manifest_file: Option<&std::path::Path>) {
    if let Some(f) = manifest_file {
        if let Err(e) = std::fs::write(f, format!("{json}\n")) {
            eprintln!("error: cannot write the manifest {}: {e}", f.display());
        }
    }
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

/// What is wrong with the command line before anything runs: no project, an unusable region.
fn preflight(g: &Global, command: &Command) -> Option<String> {
    // Every command but cleanup reads the project.
    if !matches!(command, Command::Cleanup(_)) {
        if !g.root.is_dir() {
            return Some(format!("--root {}: no such folder (the project folder holds roles/, cookbooks/ and policies/)", g.root.display()));
        }
        if !g.root.join("roles").exists() {
            return Some(format!("{} is not a bake project: it has no roles/ folder (run bake in the project, or give --root or BAKE_ROOT)", g.root.display()));
        }
    }
    if let Some(why) = g.region.as_deref().and_then(crate::config::limits::region_problem) {
        return Some(format!("--region: {why}"));
    }
    if let Err(why) = crate::pace::rate() {
        return Some(why);
    }
    let talks_to_aws = matches!(
        command,
        Command::Ls(_)
            | Command::Audit(_)
            | Command::Prune(_)
            | Command::Patch(_)
            | Command::Roll(_)
            | Command::Build(_)
            | Command::Cleanup(_)
            | Command::Bootstrap
    );
    if g.region.is_none() && talks_to_aws {
        if let Some((r, why)) = configured_region(g).and_then(|r| crate::config::limits::region_problem(&r).map(|w| (r, w))) {
            let from = match &g.profile {
                Some(p) => format!("profile {p}, AWS_REGION or AWS_DEFAULT_REGION"),
                None => "AWS_REGION, AWS_DEFAULT_REGION or the default profile".to_string(),
            };
            return Some(format!("region `{r}` (from {from}): {why}"));
        }
    }
    None
}

pub fn run(cli: Cli) -> ExitCode {
    let g = cli.global;
    if let Some(d) = &g.state_dir {
        crate::journal::set_state_dir(d.clone());
    }
    if let Some(why) = preflight(&g, &cli.command) {
        eprintln!("error: {why}");
        return ExitStatus::Usage.into();
    }
    let status = match &cli.command {
        Command::Validate(a) => project::validate(&g, a),
        Command::Plan(a) => project::plan(&g, a),
        Command::Render(a) => project::render(&g, a),
        Command::Policy(a) => project::policy(&g, a),
        Command::Bootstrap => project::bootstrap(&g),
        Command::Build(a) => build::build(&g, a),
        Command::Patch(a) => build::patch(&g, a),
        Command::Roll(a) => roll::roll(&g, a),
        Command::Ls(a) => images::ls(&g, a),
        Command::Prune(a) => images::prune(&g, a),
        Command::Audit(a) => images::audit(&g, a),
        Command::Cleanup(a) => cleanup::cleanup(&g, a),
    };
    status.into()
}
