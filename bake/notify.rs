//! Notifications when a bake ends: an SNS topic and/or a webhook from the role's `[notify]`, with
//! the manifest's summary. A notification that fails is reported; it never fails the bake.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::aws::Aws;
use crate::config::role::NotifySpec;
use crate::manifest::{Manifest, Status};

/// The summary sent: what a scheduler or a chat channel needs, and the manifest itself.
pub fn summary(m: &Manifest) -> Value {
    let images: serde_json::Map<String, Value> = m.images.iter().map(|(r, i)| (r.clone(), Value::String(i.ami_id.clone()))).collect();
    let text = match m.status {
        Status::Succeeded => format!("bake {}/{}: baked {}", m.role, m.env, images.values().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")),
        Status::Reused => format!("bake {}/{}: unchanged", m.role, m.env),
        s => format!("bake {}/{}: {s}: {}", m.role, m.env, m.error.clone().unwrap_or_default()),
    };
    json!({
        "text": text,
        "role": m.role,
        "env": m.env,
        "kind": m.kind,
        "status": m.status,
        "error": m.error,
        "bake_id": m.bake_id,
        "images": images,
        "fingerprint": m.fingerprint,
        "duration_secs": m.duration_secs,
        "manifest": m,
    })
}

fn wanted(spec: &NotifySpec, status: Status) -> bool {
    let outcome = if matches!(status, Status::Succeeded | Status::Reused) { "success" } else { "failure" };
    (spec.sns_topic_arn.is_some() || spec.webhook_url.is_some()) && spec.on.iter().any(|o| o == outcome)
}

async fn webhook(url: &str, body: Vec<u8>) -> Result<u16, String> {
    let https =
        hyper_rustls::HttpsConnectorBuilder::new().with_native_roots().map_err(|e| format!("no TLS roots: {e}"))?.https_or_http().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("bake/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(15), client.request(req))
        .await
        .map_err(|_| "no answer within 15s".to_string())?
        .map_err(|e| crate::error::one_line(&format!("{e:?}")))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("answered HTTP {status}"))
    }
}

/// Sends what the role asks for; returns one line per notification that failed.
pub async fn send(aws: &Aws, spec: &NotifySpec, m: &Manifest) -> Vec<String> {
    if !wanted(spec, m.status) {
        return Vec::new();
    }
    let s = summary(m);
    let mut errors = Vec::new();
    if let Some(arn) = &spec.sns_topic_arn {
        let region = arn.split(':').nth(3).filter(|r| !r.is_empty()).map(str::to_string).unwrap_or_else(|| m.region.clone());
        let sns = aws_sdk_sns::Client::from_conf(aws_sdk_sns::config::Builder::from(&aws.sdk_config()).region(aws_config::Region::new(region.clone())).build());
        let mut subject = s["text"].as_str().unwrap_or("bake").to_string();
        subject.truncate(99);
        let subject: String = subject.chars().filter(|c| !c.is_control()).collect();
        if let Err(e) = sns.publish().topic_arn(arn).subject(subject).message(s.to_string()).send().await {
            errors.push(crate::error::Error::aws("sns:Publish", format!("topic {arn}"), &region, &e).to_string());
        }
    }
    if let Some(url) = &spec.webhook_url {
        if let Err(e) = webhook(url, s.to_string().into_bytes()).await {
            errors.push(format!("webhook {url}: {e}"));
        }
    }
    errors
}
