//! `bake.toml` at the project's root (optional): where bake keeps state a team shares.
//!
//! ```toml
//! [state]
//! s3 = "s3://acme-bake-state/golden"   # journals, manifests and locks under this prefix
//! region = "us-east-1"                 # the bucket's (default: the AWS configuration's)
//! kms_key_id = "alias/bake-state"      # SSE-KMS for what bake writes (default: the bucket's)
//! lease = "2m"                         # a lock's lease, renewed every third of it
//! ```
//! Without it (or without `[state]`) state stays in the local folder (`--state-dir`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::duration::Secs;
use super::tomlfile::{KeyPath, TomlFile};
use super::{limits, Problem, Problems};

pub const FILE: &str = "bake.toml";

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileLayer {
    state: Option<StateLayer>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct StateLayer {
    s3: Option<String>,
    region: Option<String>,
    kms_key_id: Option<String>,
    lease: Option<Secs>,
}

/// Shared state in S3: objects under `s3://bucket/prefix/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateSpec {
    pub bucket: String,
    /// Without leading or trailing `/`; empty: the bucket's root.
    pub prefix: String,
    pub region: Option<String>,
    pub kms_key_id: Option<String>,
    pub lease: Duration,
}

/// A lock's lease: long enough for renewals (every third) to survive a slow call, short enough
/// that a runner that died frees it soon.
pub const LEASE_DEFAULT: u64 = 120;
pub const LEASE_RANGE: std::ops::RangeInclusive<u64> = 2..=3600;

/// `s3://BUCKET[/PREFIX]`: a bucket name S3 accepts and a prefix of plain key characters.
fn parse_url(url: &str) -> Result<(String, String), String> {
    let shown = url.chars().take(120).collect::<String>().escape_default().to_string();
    let Some(rest) = url.strip_prefix("s3://") else { return Err(format!("`{shown}` is not an S3 location (s3://BUCKET/PREFIX)")) };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !super::resolve_bucket_name(bucket) {
        return Err(format!("`{shown}`: `{}` is not an S3 bucket name (3-63 of a-z, 0-9, . and -)", bucket.escape_default()));
    }
    let prefix = prefix.trim_end_matches('/');
    let odd_segment = prefix.split('/').any(|seg| seg == "." || seg == "..");
    if prefix.len() > 512
        || prefix.starts_with('/')
        || prefix.contains("//")
        || odd_segment
        || prefix.chars().any(|c| c.is_control() || c == '*' || c == '?' || c == '\\')
    {
        return Err(format!(
            "`{shown}`: the prefix must be plain key text (no wildcard, control character, `\\\\`, empty, `.` or `..` segment; at most 512 characters)"
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// The project's state settings: None when bake.toml or its [state] is absent.
pub fn load(root: &Path) -> Result<Option<StateSpec>, Problems> {
    let path = root.join(FILE);
    if !path.exists() {
        return Ok(None);
    }
    let file = TomlFile::load(root, &path)?;
    let layer: FileLayer = file.typed(&KeyPath::root(), toml::Value::Table(file.table.clone()))?;
    let Some(s) = layer.state else { return Ok(None) };
    let at = KeyPath::root().key("state");
    let mut problems = Problems::default();
    let p = |k: &str, why: String| -> Problem { file.problem(&at.key(k), why) };
    let (bucket, prefix) = match &s.s3 {
        None => {
            problems.push(p("s3", "is missing: s3://BUCKET/PREFIX, where bake keeps journals, manifests and locks".into()));
            (String::new(), String::new())
        }
        Some(u) => parse_url(u).unwrap_or_else(|why| {
            problems.push(p("s3", why));
            (String::new(), String::new())
        }),
    };
    if let Some(why) = s.region.as_deref().and_then(limits::region_problem) {
        problems.push(p("region", why));
    }
    if let Some(k) = s.kms_key_id.as_deref().filter(|k| !limits::valid_kms_key(k)) {
        problems.push(p("kms_key_id", format!("`{}` is not a KMS key (a key id, alias/NAME, or the ARN of either)", k.escape_default())));
    }
    let lease = s.lease.map(|l| l.0).unwrap_or(LEASE_DEFAULT);
    if !LEASE_RANGE.contains(&lease) {
        problems.push(p("lease", format!("{} is outside {}s..{}s", Secs(lease), LEASE_RANGE.start(), LEASE_RANGE.end())));
    }
    problems.into_result(Some(StateSpec { bucket, prefix, region: s.region, kms_key_id: s.kms_key_id, lease: Duration::from_secs(lease) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_bucket_and_plain_prefix() {
        assert_eq!(parse_url("s3://acme-bake/golden/").unwrap(), ("acme-bake".into(), "golden".into()));
        assert_eq!(parse_url("s3://acme-bake").unwrap(), ("acme-bake".into(), String::new()));
        for bad in [
            "acme-bake/x",
            "s3://Acme/x",
            "s3://ab",
            "s3://acme-bake/a*b",
            "s3://acme-bake//x",
            "s3://acme-bake/a\nb",
            "s3://",
            "s3://acme-bake/../x",
            "s3://acme-bake/a/./b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
