//! Image: stop the builder, create the AMI (name from the role's template, unique per bake; the
//! image and its snapshots tagged with provenance), wait until it is available.

use aws_sdk_ec2::types::ResourceType;

use crate::aws::snapshot_ids;
use crate::error::{Error, Result};
use crate::journal::Kind;
use crate::manifest::ImageRecord;
use crate::stages::tag_spec;
use crate::stages::{Baking, Builder};

/// `20261121T232813Z`
pub fn timestamp() -> String {
    timestamp_at(std::time::SystemTime::now())
}

/// The `{{timestamp}}` of an image name for time `t`: `20261121T232813Z`.
pub fn timestamp_at(t: std::time::SystemTime) -> String {
    let s = aws_smithy_types::DateTime::from(t).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default();
    s.replace(['-', ':'], "").split('.').next().unwrap_or_default().trim_end_matches('Z').to_string() + "Z"
}

/// The name to use when the rendered one is taken by an image this bake did not make (two bakes
/// of one role in the same second): the rendered name plus the bake's id, within AWS's 128
/// characters.
pub fn unique_name(name: &str, bake_id: &str) -> String {
    let suffix = format!("-{}", bake_id.trim_start_matches("b-"));
    let keep: String = name.chars().take(128 - suffix.len()).collect();
    keep + &suffix
}

pub fn image_name(ctx: &Baking) -> Result<String> {
    let mut data = serde_json::json!({
        "role": ctx.plan.role,
        "env": ctx.plan.env,
        "timestamp": timestamp(),
        "bake_id": ctx.id.to_string(),
        "vars": &ctx.plan.vars,
    });
    if let Some(a) = &ctx.plan.arch {
        data["arch"] = serde_json::json!(a);
    }
    crate::template::render_plain(&ctx.plan.image.name, &data).map_err(|e| Error::Other(format!("roles/{}.toml: image.name: {e}", ctx.plan.role)))
}

async fn create_image(ctx: &Baking, instance: &str, name: &str) -> Result<String> {
    let tags = ctx.image_tags(name);
    let r = ctx
        .c
        .ec2
        .create_image()
        .instance_id(instance)
        .name(name)
        .description(&ctx.plan.image.description)
        .tag_specifications(tag_spec(ResourceType::Image, &tags))
        .tag_specifications(tag_spec(ResourceType::Snapshot, &tags))
        .send()
        .await
        .map_err(|e| Error::aws("ec2:CreateImage", format!("image {name} from builder {instance}"), &ctx.region, &e))?;
    crate::aws::required(r.image_id(), "ec2:CreateImage", &format!("the id of image {name}"), &ctx.region)
}

/// The image of this account called `name`, with its `bake:id` tag (empty when it has none).
async fn image_named(ctx: &Baking, name: &str) -> Result<Option<(String, String)>> {
    let d = ctx
        .c
        .ec2
        .describe_images()
        .owners("self")
        .filters(aws_sdk_ec2::types::Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(|e| Error::aws("ec2:DescribeImages", format!("image named {name}"), &ctx.region, &e))?;
    let Some(i) = d.images().first() else { return Ok(None) };
    let bake = i.tags().iter().find(|t| t.key() == Some(crate::tags::ID)).and_then(|t| t.value()).unwrap_or_default();
    Ok(Some((crate::aws::required(i.image_id(), "ec2:DescribeImages", &format!("the id of image {name}"), &ctx.region)?, bake.to_string())))
}

pub async fn create(ctx: &mut Baking, builder: &Builder) -> Result<()> {
    let instance = builder.instance.clone();
    let ready = ctx.plan.builder.spec.ready_timeout;
    ctx.c
        .ec2
        .stop_instances()
        .instance_ids(&instance)
        .send()
        .await
        .map_err(|e| Error::aws("ec2:StopInstances", format!("builder {instance}"), &ctx.region, &e))?;
    crate::wait::instance(&ctx.c, "builder", &instance, aws_sdk_ec2::types::InstanceStateName::Stopped, ready.as_duration()).await?;
    let mut name = image_name(ctx)?;
    ctx.report.stage("image", &format!("creating {name}"));
    let image = match create_image(ctx, &instance, &name).await {
        Ok(image) => image,
        Err(e) if e.code() == Some("InvalidAMIName.Duplicate") => match image_named(ctx, &name).await? {
            // Our own CreateImage went through and only its answer was lost (a retried call).
            Some((id, bake)) if bake == ctx.id.to_string() => id,
            other => {
                let taken = other.map(|(id, _)| id).unwrap_or_else(|| "another image".into());
                name = unique_name(&name, &ctx.id.to_string());
                ctx.report.stage("image", &format!("the name is taken by {taken}; creating {name}"));
                create_image(ctx, &instance, &name).await?
            }
        },
        Err(e) => return Err(e),
    };
    ctx.created(Kind::Image, &image, &ctx.region)?;
    ctx.fresh.insert(image.clone());
    ctx.manifest
        .images
        .insert(ctx.region.clone(), ImageRecord { ami_id: image.clone(), name, state: "pending".into(), snapshot_ids: vec![], copied_from: None });
    ctx.report.stage("image", &format!("{image} pending"));
    let timeout = ctx.plan.builder.spec.image_timeout;
    // A pending image already names its snapshots: journal each as soon as it is seen.
    let mut journaled: Vec<String> = Vec::new();
    let (journal, region) = (ctx.journal.clone(), ctx.region.clone());
    let img = crate::wait::image(&ctx.c, "image", &image, timeout.as_duration(), |img| {
        for s in snapshot_ids(img) {
            if !journaled.contains(&s) {
                journal.created(crate::journal::Resource::new(Kind::Snapshot, &s, &region))?;
                journaled.push(s);
            }
        }
        Ok(())
    })
    .await?;
    if let Some(rec) = ctx.manifest.images.get_mut(&ctx.region) {
        rec.state = img.state().map(|s| s.as_str().to_string()).unwrap_or_default();
        rec.snapshot_ids = snapshot_ids(&img);
    }
    ctx.report.stage("image", &format!("{image} available"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_compact_utc_seconds() {
        assert_eq!(timestamp_at(UNIX_EPOCH + Duration::from_millis(1_795_303_693_250)), "20261121T232813Z");
    }

    #[test]
    fn a_taken_name_gets_the_bake_id_and_stays_within_128_characters() {
        assert_eq!(unique_name("kaiju-staging-20261121T232813Z", "b-0123456789ab"), "kaiju-staging-20261121T232813Z-0123456789ab");
        let long = "x".repeat(128);
        let u = unique_name(&long, "b-0123456789ab");
        assert_eq!(u.len(), 128);
        assert!(u.ends_with("-0123456789ab"));
    }
}
