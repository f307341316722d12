//! One SdkConfig, clients per region, and a count of the API calls a bake makes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

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
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub sts: aws_sdk_sts::Client,
}

/// The AWS side of bake: a base configuration and the calls counted through it.
#[derive(Clone, Debug)]
pub struct Aws {
    base: SdkConfig,
    pub calls: CallCounter,
}

/// How bake reaches AWS (from the command line).
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
}

impl Aws {
    /// Loads credentials and region the standard way (environment, profile, IMDS); the SDK
    /// retries throttling and 5xx answers (standard mode: exponential backoff with jitter), with
    /// more attempts than its default of 3. Adaptive mode's client-side rate limiting is meant
    /// for high call rates; a bake makes a few calls a second at most.
    pub async fn load(conn: &Connection) -> Aws {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(8));
        if let Some(p) = &conn.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &conn.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &conn.endpoint_url {
            loader = loader.endpoint_url(e);
        }
        Aws { base: loader.load().await, calls: CallCounter::default() }
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
        Aws { base: self.base.clone(), calls: CallCounter::default() }
    }

    pub fn clients(&self, region: &str) -> Clients {
        let region_v = Region::new(region.to_string());
        let counting = || Counting(self.calls.clone());
        Clients {
            region: region.to_string(),
            ec2: aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build(),
            ),
            ssm: aws_sdk_ssm::Client::from_conf(
                aws_sdk_ssm::config::Builder::from(&self.base).region(region_v.clone()).interceptor(counting()).build(),
            ),
            asg: aws_sdk_autoscaling::Client::from_conf(
                aws_sdk_autoscaling::config::Builder::from(&self.base)
                    .region(region_v.clone())
                    .interceptor(counting())
                    .build(),
            ),
            sts: aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(&self.base).region(region_v).interceptor(counting()).build(),
            ),
        }
    }
}

impl Clients {
    /// Every launch configuration in the region (all pages).
    pub async fn launch_configurations(&self) -> crate::error::Result<Vec<aws_sdk_autoscaling::types::LaunchConfiguration>> {
        self.asg
            .describe_launch_configurations()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| crate::error::Error::aws("autoscaling:DescribeLaunchConfigurations", "launch configurations", &self.region, &e))
    }
}
