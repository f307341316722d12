//! Source: the AMI the builder starts from, resolved and pinned (recorded in the manifest).

use aws_sdk_ec2::types::{Filter, Image, ImageState};

use crate::aws::Clients;
use crate::config::role::SourceSpec;
use crate::error::{Error, Result};
use crate::manifest::SourceRecord;

#[derive(Clone, Debug)]
pub struct SourceImage {
    pub id: String,
    pub name: String,
    pub creation_date: String,
    pub owner_id: String,
    pub root_device_name: String,
    pub root_size: Option<i32>,
    pub architecture: String,
}

impl SourceImage {
    pub fn record(&self, selector: &SourceSpec) -> SourceRecord {
        SourceRecord {
            selector: selector.clone(),
            ami_id: self.id.clone(),
            name: self.name.clone(),
            creation_date: self.creation_date.clone(),
            owner_id: self.owner_id.clone(),
        }
    }
}

fn from_image(img: &Image, region: &str) -> Result<SourceImage> {
    let root_device_name = img.root_device_name().unwrap_or("/dev/sda1").to_string();
    let root_size =
        img.block_device_mappings().iter().find(|m| m.device_name() == Some(root_device_name.as_str())).and_then(|m| m.ebs()).and_then(|e| e.volume_size());
    Ok(SourceImage {
        id: crate::aws::required(img.image_id(), "ec2:DescribeImages", "the source image's id", region)?,
        name: img.name().unwrap_or_default().to_string(),
        creation_date: img.creation_date().unwrap_or_default().to_string(),
        owner_id: img.owner_id().unwrap_or_default().to_string(),
        root_device_name,
        root_size,
        architecture: img.architecture().map(|a| a.as_str().to_string()).unwrap_or_default(),
    })
}

/// Finds the source image. Nothing is created; a missing or unusable image is a clear error.
pub async fn resolve(c: &Clients, spec: &SourceSpec) -> Result<SourceImage> {
    // One lookup per source and region for every bake of the process.
    crate::aws::memo(format!("{} {spec:?}", c.region), resolve_now(c, spec)).await
}

async fn resolve_now(c: &Clients, spec: &SourceSpec) -> Result<SourceImage> {
    let region = c.region.as_str();
    let id = match spec {
        SourceSpec::Ami { id } => id.clone(),
        SourceSpec::SsmParameter { name } => {
            let r = c.ssm.get_parameter().name(name).send().await.map_err(|e| {
                if e.as_service_error().map(|s| s.is_parameter_not_found()).unwrap_or(false) {
                    Error::Source { what: format!("parameter {name}"), region: region.into(), why: "the parameter does not exist".into() }
                } else {
                    Error::aws("ssm:GetParameter", format!("source parameter {name}"), region, &e)
                }
            })?;
            crate::aws::required(r.parameter().and_then(|p| p.value()), "ssm:GetParameter", &format!("the value of source parameter {name}"), region)?
        }
        SourceSpec::Filter { owners, name, architecture } => {
            let found = c
                .images(
                    &format!("images named {name}"),
                    owners,
                    vec![
                        Filter::builder().name("name").values(name).build(),
                        Filter::builder().name("architecture").values(architecture).build(),
                        Filter::builder().name("state").values("available").build(),
                    ],
                )
                .await?;
            let newest = found.iter().max_by(|a, b| a.creation_date().cmp(&b.creation_date()));
            return match newest {
                Some(img) => from_image(img, region),
                None => Err(Error::Source {
                    what: format!("named {name} ({architecture}, owners {})", owners.join(", ")),
                    region: region.into(),
                    why: "no available image matches".into(),
                }),
            };
        }
    };
    let r = c.ec2.describe_images().image_ids(&id).send().await.map_err(|e| {
        if crate::error::is_not_found(aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e)) {
            Error::Source { what: id.clone(), region: region.into(), why: "the image does not exist".into() }
        } else {
            Error::aws("ec2:DescribeImages", format!("source image {id}"), region, &e)
        }
    })?;
    let Some(img) = r.images().first() else {
        return Err(Error::Source { what: id, region: region.into(), why: "the image does not exist (or was deregistered)".into() });
    };
    if img.state() != Some(&ImageState::Available) {
        let state = img.state().map(|s| s.as_str().to_string()).unwrap_or_else(|| "unknown".into());
        return Err(Error::Source { what: id, region: region.into(), why: format!("the image is {state}, not available") });
    }
    from_image(img, region)
}

/// The newest finished image (`bake:complete`) of the plan's role and env in `c`'s region that
/// carries `fingerprint`: what an unchanged bake reuses.
pub async fn finished_image(c: &Clients, plan: &crate::plan::Plan, fingerprint: &str) -> Result<Option<aws_sdk_ec2::types::Image>> {
    use aws_sdk_ec2::types::{Filter, ImageState};
    let found = c
        .images(
            &format!("earlier images of {}/{}", plan.role, plan.env),
            &["self".to_string()],
            vec![
                Filter::builder().name(format!("tag:{}", crate::tags::ROLE)).values(&plan.role).build(),
                Filter::builder().name(format!("tag:{}", crate::tags::ENV)).values(&plan.env).build(),
                Filter::builder().name(format!("tag:{}", crate::tags::FINGERPRINT)).values(fingerprint).build(),
                Filter::builder().name(format!("tag:{}", crate::tags::COMPLETE)).values("true").build(),
            ],
        )
        .await?;
    Ok(found.into_iter().filter(|i| i.state() == Some(&ImageState::Available)).max_by(|a, b| a.creation_date().cmp(&b.creation_date())))
}

/// An image's ancestry through `bake:patch-of`: itself, its parent, … (at most 20).
pub async fn lineage(c: &Clients, image: &str) -> Vec<String> {
    let mut out = vec![image.to_string()];
    let mut cur = image.to_string();
    while out.len() < 20 {
        let Ok(r) = c.ec2.describe_images().image_ids(&cur).send().await else { break };
        let parent =
            r.images().first().and_then(|i| i.tags().iter().find(|t| t.key() == Some(crate::tags::PATCH_OF)).and_then(|t| t.value())).map(str::to_string);
        match parent {
            Some(p) if !out.contains(&p) => {
                out.push(p.clone());
                cur = p;
            }
            _ => break,
        }
    }
    out
}
