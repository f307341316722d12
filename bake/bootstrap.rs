//! `bake bootstrap`: the one-time, per-account set-up an administrator runs: the permissions
//! boundary every builder role is created with (`policies/boundary.json.hbs`, as the managed
//! policy `/bake/bake-builder-boundary`). Run again after roles change what their builders may
//! do; unchanged, it changes nothing.

use serde_json::Value as Json;

use crate::aws::Aws;
use crate::config::policy::{boundary_arn, BAKE_PATH, BOUNDARY_NAME};
use crate::error::{Error, Result};
use crate::stages::iam::{account_id, policy_document};

/// What bootstrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created(String),
    Updated(String),
    Unchanged(String),
}

/// IAM keeps at most five versions of a managed policy.
const MAX_VERSIONS: usize = 5;

pub async fn run(aws: &Aws, region: &str, doc: &Json) -> Result<Outcome> {
    let c = aws.clients(region);
    let account = account_id(&c).await?;
    let arn = boundary_arn(&account);
    let text = serde_json::to_string(doc).map_err(|e| Error::Other(format!("cannot encode the boundary: {e}")))?;
    match policy_document(&c, &arn).await? {
        None => {
            let tag = aws_sdk_iam::types::Tag::builder()
                .key(crate::tags::BOOTSTRAP)
                .value("permissions-boundary")
                .build()
                .map_err(|e| Error::Other(e.to_string()))?;
            c.iam
                .create_policy()
                .policy_name(BOUNDARY_NAME)
                .path(BAKE_PATH)
                .description("bake: the most any builder role may ever do (its permissions boundary)")
                .policy_document(&text)
                .tags(tag)
                .send()
                .await
                .map_err(|e| Error::aws("iam:CreatePolicy", format!("policy {arn}"), "global", &e))?;
            Ok(Outcome::Created(arn))
        }
        Some(current) if &current == doc => Ok(Outcome::Unchanged(arn)),
        Some(_) => {
            let versions = c
                .iam
                .list_policy_versions()
                .policy_arn(&arn)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("iam:ListPolicyVersions", format!("policy {arn}"), "global", &e))?;
            if versions.len() >= MAX_VERSIONS {
                let oldest = versions
                    .iter()
                    .filter(|v| !v.is_default_version())
                    .min_by_key(|v| v.create_date().map(|d| d.secs()).unwrap_or(i64::MAX))
                    .and_then(|v| v.version_id())
                    .ok_or_else(|| Error::Other(format!("policy {arn} has {MAX_VERSIONS} versions and none can be removed")))?;
                c.iam
                    .delete_policy_version()
                    .policy_arn(&arn)
                    .version_id(oldest)
                    .send()
                    .await
                    .map_err(|e| Error::aws("iam:DeletePolicyVersion", format!("policy {arn} {oldest}"), "global", &e))?;
            }
            c.iam
                .create_policy_version()
                .policy_arn(&arn)
                .policy_document(&text)
                .set_as_default(true)
                .send()
                .await
                .map_err(|e| Error::aws("iam:CreatePolicyVersion", format!("policy {arn}"), "global", &e))?;
            Ok(Outcome::Updated(arn))
        }
    }
}
