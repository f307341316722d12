//! The legacy launch-configuration path: copies of a group's configuration with the new image
//! (bake-named, a few kept for rollback), and the migration to a launch template.

use super::group::Rolling;
use super::plan as rollout;
use crate::error::{Error, Result};
use crate::tags;

impl Rolling {
    pub(super) async fn launch_configuration(&self, name: &str) -> Result<aws_sdk_autoscaling::types::LaunchConfiguration> {
        let region = self.c.region.as_str();
        let r = self
            .c
            .asg
            .describe_launch_configurations()
            .launch_configuration_names(name)
            .send()
            .await
            .map_err(|e| Error::aws("autoscaling:DescribeLaunchConfigurations", format!("launch configuration {name}"), region, &e))?;
        r.launch_configurations().first().cloned().ok_or_else(|| Error::Other(format!("launch configuration {name} does not exist in {region}")))
    }

    /// Copies a launch configuration with another image and name.
    pub(super) async fn copy_launch_configuration(&self, from: &str, to: &str, ami: &str) -> Result<aws_sdk_autoscaling::types::LaunchConfiguration> {
        let region = self.c.region.as_str();
        let lc = self.launch_configuration(from).await?;
        let req = self
            .c
            .asg
            .create_launch_configuration()
            .launch_configuration_name(to)
            .image_id(ami)
            .set_key_name(lc.key_name().map(str::to_string))
            .set_security_groups(Some(lc.security_groups().to_vec()).filter(|v| !v.is_empty()))
            .set_classic_link_vpc_id(lc.classic_link_vpc_id().map(str::to_string))
            .set_classic_link_vpc_security_groups(Some(lc.classic_link_vpc_security_groups().to_vec()).filter(|v| !v.is_empty()))
            .set_user_data(lc.user_data().map(str::to_string).filter(|u| !u.is_empty()))
            .set_instance_type(lc.instance_type().map(str::to_string))
            .set_kernel_id(lc.kernel_id().map(str::to_string).filter(|k| !k.is_empty()))
            .set_ramdisk_id(lc.ramdisk_id().map(str::to_string).filter(|k| !k.is_empty()))
            .set_block_device_mappings(Some(lc.block_device_mappings().to_vec()).filter(|v| !v.is_empty()))
            .set_instance_monitoring(lc.instance_monitoring().cloned())
            .set_spot_price(lc.spot_price().map(str::to_string))
            .set_iam_instance_profile(lc.iam_instance_profile().map(str::to_string))
            .set_ebs_optimized(lc.ebs_optimized())
            .set_associate_public_ip_address(lc.associate_public_ip_address())
            .set_placement_tenancy(lc.placement_tenancy().map(str::to_string))
            .set_metadata_options(lc.metadata_options().cloned());
        req.send().await.map_err(|e| Error::aws("autoscaling:CreateLaunchConfiguration", format!("launch configuration {to}"), region, &e))?;
        Ok(lc)
    }

    /// A launch template with a launch configuration's settings and `ami`.
    pub(super) async fn template_from_configuration(&self, lc: &str, name: &str, ami: &str, roll_id: &str, role: &str, env: &str) -> Result<String> {
        use aws_sdk_ec2::types as t;
        let region = self.c.region.as_str();
        let l = self.launch_configuration(lc).await?;
        let mut data = t::RequestLaunchTemplateData::builder().image_id(ami);
        if let Some(it) = l.instance_type() {
            data = data.instance_type(t::InstanceType::from(it));
        }
        if let Some(k) = l.key_name().filter(|k| !k.is_empty()) {
            data = data.key_name(k);
        }
        if !l.security_groups().is_empty() {
            data = data.set_security_group_ids(Some(l.security_groups().to_vec()));
        }
        if let Some(u) = l.user_data().filter(|u| !u.is_empty()) {
            data = data.user_data(u);
        }
        if let Some(p) = l.iam_instance_profile() {
            let spec = if p.starts_with("arn:") {
                t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder().arn(p).build()
            } else {
                t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder().name(p).build()
            };
            data = data.iam_instance_profile(spec);
        }
        if let Some(m) = l.metadata_options() {
            let mut mo = t::LaunchTemplateInstanceMetadataOptionsRequest::builder();
            if let Some(h) = m.http_tokens() {
                mo = mo.http_tokens(t::LaunchTemplateHttpTokensState::from(h.as_str()));
            }
            if let Some(h) = m.http_put_response_hop_limit() {
                mo = mo.http_put_response_hop_limit(h);
            }
            if let Some(e) = m.http_endpoint() {
                mo = mo.http_endpoint(t::LaunchTemplateInstanceMetadataEndpointState::from(e.as_str()));
            }
            data = data.metadata_options(mo.build());
        }
        if let Some(e) = l.ebs_optimized() {
            data = data.ebs_optimized(e);
        }
        if let Some(m) = l.instance_monitoring().and_then(|m| m.enabled()) {
            data = data.monitoring(t::LaunchTemplatesMonitoringRequest::builder().enabled(m).build());
        }
        for b in l.block_device_mappings() {
            let mut m = t::LaunchTemplateBlockDeviceMappingRequest::builder().set_device_name(b.device_name().map(str::to_string));
            if let Some(v) = b.virtual_name() {
                m = m.virtual_name(v);
            }
            if let Some(e) = b.ebs() {
                let mut eb = t::LaunchTemplateEbsBlockDeviceRequest::builder();
                if let Some(s) = e.volume_size() {
                    eb = eb.volume_size(s);
                }
                if let Some(v) = e.volume_type() {
                    eb = eb.volume_type(t::VolumeType::from(v));
                }
                if let Some(s) = e.snapshot_id() {
                    eb = eb.snapshot_id(s);
                }
                if let Some(d) = e.delete_on_termination() {
                    eb = eb.delete_on_termination(d);
                }
                if let Some(x) = e.encrypted() {
                    eb = eb.encrypted(x);
                }
                if let Some(i) = e.iops() {
                    eb = eb.iops(i);
                }
                m = m.ebs(eb.build());
            }
            data = data.block_device_mappings(m.build());
        }
        let out = self
            .c
            .ec2
            .create_launch_template()
            .launch_template_name(name)
            .version_description(format!("bake {roll_id}: {ami}, migrated from launch configuration {lc}"))
            .launch_template_data(data.build())
            .tag_specifications(
                t::TagSpecification::builder()
                    .resource_type(t::ResourceType::LaunchTemplate)
                    .set_tags(Some(
                        [
                            (tags::MANAGED, "true"),
                            (tags::ID, roll_id),
                            (tags::ROLE, role),
                            (tags::ENV, env),
                            (tags::CREATED, &crate::journal::now_rfc3339()),
                            (tags::MIGRATED_FROM, lc),
                        ]
                        .iter()
                        .map(|(k, v)| t::Tag::builder().key(*k).value(*v).build())
                        .collect(),
                    ))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::aws("ec2:CreateLaunchTemplate", format!("launch template {name}"), region, &e))?;
        crate::aws::required(
            out.launch_template().and_then(|t| t.launch_template_id()),
            "ec2:CreateLaunchTemplate",
            &format!("the id of launch template {name}"),
            region,
        )
    }

    /// Keeps the newest `keep_lcs` launch configurations bake made for `group`; deletes the rest
    /// (what it cannot is a leftover: the group has rolled all the same).
    pub(super) async fn prune_launch_configurations(&self, group: &str, in_use: &str) {
        let all = match self.c.launch_configurations().await {
            Ok(a) => a,
            Err(e) => return self.left(format!("the old launch configurations of {group} (listing them failed: {e})")),
        };
        let mut mine: Vec<_> = all
            .into_iter()
            .filter(|l| l.launch_configuration_name().map(|n| rollout::is_bake_launch_configuration(group, n) && n != in_use).unwrap_or(false))
            .collect();
        mine.sort_by(|a, b| b.created_time().cmp(&a.created_time()));
        for l in mine.into_iter().skip(self.keep_lcs.saturating_sub(1) as usize) {
            if let Some(n) = l.launch_configuration_name() {
                self.delete_launch_configuration(n).await;
            }
        }
    }
}
