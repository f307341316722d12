//! One bake of a role and env at a time on this machine: an advisory lock on
//! `.bake/locks/<role>.<env>.lock` (under the local state folder, `--state-dir`) (the operating system releases it when the process ends, even
//! killed), holding who has it. A second bake waits, saying who it waits for, or with `--no-wait`
//! stops; after waiting it finds the first one's image and reuses it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::progress::Reporter;
use crate::signals::{cancelled, Cancel};

/// Held while it lives: a file lock here, or a lease in the shared state (bake.toml [state]),
/// renewed while it lives and released when it goes.
pub struct Held {
    _file: Option<File>,
    remote: Option<RemoteHeld>,
}

/// A lock held in S3: its key, what this run wrote into it and the ETag of that write. Every
/// write (renewal, naming the bake) holds the mutex, so two of this run's writes never race each
/// other's `If-Match`.
#[derive(Clone)]
struct Shared {
    key: String,
    state: std::sync::Arc<tokio::sync::Mutex<(crate::remote::Holder, String)>>,
}

struct RemoteHeld {
    shared: Shared,
    renew: tokio::task::JoinHandle<()>,
}

/// The shared locks this process holds: the second Ctrl-C (which exits at once) releases them.
static HELD: std::sync::Mutex<Vec<Shared>> = std::sync::Mutex::new(Vec::new());

fn release(s: &Shared) {
    let Some(r) = crate::remote::get() else { return };
    // A renewal may be writing the lock right now (on another thread, or aborted but not yet
    // stopped): wait for it, and hold the lock's state until the delete is done, so that no
    // renewal comes in between. Released only if still ours (a lock taken over after an expired
    // lease is not).
    let done = crate::remote::block_on(async {
        let g = tokio::time::timeout(Duration::from_secs(5), s.state.lock())
            .await
            .map_err(|_| crate::error::Error::Other("a renewal of it did not finish".into()))?;
        tokio::time::timeout(Duration::from_secs(5), r.delete_if(&s.key, &g.1))
            .await
            .map_err(|_| crate::error::Error::Other("S3 did not answer within 5 s".into()))?
    });
    if let Err(e) = done {
        eprintln!("warning: could not release the lock {}: {e}; it frees itself when its lease ends", r.url(&s.key));
    }
}

/// Releases every shared lock this process holds (the second Ctrl-C, before it exits).
fn release_all() {
    let held = HELD.lock().map(|h| h.clone()).unwrap_or_default();
    for s in &held {
        release(s);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(h) = self.remote.take() {
            h.renew.abort();
            if let Ok(mut v) = HELD.lock() {
                v.retain(|s| !std::sync::Arc::ptr_eq(&s.state, &h.shared.state));
            }
            release(&h.shared);
        }
    }
}

impl Held {
    /// Names the bake that holds the lock (in a shared lock, so that `bake cleanup --orphans` on
    /// any machine knows it runs). Nothing to do for a local lock.
    pub async fn attach(&self, bake_id: &str) -> Result<()> {
        let (Some(h), Some(r)) = (&self.remote, crate::remote::get()) else { return Ok(()) };
        let mut g = h.shared.state.lock().await;
        let mut me = g.0.clone();
        me.bake_id = Some(bake_id.to_string());
        match r.replace(&h.shared.key, serde_json::to_vec(&me).unwrap_or_default(), &g.1).await? {
            crate::remote::Write::Done(etag) => {
                *g = (me, etag);
                Ok(())
            }
            // Lost: the renewal notices and stops the run.
            crate::remote::Write::Refused => Ok(()),
        }
    }
}

pub fn lock_path(root: &Path, role: &str, env: &str) -> PathBuf {
    crate::journal::state_dir(root).join("locks").join(format!("{role}.{env}.lock"))
}

/// Who holds the lock, as its holder wrote it (one line).
fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut s);
    let s = crate::error::one_line(&s);
    if s.is_empty() {
        "another bake".into()
    } else {
        s
    }
}

fn write_holder(file: &mut File, what: &str) {
    let line = format!("{what} (pid {}, host {}, since {})", std::process::id(), crate::journal::hostname(), crate::journal::now_rfc3339());
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = file.write_all(line.as_bytes());
    let _ = file.sync_data();
}

/// Takes the lock of `role`/`env` under `root` for `what` (e.g. `bake build kaiju/staging`).
/// Held by someone else: with `wait`, waits (reporting who holds it) until it is free or the bake
/// is cancelled; without, an error naming the holder.
pub async fn acquire(root: &Path, role: &str, env: &str, what: &str, wait: bool, report: &Reporter, cancel: Cancel) -> Result<Held> {
    acquire_for(root, role, env, what, None, wait, report, cancel).await
}

/// [`acquire`], naming the bake that holds it (so that `bake cleanup` elsewhere sees it runs).
#[allow(clippy::too_many_arguments)] // the lock's identity and the caller's context
pub async fn acquire_for(root: &Path, role: &str, env: &str, what: &str, bake_id: Option<&str>, wait: bool, report: &Reporter, cancel: Cancel) -> Result<Held> {
    if let Some(r) = crate::remote::get() {
        return acquire_remote(r, role, env, what, bake_id, wait, report, cancel).await;
    }
    let path = lock_path(root, role, env);
    let open = || -> Result<File> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Other(format!(
                    "cannot create {}: {e}; give bake a writable folder for its journals and locks with --state-dir DIR or BAKE_STATE_DIR",
                    dir.display()
                ))
            })?;
        }
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| {
            Error::Other(format!(
                "cannot open the lock {}: {e}; give bake a writable folder for its journals and locks with --state-dir DIR or BAKE_STATE_DIR",
                path.display()
            ))
        })
    };
    let mut file = open()?;
    match file.try_lock() {
        Ok(()) => {
            write_holder(&mut file, what);
            return Ok(Held { _file: Some(file), remote: None });
        }
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(Error::Other(format!("cannot lock {}: {e}", path.display()))),
    }
    let who = holder(&mut file);
    if !wait {
        return Err(Error::Other(format!("{role}/{env} is being changed here already: {who}; without --no-wait this run waits for it")));
    }
    report.info(&format!("waiting for {who} to finish ({})", path.display()));
    // Polled (every 250 ms), so that Ctrl-C is seen at once.
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = cancelled(cancel.clone()) => return Err(Error::Interrupted),
        }
        match file.try_lock() {
            Ok(()) => {
                write_holder(&mut file, what);
                return Ok(Held { _file: Some(file), remote: None });
            }
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(Error::Other(format!("cannot lock {}: {e}", path.display()))),
        }
    }
}

fn holder_now(what: &str, bake_id: Option<&str>, lease: Duration) -> crate::remote::Holder {
    crate::remote::Holder {
        owner: crate::remote::user(),
        host: crate::journal::hostname(),
        pid: std::process::id(),
        command: what.to_string(),
        bake_id: bake_id.map(str::to_string),
        since: crate::journal::now_rfc3339(),
        expires: crate::remote::now_secs() + lease.as_secs(),
        lease_secs: lease.as_secs(),
    }
}

/// The lock in S3: created if absent (`If-None-Match: *`); a lease past its end — judged on S3's
/// clock, see [`crate::remote::Remote::holder`] — is taken over (`If-Match` on what was read, so
/// two takers cannot both win); renewed every third of the lease
/// (`If-Match` on our own last write); released on drop. Waiting polls every second.
#[allow(clippy::too_many_arguments)] // the lock's identity and the caller's context
async fn acquire_remote(
    r: &'static crate::remote::Remote,
    role: &str,
    env: &str,
    what: &str,
    bake_id: Option<&str>,
    wait: bool,
    report: &Reporter,
    cancel: Cancel,
) -> Result<Held> {
    use crate::remote::Write;
    let key = crate::remote::lock_key(role, env);
    let mut told: Option<String> = None;
    loop {
        let mut me = holder_now(what, bake_id, r.lease);
        let body = |h: &crate::remote::Holder| serde_json::to_vec(h).unwrap_or_default();
        let won = match r.create(&key, body(&me)).await? {
            Write::Done(etag) => Some(etag),
            Write::Refused => match r.holder(&key).await? {
                // Released between the two calls: try again at once.
                None => continue,
                Some(crate::remote::Lock { holder: h, etag, ended: true, .. }) => {
                    me.since = crate::journal::now_rfc3339();
                    match r.replace(&key, body(&me), &etag).await? {
                        Write::Done(new) => {
                            report.info(&format!("took over the lock {} from {h}: its lease had ended unrenewed", r.url(&key)));
                            Some(new)
                        }
                        Write::Refused => None,
                    }
                }
                Some(crate::remote::Lock { holder: h, .. }) => {
                    if !wait {
                        return Err(Error::Other(format!("{role}/{env} is being changed already: {h}; without --no-wait this run waits for it")));
                    }
                    let who = h.to_string();
                    if told.as_deref() != Some(who.as_str()) {
                        report.info(&format!("waiting for {who} to finish ({})", r.url(&key)));
                        told = Some(who);
                    }
                    None
                }
            },
        };
        if let Some(etag) = won {
            let shared = Shared { key: key.clone(), state: std::sync::Arc::new(tokio::sync::Mutex::new((me, etag))) };
            let renew = tokio::spawn(renew(r, format!("{role}/{env}"), shared.clone()));
            if let Ok(mut v) = HELD.lock() {
                v.push(shared.clone());
            }
            crate::signals::on_exit(release_all);
            return Ok(Held { _file: None, remote: Some(RemoteHeld { shared, renew }) });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancelled(cancel.clone()) => return Err(Error::Interrupted),
        }
    }
}

/// Extends the lease every third of it while the work runs. A lock that is no longer this run's
/// (changed or removed by someone else, or not renewed for a whole lease) stops the run as Ctrl-C
/// does — what it made is cleaned up, groups it moved go back — so that two runs never change one
/// role and env at once.
async fn renew(r: &'static crate::remote::Remote, what: String, shared: Shared) {
    let every = (r.lease / 3).max(Duration::from_millis(500));
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let mut g = shared.state.lock().await;
        let mut me = g.0.clone();
        me.expires = crate::remote::now_secs() + r.lease.as_secs();
        let why = match r.replace(&shared.key, serde_json::to_vec(&me).unwrap_or_default(), &g.1).await {
            Ok(crate::remote::Write::Done(new)) => {
                *g = (me, new);
                renewed = std::time::Instant::now();
                continue;
            }
            Ok(crate::remote::Write::Refused) => "someone else changed or removed it".to_string(),
            Err(e) if renewed.elapsed() >= r.lease => format!("it could not be renewed for a whole lease: {e}"),
            // A failed renewal is tried again at the next tick, within the lease.
            Err(e) => {
                tracing::warn!(error = %e, "renewing the lock failed");
                continue;
            }
        };
        drop(g);
        eprintln!(
            "error: {what}: the lock {} is no longer this run's ({why}); stopping as on Ctrl-C, so that two runs never change {what} at once",
            r.url(&shared.key)
        );
        crate::signals::request_stop();
        return;
    }
}
