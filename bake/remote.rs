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
    /// S3's clock, as its answers' `Date` headers tell it.
    clock: ServerClock,
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
    let clock = ServerClock::default();
    let mut conf = aws_sdk_s3::config::Builder::from(&base).region(aws_config::Region::new(region.clone())).interceptor(clock.clone());
    // A custom endpoint (AWS_ENDPOINT_URL: a test double, a VPC endpoint by IP) answers for one
    // host: address buckets by path there.
    if base.endpoint_url().is_some() {
        conf = conf.force_path_style(true);
    }
    let r = Remote {
        s3: aws_sdk_s3::Client::from_conf(conf.build()),
        clock,
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

/// S3's clock: the last `Date` header S3 answered with, and when (on this machine's monotonic
/// clock) it came. A lease is judged by S3's own times — when the lock was last written
/// (`LastModified`) against S3's now — so machines whose clocks disagree still agree on it.
#[derive(Clone, Debug, Default)]
struct ServerClock(std::sync::Arc<std::sync::Mutex<Option<(i64, std::time::Instant)>>>);

impl ServerClock {
    /// S3's time now, in whole seconds since the epoch; this machine's when S3 has not said.
    fn now(&self) -> i64 {
        match self.0.lock().ok().and_then(|g| *g) {
            Some((secs, at)) => secs + at.elapsed().as_secs() as i64,
            None => now_secs() as i64,
        }
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for ServerClock {
    fn name(&self) -> &'static str {
        "bake-s3-clock"
    }
    fn read_after_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> std::result::Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let date = context.response().headers().get("date");
        if let Some(t) = date.and_then(|d| aws_smithy_types::DateTime::from_str(d, aws_smithy_types::date_time::Format::HttpDate).ok()) {
            if let Ok(mut g) = self.0.lock() {
                *g = Some((t.secs(), std::time::Instant::now()));
            }
        }
        Ok(())
    }
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
/// An answer's ETag: conditional writes depend on it, so an answer without one is an error.
fn etag_of(etag: Option<&str>, call: &str, what: &str, region: &str) -> Result<String> {
    match etag {
        Some(e) if !e.is_empty() => Ok(e.to_string()),
        _ => Err(Error::Other(format!("{call} of {what} in {region} answered without an ETag, which bake's locks and journal depend on"))),
    }
}

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
            Ok(o) => Ok(Write::Done(etag_of(o.e_tag(), "s3:PutObject", &self.url(rest), &self.region)?)),
            Err(e) if matches!(status(&e), Some(412) | Some(409)) => Ok(Write::Refused),
            Err(e) => Err(Error::aws("s3:PutObject", self.url(rest), &self.region, &e)),
        }
    }

    /// Replaces `rest` if it is still the version `etag` names.
    pub async fn replace(&self, rest: &str, body: Vec<u8>, etag: &str) -> Result<Write> {
        match self.put(rest, body).if_match(etag).send().await {
            Ok(o) => Ok(Write::Done(etag_of(o.e_tag(), "s3:PutObject", &self.url(rest), &self.region)?)),
            Err(e) if matches!(status(&e), Some(412) | Some(409) | Some(404)) => Ok(Write::Refused),
            Err(e) => Err(Error::aws("s3:PutObject", self.url(rest), &self.region, &e)),
        }
    }

    /// The object and its ETag; None when absent.
    pub async fn read(&self, rest: &str) -> Result<Option<(Vec<u8>, String)>> {
        Ok(self.read_object(rest).await?.map(|o| (o.body, o.etag)))
    }

    /// The object, its ETag and when S3 last wrote it; None when absent.
    async fn read_object(&self, rest: &str) -> Result<Option<Object>> {
        match self.s3.get_object().bucket(&self.bucket).key(self.key(rest)).send().await {
            Ok(o) => {
                let etag = etag_of(o.e_tag(), "s3:GetObject", &self.url(rest), &self.region)?;
                let written = o
                    .last_modified()
                    .map(|t| t.secs())
                    .ok_or_else(|| Error::Other(format!("s3:GetObject of {} in {} answered without LastModified", self.url(rest), self.region)))?;
                let body = o.body.collect().await.map_err(|e| Error::Other(format!("reading {} failed: {e}", self.url(rest))))?.into_bytes().to_vec();
                Ok(Some(Object { body, etag, written }))
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
        Ok(self.list_written(rest).await?.into_iter().map(|(k, _)| k).collect())
    }

    /// Every key under `rest` with when S3 last wrote it (seconds, S3's clock), sorted by key.
    pub async fn list_written(&self, rest: &str) -> Result<Vec<(String, i64)>> {
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
        let mut keys: Vec<(String, i64)> =
            objects.iter().filter_map(|o| Some((o.key()?.get(strip..)?.to_string(), o.last_modified().map(|t| t.secs()).unwrap_or(0)))).collect();
        keys.sort();
        Ok(keys)
    }
}

struct Object {
    body: Vec<u8>,
    etag: String,
    /// When S3 last wrote it, seconds since the epoch on S3's clock.
    written: i64,
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
    /// Seconds since the epoch when the lease ends unless renewed, on the holder's clock: for
    /// people reading the object. bake itself judges the lease on S3's clock.
    pub expires: u64,
    /// The holder's lease (its bake.toml's), in seconds: a reader whose own lease differs judges
    /// the lock by this one. 0 (a lock written before it was recorded): the reader's.
    #[serde(default)]
    pub lease_secs: u64,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // What anyone who can write to the prefix wrote: one line, control characters escaped.
        let l = crate::error::one_line;
        if self.host.is_empty() {
            return write!(f, "{} (last written {})", l(&self.command), l(&self.since));
        }
        write!(f, "{} by {} on {} (pid {}) since {}", l(&self.command), l(&self.owner), l(&self.host), self.pid, l(&self.since))
    }
}

/// This machine's name, as the kernel has it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// Who runs bake here: the user's name, or the uid.
pub fn user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok().filter(|u| !u.is_empty()).unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}

pub fn lock_key(role: &str, env: &str) -> String {
    format!("locks/{role}/{env}.json")
}

impl Remote {
    /// Reads a lock: its holder, its ETag, and whether its lease has ended; None when free.
    ///
    /// The lease is judged on S3's clock alone: it has ended when the lock was last written
    /// (S3's `LastModified`) more than a lease ago by S3's `Date` — never by comparing this
    /// machine's clock with the holder's. Both are whole seconds, so "more than" is strict: the
    /// lock is at least a lease old, whatever the rounding. A holder renews every third of a lease.
    pub async fn holder(&self, key: &str) -> Result<Option<Lock>> {
        let Some(o) = self.read_object(key).await? else { return Ok(None) };
        let holder = match serde_json::from_slice::<Holder>(&o.body) {
            Ok(h) => h,
            // Not bake's writing: held as if written by a run bake does not know, for one lease
            // from when it was last written.
            Err(_) => {
                let since = aws_smithy_types::DateTime::from_secs(o.written).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default();
                Holder { command: "an unreadable lock object".into(), since, ..Default::default() }
            }
        };
        // The holder's lease, when it wrote one bake accepts (bake.toml's bounds); else ours.
        let lease = match holder.lease_secs {
            s if crate::config::state::LEASE_RANGE.contains(&s) => s,
            _ => self.lease.as_secs(),
        } as i64;
        let age = self.clock.now() - o.written;
        let ended = age > lease;
        let until = (lease - age).max(0) as u64;
        Ok(Some(Lock { holder, etag: o.etag, ended, until }))
    }

    /// The current lock that names bake `bake_id`, or of `role` held by the process `pid` on
    /// `host`, if any: the bake still runs on that machine.
    pub async fn running(&self, bake_id: &str, role: &str, host: &str, pid: u32) -> Result<Option<Lock>> {
        Ok(self
            .held()
            .await?
            .into_iter()
            .find(|l| {
                l.holder.bake_id.as_deref() == Some(bake_id) || (l.holder.host == host && l.holder.pid == pid && l.key.starts_with(&format!("locks/{role}/")))
            })
            .map(|l| l.lock))
    }

    /// Every lock whose lease is current, of every role and env.
    pub async fn held(&self) -> Result<Vec<KeyedLock>> {
        let mut out = Vec::new();
        for key in self.list("locks/").await? {
            if let Some(lock) = self.holder(&key).await? {
                if !lock.ended {
                    out.push(KeyedLock { key, lock });
                }
            }
        }
        Ok(out)
    }
}

/// A lock as read: who holds it, its ETag, whether its lease has ended (on S3's clock), and how
/// many seconds of it are left.
#[derive(Debug, Clone)]
pub struct Lock {
    pub holder: Holder,
    pub etag: String,
    pub ended: bool,
    pub until: u64,
}

/// A lock and its key (relative to the prefix).
pub struct KeyedLock {
    pub key: String,
    pub lock: Lock,
}

impl std::ops::Deref for KeyedLock {
    type Target = Lock;
    fn deref(&self) -> &Lock {
        &self.lock
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

    /// Stores a bake's or roll's record under `manifests/<role>/<env>/<id>.json`: the final one
    /// replaces the `running` record its start left.
    pub async fn put_manifest(&self, role: &str, env: &str, id: &str, record: &serde_json::Value) -> Result<()> {
        let body = serde_json::to_vec(record).map_err(|e| Error::Other(format!("cannot encode the record of {id}: {e}")))?;
        let rest = record_key(role, env, id);
        self.put(&rest, body).send().await.map_err(|e| Error::aws("s3:PutObject", self.url(&rest), &self.region, &e))?;
        Ok(())
    }

    /// The record of a bake that has just started (status `running`): a bake whose runner dies
    /// still shows in `bake ls --history`, and `bake cleanup` later marks it cleaned.
    pub async fn record_started(&self, root: &std::path::Path, m: &crate::manifest::Manifest) -> Result<()> {
        let mut rec = serde_json::json!({"kind": m.kind, "at": m.started_at, "by": who(root), "manifest": m});
        rec["manifest"]["status"] = "running".into();
        let body = serde_json::to_vec(&rec).map_err(|e| Error::Other(format!("cannot encode the record of {}: {e}", m.bake_id)))?;
        match self.create(&record_key(&m.role, &m.env, &m.bake_id), body).await? {
            Write::Done(_) | Write::Refused => Ok(()),
        }
    }

    /// After `bake cleanup` finished a bake that never wrote its final record (its runner died):
    /// the record says so. A record that is not `running` is left as it is.
    pub async fn record_cleaned(&self, root: &std::path::Path, role: &str, env: &str, id: &str) -> Result<()> {
        let rest = record_key(role, env, id);
        let Some((body, etag)) = self.read(&rest).await? else { return Ok(()) };
        let Ok(mut rec) = serde_json::from_slice::<serde_json::Value>(&body) else { return Ok(()) };
        if rec["manifest"]["status"].as_str() != Some("running") {
            return Ok(());
        }
        let by = who(root);
        rec["manifest"]["status"] = "cleaned".into();
        rec["manifest"]["error"] = format!(
            "ended without finishing (its runner stopped); cleaned up by {} on {} with bake cleanup",
            by["user"].as_str().unwrap_or_default(),
            by["host"].as_str().unwrap_or_default()
        )
        .into();
        rec["cleaned_by"] = by;
        let body = serde_json::to_vec(&rec).map_err(|e| Error::Other(format!("cannot encode the record of {id}: {e}")))?;
        match self.replace(&rest, body, &etag).await? {
            Write::Done(_) | Write::Refused => Ok(()),
        }
    }

    /// The first entry of a shared journal (the bake's start: who, where, which process).
    pub async fn journal_first(&self, bake_id: &str) -> Result<Option<String>> {
        match self.list(&journal_prefix(bake_id)).await?.first() {
            Some(key) => Ok(self.read(key).await?.map(|(b, _)| String::from_utf8_lossy(&b).trim_end().to_string())),
            None => Ok(None),
        }
    }
}

pub fn record_key(role: &str, env: &str, id: &str) -> String {
    format!("manifests/{role}/{env}/{id}.json")
}

/// Who runs bake, for the shared records: the user, the machine, the process and the project
/// folder.
pub fn who(root: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "user": user(),
        "host": hostname(),
        "pid": std::process::id(),
        "folder": std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()).display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_prints_on_one_line_whatever_was_written_into_the_lock() {
        let h = Holder {
            owner: "ops\u{1b}[31m\nfake: line".into(),
            host: "h\r".into(),
            pid: 7,
            command: "bake build a/b".into(),
            since: "t".into(),
            ..Default::default()
        };
        let s = h.to_string();
        assert!(!s.contains('\n') && !s.contains('\u{1b}') && !s.contains('\r'), "{s:?}");
        assert!(s.starts_with("bake build a/b by ops\\u{1b}[31m fake: line on h (pid 7)"), "{s}");
    }
}
