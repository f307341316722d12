//! Launch: a tagged builder with IMDSv2 required (hop limit 1), no key pair, no inbound rule,
//! an encrypted root volume, in the role's subnet; then wait for it to run and for its SSM agent.

use std::time::Duration;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, MarketType, ResourceType, VolumeType,
};
use aws_sdk_ssm::types::PingStatus;

use crate::config::role::SubnetSpec;
use crate::error::{Error, Result};
use crate::journal::Kind;
use crate::manifest::BuilderRecord;
use crate::stages::tag_spec;
use crate::stages::{Baking, Builder, Identity};

/// How long bake waits for a new instance profile to become usable by EC2 (IAM propagation).
pub const IAM_PROPAGATION: Duration = Duration::from_secs(180);

/// The subnet and VPC the builder goes into.
async fn network(ctx: &Baking) -> Result<(String, String)> {
    // One lookup per subnet setting and region for every bake of the process.
    crate::aws::memo(format!("{} {:?}", ctx.region, ctx.plan.builder.spec.subnet), network_now(ctx)).await
}

async fn network_now(ctx: &Baking) -> Result<(String, String)> {
    let region = ctx.region.as_str();
    let subnets = match &ctx.plan.builder.spec.subnet {
        SubnetSpec::Id { id } => ctx.c.subnets(&format!("subnet {id} (builder.subnet_id)"), vec![id.clone()], Vec::new()).await?,
        SubnetSpec::Tags { tags } => {
            let filters = tags.iter().map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build()).collect();
            ctx.c.subnets("the builder's subnet (builder.subnet_tags)", Vec::new(), filters).await?
        }
        SubnetSpec::Default => {
            // Only a default VPC has default subnets: one call finds both.
            let filters = vec![Filter::builder().name("default-for-az").values("true").build()];
            let found = ctx.c.subnets("the default VPC's subnets", Vec::new(), filters).await?;
            if found.is_empty() {
                return Err(Error::Other(format!(
                    "region {region} has no default VPC (or it has no default subnet): set builder.subnet_id or builder.subnet_tags in {}",
                    format_args!("roles/{}.toml", ctx.plan.role)
                )));
            }
            found
        }
    };
    // The subnet with the most free addresses; ties go to the first by id (deterministic).
    let mut subnets: Vec<_> = subnets.iter().filter(|s| s.subnet_id().is_some() && s.vpc_id().is_some()).collect();
    subnets
        .sort_by(|a, b| b.available_ip_address_count().unwrap_or(0).cmp(&a.available_ip_address_count().unwrap_or(0)).then(a.subnet_id().cmp(&b.subnet_id())));
    match subnets.first() {
        Some(s) => Ok((
            crate::aws::required(s.subnet_id(), "ec2:DescribeSubnets", "a subnet id", region)?,
            crate::aws::required(s.vpc_id(), "ec2:DescribeSubnets", "a VPC id", region)?,
        )),
        None => Err(Error::Other(format!(
            "no subnet in {region} matches builder.{} of roles/{}.toml",
            match &ctx.plan.builder.spec.subnet {
                SubnetSpec::Id { .. } => "subnet_id",
                SubnetSpec::Tags { .. } => "subnet_tags",
                SubnetSpec::Default => "subnet (the default VPC has no default subnet)",
            },
            ctx.plan.role
        ))),
    }
}

/// A temporary security group with no inbound rule (outbound open, for SSM and packages).
async fn security_group(ctx: &Baking, vpc: &str) -> Result<String> {
    let name = format!("bake-{}", ctx.id);
    let mut tags = ctx.base_tags();
    tags.insert("Name".into(), name.clone());
    let r = ctx
        .c
        .ec2
        .create_security_group()
        .group_name(&name)
        .description(format!("bake builder {} for {}/{}: no inbound rule", ctx.id, ctx.plan.role, ctx.plan.env))
        .vpc_id(vpc)
        .tag_specifications(tag_spec(ResourceType::SecurityGroup, &tags))
        .send()
        .await
        .map_err(|e| Error::aws("ec2:CreateSecurityGroup", format!("security group {name}"), &ctx.region, &e))?;
    let id = crate::aws::required(r.group_id(), "ec2:CreateSecurityGroup", &format!("the id of security group {name}"), &ctx.region)?;
    ctx.created(Kind::SecurityGroup, &id, &ctx.region)?;
    Ok(id)
}

/// True for RunInstances' answer while what bake just made is not visible to EC2 yet: the new
/// instance profile (IAM propagation), or the new security group (EC2's eventual consistency).
fn not_visible_yet(e: &Error) -> bool {
    match e {
        Error::Aws { code: Some(c), detail, .. } => (c == "InvalidParameterValue" && detail.contains("iamInstanceProfile")) || c == "InvalidGroup.NotFound",
        _ => false,
    }
}

pub async fn launch(ctx: &mut Baking, identity: &Identity) -> Result<Builder> {
    let (subnet, vpc) = network(ctx).await?;
    let spec = ctx.plan.builder.spec.clone();
    let groups = if spec.security_group_ids.is_empty() { vec![security_group(ctx, &vpc).await?] } else { spec.security_group_ids.clone() };
    let source = ctx.source.clone();
    let mut ebs = EbsBlockDevice::builder().volume_type(VolumeType::from(spec.root_volume_type.as_str())).encrypted(spec.encrypted).delete_on_termination(true);
    if let Some(size) = spec.root_volume_size.map(|s| s as i32).or(source.root_size) {
        ebs = ebs.volume_size(size);
    }
    if let Some(k) = &spec.kms_key_id {
        ebs = ebs.kms_key_id(k);
    }
    let mut tags = ctx.base_tags();
    tags.insert("Name".into(), format!("bake-builder {}/{}", ctx.plan.role, ctx.plan.env));
    let mut req = ctx
        .c
        .ec2
        .run_instances()
        .image_id(&source.id)
        .instance_type(InstanceType::from(spec.instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .iam_instance_profile(IamInstanceProfileSpecification::builder().name(&identity.profile).build())
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_tokens(HttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                .build(),
        )
        .block_device_mappings(BlockDeviceMapping::builder().device_name(&source.root_device_name).ebs(ebs.build()).build())
        .tag_specifications(tag_spec(ResourceType::Instance, &tags))
        .tag_specifications(tag_spec(ResourceType::Volume, &tags))
        .tag_specifications(tag_spec(ResourceType::NetworkInterface, &tags))
        .client_token(format!("{}-builder", ctx.id));
    req = match spec.associate_public_ip {
        Some(public) => req.network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .subnet_id(&subnet)
                .set_groups(Some(groups.clone()))
                .associate_public_ip_address(public)
                .delete_on_termination(true)
                .build(),
        ),
        None => req.subnet_id(&subnet).set_security_group_ids(Some(groups.clone())),
    };
    if spec.spot {
        req = req.instance_market_options(InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).build());
    }
    let region = ctx.region.clone();
    let report = ctx.report.clone();
    // A new instance profile takes seconds, sometimes minutes, to be usable by EC2 (IAM
    // propagation; Packer #9810 and #12303 saw minutes); a new security group a moment.
    let run = || {
        let req = req.clone();
        let region = region.clone();
        async move { req.send().await.map_err(|e| Error::aws("ec2:RunInstances", "the builder", &region, &e)) }
    };
    let b = crate::wait::Backoff::within(Duration::from_millis(500), Duration::from_secs(15), IAM_PROPAGATION);
    let out = crate::wait::retry(
        b,
        not_visible_yet,
        |e, d| {
            report.info(&format!(
                "{} not visible to EC2 yet; retrying in {:.1}s",
                if e.code() == Some("InvalidGroup.NotFound") { "the security group" } else { "the instance profile" },
                d.as_secs_f64()
            ))
        },
        run,
    )
    .await?;
    let instance =
        crate::aws::required(out.instances().first().and_then(|i| i.instance_id()), "ec2:RunInstances", "the instance id of the builder", &ctx.region)?;
    ctx.created(Kind::Instance, &instance, &ctx.region)?;
    ctx.manifest.builder = Some(BuilderRecord {
        instance_id: instance.clone(),
        instance_type: spec.instance_type.clone(),
        subnet_id: Some(subnet),
        security_groups: groups,
        iam_role: identity.role.clone(),
        instance_profile: identity.profile.clone(),
    });
    ctx.report.stage("launch", &format!("{instance} pending"));
    crate::wait::instance(&ctx.c, "builder", &instance, InstanceStateName::Running, spec.ready_timeout.as_duration()).await?;
    ctx.report.stage("launch", &format!("{instance} running"));
    Ok(Builder { instance })
}

/// Waits until the builder's SSM agent is Online (after `since`, for a reboot: its last ping is
/// later than the reboot request).
pub async fn wait_agent(ctx: &mut Baking, builder: &Builder, since: Option<aws_smithy_types::DateTime>) -> Result<()> {
    let instance = builder.instance.clone();
    let timeout = ctx.plan.builder.spec.ready_timeout;
    let agents = crate::wait::watcher::of(&ctx.c).agents.clone();
    let found = crate::wait::follow(&agents, &ctx.c.calls, &instance, timeout.as_duration(), |info| {
        let online = info.is_some_and(|i| {
            i.ping_status() == Some(&PingStatus::Online)
                && match (since, i.last_ping_date_time()) {
                    (Some(t), Some(p)) => p.secs() >= t.secs(),
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        Ok(online.then_some(()))
    })
    .await?;
    match found {
        Some(()) => {
            ctx.report.stage("agent", &format!("{instance} online"));
            Ok(())
        }
        None => Err(crate::wait::gave_up(
            "the SSM agent of builder",
            instance,
            &ctx.region,
            format!("did not come online within {timeout} (the builder needs outbound HTTPS to SSM: a NAT, a public IP or VPC endpoints)"),
        )),
    }
}
