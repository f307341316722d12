//! Distribute: copy the image to each region in parallel (encrypted with that region's key),
//! share image and snapshots, set the deprecation time, publish the id to SSM in every region.
//! If a copy fails, the bake fails naming the regions that succeeded; cleanup removes them all.

use std::time::Duration;

use aws_sdk_ec2::types::{CreateVolumePermission, CreateVolumePermissionModifications, LaunchPermission, LaunchPermissionModifications, ResourceType};
use aws_sdk_ssm::types::{ParameterType, Tag};
use futures::stream::{self, StreamExt};

use crate::aws::snapshot_ids;
use crate::aws::Clients;
use crate::error::{Error, Result};
use crate::journal::JournalHandle;
use crate::journal::{self, Entry, Kind};
use crate::manifest::{ImageRecord, ParameterRecord};
use crate::stages::tag_spec;
use crate::stages::Baking;

struct Copy {
    region: String,
    result: Result<(String, Vec<String>)>,
}

#[allow(clippy::too_many_arguments)]
async fn copy_one(
    c: Clients,
    journal: JournalHandle,
    source_region: String,
    source_image: String,
    name: String,
    tags: std::collections::BTreeMap<String, String>,
    kms: Option<String>,
    token: String,
    timeout: crate::config::Secs,
) -> Copy {
    let region = c.region.clone();
    let result = async {
        let mut req = c
            .ec2
            .copy_image()
            .source_region(&source_region)
            .source_image_id(&source_image)
            .name(&name)
            .description(format!("copy of {source_image} from {source_region}"))
            .encrypted(true)
            .client_token(token)
            .tag_specifications(tag_spec(ResourceType::Image, &tags))
            .tag_specifications(tag_spec(ResourceType::Snapshot, &tags));
        if let Some(k) = kms {
            req = req.kms_key_id(k);
        }
        let r = req.send().await.map_err(|e| Error::aws("ec2:CopyImage", format!("copy of {source_image}"), &region, &e))?;
        let id = crate::aws::required(r.image_id(), "ec2:CopyImage", &format!("the id of the copy of {source_image}"), &region)?;
        journal.created(crate::journal::Resource::new(Kind::Image, &id, &region))?;
        let mut journaled: Vec<String> = Vec::new();
        let img = crate::wait::image(&c, "copy", &id, timeout.as_duration(), |img| {
            for s in snapshot_ids(img) {
                if !journaled.contains(&s) {
                    journal.created(crate::journal::Resource::new(Kind::Snapshot, &s, &region))?;
                    journaled.push(s);
                }
            }
            Ok(())
        })
        .await?;
        Ok((id, snapshot_ids(&img)))
    }
    .await;
    Copy { region, result }
}

/// AMI Block Public Access in the image's region, read before sharing: recorded in the manifest,
/// and a warning when it is off (bake never shares publicly, but the account could).
async fn public_access_state(ctx: &Baking, c: &Clients) {
    let state = match c.ec2.get_image_block_public_access_state().send().await {
        Ok(r) => match r.image_block_public_access_state() {
            Some(s) => s.to_string(),
            None => "unknown".to_string(),
        },
        Err(e) => {
            let e = Error::aws("ec2:GetImageBlockPublicAccessState", "the account's AMI settings", &c.region, &e);
            ctx.report.info(&format!("could not read AMI Block Public Access: {e}"));
            "unknown".to_string()
        }
    };
    if state != "block-new-sharing" {
        ctx.report.info(&format!(
            "AMI Block Public Access is {state} in {}: bake shares only with the accounts, organizations and OUs it is given, but anyone here could make an image public; turn it on with `aws ec2 enable-image-block-public-access --image-block-public-access-state block-new-sharing --region {}`",
            c.region, c.region
        ));
    }
    if let Ok(mut m) = ctx.public_access.lock() {
        m.insert(c.region.clone(), state);
    }
}

/// Share the image and its snapshots, and set its deprecation time, in one region.
/// Who may launch `image` now: account ids, organization and unit ARNs (and `all`).
pub async fn launch_permissions(c: &Clients, image: &str) -> Result<Vec<LaunchPermission>> {
    let a = c
        .ec2
        .describe_image_attribute()
        .image_id(image)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeImageAttribute", format!("image {image}"), &c.region, &e))?;
    Ok(a.launch_permissions().to_vec())
}

fn permission_text(p: &LaunchPermission) -> String {
    p.user_id()
        .or(p.organization_arn())
        .or(p.organizational_unit_arn())
        .map(str::to_string)
        .or_else(|| p.group().map(|g| format!("group {}", g.as_str())))
        .unwrap_or_else(|| "?".into())
}

/// The image's shares made what the role says now: what it lists is added; what it no longer
/// lists (a share an earlier configuration made, a public one) is taken away, from the image and
/// from its snapshots.
async fn share_and_deprecate(ctx: &Baking, c: &Clients, image: &str, snaps: &[String]) -> Result<()> {
    let spec = &ctx.plan.image;
    let region = c.region.as_str();
    let mut want: Vec<LaunchPermission> = spec.share_accounts.iter().map(|a| LaunchPermission::builder().user_id(a).build()).collect();
    want.extend(spec.share_organizations.iter().map(|o| LaunchPermission::builder().organization_arn(o).build()));
    want.extend(spec.share_ous.iter().map(|o| LaunchPermission::builder().organizational_unit_arn(o).build()));
    // An image this run made requires IMDSv2 of every instance launched from it ("After you set
    // the value to v2.0, you can't undo it": only on images this run made).
    if ctx.fresh.contains(image) {
        c.ec2
            .modify_image_attribute()
            .image_id(image)
            .imds_support(aws_sdk_ec2::types::AttributeValue::builder().value("v2.0").build())
            .send()
            .await
            .map_err(|e| Error::aws("ec2:ModifyImageAttribute", format!("image {image} (ImdsSupport v2.0)"), region, &e))?;
    }
    // An image this run made has no launch permission yet; any other may have some to revoke.
    let have = if ctx.fresh.contains(image) { Vec::new() } else { launch_permissions(c, image).await? };
    let add: Vec<LaunchPermission> = want.iter().filter(|p| !have.contains(p)).cloned().collect();
    let remove: Vec<LaunchPermission> = have.iter().filter(|p| !want.contains(p)).cloned().collect();
    if !add.is_empty() {
        public_access_state(ctx, c).await;
    }
    if !remove.is_empty() {
        let who: Vec<String> = remove.iter().map(permission_text).collect();
        ctx.report.info(&format!("{image} in {region}: no longer shared with {} (the role does not list it)", who.join(", ")));
    }
    if !add.is_empty() || !remove.is_empty() {
        c.ec2
            .modify_image_attribute()
            .image_id(image)
            .launch_permission(
                LaunchPermissionModifications::builder()
                    .set_add(Some(add).filter(|a| !a.is_empty()))
                    .set_remove(Some(remove.clone()).filter(|r| !r.is_empty()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::aws("ec2:ModifyImageAttribute", format!("image {image}"), region, &e))?;
    }
    let vol_add: Vec<CreateVolumePermission> = spec.share_accounts.iter().map(|a| CreateVolumePermission::builder().user_id(a).build()).collect();
    let vol_remove: Vec<CreateVolumePermission> =
        remove.iter().filter_map(|p| p.user_id()).map(|a| CreateVolumePermission::builder().user_id(a).build()).collect();
    // "You may add or remove [...] account IDs from a snapshot's list of create volume
    // permissions, but you cannot do both in a single operation" (ModifySnapshotAttribute).
    for (add, remove) in [(vol_add, Vec::new()), (Vec::new(), vol_remove)] {
        if add.is_empty() && remove.is_empty() {
            continue;
        }
        for s in snaps {
            c.ec2
                .modify_snapshot_attribute()
                .snapshot_id(s)
                .create_volume_permission(
                    CreateVolumePermissionModifications::builder()
                        .set_add(Some(add.clone()).filter(|a| !a.is_empty()))
                        .set_remove(Some(remove.clone()).filter(|r| !r.is_empty()))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| Error::aws("ec2:ModifySnapshotAttribute", format!("snapshot {s}"), region, &e))?;
        }
    }
    if let Some(days) = spec.deprecate_after_days {
        let at = std::time::SystemTime::now()
            .checked_add(Duration::from_secs(u64::from(days) * 86_400))
            .ok_or_else(|| Error::Other(format!("image.deprecate_after_days of roles/{}.toml: {days} days is beyond the clock", ctx.plan.role)))?;
        c.ec2
            .enable_image_deprecation()
            .image_id(image)
            .deprecate_at(aws_smithy_types::DateTime::from(at))
            .send()
            .await
            .map_err(|e| Error::aws("ec2:EnableImageDeprecation", format!("image {image}"), region, &e))?;
    }
    Ok(())
}

/// Turns on deregistration protection, with the cooldown: once lifted, it holds for 24 more hours.
async fn protect(c: &Clients, image: &str) -> Result<()> {
    c.ec2
        .enable_image_deregistration_protection()
        .image_id(image)
        .with_cooldown(true)
        .send()
        .await
        .map_err(|e| Error::aws("ec2:EnableImageDeregistrationProtection", format!("image {image}"), &c.region, &e))?;
    Ok(())
}

/// Points the role's SSM parameter at the image in one region, journaling what it held before
/// (in bake's own account: a failed bake restores it). In another account (`c.account`) the
/// parameter is written last and not restored: it names an image bake already keeps.
async fn publish(ctx: &Baking, c: &Clients, image: &str) -> Result<ParameterRecord> {
    let name = ctx.plan.image.ssm_parameter.clone();
    let place = c.place();
    let region = place.as_str();
    // What it holds, and its version: the write must be the next version, or another writer
    // came in between (and `previous` below is not what bake replaced).
    let (previous, version) = match c.ssm.get_parameter().name(&name).send().await {
        Ok(r) => (r.parameter().and_then(|p| p.value()).map(str::to_string), r.parameter().map(|p| p.version())),
        Err(e) if e.as_service_error().map(|s| s.is_parameter_not_found()).unwrap_or(false) => (None, Some(0)),
        Err(e) => return Err(Error::aws("ssm:GetParameter", format!("parameter {name}"), region, &e)),
    };
    if c.account.is_none() {
        ctx.journal.append(Entry::Published {
            region: region.to_string(),
            name: name.clone(),
            value: image.to_string(),
            previous: previous.clone(),
            at: journal::now_rfc3339(),
        })?;
    }
    let description = format!("{}/{}: the newest image bake made (bake {})", ctx.plan.role, ctx.plan.env, ctx.id);
    let req = c.ssm.put_parameter().name(&name).value(image).r#type(ParameterType::String).data_type("aws:ec2:image").description(description);
    let r = if previous.is_some() {
        req.overwrite(true).send().await
    } else {
        let tags: Vec<Tag> = ctx
            .base_tags()
            .into_iter()
            .filter(|(k, _)| k == crate::tags::MANAGED || k == crate::tags::ROLE || k == crate::tags::ENV)
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect();
        req.set_tags(Some(tags)).send().await
    };
    let written = r.map_err(|e| Error::aws("ssm:PutParameter", format!("parameter {name}"), region, &e))?.version();
    if let Some(v) = version.filter(|v| written != v + 1) {
        ctx.report.info(&format!(
            "parameter {name} in {region}: another writer changed it between bake's read (version {v}) and its write (version {written}); it holds {image} now"
        ));
    }
    Ok(ParameterRecord { region: c.region.clone(), account: c.account.clone(), name, value: image.to_string(), previous })
}

/// Copies the image to every region of the role that has none yet (a redistribution starts with
/// the copies that exist), then shares, deprecates and publishes every one.
pub async fn run(ctx: &mut Baking) -> Result<()> {
    let build_region = ctx.region.clone();
    let image =
        ctx.manifest.images.get(&build_region).map(|i| i.ami_id.clone()).ok_or_else(|| Error::Other(format!("no image in {build_region} to distribute")))?;
    let name = ctx.manifest.images.get(&build_region).map(|i| i.name.clone()).unwrap_or_default();
    let regions: Vec<String> = ctx.plan.image.regions.iter().filter(|r| **r != build_region && !ctx.manifest.images.contains_key(*r)).cloned().collect();
    if !regions.is_empty() {
        ctx.report.stage("distribute", &format!("copying {image} to {}", regions.join(", ")));
        let mut tags = ctx.image_tags(&name);
        tags.insert(crate::tags::COPY_OF.into(), format!("{build_region}/{image}"));
        let copies = stream::iter(regions.iter().map(|r| {
            copy_one(
                ctx.aws.clients(r),
                ctx.journal.clone(),
                build_region.clone(),
                image.clone(),
                name.clone(),
                tags.clone(),
                ctx.plan.image.kms_keys.get(r).cloned(),
                format!("{}-{r}", ctx.id),
                ctx.plan.builder.spec.image_timeout,
            )
        }))
        .buffer_unordered(8)
        .collect::<Vec<Copy>>()
        .await;
        let mut failed = Vec::new();
        let mut succeeded = Vec::new();
        for cp in copies {
            match cp.result {
                Ok((id, snaps)) => {
                    succeeded.push(cp.region.clone());
                    ctx.fresh.insert(id.clone());
                    ctx.manifest.images.insert(
                        cp.region,
                        ImageRecord { ami_id: id, name: name.clone(), state: "available".into(), snapshot_ids: snaps, copied_from: Some(image.clone()) },
                    );
                }
                Err(e) => failed.push((cp.region, crate::error::one_line(&e.to_string()))),
            }
        }
        if !failed.is_empty() {
            failed.sort();
            succeeded.sort();
            return Err(Error::Copy { image, failed, succeeded });
        }
    }
    ctx.report.stage("distribute", "sharing and publishing");
    let images = ctx.images();
    for (region, id) in &images {
        let c = ctx.aws.clients(region);
        let snaps = ctx.manifest.images.get(region).map(|i| i.snapshot_ids.clone()).unwrap_or_default();
        share_and_deprecate(ctx, &c, id, &snaps).await?;
    }
    if let Ok(m) = ctx.public_access.lock() {
        ctx.manifest.public_access = m.clone();
    }
    for (region, state) in ctx.manifest.public_access.clone() {
        if state != "block-new-sharing" {
            ctx.manifest.warnings.push(format!(
                "AMI Block Public Access is {state} in {region}, where bake shared the image: anyone allowed here could make an image public; turn it on with `aws ec2 enable-image-block-public-access --image-block-public-access-state block-new-sharing --region {region}`"
            ));
        }
    }
    // Mark the product before publishing it: an image named by a parameter is never swept.
    crate::stages::teardown::keep_products(ctx).await?;
    for (region, id) in &images {
        let c = ctx.aws.clients(region);
        let p = publish(ctx, &c, id).await?;
        ctx.manifest.parameters.push(p);
    }
    // Published everywhere: the image and the one it replaced are protected from deregistration
    // (with AWS's 24-hour cooldown once lifted); `bake prune` lifts it from those it retires. Last,
    // so that a failed bake can still remove what it made.
    let records = ctx.manifest.parameters.clone();
    for p in records.iter().filter(|p| p.account.is_none()) {
        let c = ctx.aws.clients(&p.region);
        for image in std::iter::once(&p.value).chain(p.previous.iter().filter(|v| v.starts_with("ami-") && **v != p.value)) {
            match protect(&c, image).await {
                Ok(()) => ctx.manifest.protected.push(format!("{image} in {}", p.region)),
                Err(e) => ctx.report.info(&format!("warning: {e}")),
            }
        }
    }
    // Then every workload account's, in its regions, with its role. From here the image is the
    // product whatever happens (a workload account may name it already): a parameter that cannot
    // be written is reported (status leftovers, exit 1), not a reason to remove the image.
    for a in &ctx.plan.rollout.accounts {
        let there = match assume(&ctx.aws, a, &ctx.plan.role, ctx.id.as_str()).await {
            Ok(t) => t,
            Err(e) => {
                ctx.manifest.unpublished.push(format!("parameter {} not published in account {}: {e}", ctx.plan.image.ssm_parameter, a.id));
                continue;
            }
        };
        for (region, id) in images.iter().filter(|(r, _)| a.regions.is_empty() || a.regions.contains(r)) {
            match publish(ctx, &there.clients(region), id).await {
                Ok(p) => ctx.manifest.parameters.push(p),
                Err(e) => ctx.manifest.unpublished.push(format!("parameter {} not published in {region} of {}: {e}", ctx.plan.image.ssm_parameter, a.id)),
            }
        }
    }
    for u in &ctx.manifest.unpublished {
        ctx.report.info(u);
    }
    Ok(())
}

/// The connection as `a`'s role (rollout.accounts), or an error naming the role file's key.
pub async fn assume(aws: &crate::aws::Aws, a: &crate::config::role::TargetAccount, role: &str, bake_id: &str) -> Result<crate::aws::Aws> {
    aws.assume(&a.id, &a.role_arn, a.external_id.as_deref(), &format!("bake-{bake_id}"))
        .await
        .map_err(|e| Error::Other(format!("rollout.accounts.{} of roles/{role}.toml: {e}", a.id)))
}

/// The images of an unchanged role that exist (its region's first, then its copies), and what
/// their distribution lacks against the role as configured now: a region without a copy, an
/// account, organization or unit not shared with, no deprecation time, a parameter not naming
/// the image. Nothing lacking: the bake is reused as it is.
pub struct Present {
    pub images: Vec<(String, ImageRecord)>,
    pub gaps: Vec<String>,
}

pub async fn present(aws: &crate::aws::Aws, plan: &crate::plan::Plan, home: (&str, &aws_sdk_ec2::types::Image), fingerprint: &str) -> Result<Present> {
    let record = |img: &aws_sdk_ec2::types::Image, region: &str| -> Result<ImageRecord> {
        Ok(ImageRecord {
            ami_id: crate::aws::required(img.image_id(), "ec2:DescribeImages", "the id of the unchanged image", region)?,
            name: img.name().unwrap_or_default().to_string(),
            state: "available".into(),
            snapshot_ids: snapshot_ids(img),
            copied_from: None,
        })
    };
    let mut images = vec![(home.0.to_string(), record(home.1, home.0)?)];
    let mut found = vec![(home.0.to_string(), home.1.clone())];
    let mut gaps = Vec::new();
    for r in plan.image.regions.iter().filter(|r| r.as_str() != home.0) {
        match crate::stages::source::finished_image(&aws.clients(r), plan, fingerprint).await? {
            Some(img) => {
                images.push((r.clone(), record(&img, r)?));
                found.push((r.clone(), img));
            }
            None => gaps.push(format!("no copy in {r}")),
        }
    }
    let spec = &plan.image;
    for (region, img) in &found {
        let c = aws.clients(region);
        let id = crate::aws::required(img.image_id(), "ec2:DescribeImages", "the id of the unchanged image", region)?;
        let id = id.as_str();
        let have: Vec<String> = launch_permissions(&c, id).await?.iter().map(permission_text).collect();
        let wanted: Vec<&String> = spec.share_accounts.iter().chain(&spec.share_organizations).chain(&spec.share_ous).collect();
        for want in &wanted {
            if !have.contains(want) {
                gaps.push(format!("{id} in {region} not shared with {want}"));
            }
        }
        for h in &have {
            if !wanted.contains(&h) {
                gaps.push(format!("{id} in {region} still shared with {h}, which the role no longer lists"));
            }
        }
        if spec.deprecate_after_days.is_some() && img.deprecation_time().is_none() {
            gaps.push(format!("{id} in {region} has no deprecation time"));
        }
        let name = &spec.ssm_parameter;
        let value = match c.ssm.get_parameter().name(name).send().await {
            Ok(r) => r.parameter().and_then(|p| p.value()).map(str::to_string),
            Err(e) if e.as_service_error().map(|s| s.is_parameter_not_found()).unwrap_or(false) => None,
            Err(e) => return Err(Error::aws("ssm:GetParameter", format!("parameter {name}"), region, &e)),
        };
        if value.as_deref() != Some(id) {
            gaps.push(format!("parameter {name} in {region} holds {}, not {id}", value.as_deref().unwrap_or("nothing")));
        }
    }
    for a in &plan.rollout.accounts {
        let there = assume(aws, a, &plan.role, "check").await?;
        for (region, img) in found.iter().filter(|(r, _)| a.regions.is_empty() || a.regions.contains(r)) {
            let c = there.clients(region);
            let id = img.image_id().unwrap_or_default();
            let name = &spec.ssm_parameter;
            let value = match c.ssm.get_parameter().name(name).send().await {
                Ok(r) => r.parameter().and_then(|p| p.value()).map(str::to_string),
                Err(e) if e.as_service_error().map(|s| s.is_parameter_not_found()).unwrap_or(false) => None,
                Err(e) => return Err(Error::aws("ssm:GetParameter", format!("parameter {name} of account {}", a.id), region, &e)),
            };
            if value.as_deref() != Some(id) {
                gaps.push(format!("parameter {name} in {} holds {}, not {id}", c.place(), value.as_deref().unwrap_or("nothing")));
            }
        }
    }
    Ok(Present { images, gaps })
}
