//! `bake cleanup BAKE_ID` (replay a journal, then sweep by the bake's tag) and
//! `bake cleanup --orphans` (bake-managed resources whose bake is not running).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::Filter;

use crate::aws::Aws;
use crate::error::{Error, Result};
use crate::journal::JournalHandle;
use crate::journal::{self, BakeId, Kind, Resource};
use crate::stages::teardown;
use crate::status::Finish;

pub struct Outcome {
    pub removed: Vec<Resource>,
    pub errors: Vec<Error>,
    /// This project folder holds the bake's journal.
    pub journal: bool,
    /// Where the bake's tag was looked for.
    pub regions: Vec<String>,
}

/// Replays `id`'s journal (restoring parameters, removing what is live), then removes whatever
/// still carries its tag. Safe to run again: what is gone counts as done.
pub async fn replay(aws: &Aws, root: &Path, id: &BakeId, extra_regions: &[String]) -> Result<Outcome> {
    // With shared state the journal may have been written on another machine: read it there.
    journal::pull(root, id).await?;
    let path = journal::journal_path(root, id);
    let mut regions: BTreeSet<String> = extra_regions.iter().cloned().collect();
    let mut born = BTreeMap::new();
    let mut succeeded = false;
    let mut started: Option<(String, String)> = None;
    let (mut live, published, handle) = if path.exists() {
        let state = journal::state(&journal::read(&path)?);
        if journal::is_running(&state) {
            let pid = state.started.as_ref().map(|s| s.pid).unwrap_or(0);
            return Err(Error::Other(format!("bake {id} is still running (pid {pid}); interrupt it, or wait for it to end")));
        }
        // On another machine: running while its process still renews its lock's lease.
        if let (Some(r), Some(st), None) = (crate::remote::get(), &state.started, state.finished) {
            if let Some(l) = r.running(id.as_str(), &st.role, &st.host, st.pid).await? {
                return Err(Error::Other(format!(
                    "bake {id} is still running: {}, its lock's lease current (for {}s more unless renewed); interrupt it, or wait for it to end",
                    l.holder, l.until
                )));
            }
        }
        if let Some(st) = &state.started {
            started = Some((st.role.clone(), st.env.clone()));
            regions.insert(st.region.clone());
            regions.extend(st.regions.iter().cloned());
        }
        regions.extend(state.live.iter().chain(&state.kept).filter(|r| r.region != "global").map(|r| r.region.clone()));
        born = state.born.clone();
        // A bake that succeeded published its image: that stays (only its leftovers go).
        succeeded = journal::succeeded(&state);
        let published = if succeeded { Vec::new() } else { state.published };
        (state.live, published, Some(JournalHandle::new(journal::Journal::open(&path)?)))
    } else {
        if let Some(r) = aws.default_region() {
            regions.insert(r);
        }
        (Vec::new(), Vec::new(), None)
    };
    for r in teardown::find_by_id(aws, id, &regions).await? {
        if !live.contains(&r) {
            live.push(r);
        }
    }
    let removed = live.clone();
    let journal = handle.is_some();
    let errors = teardown::remove(aws, handle.as_ref(), live, published, &born, None).await;
    if errors.is_empty() {
        if let Some(h) = &handle {
            let status = if succeeded { Finish::Succeeded } else { Finish::Cleaned };
            h.append(journal::Entry::Finished { status, at: journal::now_rfc3339() })?;
        }
        // Its shared record, left `running` by a runner that died, now says it was cleaned up.
        if let (Some(r), Some((role, env))) = (crate::remote::get(), &started) {
            r.record_cleaned(root, role, env, id.as_str()).await?;
        }
    }
    Ok(Outcome { removed, errors, journal, regions: regions.into_iter().collect() })
}

/// A resource left by a bake that is not running.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub resource: Resource,
    pub bake_id: String,
    pub age: Option<Duration>,
}

fn age_of(created: Option<&str>) -> Option<Duration> {
    let t = aws_smithy_types::DateTime::from_str(created?, aws_smithy_types::date_time::Format::DateTime).ok()?;
    let t: SystemTime = t.try_into().ok()?;
    SystemTime::now().duration_since(t).ok()
}

/// The bake ids whose journals say they are running on this machine.
pub fn running(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(journal::journal_dir(root)) else { return out };
    for e in entries.flatten() {
        if let Ok(entries) = journal::read(&e.path()) {
            let s = journal::state(&entries);
            if journal::is_running(&s) {
                if let Some(st) = s.started {
                    out.insert(st.bake_id.to_string());
                }
            }
        }
    }
    out
}

/// What the orphan sweep found: resources bake made whose bake is not running, and what it left
/// alone, with why.
#[derive(Debug, Default)]
pub struct Sweep {
    pub orphans: Vec<Orphan>,
    pub skipped: Vec<(Resource, String)>,
}

/// Why a resource carrying bake's tags (or under bake's path) is not bake's to sweep, if so: it
/// must carry `bake:managed=true` and a bake id.
fn not_bakes(tags: &BTreeMap<String, String>) -> Option<String> {
    match (tags.get(crate::tags::MANAGED).map(String::as_str), tags.get(crate::tags::ID)) {
        (Some("true"), Some(id)) if BakeId::parse(id).is_some() => None,
        (Some("true"), Some(id)) => Some(format!("its {} tag `{id}` is not a bake id", crate::tags::ID)),
        (Some("true"), None) => Some(format!("it has no {} tag", crate::tags::ID)),
        (Some(v), _) => Some(format!("its {} tag is `{v}`, not true", crate::tags::MANAGED)),
        (None, _) => Some(format!("it has no {} tag: bake did not make it", crate::tags::MANAGED)),
    }
}

fn iam_tags(tags: &[aws_sdk_iam::types::Tag]) -> BTreeMap<String, String> {
    tags.iter().map(|t| (t.key().to_string(), t.value().to_string())).collect()
}

/// Every resource bake made (`bake:managed=true` and a bake id) in `regions`, and its IAM roles
/// and instance profiles under /bake/, whose bake is not running (here, or with shared state on
/// any machine) and which is older than
/// `older_than`. Finished images and their snapshots are never orphans; launch configurations and
/// launch templates are a roll's products, never swept. Every page of every list is read.
pub async fn find_orphans(aws: &Aws, root: &Path, regions: &[String], older_than: Duration) -> Result<Sweep> {
    let mut found: Vec<(Resource, BTreeMap<String, String>, Option<Duration>)> = Vec::new();
    for region in regions {
        for (r, tags) in teardown::find_tagged(aws, region, Filter::builder().name("tag-key").values(crate::tags::MANAGED).build()).await? {
            let age = age_of(tags.get(crate::tags::CREATED).map(String::as_str));
            found.push((r, tags, age));
        }
    }
    let region = aws.default_region().or_else(|| regions.first().cloned()).unwrap_or_else(|| "us-east-1".into());
    let c = aws.clients(&region);
    for name in teardown::iam_names(&c, Kind::IamRole).await? {
        let r = c.iam.get_role().role_name(&name).send().await.map_err(|e| Error::aws("iam:GetRole", format!("role {name}"), "global", &e))?;
        let Some(role) = r.role() else { continue };
        let age = SystemTime::try_from(*role.create_date()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
        found.push((Resource::new(Kind::IamRole, &name, "global"), iam_tags(role.tags()), age));
    }
    for name in teardown::iam_names(&c, Kind::InstanceProfile).await? {
        let r = c
            .iam
            .get_instance_profile()
            .instance_profile_name(&name)
            .send()
            .await
            .map_err(|e| Error::aws("iam:GetInstanceProfile", format!("instance profile {name}"), "global", &e))?;
        let Some(p) = r.instance_profile() else { continue };
        let age = SystemTime::try_from(*p.create_date()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
        found.push((Resource::new(Kind::InstanceProfile, &name, "global"), iam_tags(p.tags()), age));
    }
    // Which bakes run: here, by this machine's journals; with shared state, anywhere, by a lock
    // whose lease is current held by the process the bake's shared journal names.
    let mut running: BTreeMap<String, String> = running(root).into_iter().map(|id| (id, "here".to_string())).collect();
    if let Some(remote) = crate::remote::get().filter(|_| !found.is_empty()) {
        let ids: BTreeSet<String> =
            found.iter().filter_map(|(_, tags, _)| tags.get(crate::tags::ID)).filter(|id| BakeId::parse(id).is_some()).cloned().collect();
        let held = remote.held().await?;
        // A lock names the bake that holds it.
        for l in &held {
            if let Some(id) = l.holder.bake_id.as_ref().filter(|id| ids.contains(*id)) {
                running.insert(
                    id.clone(),
                    format!("on {} (pid {}), its lock {} current", crate::error::one_line(&l.holder.host), l.holder.pid, remote.url(&l.key)),
                );
            }
        }
        // A lock from before it named its bake: the process the bake's shared journal names.
        let unknown: Vec<String> = ids.into_iter().filter(|id| !running.contains_key(id)).collect();
        for id in unknown {
            let Some(first) = remote.journal_first(&id).await? else { continue };
            let Ok(journal::Entry::Started { role, host, pid, .. }) = serde_json::from_str::<journal::Entry>(&first) else { continue };
            if let Some(l) = held.iter().find(|l| l.holder.host == host && l.holder.pid == pid && l.key.starts_with(&format!("locks/{role}/"))) {
                running.insert(id, format!("on {host} (pid {pid}), its lock {} current", remote.url(&l.key)));
            }
        }
    }
    let mut sweep = Sweep::default();
    for (r, tags, age) in found {
        if let Some(why) = not_bakes(&tags) {
            sweep.skipped.push((r, why));
            continue;
        }
        let id = tags.get(crate::tags::ID).cloned().unwrap_or_default();
        if let Some(wher) = running.get(&id) {
            sweep.skipped.push((r, format!("bake {id} is still running {wher}")));
        } else if age.map(|a| a < older_than).unwrap_or(false) {
            sweep.skipped.push((r, format!("younger than {}", crate::config::Secs(older_than.as_secs()))));
        } else {
            sweep.orphans.push(Orphan { resource: r, bake_id: id, age });
        }
    }
    Ok(sweep)
}

/// Removes orphans, journaling into their bake's journal when it still exists.
pub async fn remove_orphans(aws: &Aws, root: &Path, orphans: Vec<Orphan>) -> Vec<Error> {
    let mut by_bake: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for o in orphans {
        by_bake.entry(o.bake_id).or_default().push(o.resource);
    }
    let mut errors = Vec::new();
    for (id, rs) in by_bake {
        // A journal in the shared state (a runner gone): brought here, and appended to there.
        if let Some(b) = BakeId::parse(&id) {
            if let Err(e) = journal::pull(root, &b).await {
                errors.push(e);
            }
        }
        let handle = BakeId::parse(&id)
            .map(|b| journal::journal_path(root, &b))
            .filter(|p| p.exists())
            .and_then(|p| journal::Journal::open(&p).ok())
            .map(JournalHandle::new);
        errors.extend(teardown::remove(aws, handle.as_ref(), rs, Vec::new(), &BTreeMap::new(), None).await);
    }
    errors
}

/// Every region the account can use.
pub async fn all_regions(aws: &Aws) -> Result<Vec<String>> {
    let region = aws.default_region().unwrap_or_else(|| "us-east-1".into());
    let r = aws.clients(&region).ec2.describe_regions().send().await.map_err(|e| Error::aws("ec2:DescribeRegions", "the account's regions", &region, &e))?;
    let mut v: Vec<String> = r.regions().iter().filter_map(|r| r.region_name().map(str::to_string)).collect();
    v.sort();
    Ok(v)
}
