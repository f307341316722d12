//! The builder's temporary identity: a role under /bake/ trusted by EC2, capped by the permissions
//! boundary `bake bootstrap` created, with AmazonSSMManagedInstanceCore and the rendered builder
//! policy, in an instance profile. Or, with `builder.instance_profile`, a profile the account
//! made beforehand (bake then creates no IAM resource).

use aws_sdk_iam::types::Tag;

use crate::config::policy::{beyond_boundary, boundary_arn, BAKE_PATH};
use crate::error::{Error, Result};
use crate::journal::Kind;
use crate::plan::SSM_CORE_POLICY;
use crate::stages::{Baking, Identity};

pub const PATH: &str = BAKE_PATH;
pub const INLINE_POLICY: &str = "bake-builder";
const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

/// The builder role's and profile's name, one of [`crate::config::policy::BUILDER_NAMES`].
pub fn name(ctx: &Baking) -> String {
    format!("bake-{}", ctx.id)
}

fn tags(ctx: &Baking) -> Result<Vec<Tag>> {
    ctx.base_tags().into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build().map_err(|e| Error::Other(e.to_string()))).collect()
}

/// The account the caller works in (STS answers this for any caller).
pub async fn account_id(c: &crate::aws::Clients) -> Result<String> {
    crate::aws::memo("account".into(), account_id_now(c)).await
}

async fn account_id_now(c: &crate::aws::Clients) -> Result<String> {
    let r = c.sts.get_caller_identity().send().await.map_err(|e| Error::aws("sts:GetCallerIdentity", "the caller", &c.region, &e))?;
    r.account().map(str::to_string).ok_or_else(|| Error::Other(format!("sts:GetCallerIdentity in {} answered without an account", c.region)))
}

/// The default version of a managed policy, as a JSON document (IAM answers it URL-encoded).
pub async fn policy_document(c: &crate::aws::Clients, arn: &str) -> Result<Option<serde_json::Value>> {
    let p = match c.iam.get_policy().policy_arn(arn).send().await {
        Ok(p) => p,
        Err(e) if e.as_service_error().map(|s| s.is_no_such_entity_exception()).unwrap_or(false) => return Ok(None),
        Err(e) => return Err(Error::aws("iam:GetPolicy", format!("policy {arn}"), "global", &e)),
    };
    let version =
        p.policy().and_then(|p| p.default_version_id()).ok_or_else(|| Error::Other(format!("iam:GetPolicy answered without a default version for {arn}")))?;
    let v = c
        .iam
        .get_policy_version()
        .policy_arn(arn)
        .version_id(version)
        .send()
        .await
        .map_err(|e| Error::aws("iam:GetPolicyVersion", format!("policy {arn} {version}"), "global", &e))?;
    let text =
        v.policy_version().and_then(|v| v.document()).ok_or_else(|| Error::Other(format!("iam:GetPolicyVersion answered without a document for {arn}")))?;
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy().to_string();
    serde_json::from_str(&decoded).map(Some).map_err(|e| Error::Other(format!("the document of policy {arn} is not JSON: {e}")))
}

/// Checks, before anything is created, that the boundary exists and allows all that this role's
/// builder policy grants.
async fn check_boundary(ctx: &Baking, arn: &str) -> Result<()> {
    // Every bake of the process checks the same boundary: one read.
    let Some(doc) = crate::aws::memo(arn.to_string(), policy_document(&ctx.c, arn)).await? else {
        return Err(Error::Other(format!(
            "the permissions boundary {arn} does not exist: an administrator creates it once with `bake bootstrap` (README, IAM); nothing was created"
        )));
    };
    if let Some(wanted) = &ctx.plan.builder.inline_policy {
        let missing = beyond_boundary(wanted, &doc);
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(3).map(|(a, r)| format!("{a} on {r}")).collect();
            return Err(Error::Other(format!(
                "the permissions boundary {arn} does not allow what the builder of {}/{} needs ({}{}): an administrator runs `bake bootstrap` again to update it; nothing was created",
                ctx.plan.role,
                ctx.plan.env,
                shown.join(", "),
                if missing.len() > 3 { format!(" and {} more", missing.len() - 3) } else { String::new() }
            )));
        }
    }
    Ok(())
}

/// A profile made beforehand: it must exist and hold a role.
async fn precreated(ctx: &Baking, profile: &str) -> Result<Identity> {
    let r = ctx.c.iam.get_instance_profile().instance_profile_name(profile).send().await.map_err(|e| {
        if e.as_service_error().map(|s| s.is_no_such_entity_exception()).unwrap_or(false) {
            Error::Other(format!("instance profile {profile} (builder.instance_profile of roles/{}.toml) does not exist; nothing was created", ctx.plan.role))
        } else {
            Error::aws("iam:GetInstanceProfile", format!("instance profile {profile}"), "global", &e)
        }
    })?;
    let role = r
        .instance_profile()
        .and_then(|p| p.roles().first())
        .map(|r| r.role_name().to_string())
        .ok_or_else(|| Error::Other(format!("instance profile {profile} holds no role: add the builder's role to it; nothing was created")))?;
    Ok(Identity { role, profile: profile.to_string() })
}

/// Creates role and profile (or checks the pre-created profile); returns their names.
pub async fn create(ctx: &mut Baking) -> Result<Identity> {
    if let Some(p) = ctx.plan.builder.spec.instance_profile.clone() {
        return precreated(ctx, &p).await;
    }
    let account = account_id(&ctx.c).await?;
    let boundary = boundary_arn(&account);
    check_boundary(ctx, &boundary).await?;
    let name = name(ctx);
    let iam = ctx.c.iam.clone();
    let tags = tags(ctx)?;
    iam.create_role()
        .role_name(&name)
        .path(PATH)
        .description(format!("bake builder for {}/{} (bake {}); deleted when the bake ends", ctx.plan.role, ctx.plan.env, ctx.id))
        .assume_role_policy_document(TRUST)
        .permissions_boundary(&boundary)
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
    Ok(Identity { role: name.clone(), profile: name })
}
