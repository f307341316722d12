//! One budget per service and region for the whole process: every non-mutating call (Describe*,
//! Get*, List*) to the services bake polls (EC2, Systems Manager, Auto Scaling) of every bake,
//! roll and watcher waits for its token before it goes out, so fifty concurrent bakes ask EC2 for
//! no more than its budget allows. (IAM and STS, read a few times a bake and memoised across
//! bakes, are left to the SDK's retry of throttling.) It sits in the HTTP client the
//! SDK uses (after signing, before sending), so it sees every attempt, retries included; mutating
//! calls are never held back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::{tls, Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use tokio::time::Instant;

use crate::config::limits;

/// Describe calls per second per service and region, for the whole process, unless
/// `BAKE_DESCRIBE_RATE` says otherwise: half of EC2's refill rate for non-mutating calls (20 a
/// second; EC2 API reference, "Request throttling for the Amazon EC2 API"), leaving room for
/// everything else in the account. Systems Manager and Auto Scaling get twice as much.
pub const DEFAULT_RATE: f64 = 10.0;

/// A token bucket, as EC2 meters its API: up to one second's worth of calls at once (a bake's
/// burst of lookups passes without waiting), then `rate` a second; so never more than twice the
/// rate in any second, and the rate over any longer while.
pub struct Budget {
    rate: f64,
    bucket: tokio::sync::Mutex<(f64, Instant)>,
}

impl Budget {
    /// A budget of `rate` calls a second, held within [`limits::DESCRIBE_RATE`].
    pub fn new(rate: f64) -> Budget {
        Budget::new_within(rate, *limits::DESCRIBE_RATE.end())
    }

    /// A budget of `rate` calls a second, at most `hi`.
    fn new_within(rate: f64, hi: f64) -> Budget {
        let lo = *limits::DESCRIBE_RATE.start();
        let rate = if rate.is_finite() { rate.clamp(lo, hi.max(lo)) } else { DEFAULT_RATE };
        Budget { rate, bucket: tokio::sync::Mutex::new((rate, Instant::now())) }
    }

    /// Waits for a token (at once while the bucket holds one). Tokens below zero are calls
    /// already promised a later moment.
    pub async fn take(&self) {
        let wait = {
            let mut b = self.bucket.lock().await;
            let now = Instant::now();
            let (tokens, at) = *b;
            let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.rate).min(self.rate) - 1.0;
            *b = (tokens, now);
            if tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-tokens / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The describe rate: `BAKE_DESCRIBE_RATE`, else [`DEFAULT_RATE`]; a value that is not a number
/// within [`limits::DESCRIBE_RATE`] is refused with why (the command line checks it first).
pub fn rate() -> Result<f64, String> {
    parse_rate(std::env::var("BAKE_DESCRIBE_RATE").ok().as_deref())
}

fn parse_rate(v: Option<&str>) -> Result<f64, String> {
    let Some(v) = v else { return Ok(DEFAULT_RATE) };
    let (lo, hi) = (*limits::DESCRIBE_RATE.start(), *limits::DESCRIBE_RATE.end());
    match v.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && (lo..=hi).contains(&r) => Ok(r),
        _ => Err(format!("BAKE_DESCRIBE_RATE: `{v}` is not a number of describe calls a second from {lo} to {hi} (EC2 refills {hi} a second)")),
    }
}

/// (service, region) → its budget.
type Budgets = Mutex<BTreeMap<(String, String), Arc<Budget>>>;

static BUDGETS: OnceLock<Budgets> = OnceLock::new();

/// The budget of `service` in `region` (made on first use).
pub fn budget(service: &str, region: &str) -> Arc<Budget> {
    let all = BUDGETS.get_or_init(Default::default);
    let mut map = match all.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    let rate = rate().unwrap_or(DEFAULT_RATE);
    // Systems Manager and Auto Scaling get twice EC2's rate (their reads are per command and per
    // group; SSM's stays within half of what Parameter Store serves).
    let rate = if service == "ssm" || service == "autoscaling" { rate * 2.0 } else { rate };
    map.entry((service.to_string(), region.to_string())).or_insert_with(|| Arc::new(Budget::new_within(rate, limits::SSM_READS))).clone()
}

/// The SDK's default HTTPS client (rustls with aws-lc, proxies from `HTTPS_PROXY` and friends),
/// pacing every non-mutating call.
pub fn http_client() -> SharedHttpClient {
    let inner = Builder::new().build_with_connector_fn(move |settings, components| {
        let mut conn = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc));
        conn.set_connector_settings(settings.cloned());
        if let Some(c) = components {
            conn.set_sleep_impl(c.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    });
    SharedHttpClient::new(Paced(inner))
}

#[derive(Debug)]
struct Paced(SharedHttpClient);

impl HttpClient for Paced {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(PacedConnector(self.0.http_connector(settings, components)))
    }
}

#[derive(Debug)]
struct PacedConnector(SharedHttpConnector);

impl HttpConnector for PacedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.0.clone();
        HttpConnectorFuture::new(async move {
            if let Some((service, region)) = paced(&request) {
                budget(&service, &region).take().await;
            }
            inner.call(request).await
        })
    }
}

/// The service and region of a non-mutating call (from the signature's credential scope and the
/// action: the query protocol's `Action=` or the JSON protocols' `X-Amz-Target`).
fn paced(request: &HttpRequest) -> Option<(String, String)> {
    let auth = request.headers().get("authorization")?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    let mut parts = scope.split('/').skip(2);
    let (region, service) = (parts.next()?.to_string(), parts.next()?.to_string());
    let action = match request.headers().get("x-amz-target") {
        Some(t) => t.rsplit('.').next()?.to_string(),
        None => {
            let body = std::str::from_utf8(request.body().bytes()?).ok()?;
            body.split('&').find_map(|kv| kv.strip_prefix("Action="))?.to_string()
        }
    };
    let polled = matches!(service.as_str(), "ec2" | "ssm" | "autoscaling");
    (polled && ["Describe", "Get", "List"].iter().any(|p| action.starts_with(p))).then_some((service, region))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_a_number_within_what_ec2_refills() {
        assert_eq!(parse_rate(None), Ok(DEFAULT_RATE));
        assert_eq!(parse_rate(Some(" 2.5 ")), Ok(2.5));
        for bad in ["", "abc", "0", "-5", "NaN", "inf", "1e-30", "1e309", "21", "0.1"] {
            let e = parse_rate(Some(bad)).unwrap_err();
            assert!(e.starts_with("BAKE_DESCRIBE_RATE: `"), "{bad}: {e}");
        }
        // A budget never panics, whatever it is given.
        for r in [0.0, -1.0, 1e-300, f64::NAN, f64::INFINITY, 1e300] {
            let _ = Budget::new(r);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_lets_a_burst_through_then_keeps_its_rate() {
        let b = Budget::new(4.0);
        let t = Instant::now();
        for _ in 0..4 {
            b.take().await;
        }
        assert_eq!(t.elapsed(), Duration::ZERO, "a second's worth at once");
        for _ in 0..8 {
            b.take().await;
        }
        // Then one every quarter second.
        assert_eq!(t.elapsed(), Duration::from_secs(2));
        // Idle, the bucket fills again, to one second's worth and no more.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t = Instant::now();
        for _ in 0..5 {
            b.take().await;
        }
        assert_eq!(t.elapsed(), Duration::from_millis(250));
    }

    fn request(auth: &str, target: Option<&str>, body: &str) -> HttpRequest {
        let mut r = HttpRequest::new(aws_smithy_types::body::SdkBody::from(body.to_string()));
        r.headers_mut().insert("authorization", auth.to_string());
        if let Some(t) = target {
            r.headers_mut().insert("x-amz-target", t.to_string());
        }
        r
    }

    #[test]
    fn only_calls_that_read_are_paced() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKID/20261201/eu-west-1/ec2/aws4_request, SignedHeaders=host, Signature=0";
        assert_eq!(paced(&request(auth, None, "Action=DescribeInstances&Version=2016-11-15")), Some(("ec2".into(), "eu-west-1".into())));
        assert_eq!(paced(&request(auth, None, "Action=RunInstances&Version=2016-11-15")), None);
        let ssm = auth.replace("/ec2/", "/ssm/");
        assert_eq!(paced(&request(&ssm, Some("AmazonSSM.ListCommandInvocations"), "{}")), Some(("ssm".into(), "eu-west-1".into())));
        assert_eq!(paced(&request(&ssm, Some("AmazonSSM.SendCommand"), "{}")), None);
        assert_eq!(paced(&request("", None, "Action=DescribeInstances")), None, "unsigned: not an AWS call bake makes");
        let iam = auth.replace("/eu-west-1/ec2/", "/us-east-1/iam/");
        assert_eq!(paced(&request(&iam, None, "Action=ListRoles")), None, "IAM is left to the SDK's retry");
    }
}
