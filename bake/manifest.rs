//! The manifest: what a bake did, as JSON (stdout with `--output json`, `--manifest FILE`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::role::SourceSpec;

#[derive(Serialize, Clone, Debug, Default)]
pub struct Manifest {
    pub bake_id: String,
    pub role: String,
    pub env: String,
    pub region: String,
    /// succeeded, reused (an image with this fingerprint exists), failed, interrupted
    pub status: String,
    pub error: Option<String>,
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
    /// Stage → seconds.
    pub stages: BTreeMap<String, f64>,
    /// `service:Operation` → calls.
    pub api_calls: BTreeMap<String, u64>,
    pub journal: String,
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
    pub name: String,
    pub value: String,
}
