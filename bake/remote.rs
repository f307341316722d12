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

/// Connects to the project's state bucket and checks it answers (one listing): an unreachable or
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
    // One listing under the prefix (what the operator policy allows: s3:ListBucket with an
    // s3:prefix condition; HeadBucket would need the whole bucket's).
    r.s3.list_objects_v2().bucket(&r.bucket).prefix(r.key("")).max_keys(1).send().await.map_err(|e| {
        Error::Other(format!(
            "the state bucket {} ({}: state.s3) cannot be used: {}; nothing was done",
            r.url(""),
            crate::config::state::FILE,
            Error::aws("s3:ListObjectsV2", format!("bucket {}", r.bucket), &r.region, &e)
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

/// The HTTP status of a failed call's answer (412: a condition failed; 409: a concurrent
/// conditional write won; 404: nothing there), when there was an answer.
fn status<E>(e: &aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
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

/// Runs `f` to completion from synchronous code (the journal's append) inside or outside the
/// async runtime. No runtime to be had (no threads left) is an error, not a panic.
pub fn block_on<T, F: std::future::Future<Output = Result<T>>>(f: F) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| h.block_on(f)),
        _ => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(f),
            Err(e) => Err(Error::Other(format!("cannot start a runtime to reach the shared state: {e}"))),
        },
    }
}

// -- locks ---------------------------------------------------------------------------------------

/// Who holds a lock, as its holder wrote it.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Holder {
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub command: String,
    #[serde(default)]
    pub bake_id: Option<String>,
    pub since: String,
    /// Seconds since the epoch when the lease ends unless renewed.
    pub expires: u64,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.is_empty() {
            return write!(f, "{} (last written {})", self.command, self.since);
        }
        write!(f, "{} by {} on {} (pid {}) since {}", self.command, self.owner, self.host, self.pid, self.since)
    }
}

/// Who runs bake here: the user's name, or the uid.
pub fn user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok().filter(|u| !u.is_empty()).unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}

pub fn lock_key(role: &str, env: &str) -> String {
    format!("locks/{role}/{env}.json")
}

impl Remote {
    /// Reads a lock: its holder and ETag; None when free.
    pub async fn holder(&self, key: &str) -> Result<Option<(Holder, String)>> {
        match self.read(key).await? {
            None => Ok(None),
            Some((body, etag)) => match serde_json::from_slice(&body) {
                Ok(h) => Ok(Some((h, etag))),
                // Not bake's writing: held as if written by a run bake does not know, for one
                // lease from when it was last written.
                Err(_) => {
                    let written = self
                        .s3
                        .head_object()
                        .bucket(&self.bucket)
                        .key(self.key(key))
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.last_modified().map(|t| t.secs().max(0) as u64))
                        .unwrap_or_else(now_secs);
                    let since = aws_smithy_types::DateTime::from_secs(written as i64).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default();
                    Ok(Some((
                        Holder { command: "an unreadable lock object".into(), since, expires: written + self.lease.as_secs(), ..Default::default() },
                        etag,
                    )))
                }
            },
        }
    }

    /// The unexpired lock of `role` held by the process `pid` on `host`, if any: a bake (or
    /// roll) still running on that machine.
    pub async fn running(&self, role: &str, host: &str, pid: u32) -> Result<Option<Holder>> {
        for key in self.list(&format!("locks/{role}/")).await? {
            if let Some((h, _)) = self.holder(&key).await? {
                if h.host == host && h.pid == pid && h.expires > now_secs() {
                    return Ok(Some(h));
                }
            }
        }
        Ok(None)
    }
}

// -- journals and manifests ------------------------------------------------------------------

pub fn journal_prefix(bake_id: &str) -> String {
    format!("journal/{bake_id}/")
}

pub fn journal_key(bake_id: &str, n: u64) -> String {
    format!("journal/{bake_id}/{n:08}.json")
}

impl Remote {
    /// Appends one journal entry: the first free slot from `next` on, created only if absent,
    /// so that two writers never overwrite each other's entries. The slot written.
    pub async fn append_entry(&self, bake_id: &str, mut next: u64, line: &[u8]) -> Result<u64> {
        for _ in 0..10_000 {
            match self.create(&journal_key(bake_id, next), line.to_vec()).await? {
                Write::Done(_) => return Ok(next),
                Write::Refused => next += 1,
            }
        }
        Err(Error::Other(format!("the journal of bake {bake_id} in {} has no free slot", self.url(""))))
    }

    /// A journal's entries, in order (one JSON line each).
    pub async fn journal_lines(&self, bake_id: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for key in self.list(&journal_prefix(bake_id)).await? {
            if let Some((body, _)) = self.read(&key).await? {
                out.push(String::from_utf8_lossy(&body).trim_end().to_string());
            }
        }
        Ok(out)
    }

    /// Stores a bake's or roll's record under `manifests/<role>/<env>/<id>.json`.
    pub async fn put_manifest(&self, role: &str, env: &str, id: &str, record: &serde_json::Value) -> Result<()> {
        let body = serde_json::to_vec(record).map_err(|e| Error::Other(format!("cannot encode the record of {id}: {e}")))?;
        match self.create(&format!("manifests/{role}/{env}/{id}.json"), body).await? {
            Write::Done(_) | Write::Refused => Ok(()),
        }
    }
}
