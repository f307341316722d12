//! `bake cleanup BAKE_ID` (replay a journal, then sweep by the bake's tag) and
//! `bake cleanup --orphans` (bake-managed resources whose bake is not running).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::Filter;

use crate::aws::Aws;
use crate::error::{Error, Result};
use crate::journal::{self, BakeId, Kind, Resource};
use crate::pipeline::JournalHandle;
use crate::stages::cleanup;

pub struct Outcome {
    pub removed: Vec<Resource>,
    pub errors: Vec<Error>,
}

/// Replays `id`'s journal (restoring parameters, removing what is live), then removes whatever
/// still carries its tag. Safe to run again: what is gone counts as done.
pub async fn replay(aws: &Aws, root: &Path, id: &BakeId, extra_regions: &[String]) -> Result<Outcome> {
    let path = journal::journal_path(root, id);
    let mut regions: BTreeSet<String> = extra_regions.iter().cloned().collect();
    let mut born = BTreeMap::new();
    let (mut live, published, handle) = if path.exists() {
        let state = journal::state(&journal::read(&path)?);
        if journal::is_running(&state) {
            let pid = state.started.as_ref().map(|s| s.pid).unwrap_or(0);
            return Err(Error::Other(format!("bake {id} is still running (pid {pid}); interrupt it, or wait for it to end")));
        }
        if let Some(st) = &state.started {
            regions.insert(st.region.clone());
            regions.extend(st.regions.iter().cloned());
        }
        regions.extend(state.live.iter().chain(&state.kept).filter(|r| r.region != "global").map(|r| r.region.clone()));
        born = state.born.clone();
        (state.live, state.published, Some(JournalHandle::new(journal::Journal::open(&path)?)))
    } else {
        if let Some(r) = aws.default_region() {
            regions.insert(r);
        }
        (Vec::new(), Vec::new(), None)
    };
    for r in cleanup::find_by_id(aws, id, &regions).await? {
        if !live.contains(&r) {
            live.push(r);
        }
    }
    let removed = live.clone();
    let errors = cleanup::remove(aws, handle.as_ref(), live, published, &born, None).await;
    if errors.is_empty() {
        if let Some(h) = &handle {
            h.append(journal::Entry::Finished { status: "cleaned".into(), at: journal::now_rfc3339() })?;
        }
    }
    Ok(Outcome { removed, errors })
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

/// Every bake-managed resource in `regions` (and IAM under /bake/) whose bake is not running and
/// which is older than `older_than`. Finished images and their snapshots are never orphans.
pub async fn find_orphans(aws: &Aws, root: &Path, regions: &[String], older_than: Duration) -> Result<Vec<Orphan>> {
    let running = running(root);
    let mut out = Vec::new();
    for region in regions {
        for (r, tags) in cleanup::find_tagged(aws, region, Filter::builder().name("tag-key").values("bake:managed").build()).await? {
            let id = tags.get("bake:id").cloned().unwrap_or_default();
            out.push(Orphan { resource: r, bake_id: id, age: age_of(tags.get("bake:created").map(String::as_str)) });
        }
    }
    let region = aws.default_region().or_else(|| regions.first().cloned()).unwrap_or_else(|| "us-east-1".into());
    let c = aws.clients(&region);
    let roles = c.iam.list_roles().path_prefix(crate::stages::iam::PATH).send().await.map_err(|e| Error::aws("iam:ListRoles", "roles under /bake/", "global", &e))?;
    for role in roles.roles() {
        let name = role.role_name().to_string();
        let age = SystemTime::try_from(*role.create_date()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
        out.push(Orphan { resource: Resource::new(Kind::IamRole, &name, "global"), bake_id: name.trim_start_matches("bake-").to_string(), age });
    }
    let profiles = c
        .iam
        .list_instance_profiles()
        .path_prefix(crate::stages::iam::PATH)
        .send()
        .await
        .map_err(|e| Error::aws("iam:ListInstanceProfiles", "instance profiles under /bake/", "global", &e))?;
    for p in profiles.instance_profiles() {
        let name = p.instance_profile_name().to_string();
        let age = SystemTime::try_from(*p.create_date()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
        out.push(Orphan { resource: Resource::new(Kind::InstanceProfile, &name, "global"), bake_id: name.trim_start_matches("bake-").to_string(), age });
    }
    out.retain(|o| !running.contains(&o.bake_id) && o.age.map(|a| a >= older_than).unwrap_or(true));
    Ok(out)
}

/// Removes orphans, journaling into their bake's journal when it still exists.
pub async fn remove_orphans(aws: &Aws, root: &Path, orphans: Vec<Orphan>) -> Vec<Error> {
    let mut by_bake: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for o in orphans {
        by_bake.entry(o.bake_id).or_default().push(o.resource);
    }
    let mut errors = Vec::new();
    for (id, rs) in by_bake {
        let handle = BakeId::parse(&id)
            .map(|b| journal::journal_path(root, &b))
            .filter(|p| p.exists())
            .and_then(|p| journal::Journal::open(&p).ok())
            .map(JournalHandle::new);
        errors.extend(cleanup::remove(aws, handle.as_ref(), rs, Vec::new(), &BTreeMap::new(), None).await);
    }
    errors
}

/// Every region the account can use.
pub async fn all_regions(aws: &Aws) -> Result<Vec<String>> {
    let region = aws.default_region().unwrap_or_else(|| "us-east-1".into());
    let r = aws
        .clients(&region)
        .ec2
        .describe_regions()
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeRegions", "the account's regions", &region, &e))?;
    let mut v: Vec<String> = r.regions().iter().filter_map(|r| r.region_name().map(str::to_string)).collect();
    v.sort();
    Ok(v)
}
