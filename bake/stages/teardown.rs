//! Cleanup, always, in reverse: published parameters restored, images and snapshots removed (on
//! failure), the builder terminated (and waited for), its security group deleted (retrying while
//! its network interface lingers), the instance profile and role deleted. AWS's "not found"
//! counts as done, so cleanup can run again and again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::wait::{retry, Backoff, CONSISTENCY_WINDOW};

use aws_sdk_ec2::types::Filter;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::aws::Aws;
use crate::error::{is_not_found, Error, Result};
use crate::journal::JournalHandle;
use crate::journal::{self, BakeId, Entry, Kind, Resource};
use crate::progress::Reporter;
use crate::stages::Baking;

/// The tag that marks an image (and its snapshots) as a finished bake's product.
pub const COMPLETE: &str = crate::tags::COMPLETE;

fn order(k: Kind) -> u8 {
    match k {
        Kind::Image => 0,
        Kind::Snapshot => 1,
        Kind::Instance => 2,
        Kind::SecurityGroup => 3,
        Kind::InstanceProfile => 4,
        Kind::IamRole => 5,
    }
}

/// The answer of one deleting (or looking-up) call: `Some` when it succeeded, `None` when the
/// resource was already gone (AWS's NotFound counts as done), an error otherwise.
fn unless_gone<T, E>(
    r: std::result::Result<T, SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>>,
    action: &str,
    resource: String,
    region: &str,
) -> Result<Option<T>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(e.code()) => Ok(None),
        Err(e) => Err(Error::aws(action, resource, region, &e)),
    }
}

/// Runs a deleting call until its answer can be believed: AWS's NotFound (`Ok(None)`) for a
/// resource created less than [`CONSISTENCY_WINDOW`] ago may only mean it is not visible yet.
async fn believed<T, F, Fut>(born: Option<SystemTime>, mut op: F) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let young_until = born.map(|t| t + CONSISTENCY_WINDOW);
    let mut delay = Duration::from_millis(200);
    loop {
        let r = op().await?;
        let Some(until) = young_until.filter(|_| r.is_none()) else { return Ok(r) };
        let Ok(left) = until.duration_since(SystemTime::now()) else { return Ok(r) };
        tokio::time::sleep(delay.min(left)).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Deletes one resource; Ok when it is gone (already gone included), with what else went with
/// it (an image's snapshots, which a crash may have kept out of the journal). `born` is when
/// bake made it (from the journal), when known.
pub async fn delete(aws: &Aws, r: &Resource, born: Option<SystemTime>) -> Result<Vec<Resource>> {
    let region = if r.region == "global" { aws.default_region().unwrap_or_else(|| "us-east-1".into()) } else { r.region.clone() };
    let c = aws.clients(&region);
    let id = r.id.as_str();
    match r.kind {
        Kind::Instance => {
            let terminate =
                || async { unless_gone(c.ec2.terminate_instances().instance_ids(id).send().await, "ec2:TerminateInstances", format!("builder {id}"), &region) };
            if believed(born, terminate).await?.is_none() {
                return Ok(Vec::new());
            }
            crate::wait::instance(&c, "builder", id, aws_sdk_ec2::types::InstanceStateName::Terminated, Duration::from_secs(900)).await?;
        }
        Kind::SecurityGroup => {
            // The builder's network interface can outlive the instance by a minute or two.
            let del = || async {
                let r = c.ec2.delete_security_group().group_id(id).send().await;
                unless_gone(r, "ec2:DeleteSecurityGroup", format!("security group {id}"), &region)
            };
            let retried = || {
                let b = Backoff::times(Duration::from_secs(2), Duration::from_secs(20), 12);
                retry(b, |e: &Error| e.code() == Some("DependencyViolation"), |_, _| {}, del)
            };
            believed(born, retried).await?;
        }
        Kind::InstanceProfile => {
            // What bake put in it (the role of the same name), then the profile; whatever else
            // a conflict says it holds is looked up and taken out.
            let remove = || c.iam.remove_role_from_instance_profile().instance_profile_name(id).role_name(id).send();
            if !iam_there(&c, r.kind, id, born, "iam:RemoveRoleFromInstanceProfile", remove).await? {
                return Ok(Vec::new());
            }
            if iam_deleted(c.iam.delete_instance_profile().instance_profile_name(id).send().await, "iam:DeleteInstanceProfile", r.kind, id)? {
                return Ok(Vec::new());
            }
            let r = c.iam.get_instance_profile().instance_profile_name(id).send().await;
            let Some(p) = unless_gone(r, "iam:GetInstanceProfile", format!("instance profile {id}"), "global")? else { return Ok(Vec::new()) };
            for role in p.instance_profile().map(|p| p.roles()).unwrap_or_default() {
                let r = c.iam.remove_role_from_instance_profile().instance_profile_name(id).role_name(role.role_name()).send().await;
                unless_gone(r, "iam:RemoveRoleFromInstanceProfile", format!("instance profile {id}"), "global")?;
            }
            let r = c.iam.delete_instance_profile().instance_profile_name(id).send().await;
            unless_gone(r, "iam:DeleteInstanceProfile", format!("instance profile {id}"), "global")?;
        }
        Kind::IamRole => {
            // What bake attached and put (crate::stages::iam), then the role; a conflict (a
            // profile still holding it, a policy someone added) is looked up and undone.
            let detach = || c.iam.detach_role_policy().role_name(id).policy_arn(crate::plan::SSM_CORE_POLICY).send();
            if !iam_there(&c, r.kind, id, born, "iam:DetachRolePolicy", detach).await? {
                return Ok(Vec::new());
            }
            let r = c.iam.delete_role_policy().role_name(id).policy_name(crate::stages::iam::INLINE_POLICY).send().await;
            unless_gone(r, "iam:DeleteRolePolicy", format!("role {id}"), "global")?;
            if iam_deleted(c.iam.delete_role().role_name(id).send().await, "iam:DeleteRole", Kind::IamRole, id)? {
                return Ok(Vec::new());
            }
            let r = c.iam.list_instance_profiles_for_role().role_name(id).into_paginator().items().send().try_collect().await;
            let Some(profiles) = unless_gone(r, "iam:ListInstanceProfilesForRole", format!("role {id}"), "global")? else { return Ok(Vec::new()) };
            for p in &profiles {
                let r = c.iam.remove_role_from_instance_profile().instance_profile_name(p.instance_profile_name()).role_name(id).send().await;
                unless_gone(r, "iam:RemoveRoleFromInstanceProfile", format!("instance profile {}", p.instance_profile_name()), "global")?;
            }
            let inline: Vec<String> = c
                .iam
                .list_role_policies()
                .role_name(id)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("iam:ListRolePolicies", format!("role {id}"), "global", &e))?;
            for name in &inline {
                let r = c.iam.delete_role_policy().role_name(id).policy_name(name).send().await;
                unless_gone(r, "iam:DeleteRolePolicy", format!("role {id}"), "global")?;
            }
            let attached: Vec<aws_sdk_iam::types::AttachedPolicy> = c
                .iam
                .list_attached_role_policies()
                .role_name(id)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("iam:ListAttachedRolePolicies", format!("role {id}"), "global", &e))?;
            for arn in attached.iter().filter_map(|p| p.policy_arn()) {
                let r = c.iam.detach_role_policy().role_name(id).policy_arn(arn).send().await;
                unless_gone(r, "iam:DetachRolePolicy", format!("role {id}"), "global")?;
            }
            let r = c.iam.delete_role().role_name(id).send().await;
            unless_gone(r, "iam:DeleteRole", format!("role {id}"), "global")?;
        }
        Kind::Image => {
            let describe = || async {
                // A disabled image (prune retires them) is listed only when asked for.
                let r = unless_gone(
                    c.ec2.describe_images().image_ids(id).include_disabled(true).send().await,
                    "ec2:DescribeImages",
                    format!("image {id}"),
                    &region,
                )?;
                Ok(r.and_then(|d| d.images().iter().find(|i| i.image_id() == Some(id)).map(crate::aws::snapshot_ids)))
            };
            let Some(snapshots) = believed(born, describe).await? else { return Ok(Vec::new()) };
            let deregister =
                || async { unless_gone(c.ec2.deregister_image().image_id(id).send().await, "ec2:DeregisterImage", format!("image {id}"), &region) };
            believed(born, deregister).await?;
            let mut also = Vec::new();
            for s in snapshots {
                delete_snapshot(&c, &s, born).await?;
                also.push(Resource::new(Kind::Snapshot, s, &region));
            }
            return Ok(also);
        }
        Kind::Snapshot => delete_snapshot(&c, id, born).await?,
    }
    Ok(Vec::new())
}

async fn delete_snapshot(c: &crate::aws::Clients, id: &str, born: Option<SystemTime>) -> Result<()> {
    // Right after its image is deregistered a snapshot may still count as in use.
    let del = || async {
        let r = c.ec2.delete_snapshot().snapshot_id(id).send().await;
        unless_gone(r, "ec2:DeleteSnapshot", format!("snapshot {id}"), &c.region)
    };
    let retried = || {
        let b = Backoff::times(Duration::from_secs(1), Duration::from_secs(10), 6);
        retry(b, |e: &Error| e.code() == Some("InvalidSnapshot.InUse"), |_, _| {}, del)
    };
    believed(born, retried).await?;
    Ok(())
}

/// The names of bake's IAM roles (or instance profiles) under its path, every page.
pub async fn iam_names(c: &crate::aws::Clients, kind: Kind) -> Result<Vec<String>> {
    let path = crate::config::policy::BAKE_PATH;
    match kind {
        Kind::IamRole => {
            let roles: Vec<aws_sdk_iam::types::Role> = c
                .iam
                .list_roles()
                .path_prefix(path)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("iam:ListRoles", format!("roles under {path}"), "global", &e))?;
            Ok(roles.iter().filter(|r| r.path() == path).map(|r| r.role_name().to_string()).collect())
        }
        Kind::InstanceProfile => {
            let profiles: Vec<aws_sdk_iam::types::InstanceProfile> = c
                .iam
                .list_instance_profiles()
                .path_prefix(path)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("iam:ListInstanceProfiles", format!("instance profiles under {path}"), "global", &e))?;
            Ok(profiles.iter().filter(|p| p.path() == path).map(|p| p.instance_profile_name().to_string()).collect())
        }
        other => Err(Error::Other(format!("{other} is not an IAM resource"))),
    }
}

async fn iam_exists(c: &crate::aws::Clients, kind: Kind, name: &str) -> Result<bool> {
    Ok(iam_names(c, kind).await?.iter().any(|n| n == name))
}

/// The first call on one of bake's IAM roles or profiles (`name`): whether the resource is there.
/// A NotFound (the resource, or only what the call names in it, is missing) or an AccessDenied
/// (IAM authorizes a call on a role or profile that does not exist against a path-less ARN, which
/// a policy confined to /bake/ denies) is settled by listing bake's path, believed only once the
/// resource is old enough to be visible.
async fn iam_there<T, E, F, Fut>(c: &crate::aws::Clients, kind: Kind, name: &str, born: Option<SystemTime>, action: &str, op: F) -> Result<bool>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>>>,
{
    match op().await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(e.code()) || e.code() == Some("AccessDenied") => {
            Ok(believed(born, || async { Ok(iam_exists(c, kind, name).await?.then_some(())) }).await?.is_some())
        }
        Err(e) => Err(Error::aws(action, iam_what(kind, name), "global", &e)),
    }
}

/// How errors name an IAM role or profile (`role bake-b-…`, `instance profile bake-b-…`).
fn iam_what(kind: Kind, name: &str) -> String {
    match kind {
        Kind::IamRole => format!("role {name}"),
        _ => format!("instance profile {name}"),
    }
}

/// The answer of deleting an IAM role or profile: true when it is gone, false when something
/// still holds on to it (DeleteConflict: look and undo it), an error otherwise.
fn iam_deleted<T, E>(
    r: std::result::Result<T, SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>>,
    action: &str,
    kind: Kind,
    name: &str,
) -> Result<bool>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match r {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(e.code()) => Ok(true),
        Err(e) if e.code() == Some("DeleteConflict") => Ok(false),
        Err(e) => Err(Error::aws(action, iam_what(kind, name), "global", &e)),
    }
}

/// Puts a parameter back the way it was before the bake (or deletes it if it was new).
pub async fn revert(aws: &Aws, region: &str, name: &str, previous: &Option<String>) -> Result<()> {
    let c = aws.clients(region);
    match previous {
        Some(v) => c
            .ssm
            .put_parameter()
            .name(name)
            .value(v)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .data_type("aws:ec2:image")
            .overwrite(true)
            .send()
            .await
            .map(drop)
            .map_err(|e| Error::aws("ssm:PutParameter", format!("parameter {name} (restoring {v})"), region, &e)),
        None => match c.ssm.delete_parameter().name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(e.code()) => Ok(()),
            Err(e) => Err(Error::aws("ssm:DeleteParameter", format!("parameter {name}"), region, &e)),
        },
    }
}

/// Removes `live` (and reverts `published`), recording each in the journal; returns what could
/// not be removed.
pub async fn remove(
    aws: &Aws,
    journal: Option<&JournalHandle>,
    live: Vec<Resource>,
    published: Vec<(String, String, Option<String>)>,
    born: &BTreeMap<Resource, SystemTime>,
    report: Option<&Reporter>,
) -> Vec<Error> {
    remove_tracked(aws, journal, live, published, born, report).await.failed.into_iter().map(|(_, e)| e).collect()
}

/// What one removal did: what failed (with the resource, `None` for a parameter) and what is gone.
struct Removal {
    failed: Vec<(Option<Resource>, Error)>,
    gone: BTreeSet<Resource>,
}

async fn remove_tracked(
    aws: &Aws,
    journal: Option<&JournalHandle>,
    mut live: Vec<Resource>,
    published: Vec<(String, String, Option<String>)>,
    born: &BTreeMap<Resource, SystemTime>,
    report: Option<&Reporter>,
) -> Removal {
    let mut errors: Vec<(Option<Resource>, Error)> = Vec::new();
    for (region, name, previous) in published.iter().rev() {
        match revert(aws, region, name, previous).await {
            Ok(()) => {
                if let Some(j) = journal {
                    let _ = j.append(Entry::Reverted { region: region.clone(), name: name.clone(), at: journal::now_rfc3339() });
                }
                if let Some(r) = report {
                    r.info(&format!("restored parameter {name} in {region}"));
                }
            }
            Err(e) => errors.push((None, e)),
        }
    }
    // Images before their snapshots, the builder before its group and identity.
    let positions: BTreeMap<Resource, usize> = live.iter().cloned().enumerate().map(|(i, r)| (r, i)).collect();
    live.sort_by_key(|r| (order(r.kind), std::cmp::Reverse(positions.get(r).copied().unwrap_or(0))));
    let mut gone: BTreeSet<Resource> = BTreeSet::new();
    for r in live {
        if gone.contains(&r) {
            continue;
        }
        match delete(aws, &r, born.get(&r).copied()).await.map_err(|e| Error::Other(format!("{r}: {e}"))) {
            Ok(also) => {
                for d in std::iter::once(r).chain(also) {
                    if let Some(j) = journal {
                        let _ = j.append(Entry::Deleted { resource: d.clone(), at: journal::now_rfc3339() });
                    }
                    if let Some(rep) = report {
                        rep.info(&format!("removed {d}"));
                    }
                    gone.insert(d);
                }
            }
            Err(e) => errors.push((Some(r), e)),
        }
    }
    Removal { failed: errors, gone }
}

fn journal_state(ctx: &Baking) -> journal::State {
    let path = std::path::PathBuf::from(ctx.journal.path());
    journal::read(&path).map(|e| journal::state(&e)).unwrap_or_default()
}

/// After a successful bake: only the temporaries go.
pub async fn after_success(ctx: &mut Baking) -> Vec<Error> {
    let s = journal_state(ctx);
    let temporaries: Vec<Resource> = s.live.into_iter().filter(|r| !matches!(r.kind, Kind::Image | Kind::Snapshot)).collect();
    remove(&ctx.aws, Some(&ctx.journal), temporaries, Vec::new(), &s.born, Some(&ctx.report)).await
}

/// What a teardown after a failure could not do: resources it could not remove, and whether it
/// could not look for more (the sweep by tag failed: nothing is known to remain, nothing is known
/// not to).
#[derive(Default)]
pub struct Left {
    pub errors: Vec<Error>,
    pub unchecked: Option<Error>,
}

/// After a failure or interruption: everything this bake made — what the journal lists, then
/// whatever still carries the bake's tag (an interruption can fall between a create call's answer
/// and its journal line).
pub async fn after_failure(ctx: &mut Baking) -> Left {
    let s = journal_state(ctx);
    // Images marked as the product before a later stage failed are not a product after all.
    let mut all = s.live;
    all.extend(s.kept);
    let first = remove_tracked(&ctx.aws, Some(&ctx.journal), all, s.published, &s.born, Some(&ctx.report)).await;
    let mut left = Left::default();
    let regions: BTreeSet<String> = std::iter::once(ctx.region.clone()).chain(ctx.plan.image.regions.iter().cloned()).collect();
    // Twice: something whose create call was in flight when the bake stopped may become visible
    // to a describe only a moment later (eventual consistency). What a pass could not remove is
    // found and tried again by the next: the last pass's failures are what remains, and a
    // failure a later pass made good is no failure.
    let mut removed_later: BTreeSet<Resource> = BTreeSet::new();
    let mut sweep_failed: Vec<Error> = Vec::new();
    for pass in 0..2 {
        if pass == 1 {
            tokio::time::sleep(SECOND_SWEEP).await;
        }
        match find_by_id(&ctx.aws, &ctx.id, &regions).await {
            Ok(found) => {
                let r = remove_tracked(&ctx.aws, Some(&ctx.journal), found, Vec::new(), &s.born, Some(&ctx.report)).await;
                removed_later.extend(r.gone);
                sweep_failed = r.failed.into_iter().map(|(_, e)| e).collect();
            }
            Err(e) => {
                left.unchecked = Some(e);
                break;
            }
        }
    }
    left.errors = first.failed.into_iter().filter(|(r, _)| r.as_ref().is_none_or(|r| !removed_later.contains(r))).map(|(_, e)| e).collect();
    left.errors.extend(sweep_failed);
    left
}

/// How long after the first sweep by tag the second one looks.
const SECOND_SWEEP: Duration = Duration::from_secs(2);

/// Marks images and snapshots as the bake's product: tagged `bake:complete`, journaled as kept.
pub async fn keep_products(ctx: &Baking) -> Result<()> {
    let s = journal_state(ctx);
    let mut by_region: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for r in s.live.iter().filter(|r| matches!(r.kind, Kind::Image | Kind::Snapshot)) {
        by_region.entry(r.region.clone()).or_default().push(r.clone());
    }
    for (region, rs) in &by_region {
        let c = ctx.aws.clients(region);
        let ids: Vec<String> = rs.iter().map(|r| r.id.clone()).collect();
        c.ec2
            .create_tags()
            .set_resources(Some(ids))
            .tags(aws_sdk_ec2::types::Tag::builder().key(COMPLETE).value("true").build())
            .send()
            .await
            .map_err(|e| Error::aws("ec2:CreateTags", format!("the images of bake {}", ctx.id), region, &e))?;
    }
    for r in by_region.into_values().flatten() {
        ctx.journal.append(Entry::Kept { resource: r, at: journal::now_rfc3339() })?;
    }
    Ok(())
}

/// Resources carrying `bake:id = id` in `regions` (and IAM's `bake-<id>`), except finished
/// products: what a crash may have left outside the journal.
pub async fn find_by_id(aws: &Aws, id: &BakeId, regions: &BTreeSet<String>) -> Result<Vec<Resource>> {
    let mut out = Vec::new();
    for region in regions {
        let mut found = find_tagged(aws, region, Filter::builder().name(format!("tag:{}", crate::tags::ID)).values(id.as_str()).build()).await?;
        out.append(&mut found.iter_mut().map(|(r, _)| r.clone()).collect());
    }
    let region = aws.default_region().unwrap_or_else(|| "us-east-1".into());
    let c = aws.clients(&region);
    let name = format!("bake-{id}");
    for kind in [Kind::InstanceProfile, Kind::IamRole] {
        if iam_exists(&c, kind, &name).await? {
            out.push(Resource::new(kind, &name, "global"));
        }
    }
    Ok(out)
}

/// bake-managed EC2 resources matching `filter` in one region, with their tags; products
/// (images and snapshots tagged bake:complete) are left out. Every page of every list.
pub async fn find_tagged(aws: &Aws, region: &str, filter: Filter) -> Result<Vec<(Resource, BTreeMap<String, String>)>> {
    let c = aws.clients(region);
    let mut out = Vec::new();
    let tagmap = |tags: &[aws_sdk_ec2::types::Tag]| -> BTreeMap<String, String> {
        tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect()
    };
    let missing = |call: &str, what: &str| Error::Other(format!("{call} in {region} answered with a {what} without an id"));
    let live =
        Filter::builder().name("instance-state-name").values("pending").values("running").values("stopping").values("stopped").values("shutting-down").build();
    for i in c.instances("bake-managed instances", vec![filter.clone(), live]).await? {
        let id = i.instance_id().ok_or_else(|| missing("ec2:DescribeInstances", "instance"))?;
        out.push((Resource::new(Kind::Instance, id, region), tagmap(i.tags())));
    }
    for g in c.security_groups("bake-managed security groups", vec![filter.clone()]).await? {
        let id = g.group_id().ok_or_else(|| missing("ec2:DescribeSecurityGroups", "security group"))?;
        out.push((Resource::new(Kind::SecurityGroup, id, region), tagmap(g.tags())));
    }
    for i in c.images("bake-managed images", &["self".to_string()], vec![filter.clone()]).await? {
        let tags = tagmap(i.tags());
        if !tags.contains_key(COMPLETE) {
            let id = i.image_id().ok_or_else(|| missing("ec2:DescribeImages", "image"))?;
            out.push((Resource::new(Kind::Image, id, region), tags));
        }
    }
    for snap in c.own_snapshots("bake-managed snapshots", vec![filter]).await? {
        let tags = tagmap(snap.tags());
        if !tags.contains_key(COMPLETE) {
            let id = snap.snapshot_id().ok_or_else(|| missing("ec2:DescribeSnapshots", "snapshot"))?;
            out.push((Resource::new(Kind::Snapshot, id, region), tags));
        }
    }
    Ok(out)
}
