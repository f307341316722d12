//! The manifest: what a bake did, as JSON (stdout with `--output json`, `--manifest FILE`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::role::SourceSpec;
pub use crate::status::{GroupOutcome, RollStatus, Status};

#[derive(Serialize, Clone, Debug, Default)]
pub struct Manifest {
    pub bake_id: String,
    pub role: String,
    pub env: String,
    /// The architecture baked, for a role that bakes several (`[architectures]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    pub region: String,
    pub status: Status,
    pub error: Option<String>,
    /// What cleanup could not remove after a successful bake, one sentence each (`bake cleanup ID`
    /// finishes it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<String>,
    /// Workload accounts' parameters (rollout.accounts) bake could not point at the image, one
    /// sentence each: the image is kept (others may name it already); a rerun publishes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unpublished: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_secs: f64,
    pub source: Option<SourceRecord>,
    pub plan_fingerprint: String,
    pub fingerprint: String,
    pub git_sha: Option<String>,
    pub builder: Option<BuilderRecord>,
    pub steps: Vec<StepRecord>,
    /// Region → the image there.
    pub images: BTreeMap<String, ImageRecord>,
    pub parameters: Vec<ParameterRecord>,
    /// Region → AMI Block Public Access state (`block-new-sharing`, `unblocked`, `unknown`), read
    /// before sharing there.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub public_access: BTreeMap<String, String>,
    /// What an operator should look at though nothing failed (AMI Block Public Access off where
    /// bake shared an image), one sentence each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The images bake put deregistration protection on (`ami-… in us-east-1`): what the
    /// parameter names now and what it named before.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protected: Vec<String>,
    /// Stage → seconds.
    pub stages: BTreeMap<String, f64>,
    /// `service:Operation` → calls.
    pub api_calls: BTreeMap<String, u64>,
    pub journal: String,
    /// `bake` for a full bake, `patch` for `bake patch`.
    pub kind: String,
    /// For a patch: its parent image, CVEs and packages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchRecord>,
    /// For a patch: the parent, its parent, … back to a full bake.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<String>,
    /// What the image holds: its packages, kernel and container images (the whole inventory is
    /// kept where `stored` says; `bake audit` reads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryRecord>,
    /// With `bake build --roll`: the rollout of the new image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll: Option<RollManifest>,
}

#[derive(Serialize, Clone, Debug)]
pub struct InventoryRecord {
    /// The digest the image is tagged with (`bake:inventory`).
    pub sha256: String,
    pub kernel: String,
    /// How many Debian packages.
    pub packages: usize,
    pub containers: Vec<crate::inventory::Container>,
    /// Where the whole inventory is kept (a local file, the shared state's object).
    pub stored: Vec<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct SourceRecord {
    pub selector: SourceSpec,
    pub ami_id: String,
    pub name: String,
    pub creation_date: String,
    pub owner_id: String,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct BuilderRecord {
    pub instance_id: String,
    pub instance_type: String,
    pub subnet_id: Option<String>,
    pub security_groups: Vec<String>,
    pub iam_role: String,
    pub instance_profile: String,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct StepRecord {
    pub cookbook: String,
    pub step: String,
    pub sha256: String,
    /// Success, Failed, TimedOut, Cancelled, DeliveryTimedOut, or not-run
    pub status: String,
    pub exit_code: Option<i32>,
    pub duration_secs: f64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// SendCommand ids (several when a large script went in parts).
    pub command_ids: Vec<String>,
    /// Where the whole stdout/stderr of the command that ran the step went (S3 URLs,
    /// `cloudwatch-logs://group/stream`), when the role sets `builder.output`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub full_output: Vec<String>,
    pub rebooted: bool,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct ImageRecord {
    pub ami_id: String,
    pub name: String,
    pub state: String,
    pub snapshot_ids: Vec<String>,
    pub copied_from: Option<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct ParameterRecord {
    pub region: String,
    /// Another account's parameter (rollout.accounts); absent for bake's own account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub name: String,
    /// What bake wrote to the parameter (a write that was not the version after the one bake read
    /// is reported: another writer came in between).
    pub value: String,
    /// What it held before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// What `bake roll` did (also `bake build --roll`).
#[derive(Serialize, Clone, Debug, Default)]
pub struct RollManifest {
    pub roll_id: String,
    pub role: String,
    pub env: String,
    /// The build region (where the image the roll names is).
    pub region: String,
    /// Every region the roll covered (each group's region is in its record); another account's
    /// as `REGION of ACCOUNT`.
    pub regions: Vec<String>,
    /// Region (or `REGION of ACCOUNT`) → architecture → the image rolled there (each region its
    /// own copy, which other accounts launch shared).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, BTreeMap<String, String>>,
    pub ami: String,
    pub status: RollStatus,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<String>,
    pub groups: Vec<GroupRecord>,
    pub duration_secs: f64,
    pub api_calls: BTreeMap<String, u64>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct GroupRecord {
    pub name: String,
    pub region: String,
    /// Another account's group (rollout.accounts); absent for bake's own account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub canary: bool,
    /// launch-template or launch-configuration
    pub kind: String,
    pub previous_image: String,
    pub new_image: String,
    /// `v3` for a launch template version, or a launch configuration's name.
    pub previous: String,
    pub new: String,
    pub refresh_ids: Vec<String>,
    pub outcome: GroupOutcome,
    /// What the group's instances run when the roll ends: the one image they all run, `mixed`
    /// (see `running`), or with no instance the image the group is configured with.
    pub final_image: String,
    /// Image → how many of the group's instances run it, when the roll ended.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub running: BTreeMap<String, u32>,
    pub percentage_complete: i32,
    /// The warm pool's share of the refresh (groups with a warm pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_pool_percentage_complete: Option<i32>,
    pub error: Option<String>,
    /// The group's configuration changed (so a failed rollout puts it back).
    #[serde(skip)]
    pub moved: bool,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct PatchRecord {
    pub parent: String,
    pub cves: Vec<String>,
    /// The packages asked for, `all`, or `script:<file>`.
    pub packages: Vec<String>,
}
