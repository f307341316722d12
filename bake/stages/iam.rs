//! The builder's temporary identity: a role under /bake/ trusted by EC2, with
//! AmazonSSMManagedInstanceCore and the rendered builder policy, in an instance profile.

use aws_sdk_iam::types::Tag;

use crate::error::{Error, Result};
use crate::journal::Kind;
use crate::pipeline::Ctx;
use crate::plan::SSM_CORE_POLICY;

pub const PATH: &str = "/bake/";
pub const INLINE_POLICY: &str = "bake-builder";
const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

pub fn name(ctx: &Ctx) -> String {
    format!("bake-{}", ctx.id)
}

fn tags(ctx: &Ctx) -> Result<Vec<Tag>> {
    ctx.base_tags()
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build().map_err(|e| Error::Other(e.to_string())))
        .collect()
}

/// Creates role and profile; returns their names.
pub async fn create(ctx: &mut Ctx) -> Result<(String, String)> {
    let name = name(ctx);
    let iam = ctx.c.iam.clone();
    let tags = tags(ctx)?;
    iam.create_role()
        .role_name(&name)
        .path(PATH)
        .description(format!("bake builder for {}/{} (bake {}); deleted when the bake ends", ctx.plan.role, ctx.plan.env, ctx.id))
        .assume_role_policy_document(TRUST)
        .max_session_duration(3600)
        .set_tags(Some(tags.clone()))
        .send()
        .await
        .map_err(|e| Error::aws("iam:CreateRole", format!("role {name}"), "global", &e))?;
    ctx.created(Kind::IamRole, &name, "global")?;
    iam.attach_role_policy()
        .role_name(&name)
        .policy_arn(SSM_CORE_POLICY)
        .send()
        .await
        .map_err(|e| Error::aws("iam:AttachRolePolicy", format!("role {name}"), "global", &e))?;
    if let Some(policy) = &ctx.plan.builder.inline_policy {
        iam.put_role_policy()
            .role_name(&name)
            .policy_name(INLINE_POLICY)
            .policy_document(policy.to_string())
            .send()
            .await
            .map_err(|e| Error::aws("iam:PutRolePolicy", format!("role {name}"), "global", &e))?;
    }
    iam.create_instance_profile()
        .instance_profile_name(&name)
        .path(PATH)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| Error::aws("iam:CreateInstanceProfile", format!("instance profile {name}"), "global", &e))?;
    ctx.created(Kind::InstanceProfile, &name, "global")?;
    iam.add_role_to_instance_profile()
        .instance_profile_name(&name)
        .role_name(&name)
        .send()
        .await
        .map_err(|e| Error::aws("iam:AddRoleToInstanceProfile", format!("instance profile {name}"), "global", &e))?;
    if let Some(b) = ctx.manifest.builder.as_mut() {
        b.iam_role = name.clone();
        b.instance_profile = name.clone();
    }
    Ok((name.clone(), name))
}
