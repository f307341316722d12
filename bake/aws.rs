//! One SdkConfig, clients per region, and a count of the API calls a bake makes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::types::Filter as Ec2Filter;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::error::{Error, Result};

/// Calls made, by `service:Operation` (executions, not retry attempts).
#[derive(Clone, Debug, Default)]
pub struct CallCounter(Arc<Mutex<BTreeMap<String, u64>>>);

impl CallCounter {
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
    /// Counts `n` calls of `op` made on this counter's behalf (by a shared watcher).
    pub fn add(&self, op: &str, n: u64) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(op.to_string()).or_default() += n;
        }
    }
}

#[derive(Debug)]
struct Counting(CallCounter);

impl Intercept for Counting {
    fn name(&self) -> &'static str {
        "bake-call-counter"
    }
    // Once per execution, after the operation's configuration (which names it) is in place.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            let key = format!("{}:{}", m.service().to_ascii_lowercase().replace(' ', ""), m.name());
            if let Ok(mut map) = (self.0).0.lock() {
                *map.entry(key).or_default() += 1;
            }
        }
        Ok(())
    }
}

/// Clients for one region, sharing the base configuration and a call counter.
#[derive(Clone, Debug)]
pub struct Clients {
    pub region: String,
    /// Another account's (rollout.accounts), reached through its assumed role; None: the account
    /// bake's own credentials are for.
    pub account: Option<String>,
    /// The configuration the clients came from (the shared watchers make their own, uncounted).
    pub base: SdkConfig,
    /// The counter of whoever these clients serve (a watcher's calls on their behalf count here).
    pub calls: CallCounter,
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub sts: aws_sdk_sts::Client,
    pub cw: aws_sdk_cloudwatch::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
}

/// The AWS side of bake: a base configuration and the calls counted through it.
#[derive(Clone, Debug)]
pub struct Aws {
    base: SdkConfig,
    pub calls: CallCounter,
    /// Set when these credentials are a role assumed in another account.
    pub account: Option<String>,
}

/// How bake reaches AWS (from the command line).
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
}

/// A value an AWS answer must hold (an id, a state): its absence is an error naming the call,
/// never an empty string that would reach the journal.
pub fn required(v: Option<&str>, call: &str, what: &str, region: &str) -> Result<String> {
    v.map(str::to_string).ok_or_else(|| Error::Other(format!("{call} in {region} answered without {what}")))
}

/// Process-wide, single-flight memo of lookups whose answer does not change during a run (a
/// source image, a subnet, the account, a policy document): the first caller of `key` asks AWS,
/// the others — fifty concurrent bakes of roles built alike — wait for and share its answer. A
/// failure is not kept: the next caller asks again.
pub async fn memo<T, F>(key: String, f: F) -> Result<T>
where
    T: Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<T>>,
{
    type Cell = Arc<tokio::sync::OnceCell<Arc<dyn std::any::Any + Send + Sync>>>;
    static MEMO: std::sync::OnceLock<Mutex<BTreeMap<String, Cell>>> = std::sync::OnceLock::new();
    let key = format!("{}\u{0}{key}", std::any::type_name::<T>());
    let cell = {
        let mut m = MEMO.get_or_init(Default::default).lock().map_err(|_| Error::Other("the lookup memo's lock was poisoned".into()))?;
        m.entry(key).or_default().clone()
    };
    let v = cell.get_or_try_init(|| async { f.await.map(|v| Arc::new(v) as Arc<dyn std::any::Any + Send + Sync>) }).await?;
    v.downcast_ref::<T>().cloned().ok_or_else(|| Error::Other("the lookup memo held another type".into()))
}

/// The snapshots behind an image, as described.
pub fn snapshot_ids(img: &aws_sdk_ec2::types::Image) -> Vec<String> {
    img.block_device_mappings().iter().filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string)).collect()
}

/// A region bake may use: one the SDK's partitions know.
pub fn usable_region(region: String, from: &str) -> Result<String> {
    match crate::config::limits::region_problem(&region) {
        None => Ok(region),
        Some(why) => Err(Error::Other(format!("region (from {from}): {why}"))),
    }
}

impl Aws {
    /// Loads credentials and region the standard way (environment, profile, IMDS); the SDK
    /// retries throttling and 5xx answers (standard mode: exponential backoff with jitter), with
    /// more attempts than its default of 3. Adaptive mode's client-side rate limiting is meant
    /// for high call rates; a bake makes a few calls a second at most. `AWS_MAX_ATTEMPTS`, as
    /// everywhere in AWS's tools, sets the number instead.
    pub async fn load(conn: &Connection) -> Aws {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(crate::pace::http_client());
        if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
            loader = loader.retry_config(RetryConfig::standard().with_max_attempts(8));
        }
        if let Some(p) = &conn.profile {
            loader = loader.profile_name(p);
            let _ = crate::error::PROFILE.set(p.clone());
        }
        if let Some(r) = &conn.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &conn.endpoint_url {
            loader = loader.endpoint_url(e);
            let _ = crate::error::ENDPOINT.set(e.clone());
        }
        Aws { base: loader.load().await, calls: CallCounter::default(), account: None }
    }

    /// The same connection in another account, as `role_arn` (with `external_id`): credentials
    /// from STS AssumeRole, renewed before they expire (a roll may outlast one session). The role
    /// is assumed at once, so that a denial is an error here (one line: STS's code and message),
    /// before anything changes; it must belong to `account`, which must not be the account bake's
    /// own credentials are for. Calls count on this connection's counter.
    pub async fn assume(&self, account: &str, role_arn: &str, external_id: Option<&str>, session: &str) -> Result<Aws> {
        let region = self.default_region().unwrap_or_else(|| "us-east-1".into());
        let c = self.clients(&region);
        let home = memo("home account".into(), async {
            let r = c.sts.get_caller_identity().send().await.map_err(|e| Error::aws("sts:GetCallerIdentity", "the caller", &region, &e))?;
            required(r.account(), "sts:GetCallerIdentity", "an account", &region)
        })
        .await?;
        if home == account {
            return Err(Error::Other(format!(
                "{account} is the account bake runs in: its groups roll and its parameter is published without rollout.accounts"
            )));
        }
        let mut req = c.sts.assume_role().role_arn(role_arn).role_session_name(session);
        if let Some(x) = external_id {
            req = req.external_id(x);
        }
        let out = req.send().await.map_err(|e| Error::aws("sts:AssumeRole", format!("role {role_arn}"), &region, &e))?;
        let who = out.assumed_role_user().map(|u| u.arn()).unwrap_or_default();
        let answered = who.split(':').nth(4).unwrap_or_default();
        if answered != account {
            return Err(Error::Other(format!("{role_arn} answers as account {}, not {account}", if answered.is_empty() { "(none)" } else { answered })));
        }
        let mut b = aws_config::sts::AssumeRoleProvider::builder(role_arn).session_name(session).configure(&self.base);
        if let Some(x) = external_id {
            b = b.external_id(x);
        }
        let provider = b.build().await;
        let base = self.base.to_builder().credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(provider)).build();
        Ok(Aws { base, calls: self.calls.clone(), account: Some(account.to_string()) })
    }

    /// The region from the command line or the AWS configuration, if any.
    pub fn default_region(&self) -> Option<String> {
        self.base.region().map(|r| r.to_string())
    }

    /// The base configuration (for clients bake makes only now and then).
    pub fn sdk_config(&self) -> SdkConfig {
        self.base.clone()
    }

    /// The same connection with a fresh call counter (one per bake).
    pub fn counted(&self) -> Aws {
        Aws { base: self.base.clone(), calls: CallCounter::default(), account: self.account.clone() }
    }

    pub fn clients(&self, region: &str) -> Clients {
        let region_v = Region::new(region.to_string());
        let counting = || Counting(self.calls.clone());
        Clients {
            region: region.to_string(),
            account: self.account.clone(),
            base: self.base.clone(),
            calls: self.calls.clone(),
            ec2: aws_sdk_ec2::Client::from_conf(aws_sdk_ec2::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build()),
            iam: aws_sdk_iam::Client::from_conf(aws_sdk_iam::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build()),
            ssm: aws_sdk_ssm::Client::from_conf(aws_sdk_ssm::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build()),
            asg: aws_sdk_autoscaling::Client::from_conf(
                aws_sdk_autoscaling::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build(),
            ),
            sts: aws_sdk_sts::Client::from_conf(aws_sdk_sts::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build()),
            cw: aws_sdk_cloudwatch::Client::from_conf(
                aws_sdk_cloudwatch::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build(),
            ),
            elb: aws_sdk_elasticloadbalancingv2::Client::from_conf(
                aws_sdk_elasticloadbalancingv2::config::Builder::from(&self.base).region(region_v).interceptor(counting()).build(),
            ),
        }
    }
}

/// Every list bake reads goes through the SDK's paginators: here, every page, or an error naming
/// the call, what it looked for and the region.
impl Clients {
    /// Where these clients act, for messages and records: the region, with the account when it
    /// is another one (`us-west-2 of 210987654321`).
    pub fn place(&self) -> String {
        match &self.account {
            Some(a) => format!("{} of {a}", self.region),
            None => self.region.clone(),
        }
    }

    /// The CloudWatch alarms (metric and composite) with these names: name → (state, reason),
    /// every page; a name CloudWatch does not know is absent.
    pub async fn alarm_states(&self, names: &[String]) -> Result<BTreeMap<String, (String, String)>> {
        let mut out = BTreeMap::new();
        for chunk in names.chunks(crate::config::limits::DESCRIBE_ALARMS_NAMES) {
            let mut pages = self
                .cw
                .describe_alarms()
                .set_alarm_names(Some(chunk.to_vec()))
                .alarm_types(aws_sdk_cloudwatch::types::AlarmType::MetricAlarm)
                .alarm_types(aws_sdk_cloudwatch::types::AlarmType::CompositeAlarm)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| Error::aws("cloudwatch:DescribeAlarms", format!("alarms {}", chunk.join(", ")), &self.region, &e))?;
                let metric = page.metric_alarms().iter().map(|a| (a.alarm_name(), a.state_value(), a.state_reason()));
                let composite = page.composite_alarms().iter().map(|a| (a.alarm_name(), a.state_value(), a.state_reason()));
                for (name, state, reason) in metric.chain(composite) {
                    let name = required(name, "cloudwatch:DescribeAlarms", "an alarm's name", &self.region)?;
                    let state = required(state.map(|s| s.as_str()), "cloudwatch:DescribeAlarms", &format!("the state of alarm {name}"), &self.region)?;
                    out.insert(name, (state, reason.unwrap_or_default().to_string()));
                }
            }
        }
        Ok(out)
    }

    /// The targets of target group `arn` (DescribeTargetHealth, which is not paged): id, state,
    /// reason and description of each.
    pub async fn target_health(&self, arn: &str) -> Result<Vec<(String, String, String, String)>> {
        let r = self
            .elb
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(|e| Error::aws("elasticloadbalancing:DescribeTargetHealth", format!("target group {arn}"), &self.region, &e))?;
        let mut out = Vec::new();
        for d in r.target_health_descriptions() {
            let id = required(d.target().and_then(|t| t.id()), "elasticloadbalancing:DescribeTargetHealth", "a target's id", &self.region)?;
            let h = d.target_health();
            let state = required(
                h.and_then(|h| h.state()).map(|s| s.as_str()),
                "elasticloadbalancing:DescribeTargetHealth",
                &format!("the state of target {id}"),
                &self.region,
            )?;
            let reason = h.and_then(|h| h.reason()).map(|r| r.as_str().to_string()).unwrap_or_default();
            let detail = h.and_then(|h| h.description()).unwrap_or_default().to_string();
            out.push((id, state, reason, detail));
        }
        Ok(out)
    }

    /// Every launch configuration in the region.
    pub async fn launch_configurations(&self) -> Result<Vec<aws_sdk_autoscaling::types::LaunchConfiguration>> {
        self.asg
            .describe_launch_configurations()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("autoscaling:DescribeLaunchConfigurations", "launch configurations", &self.region, &e))
    }

    /// The launch configurations with these names (asked 50 at a time), every page.
    pub async fn launch_configurations_named(&self, names: &[String]) -> Result<Vec<aws_sdk_autoscaling::types::LaunchConfiguration>> {
        let mut out = Vec::new();
        for chunk in names.chunks(50) {
            let found: Vec<aws_sdk_autoscaling::types::LaunchConfiguration> = self
                .asg
                .describe_launch_configurations()
                .set_launch_configuration_names(Some(chunk.to_vec()))
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("autoscaling:DescribeLaunchConfigurations", chunk.join(", "), &self.region, &e))?;
            out.extend(found);
        }
        Ok(out)
    }

    /// Images matching `filters`, owned by `owners` (any owner when empty).
    pub async fn images(&self, what: &str, owners: &[String], filters: Vec<Ec2Filter>) -> Result<Vec<aws_sdk_ec2::types::Image>> {
        self.images_with(what, owners, filters, false).await
    }

    /// [`Clients::images`], disabled images included when asked (DescribeImages leaves them out
    /// unless `IncludeDisabled`).
    pub async fn images_with(&self, what: &str, owners: &[String], filters: Vec<Ec2Filter>, include_disabled: bool) -> Result<Vec<aws_sdk_ec2::types::Image>> {
        self.ec2
            .describe_images()
            .set_include_disabled(include_disabled.then_some(true))
            .set_owners(Some(owners.to_vec()).filter(|o| !o.is_empty()))
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("ec2:DescribeImages", what, &self.region, &e))
    }

    /// Instances matching `filters`.
    pub async fn instances(&self, what: &str, filters: Vec<Ec2Filter>) -> Result<Vec<aws_sdk_ec2::types::Instance>> {
        let reservations: Vec<aws_sdk_ec2::types::Reservation> = self
            .ec2
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("ec2:DescribeInstances", what, &self.region, &e))?;
        Ok(reservations.iter().flat_map(|r| r.instances().iter().cloned()).collect())
    }

    pub async fn security_groups(&self, what: &str, filters: Vec<Ec2Filter>) -> Result<Vec<aws_sdk_ec2::types::SecurityGroup>> {
        self.ec2
            .describe_security_groups()
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("ec2:DescribeSecurityGroups", what, &self.region, &e))
    }

    /// This account's snapshots matching `filters`.
    pub async fn own_snapshots(&self, what: &str, filters: Vec<Ec2Filter>) -> Result<Vec<aws_sdk_ec2::types::Snapshot>> {
        self.ec2
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("ec2:DescribeSnapshots", what, &self.region, &e))
    }

    pub async fn subnets(&self, what: &str, ids: Vec<String>, filters: Vec<Ec2Filter>) -> Result<Vec<aws_sdk_ec2::types::Subnet>> {
        self.ec2
            .describe_subnets()
            .set_subnet_ids(Some(ids).filter(|i| !i.is_empty()))
            .set_filters(Some(filters).filter(|f| !f.is_empty()))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("ec2:DescribeSubnets", what, &self.region, &e))
    }

    /// The Auto Scaling groups with these names (asked 50 at a time), every page.
    pub async fn groups_named(&self, names: &[String]) -> Result<Vec<aws_sdk_autoscaling::types::AutoScalingGroup>> {
        let mut out = Vec::new();
        for chunk in names.chunks(50) {
            let groups: Vec<aws_sdk_autoscaling::types::AutoScalingGroup> = self
                .asg
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(Some(chunk.to_vec()))
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("autoscaling:DescribeAutoScalingGroups", chunk.join(", "), &self.region, &e))?;
            out.extend(groups);
        }
        Ok(out)
    }

    /// The Auto Scaling groups matching `filters` (every group when empty), every page.
    pub async fn groups(&self, what: &str, filters: Vec<aws_sdk_autoscaling::types::Filter>) -> Result<Vec<aws_sdk_autoscaling::types::AutoScalingGroup>> {
        self.asg
            .describe_auto_scaling_groups()
            .set_filters(Some(filters).filter(|f| !f.is_empty()))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("autoscaling:DescribeAutoScalingGroups", what, &self.region, &e))
    }

    /// Every instance refresh of `group`, newest first.
    pub async fn instance_refreshes(&self, group: &str) -> Result<Vec<aws_sdk_autoscaling::types::InstanceRefresh>> {
        let pages: Vec<_> = self
            .asg
            .describe_instance_refreshes()
            .auto_scaling_group_name(group)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::aws("autoscaling:DescribeInstanceRefreshes", format!("group {group}"), &self.region, &e))?;
        Ok(pages.iter().flat_map(|p| p.instance_refreshes().iter().cloned()).collect())
    }
}
