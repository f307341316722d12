//! Shared state in S3 (bake.toml `[state]`), on the primitive Terraform's S3 backend uses since
//! 1.10: conditional writes. An object is created only if absent (`If-None-Match: *`), replaced or
//! deleted only if unchanged since it was read (`If-Match: <ETag>`); S3 answers 412 otherwise.
//! https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html
//!
//! Layout under the prefix: `locks/<role>/<env>.json`, `journal/<bake id>/<n>.json` (one object per
//! entry, in order), `manifests/<role>/<env>/<bake or roll id>.json`.

use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;

use crate::config::state::StateSpec;
use crate::error::{Error, Result};

pub struct Remote {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub kms_key_id: Option<String>,
    pub lease: Duration,
}

static REMOTE: OnceLock<Remote> = OnceLock::new();

/// The process's shared state, when the project has one (set once, by `init`).
pub fn get() -> Option<&'static Remote> {
    REMOTE.get()
}

/// Connects to the project's state bucket and checks it answers (HeadBucket): an unreachable or
/// missing bucket is an error here, before bake creates anything.
pub async fn init(aws: &crate::aws::Aws, spec: &StateSpec) -> Result<&'static Remote> {
    if let Some(r) = REMOTE.get() {
        return Ok(r);
    }
    let base = aws.sdk_config();
    let region = spec.region.clone().or_else(|| aws.default_region()).ok_or_else(|| {
        Error::Other(format!("{}: no region for the state bucket {}: set state.region, or give --region", crate::config::state::FILE, spec.bucket))
    })?;
    let mut conf = aws_sdk_s3::config::Builder::from(&base).region(aws_config::Region::new(region.clone()));
    // A custom endpoint (AWS_ENDPOINT_URL: a test double, a VPC endpoint by IP) answers for one
    // host: address buckets by path there.
    if base.endpoint_url().is_some() {
        conf = conf.force_path_style(true);
    }
    let r = Remote {
        s3: aws_sdk_s3::Client::from_conf(conf.build()),
        bucket: spec.bucket.clone(),
        prefix: spec.prefix.clone(),
        region,
        kms_key_id: spec.kms_key_id.clone(),
        lease: spec.lease,
    };
    r.s3.head_bucket().bucket(&r.bucket).send().await.map_err(|e| {
        Error::Other(format!(
            "the state bucket {} ({}: state.s3) cannot be used: {}; nothing was done",
            r.url(""),
            crate::config::state::FILE,
            Error::aws("s3:HeadBucket", format!("bucket {}", r.bucket), &r.region, &e)
        ))
    })?;
    let _ = REMOTE.set(r);
    REMOTE.get().ok_or_else(|| Error::Other("the state bucket could not be kept".into()))
}

/// What a conditional write found.
pub enum Write {
    /// Written: the object's new ETag.
    Done(String),
    /// The condition failed (412): someone else wrote first, or the object is not as read.
    Refused,
}

fn status<E, R>(e: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Option<u16>
where
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match e {
        SdkError::ServiceError(s) => Some(raw_status(s.raw())),
        _ => None,
    }
}

fn raw_status<R: std::fmt::Debug>(raw: &R) -> u16 {
    // HttpResponse's status, without depending on its concrete type here.
    let s = format!("{raw:?}");
    s.split("StatusCode(").nth(1).and_then(|t| t.split(')').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

impl Remote {
    pub fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    pub fn url(&self, rest: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(rest))
    }

    fn put(&self, rest: &str, body: Vec<u8>) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let mut req = self.s3.put_object().bucket(&self.bucket).key(self.key(rest)).content_type("application/json").body(ByteStream::from(body));
        if let Some(k) = &self.kms_key_id {
            req = req.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms).ssekms_key_id(k);
        }
        req
    }

    /// Creates `rest` unless it exists.
    pub async fn create(&self, rest: &str, body: Vec<u8>) -> Result<Write> {
        match self.put(rest, body).if_none_match("*").send().await {
            Ok(o) => Ok(Write::Done(o.e_tag().unwrap_or_default().to_string())),
            Err(e) if matches!(status(&e), Some(412) | Some(409)) => Ok(Write::Refused),
            Err(e) => Err(Error::aws("s3:PutObject", self.url(rest), &self.region, &e)),
        }
    }

    /// Replaces `rest` if it is still the version `etag` names.
    pub async fn replace(&self, rest: &str, body: Vec<u8>, etag: &str) -> Result<Write> {
        match self.put(rest, body).if_match(etag).send().await {
            Ok(o) => Ok(Write::Done(o.e_tag().unwrap_or_default().to_string())),
            Err(e) if matches!(status(&e), Some(412) | Some(409) | Some(404)) => Ok(Write::Refused),
            Err(e) => Err(Error::aws("s3:PutObject", self.url(rest), &self.region, &e)),
        }
    }

    /// The object and its ETag; None when absent.
    pub async fn read(&self, rest: &str) -> Result<Option<(Vec<u8>, String)>> {
        match self.s3.get_object().bucket(&self.bucket).key(self.key(rest)).send().await {
            Ok(o) => {
                let etag = o.e_tag().unwrap_or_default().to_string();
                let body = o.body.collect().await.map_err(|e| Error::Other(format!("reading {} failed: {e}", self.url(rest))))?.into_bytes().to_vec();
                Ok(Some((body, etag)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) || status(&e) == Some(404) => Ok(None),
            Err(e) => Err(Error::aws("s3:GetObject", self.url(rest), &self.region, &e)),
        }
    }

    /// Deletes `rest` if it is still the version `etag` names (else leaves it).
    pub async fn delete_if(&self, rest: &str, etag: &str) -> Result<bool> {
        match self.s3.delete_object().bucket(&self.bucket).key(self.key(rest)).if_match(etag).send().await {
            Ok(_) => Ok(true),
            Err(e) if matches!(status(&e), Some(412) | Some(404)) => Ok(false),
            Err(e) => Err(Error::aws("s3:DeleteObject", self.url(rest), &self.region, &e)),
        }
    }

    /// Every key under `rest` (relative to the prefix), every page, sorted.
    pub async fn list(&self, rest: &str) -> Result<Vec<String>> {
        let under = self.key(rest);
        let pages: Vec<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output> = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&under)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("s3:ListObjectsV2", self.url(rest), &self.region, &e))?;
        let objects: Vec<&aws_sdk_s3::types::Object> = pages.iter().flat_map(|p| p.contents()).collect();
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let mut keys: Vec<String> = objects.iter().filter_map(|o| o.key()).filter_map(|k| k.get(strip..)).map(str::to_string).collect();
        keys.sort();
        Ok(keys)
    }
}
