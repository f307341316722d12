//! Cleanup, always, in reverse: published parameters restored, images and snapshots removed (on
//! failure), the builder terminated (and waited for), its security group deleted (retrying while
//! its network interface lingers), the instance profile and role deleted. AWS's "not found"
//! counts as done, so cleanup can run again and again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::types::Filter;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use backon::{ExponentialBuilder, Retryable};

use crate::aws::Aws;
use crate::error::{is_not_found, Error, Result};
use crate::journal::{self, BakeId, Entry, Kind, Resource};
use crate::pipeline::{Ctx, JournalHandle};
use crate::progress::Reporter;

/// The tag that marks an image (and its snapshots) as a finished bake's product.
pub const COMPLETE: &str = "bake:complete";

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
fn unless_gone<T, E, R>(r: std::result::Result<T, SdkError<E, R>>, action: &str, resource: String, region: &str) -> Result<Option<T>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(e.code()) => Ok(None),
        Err(e) => Err(Error::aws(action, resource, region, &e)),
    }
}

/// Deletes one resource; Ok when it is gone (already gone included).
pub async fn delete(aws: &Aws, r: &Resource) -> Result<()> {
    let region = if r.region == "global" { aws.default_region().unwrap_or_else(|| "us-east-1".into()) } else { r.region.clone() };
    let c = aws.clients(&region);
    let id = r.id.as_str();
    match r.kind {
        Kind::Instance => {
            let r = c.ec2.terminate_instances().instance_ids(id).send().await;
            if unless_gone(r, "ec2:TerminateInstances", format!("builder {id}"), &region)?.is_none() {
                return Ok(());
            }
            c.ec2
                .wait_until_instance_terminated()
                .instance_ids(id)
                .wait(Duration::from_secs(900))
                .await
                .map_err(|e| Error::Wait {
                    what: "builder".into(),
                    resource: id.into(),
                    region: region.clone(),
                    why: crate::stages::launch::waiter_why(&e, "terminated", crate::config::Secs(900)),
                })?;
        }
        Kind::SecurityGroup => {
            // The builder's network interface can outlive the instance by a minute or two.
            let del = || async {
                let r = c.ec2.delete_security_group().group_id(id).send().await;
                unless_gone(r, "ec2:DeleteSecurityGroup", format!("security group {id}"), &region).map(drop)
            };
            del.retry(ExponentialBuilder::default().with_min_delay(Duration::from_secs(2)).with_max_delay(Duration::from_secs(20)).with_max_times(12))
                .sleep(tokio::time::sleep)
                .when(|e: &Error| e.code() == Some("DependencyViolation"))
                .await?;
        }
        Kind::InstanceProfile => {
            let r = c.iam.get_instance_profile().instance_profile_name(id).send().await;
            let Some(p) = unless_gone(r, "iam:GetInstanceProfile", format!("instance profile {id}"), "global")? else { return Ok(()) };
            for role in p.instance_profile().map(|p| p.roles()).unwrap_or_default() {
                let r = c.iam.remove_role_from_instance_profile().instance_profile_name(id).role_name(role.role_name()).send().await;
                unless_gone(r, "iam:RemoveRoleFromInstanceProfile", format!("instance profile {id}"), "global")?;
            }
            let r = c.iam.delete_instance_profile().instance_profile_name(id).send().await;
            unless_gone(r, "iam:DeleteInstanceProfile", format!("instance profile {id}"), "global")?;
        }
        Kind::IamRole => {
            let r = c.iam.list_instance_profiles_for_role().role_name(id).send().await;
            let Some(profiles) = unless_gone(r, "iam:ListInstanceProfilesForRole", format!("role {id}"), "global")? else { return Ok(()) };
            for p in profiles.instance_profiles() {
                let _ = c.iam.remove_role_from_instance_profile().instance_profile_name(p.instance_profile_name()).role_name(id).send().await;
            }
            let inline = c.iam.list_role_policies().role_name(id).send().await.map_err(|e| Error::aws("iam:ListRolePolicies", format!("role {id}"), "global", &e))?;
            for name in inline.policy_names() {
                let r = c.iam.delete_role_policy().role_name(id).policy_name(name).send().await;
                unless_gone(r, "iam:DeleteRolePolicy", format!("role {id}"), "global")?;
            }
            let attached = c.iam.list_attached_role_policies().role_name(id).send().await.map_err(|e| Error::aws("iam:ListAttachedRolePolicies", format!("role {id}"), "global", &e))?;
            for arn in attached.attached_policies().iter().filter_map(|p| p.policy_arn()) {
                let r = c.iam.detach_role_policy().role_name(id).policy_arn(arn).send().await;
                unless_gone(r, "iam:DetachRolePolicy", format!("role {id}"), "global")?;
            }
            let r = c.iam.delete_role().role_name(id).send().await;
            unless_gone(r, "iam:DeleteRole", format!("role {id}"), "global")?;
        }
        Kind::Image => {
            let r = c.ec2.deregister_image().image_id(id).send().await;
            unless_gone(r, "ec2:DeregisterImage", format!("image {id}"), &region)?;
        }
        Kind::Snapshot => {
            // Right after its image is deregistered a snapshot may still count as in use.
            let del = || async {
                let r = c.ec2.delete_snapshot().snapshot_id(id).send().await;
                unless_gone(r, "ec2:DeleteSnapshot", format!("snapshot {id}"), &region).map(drop)
            };
            del.retry(ExponentialBuilder::default().with_min_delay(Duration::from_secs(1)).with_max_delay(Duration::from_secs(10)).with_max_times(6))
                .sleep(tokio::time::sleep)
                .when(|e: &Error| e.code() == Some("InvalidSnapshot.InUse"))
                .await?;
        }
    }
    Ok(())
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
    mut live: Vec<Resource>,
    published: Vec<(String, String, Option<String>)>,
    report: Option<&Reporter>,
) -> Vec<Error> {
    let mut errors = Vec::new();
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
            Err(e) => errors.push(e),
        }
    }
    // Images before their snapshots, the builder before its group and identity.
    let positions: BTreeMap<Resource, usize> = live.iter().cloned().enumerate().map(|(i, r)| (r, i)).collect();
    live.sort_by_key(|r| (order(r.kind), std::cmp::Reverse(positions.get(r).copied().unwrap_or(0))));
    for r in live {
        match delete(aws, &r).await {
            Ok(()) => {
                if let Some(j) = journal {
                    let _ = j.append(Entry::Deleted { resource: r.clone(), at: journal::now_rfc3339() });
                }
                if let Some(rep) = report {
                    rep.info(&format!("removed {r}"));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    errors
}

fn journal_state(ctx: &Ctx) -> journal::State {
    let path = std::path::PathBuf::from(ctx.journal.path());
    journal::read(&path).map(|e| journal::state(&e)).unwrap_or_default()
}

/// After a successful bake: only the temporaries go.
pub async fn after_success(ctx: &mut Ctx) -> Vec<Error> {
    let s = journal_state(ctx);
    let temporaries: Vec<Resource> = s.live.into_iter().filter(|r| !matches!(r.kind, Kind::Image | Kind::Snapshot)).collect();
    remove(&ctx.aws, Some(&ctx.journal), temporaries, Vec::new(), Some(&ctx.report)).await
}

/// After a failure or interruption: everything this bake made — what the journal lists, then
/// whatever still carries the bake's tag (an interruption can fall between a create call's answer
/// and its journal line).
pub async fn after_failure(ctx: &mut Ctx) -> Vec<Error> {
    let s = journal_state(ctx);
    // Images marked as the product before a later stage failed are not a product after all.
    let mut all = s.live;
    all.extend(s.kept);
    let mut errors = remove(&ctx.aws, Some(&ctx.journal), all, s.published, Some(&ctx.report)).await;
    let regions: BTreeSet<String> = std::iter::once(ctx.region.clone()).chain(ctx.plan.image.regions.iter().cloned()).collect();
    match find_by_id(&ctx.aws, &ctx.id, &regions).await {
        Ok(left) if !left.is_empty() => errors.extend(remove(&ctx.aws, Some(&ctx.journal), left, Vec::new(), Some(&ctx.report)).await),
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    errors
}

/// Marks images and snapshots as the bake's product: tagged `bake:complete`, journaled as kept.
pub async fn keep_products(ctx: &Ctx) -> Result<()> {
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
        let mut found = find_tagged(aws, region, Filter::builder().name("tag:bake:id").values(id.as_str()).build()).await?;
        out.append(&mut found.iter_mut().map(|(r, _)| r.clone()).collect());
    }
    let region = aws.default_region().unwrap_or_else(|| "us-east-1".into());
    let c = aws.clients(&region);
    let name = format!("bake-{id}");
    if c.iam.get_instance_profile().instance_profile_name(&name).send().await.is_ok() {
        out.push(Resource::new(Kind::InstanceProfile, &name, "global"));
    }
    if c.iam.get_role().role_name(&name).send().await.is_ok() {
        out.push(Resource::new(Kind::IamRole, &name, "global"));
    }
    Ok(out)
}

/// bake-managed EC2 resources matching `filter` in one region, with their tags; products
/// (images and snapshots tagged bake:complete) are left out.
pub async fn find_tagged(aws: &Aws, region: &str, filter: Filter) -> Result<Vec<(Resource, BTreeMap<String, String>)>> {
    let c = aws.clients(region);
    let mut out = Vec::new();
    let tagmap = |tags: &[aws_sdk_ec2::types::Tag]| -> BTreeMap<String, String> {
        tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect()
    };
    let r = c
        .ec2
        .describe_instances()
        .filters(filter.clone())
        .filters(Filter::builder().name("instance-state-name").values("pending").values("running").values("stopping").values("stopped").values("shutting-down").build())
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeInstances", "bake-managed instances", region, &e))?;
    for i in r.reservations().iter().flat_map(|r| r.instances()) {
        out.push((Resource::new(Kind::Instance, i.instance_id().unwrap_or_default(), region), tagmap(i.tags())));
    }
    let r = c
        .ec2
        .describe_security_groups()
        .filters(filter.clone())
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeSecurityGroups", "bake-managed security groups", region, &e))?;
    for g in r.security_groups() {
        out.push((Resource::new(Kind::SecurityGroup, g.group_id().unwrap_or_default(), region), tagmap(g.tags())));
    }
    let r = c
        .ec2
        .describe_images()
        .owners("self")
        .filters(filter.clone())
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeImages", "bake-managed images", region, &e))?;
    for i in r.images() {
        let tags = tagmap(i.tags());
        if !tags.contains_key(COMPLETE) {
            out.push((Resource::new(Kind::Image, i.image_id().unwrap_or_default(), region), tags));
        }
    }
    let r = c
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter)
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeSnapshots", "bake-managed snapshots", region, &e))?;
    for s in r.snapshots() {
        let tags = tagmap(s.tags());
        if !tags.contains_key(COMPLETE) {
            out.push((Resource::new(Kind::Snapshot, s.snapshot_id().unwrap_or_default(), region), tags));
        }
    }
    Ok(out)
}
