//! Roles: `roles/<name>.toml`. A role is a base layer plus `[env.<name>]` overlays; an env's view
//! is the base with the overlay deep-merged over it (tables merge key by key, arrays and scalars
//! replace, and `source` is replaced whole because it names exactly one kind of source).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::Secs;

// ---------------------------------------------------------------------------------------------
// What a team writes (every key optional here; required keys are checked after merging).

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SourceLayer {
    pub ssm_parameter: Option<String>,
    pub filter: Option<FilterLayer>,
    pub ami: Option<String>,
    /// With `ssm_parameter`: who publishes the images it names (account ids, `amazon`,
    /// `aws-marketplace`, `self`); the operator policy launches only their images. Known public
    /// parameters (Canonical's, Debian's, Amazon's) need none.
    pub owners: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct FilterLayer {
    pub owners: Option<Vec<String>>,
    pub name: Option<String>,
    pub architecture: Option<String>,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct BuilderLayer {
    pub region: Option<String>,
    pub instance_type: Option<String>,
    pub subnet_id: Option<String>,
    pub subnet_tags: Option<BTreeMap<String, String>>,
    pub security_group_ids: Option<Vec<String>>,
    pub associate_public_ip: Option<bool>,
    pub root_volume_size: Option<u32>,
    pub root_volume_type: Option<String>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub spot: Option<bool>,
    pub step_timeout: Option<Secs>,
    pub ready_timeout: Option<Secs>,
    pub image_timeout: Option<Secs>,
    pub output: Option<OutputLayer>,
    /// A pre-created instance profile for the builder (its role under any path, tagged
    /// bake:role): bake then creates no IAM role, and the operator needs no IAM write.
    pub instance_profile: Option<String>,
}

/// Where SSM Run Command also sends each step's whole output (the API returns only the first
/// 24,000/8,000 characters).
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct OutputLayer {
    pub s3_bucket: Option<String>,
    pub s3_prefix: Option<String>,
    pub log_group: Option<String>,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ImageLayer {
    pub name: Option<String>,
    pub description: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub regions: Option<Vec<String>>,
    pub kms_keys: Option<BTreeMap<String, String>>,
    pub share_accounts: Option<Vec<String>>,
    pub share_organizations: Option<Vec<String>>,
    pub share_ous: Option<Vec<String>>,
    pub deprecate_after_days: Option<u32>,
    pub keep: Option<u32>,
    /// How long `bake prune` leaves an image disabled before it deregisters it (default 7 days).
    pub retire_after: Option<Secs>,
    pub ssm_parameter: Option<String>,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RefreshLayer {
    pub min_healthy_percentage: Option<u32>,
    pub max_healthy_percentage: Option<u32>,
    pub instance_warmup: Option<Secs>,
    pub checkpoint_percentages: Option<Vec<u32>>,
    pub checkpoint_delay: Option<Secs>,
    /// How long AWS waits at the end of a refresh (its alarms still watched) before calling it
    /// complete (RefreshPreferences BakeTime).
    pub bake_time: Option<Secs>,
    pub skip_matching: Option<bool>,
    pub auto_rollback: Option<bool>,
    /// What the refresh does with instances protected from scale-in or in Standby: `refresh`
    /// (replace them too), `ignore` (leave them), `wait` (AWS waits an hour for them, then fails).
    pub protected_instances: Option<String>,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RolloutLayer {
    pub groups: Option<Vec<String>>,
    pub group_tags: Option<BTreeMap<String, String>>,
    pub canaries: Option<Vec<String>>,
    pub canary_bake_time: Option<Secs>,
    pub concurrency: Option<u32>,
    pub set_default_version: Option<bool>,
    /// A group that uses `$Latest` or `$Default` keeps following it (else it moves to the new
    /// numbered version); either way AWS cannot roll such a group back (bake does).
    pub keep_version_alias: Option<bool>,
    pub keep_launch_configurations: Option<u32>,
    /// CloudWatch alarms (names, in each region rolled) that gate the roll: the refreshes' alarm
    /// specification, and watched during the canaries' bake time.
    pub alarms: Option<Vec<String>>,
    /// The regions rolled (each group on its region's copy); default: the build region and every
    /// region in image.regions where the image and target groups are found.
    pub regions: Option<Vec<String>>,
    /// Elastic Load Balancing target groups (ARNs; the region is the ARN's) whose targets among
    /// the canaries' instances must stay healthy during the canaries' bake time.
    pub target_groups: Option<Vec<String>>,
    /// Workload accounts (12-digit id → how bake works there): the image is shared with each,
    /// its parameter published there and its groups rolled with the assumed role's credentials.
    pub accounts: Option<BTreeMap<String, AccountLayer>>,
    pub refresh: Option<RefreshLayer>,
    /// Refresh preferences for `bake patch --roll`, merged over `refresh`.
    pub patch: Option<RefreshLayer>,
}

/// `[rollout.accounts.<id>]`: the role bake assumes there.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct AccountLayer {
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    /// The regions rolled there (default: every region the roll covers).
    pub regions: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct NotifyLayer {
    pub sns_topic_arn: Option<String>,
    pub webhook_url: Option<String>,
    pub on: Option<Vec<String>>,
}

/// The sections a role file (and each of its env overlays) may have, with their types. Each
/// section is checked on its own, so one file can report several problems at once.
pub const SECTIONS: &[&str] = &["description", "run_list", "source", "architectures", "builder", "image", "attributes", "rollout", "vars", "notify", "env"];

// ---------------------------------------------------------------------------------------------
// What one role looks like in one env, after merging, defaults and checks.

/// Where the source AMI comes from. Exactly one.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceSpec {
    /// An SSM parameter holding an AMI id (Canonical and AWS publish these).
    SsmParameter { name: String },
    /// The most recent image matching owners, name pattern and architecture.
    Filter { owners: Vec<String>, name: String, architecture: String },
    /// A pinned AMI id.
    Ami { id: String },
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubnetSpec {
    /// Let EC2 pick a default subnet in the default VPC.
    Default,
    Id {
        id: String,
    },
    Tags {
        tags: BTreeMap<String, String>,
    },
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct BuilderSpec {
    pub region: Option<String>,
    pub instance_type: String,
    pub subnet: SubnetSpec,
    pub security_group_ids: Vec<String>,
    pub associate_public_ip: Option<bool>,
    pub root_volume_size: Option<u32>,
    pub root_volume_type: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub spot: bool,
    pub step_timeout: Secs,
    pub ready_timeout: Secs,
    pub image_timeout: Secs,
    pub output: OutputSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
}

/// Full step output: S3 objects under `s3://<s3_bucket>/<s3_prefix>/` and/or a CloudWatch Logs
/// group; neither by default.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct OutputSpec {
    pub s3_bucket: Option<String>,
    pub s3_prefix: String,
    pub log_group: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Handlebars template, rendered at build time with role, env, timestamp, bake_id, vars.
    pub name: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub regions: Vec<String>,
    pub kms_keys: BTreeMap<String, String>,
    pub share_accounts: Vec<String>,
    pub share_organizations: Vec<String>,
    pub share_ous: Vec<String>,
    pub deprecate_after_days: Option<u32>,
    pub keep: Option<u32>,
    /// How long `bake prune` leaves an image disabled (DisableImage: hidden from launches, a
    /// `bake prune --restore` away from back) before it deregisters it.
    pub retire_after: Secs,
    pub ssm_parameter: String,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RefreshSpec {
    pub min_healthy_percentage: u32,
    pub max_healthy_percentage: Option<u32>,
    pub instance_warmup: Option<Secs>,
    pub checkpoint_percentages: Vec<u32>,
    pub checkpoint_delay: Option<Secs>,
    pub bake_time: Option<Secs>,
    pub skip_matching: bool,
    pub auto_rollback: bool,
    /// `refresh`, `ignore` or `wait` (see the layer).
    pub protected_instances: String,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RolloutSpec {
    pub groups: Vec<String>,
    pub group_tags: BTreeMap<String, String>,
    pub canaries: Vec<String>,
    pub canary_bake_time: Secs,
    pub concurrency: u32,
    pub set_default_version: bool,
    pub keep_version_alias: bool,
    pub keep_launch_configurations: u32,
    pub alarms: Vec<String>,
    /// `rollout.regions` (empty: every region where the image and groups are).
    pub regions: Vec<String>,
    pub target_groups: Vec<String>,
    /// Other accounts the roll covers, by id.
    pub accounts: Vec<TargetAccount>,
    pub refresh: RefreshSpec,
    pub patch_refresh: RefreshSpec,
}

/// A workload account: bake assumes `role_arn` there (with `external_id` when given).
#[derive(Serialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct TargetAccount {
    pub id: String,
    pub role_arn: String,
    pub external_id: Option<String>,
    /// Empty: every region the roll covers.
    pub regions: Vec<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NotifySpec {
    pub sns_topic_arn: Option<String>,
    pub webhook_url: Option<String>,
    /// `success`, `failure` (default both).
    pub on: Vec<String>,
}

/// A role as one env sees it.
#[derive(Clone, Debug)]
pub struct Role {
    pub name: String,
    pub env: String,
    pub file: std::path::PathBuf,
    pub description: String,
    pub run_list: Vec<String>,
    pub source: SourceSpec,
    /// Who publishes the source images (`source.owners`, or `source.filter.owners`); empty when
    /// the role does not say (a known public parameter's owner is looked up where it is needed).
    pub source_owners: Vec<String>,
    pub builder: BuilderSpec,
    pub image: ImageSpec,
    /// The role's attribute overrides (cookbook name → table), vars already rendered.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub rollout: RolloutSpec,
    pub notify: NotifySpec,
    /// Effective variables (defaults, env, files, flags).
    pub vars: BTreeMap<String, String>,
    /// The architecture this role is resolved for, when it declares `[architectures]`.
    pub arch: Option<String>,
    /// Every architecture the role declares (empty: it bakes its source's).
    pub architectures: Vec<String>,
}

pub const DEFAULT_INSTANCE_TYPE: &str = "t3.small";
pub const DEFAULT_STEP_TIMEOUT: Secs = Secs(20 * 60);
pub const DEFAULT_READY_TIMEOUT: Secs = Secs(15 * 60);
pub const DEFAULT_IMAGE_TIMEOUT: Secs = Secs(60 * 60);
pub const DEFAULT_IMAGE_NAME: &str = "{{role}}-{{env}}-{{timestamp}}";
pub const DEFAULT_PARAMETER: &str = "/bake/{{role}}/{{env}}/ami-id";
/// With several architectures: one image, name and parameter each.
pub const DEFAULT_IMAGE_NAME_ARCH: &str = "{{role}}-{{env}}-{{arch}}-{{timestamp}}";
pub const DEFAULT_PARAMETER_ARCH: &str = "/bake/{{role}}/{{env}}/{{arch}}/ami-id";
