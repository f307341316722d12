//! Command line: global flags and subcommands (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// What whoever bakes needs: build, patch, ls, prune, cleanup (least privilege, by tag)
    Operator,
    /// What whoever rolls needs besides: roll, build --roll, patch --roll
    Roller,
    /// One role's builder policy
    Builder,
    /// The permissions boundary of every builder role (what `bake bootstrap` creates)
    Boundary,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Remove everything the failed bake made (default)
    Cleanup,
    /// Keep the builder and everything else for debugging; `bake cleanup ID` removes it later
    Abort,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check roles, cookbooks and policies; print every problem (file, key, why)
    #[command(after_help = "Examples:\n  bake validate\n  bake validate boxoffice www")]
    Validate {
        /// Roles to check (default: all, and every cookbook)
        roles: Vec<String>,
    },
    /// Show what a bake of ROLE in ENV would do, and its input fingerprint
    #[command(after_help = "Examples:\n  bake plan boxoffice --env staging\n  bake plan www --env production --output json")]
    Plan {
        role: String,
        #[arg(long)]
        env: String,
    },
    /// Print the rendered step scripts of ROLE in ENV
    #[command(after_help = "Examples:\n  bake render kaiju --env staging\n  bake render www --env production --step docker/daemon | bash -n")]
    Render {
        role: String,
        #[arg(long)]
        env: String,
        /// Only this step, as COOKBOOK/STEP
        #[arg(long, value_name = "COOKBOOK/STEP")]
        step: Option<String>,
    },
    /// Print a rendered IAM policy: what an operator needs to run bake, or a role's builder policy
    #[command(after_help = "Examples:\n  bake policy operator --account 123456789012\n  bake policy builder --role boxoffice --env production")]
    Policy {
        kind: PolicyKind,
        #[arg(long)]
        role: Option<String>,
        #[arg(long, requires = "role")]
        env: Option<String>,
        /// Account id to put in ARNs (default *)
        #[arg(long)]
        account: Option<String>,
    },
    /// Once per account, as an administrator: create (or update) the builder roles' permissions boundary
    #[command(
        after_help = "Examples:\n  bake bootstrap --profile admin\n  bake policy boundary --account 123456789012   # the same document, for Terraform or CloudFormation\n\nIt creates the managed policy /bake/bake-builder-boundary from policies/boundary.json.hbs (what\nthe SSM agent needs plus every role's builder policy). Run it again when a role's builder needs\nmore; unchanged, it changes nothing. Exit codes: 0 created, updated or unchanged, 1 a failure."
    )]
    Bootstrap,
    /// Bake golden AMIs: launch a builder, run the role's steps over SSM, create, copy, share and publish the image
    #[command(
        after_help = "Examples:\n  bake build boxoffice --env staging\n  bake build --all --env production --jobs 4 --output json --manifest bake.json\n  bake build kaiju --env staging --var app_tag=v1.4.2 --force\n\nAn unchanged role (same fingerprint, same source image) reuses its image and launches nothing.\nOne bake of a role and env at a time on a machine: a second waits for the first (and then\nreuses its image), or stops with --no-wait.\nExit codes: 0 every role baked or unchanged, 1 a role failed or left something behind, 130 interrupted."
    )]
    Build {
        /// Roles to bake
        roles: Vec<String>,
        #[arg(long)]
        env: String,
        /// Every role that has ENV
        #[arg(long, conflicts_with = "roles")]
        all: bool,
        /// What to do with a failed bake's resources
        #[arg(long, value_enum, default_value_t = OnError::Cleanup)]
        on_error: OnError,
        /// Bake even when an image with the same fingerprint exists
        #[arg(long)]
        force: bool,
        /// Also write the manifest (JSON) to this file
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// How many roles bake at once
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Then roll the role's Auto Scaling groups onto the new image (see `bake roll`)
        #[arg(long)]
        roll: bool,
        /// When this role and env is being baked here already, stop (exit 1) instead of waiting for it
        #[arg(long)]
        no_wait: bool,
    },
    /// Move a role's Auto Scaling groups onto an image: canaries first, instance refresh, rollback on failure
    #[command(
        after_help = "Examples:\n  bake roll boxoffice --env production --plan\n  bake roll boxoffice --env production\n  bake roll kaiju --env staging --ami ami-0123456789abcdef0 --replace-in-progress\n  bake roll boxoffice --env production --rollback\n\nExit codes: 0 every group on the image, 1 a group failed (every group that moved is back on its previous image), 130 interrupted."
    )]
    Roll {
        role: String,
        #[arg(long)]
        env: String,
        /// The image (default: the newest one bake made for this role and env)
        #[arg(long, value_name = "AMI_ID")]
        ami: Option<String>,
        /// Show what would change, per group, and change nothing
        #[arg(long)]
        plan: bool,
        /// Put every group back on the previous image bake recorded on it
        #[arg(long, conflicts_with_all = ["ami", "plan", "migrate_to_launch_template"])]
        rollback: bool,
        /// Move launch-configuration groups to a new launch template with the same settings
        #[arg(long)]
        migrate_to_launch_template: bool,
        /// When a group has a refresh in progress, wait for it to end
        #[arg(long, conflicts_with = "replace_in_progress")]
        wait_in_progress: bool,
        /// When a group has a refresh in progress, cancel it
        #[arg(long)]
        replace_in_progress: bool,
        /// Give up on a group's refresh after this long
        #[arg(long, default_value = "3h", value_name = "DURATION")]
        timeout: String,
        /// Also write the roll's manifest (JSON) to this file
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
    },
    /// Ship an emergency patch image: from the role's current golden image, run only a patch step
    #[command(
        group(clap::ArgGroup::new("what").required(true).args(["packages", "upgrade_all", "script"])),
        after_help = "Examples:\n  bake patch boxoffice --env production --packages openssl,libssl3 --cve CVE-2024-5535 --roll\n  bake patch www --env production --upgrade-all\n  bake patch kaiju --env staging --script fix.sh --from ami-0123456789abcdef0\n\nExit codes: 0 patched (and rolled), 1 a failure, 130 interrupted."
    )]
    Patch {
        role: String,
        #[arg(long)]
        env: String,
        /// Upgrade exactly these packages (comma-separated)
        #[arg(long, value_name = "PKG,PKG")]
        packages: Option<String>,
        /// Upgrade every package
        #[arg(long)]
        upgrade_all: bool,
        /// Run this script instead of the security-patch cookbook
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
        /// The CVEs this patch fixes (repeatable); tagged on the image
        #[arg(long = "cve", value_name = "CVE-YYYY-NNNN")]
        cves: Vec<String>,
        /// Start from this image (default: the newest one bake made for the role and env)
        #[arg(long, value_name = "AMI_ID")]
        from: Option<String>,
        /// Then roll the role's groups onto the patch, with the role's patch preferences
        #[arg(long)]
        roll: bool,
        /// Patch even when an identical patch exists
        #[arg(long)]
        force: bool,
        #[arg(long, value_enum, default_value_t = OnError::Cleanup)]
        on_error: OnError,
        /// Also write the manifest (JSON) to this file
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// When this role and env is being baked here already, stop (exit 1) instead of waiting for it
        #[arg(long)]
        no_wait: bool,
    },
    /// List the images bake made, with their age, lineage, CVEs and what uses each
    #[command(after_help = "Examples:\n  bake ls\n  bake ls boxoffice --env production --output json")]
    Ls {
        role: Option<String>,
        #[arg(long)]
        env: Option<String>,
    },
    /// Remove old images and their snapshots in every region; never one in use or among the newest
    #[command(
        after_help = "Examples:\n  bake prune --plan\n  bake prune boxoffice --env production --keep 5 --older-than 30d --yes\n\nAn image stays when a group, a launch template version a group uses, a launch configuration\nor the role's SSM parameter points at it, or when it is one of the newest N (--keep, else the\nrole's image.keep, else 3)."
    )]
    Prune {
        role: Option<String>,
        #[arg(long)]
        env: Option<String>,
        /// Keep the newest N per role, env and region
        #[arg(long)]
        keep: Option<usize>,
        /// Only images older than this
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// Remove without asking
        #[arg(long)]
        yes: bool,
        /// Only show what would be removed
        #[arg(long)]
        plan: bool,
    },
    /// Remove what a bake left behind: replay its journal, or sweep bake-managed orphans
    #[command(
        after_help = "Examples:\n  bake cleanup b-3f9a1c2e7d4b\n  bake cleanup --orphans --older-than 6h\n  bake cleanup --orphans --older-than 0s --yes --region us-east-1"
    )]
    Cleanup {
        /// The bake id printed by `bake build` (b-…)
        #[arg(required_unless_present = "orphans")]
        bake_id: Option<String>,
        /// Find bake-managed resources whose bake is not running
        #[arg(long, conflicts_with = "bake_id")]
        orphans: bool,
        /// Only orphans at least this old
        #[arg(long, default_value = "6h", value_name = "DURATION")]
        older_than: String,
        /// Remove the orphans found without asking
        #[arg(long)]
        yes: bool,
    },
}
