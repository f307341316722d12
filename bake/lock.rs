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

/// Held while it lives.
pub struct Held {
    _file: File,
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
            return Ok(Held { _file: file });
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
                return Ok(Held { _file: file });
            }
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(Error::Other(format!("cannot lock {}: {e}", path.display()))),
        }
    }
}
