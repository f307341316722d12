//! The journal: every resource a bake creates is appended (and fsync'd) to
//! `.bake/journal/<bake-id>.jsonl` before the bake depends on it, so that `bake cleanup <id>`
//! can finish the job after a crash.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `b-` and 12 hex digits: unique per bake, short enough for names and tags.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BakeId(pub String);

impl BakeId {
    pub fn new() -> BakeId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let seed = format!("{nanos}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        BakeId(format!("b-{}", &crate::plan::sha256_hex(seed.as_bytes())[..12]))
    }

    pub fn parse(s: &str) -> Option<BakeId> {
        let hex = s.strip_prefix("b-")?;
        (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| BakeId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for BakeId {
    fn default() -> Self {
        BakeId::new()
    }
}

impl std::fmt::Display for BakeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    IamRole,
    InstanceProfile,
    SecurityGroup,
    Instance,
    Image,
    Snapshot,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::IamRole => "IAM role",
            Kind::InstanceProfile => "instance profile",
            Kind::SecurityGroup => "security group",
            Kind::Instance => "instance",
            Kind::Image => "image",
            Kind::Snapshot => "snapshot",
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub id: String,
    /// The region, or `global` for IAM.
    pub region: String,
}

impl Resource {
    pub fn new(kind: Kind, id: impl Into<String>, region: impl Into<String>) -> Resource {
        Resource { kind, id: id.into(), region: region.into() }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.kind, self.id, self.region)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    Started {
        bake_id: BakeId,
        role: String,
        env: String,
        region: String,
        pid: u32,
        host: String,
        at: String,
        /// Every region the bake may create something in (the build region and the copies').
        #[serde(default)]
        regions: Vec<String>,
    },
    Created {
        resource: Resource,
        at: String,
    },
    /// An SSM parameter set to this bake's image; `previous` is what it held before (restored if
    /// the bake fails after publishing).
    Published {
        region: String,
        name: String,
        value: String,
        previous: Option<String>,
        at: String,
    },
    /// Part of the bake's product: kept by cleanup.
    Kept {
        resource: Resource,
        at: String,
    },
    Deleted {
        resource: Resource,
        at: String,
    },
    Reverted {
        region: String,
        name: String,
        at: String,
    },
    Finished {
        status: crate::status::Finish,
        at: String,
    },
}

pub fn now_rfc3339() -> String {
    aws_smithy_types::DateTime::from(std::time::SystemTime::now()).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default()
}

/// Where this process keeps its local state (journals, locks): `--state-dir` or `BAKE_STATE_DIR`
/// when given (a container whose project folder is read-only), else `<root>/.bake`.
static STATE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the local state folder for this process (once, from the command line).
pub fn set_state_dir(dir: PathBuf) {
    let _ = STATE_DIR.set(dir);
}

pub fn state_dir(root: &Path) -> PathBuf {
    STATE_DIR.get().cloned().unwrap_or_else(|| root.join(".bake"))
}

pub fn journal_dir(root: &Path) -> PathBuf {
    state_dir(root).join("journal")
}

pub fn journal_path(root: &Path, id: &BakeId) -> PathBuf {
    journal_dir(root).join(format!("{id}.jsonl"))
}

/// An open journal, appended to with an fsync per entry; with shared state (bake.toml [state])
/// each entry is also an object in S3, written (created only if absent) before `append` returns.
pub struct Journal {
    pub path: PathBuf,
    file: File,
    /// (bake id, the next entry's slot) when entries also go to the shared state.
    remote: Option<(String, u64)>,
}

impl Journal {
    pub fn create(root: &Path, id: &BakeId) -> Result<Journal> {
        let dir = journal_dir(root);
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::local(
                "cannot create the journal folder (give bake a writable folder for its journals and locks with --state-dir DIR or BAKE_STATE_DIR)",
                &dir,
                e,
            )
        })?;
        let mut j = Self::open_local(&journal_path(root, id))?;
        if crate::remote::get().is_some() {
            j.remote = Some((id.to_string(), 0));
        }
        Ok(j)
    }

    /// Opens an existing journal to append to it (cleanup records what it deletes); with shared
    /// state, its entries continue after those already there.
    pub fn open(path: &Path) -> Result<Journal> {
        let mut j = Self::open_local(path)?;
        if let (Some(r), Some(id)) = (crate::remote::get(), path.file_stem().and_then(|s| s.to_str())) {
            let next = crate::remote::block_on(r.list(&crate::remote::journal_prefix(id)))?.len() as u64;
            j.remote = Some((id.to_string(), next));
        }
        Ok(j)
    }

    fn open_local(path: &Path) -> Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::local("cannot open the journal", path, e))?;
        Ok(Journal { path: path.to_path_buf(), file, remote: None })
    }

    pub fn append(&mut self, entry: &Entry) -> Result<()> {
        let mut line = serde_json::to_string(entry).map_err(|e| Error::local("cannot encode a journal entry for", &self.path, e))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).and_then(|_| self.file.sync_data()).map_err(|e| Error::local("cannot write the journal", &self.path, e))?;
        if let (Some(r), Some((id, next))) = (crate::remote::get(), self.remote.as_mut()) {
            let slot = crate::remote::block_on(r.append_entry(id, *next, line.as_bytes()))?;
            *next = slot + 1;
        }
        Ok(())
    }
}

/// With shared state: brings the local copy of `id`'s journal up to what the shared state holds
/// (a bake that ran on another machine, or whose runner is gone). Reading prefers the remote.
pub async fn pull(root: &Path, id: &BakeId) -> Result<()> {
    let Some(r) = crate::remote::get() else { return Ok(()) };
    let lines = r.journal_lines(id.as_str()).await?;
    if lines.is_empty() {
        return Ok(());
    }
    // Each entry as written, or an error naming the object (not a local copy of it).
    for (n, l) in lines.iter().enumerate() {
        if let Err(e) = serde_json::from_str::<Entry>(l) {
            return Err(Error::Other(format!(
                "the shared journal of bake {id} ({}) has a bad entry, the {}th object: {e}",
                r.url(&crate::remote::journal_prefix(id.as_str())),
                n + 1
            )));
        }
    }
    let path = journal_path(root, id);
    let local = std::fs::read_to_string(&path).unwrap_or_default();
    // The shared journal wins over this machine's copy of it.
    if local.lines().collect::<Vec<_>>() != lines.iter().map(String::as_str).collect::<Vec<_>>() {
        let dir = journal_dir(root);
        std::fs::create_dir_all(&dir).map_err(|e| Error::local("cannot create the journal folder", &dir, e))?;
        std::fs::write(&path, lines.join("\n") + "\n").map_err(|e| Error::local("cannot write the journal", &path, e))?;
    }
    Ok(())
}

/// A journal shared by the stages (copies run in parallel and journal as they go).
#[derive(Clone)]
pub struct JournalHandle(std::sync::Arc<std::sync::Mutex<Journal>>);

impl JournalHandle {
    pub fn new(j: Journal) -> Self {
        JournalHandle(std::sync::Arc::new(std::sync::Mutex::new(j)))
    }
    pub fn append(&self, e: Entry) -> Result<()> {
        let mut j = self.0.lock().map_err(|_| Error::Other("the journal lock was poisoned".into()))?;
        j.append(&e)
    }
    pub fn path(&self) -> String {
        self.0.lock().map(|j| j.path.display().to_string()).unwrap_or_default()
    }
    pub fn created(&self, r: Resource) -> Result<()> {
        self.append(Entry::Created { resource: r, at: now_rfc3339() })
    }
}

/// Every entry of a journal; a torn last line (a crash mid-write) is ignored.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let f = File::open(path).map_err(|e| Error::local("cannot read the journal", path, e))?;
    let mut out = Vec::new();
    let lines: Vec<String> = BufReader::new(f).lines().map_while(|l| l.ok()).collect();
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(&line) {
            Ok(e) => out.push(e),
            Err(_) if i + 1 == n => {}
            Err(e) => return Err(Error::local("the journal has a bad line in", path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

/// Who started a bake, where.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub role: String,
    pub env: String,
    pub bake_id: BakeId,
    pub region: String,
    pub regions: Vec<String>,
    pub pid: u32,
    pub host: String,
}

/// What a journal says is still out there.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    pub started: Option<Start>,
    /// Created, not deleted, not kept: in creation order.
    pub live: Vec<Resource>,
    pub kept: Vec<Resource>,
    /// Published parameters not reverted: (region, name, previous).
    pub published: Vec<(String, String, Option<String>)>,
    pub finished: Option<crate::status::Finish>,
    /// When each resource was created (the journal line's time).
    pub born: std::collections::BTreeMap<Resource, std::time::SystemTime>,
}

/// An RFC 3339 time (as the journal writes them).
pub fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    let t = aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::DateTime).ok()?;
    std::time::SystemTime::try_from(t).ok()
}

pub fn state(entries: &[Entry]) -> State {
    let mut s = State::default();
    for e in entries {
        match e {
            Entry::Started { bake_id, role, env, region, pid, host, regions, .. } => {
                s.started = Some(Start {
                    bake_id: bake_id.clone(),
                    role: role.clone(),
                    env: env.clone(),
                    region: region.clone(),
                    regions: regions.clone(),
                    pid: *pid,
                    host: host.clone(),
                })
            }
            Entry::Created { resource, at } => {
                if !s.live.contains(resource) {
                    s.live.push(resource.clone());
                }
                if let Some(t) = parse_time(at) {
                    s.born.insert(resource.clone(), t);
                }
            }
            Entry::Kept { resource, .. } => {
                s.live.retain(|r| r != resource);
                if !s.kept.contains(resource) {
                    s.kept.push(resource.clone());
                }
            }
            Entry::Deleted { resource, .. } => {
                s.live.retain(|r| r != resource);
                s.kept.retain(|r| r != resource);
            }
            Entry::Published { region, name, previous, .. } => {
                s.published.retain(|(r, n, _)| !(r == region && n == name));
                s.published.push((region.clone(), name.clone(), previous.clone()));
            }
            Entry::Reverted { region, name, .. } => s.published.retain(|(r, n, _)| !(r == region && n == name)),
            Entry::Finished { status, .. } => s.finished = Some(*status),
        }
    }
    s
}

pub use crate::remote::hostname;

/// True when the bake made its image and published it (whatever cleanup left).
pub fn succeeded(s: &State) -> bool {
    s.finished.map(|f| f.succeeded()).unwrap_or(false)
}

/// True when a bake that wrote this journal may still be running here.
pub fn is_running(s: &State) -> bool {
    let Some(st) = &s.started else { return false };
    s.finished.is_none() && st.host == hostname() && pid_alive(st.pid)
}

pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_parse() {
        let a = BakeId::new();
        let b = BakeId::new();
        assert_ne!(a, b);
        assert_eq!(BakeId::parse(a.as_str()), Some(a.clone()));
        assert!(BakeId::parse("b-XYZ").is_none() && BakeId::parse("x-0123456789ab").is_none());
    }

    #[test]
    fn journal_replays_to_what_is_still_live() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let id = BakeId::new();
        let mut j = Journal::create(dir.path(), &id)?;
        let role = Resource::new(Kind::IamRole, "bake-x", "global");
        let inst = Resource::new(Kind::Instance, "i-1", "us-east-1");
        let img = Resource::new(Kind::Image, "ami-1", "us-east-1");
        for e in [
            Entry::Started {
                bake_id: id.clone(),
                role: "r".into(),
                env: "e".into(),
                region: "us-east-1".into(),
                pid: 1,
                host: "h".into(),
                at: now_rfc3339(),
                regions: vec![],
            },
            Entry::Created { resource: role.clone(), at: now_rfc3339() },
            Entry::Created { resource: inst.clone(), at: now_rfc3339() },
            Entry::Created { resource: img.clone(), at: now_rfc3339() },
            Entry::Deleted { resource: inst.clone(), at: now_rfc3339() },
            Entry::Kept { resource: img.clone(), at: now_rfc3339() },
            Entry::Published { region: "us-east-1".into(), name: "/p".into(), value: "ami-1".into(), previous: None, at: now_rfc3339() },
        ] {
            j.append(&e)?;
        }
        // A crash mid-write leaves a torn line; it is ignored.
        std::fs::OpenOptions::new().append(true).open(&j.path)?.write_all(b"{\"event\":\"crea")?;
        let s = state(&read(&j.path)?);
        assert_eq!(s.live, vec![role]);
        assert_eq!(s.kept, vec![img]);
        assert_eq!(s.published, vec![("us-east-1".to_string(), "/p".to_string(), None)]);
        assert!(s.finished.is_none());
        Ok(())
    }
}
