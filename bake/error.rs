//! bake's errors. Each prints as one sentence naming what failed, the resource and the region.

use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::config::Problems;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration: every problem, one per line.
    #[error("{0}")]
    Config(Problems),

    /// An AWS call failed.
    #[error("{action} on {resource} in {region} failed: {detail}")]
    Aws { action: String, resource: String, region: String, code: Option<String>, detail: String },

    /// The source image could not be found or used.
    #[error("source image {what} in {region}: {why}")]
    Source { what: String, region: String, why: String },

    /// A cookbook step failed on the builder.
    #[error("{}", step_failed_text(.step, .instance, .region, .status, *.exit_code, .stderr_tail))]
    StepFailed { step: String, instance: String, region: String, status: String, exit_code: i32, stderr_tail: Vec<String> },

    /// Waiting for something took too long, or it ended in a failed state.
    #[error("{what} {resource} in {region} {why}")]
    Wait { what: String, resource: String, region: String, why: String },

    /// Copying the image to other regions failed in some of them.
    #[error("copying {image} failed in {}; {}", failed_regions(.failed), copies_note(.succeeded))]
    Copy { image: String, failed: Vec<(String, String)>, succeeded: Vec<String> },

    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,

    /// Something on the local machine (journal, manifest) failed.
    #[error("{what} {path}: {why}")]
    Local { what: String, path: String, why: String },

    #[error("{0}")]
    Other(String),
}

fn step_failed_text(step: &str, instance: &str, region: &str, status: &str, code: i32, tail: &[String]) -> String {
    let mut s = format!("step {step} failed on builder {instance} in {region}: {status}, exit code {code}");
    if !tail.is_empty() {
        s.push_str("; last lines of its stderr:");
        for l in tail {
            s.push_str("\n  | ");
            s.push_str(l);
        }
    }
    s
}

fn failed_regions(failed: &[(String, String)]) -> String {
    failed.iter().map(|(r, why)| format!("{r} ({why})")).collect::<Vec<_>>().join(", ")
}

fn copies_note(ok: &[String]) -> String {
    if ok.is_empty() {
        "no region got a copy".to_string()
    } else {
        format!("the copies in {} succeeded and are removed with the rest of this bake", ok.join(", "))
    }
}

impl Error {
    /// An AWS SDK error, as one sentence: `CODE: message` for a service error, and for what is
    /// not one (no credentials, an endpoint that does not answer, an answer that is not AWS's)
    /// what happened and what to do — never the SDK's debug dump.
    pub fn aws<E>(action: &str, resource: impl Into<String>, region: &str, e: &SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = e.code().map(str::to_string);
        let detail = match (e.code(), e.message()) {
            (Some(c), Some(m)) if !m.is_empty() => format!("{c}: {}", one_line(m)),
            (Some(c), _) => c.to_string(),
            _ => not_an_aws_answer(e),
        };
        Error::Aws { action: action.to_string(), resource: resource.into(), region: region.to_string(), code, detail }
    }
    /// The AWS error code, when this is a service error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Aws { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    pub fn local(what: &str, path: &std::path::Path, e: impl fmt::Display) -> Error {
        Error::Local { what: what.to_string(), path: path.display().to_string(), why: e.to_string() }
    }
}

/// What went wrong when AWS did not answer with an error of its own.
fn not_an_aws_answer<E: std::error::Error + 'static>(e: &SdkError<E, HttpResponse>) -> String {
    let endpoint = endpoint_override();
    let to = endpoint.as_deref().map(|u| format!(" {u}")).unwrap_or_else(|| " AWS".into());
    match e {
        SdkError::DispatchFailure(d) => {
            if has_source::<aws_credential_types::provider::error::CredentialsError>(e) {
                let mut why = innermost(e);
                if why.contains("no credentials found in chain") {
                    why = "none in the environment, the shared config, web identity, the container or instance metadata".into();
                }
                return match profile_in_use() {
                    Some(p) => format!("no AWS credentials for profile {p} ({why}): sign in (aws sso login --profile {p}, or what the profile's credential_process needs) and run bake again"),
                    None => format!(
                        "no AWS credentials ({why}): sign in (aws sso login --profile P, then --profile P), or set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    ),
                };
            }
            let c = d.as_connector_error();
            let how = if c.map(|c| c.is_timeout()).unwrap_or(false) { "timed out reaching" } else { "could not reach" };
            format!("{how}{to}: {} (check the network, a proxy, or --endpoint-url / AWS_ENDPOINT_URL)", innermost(e))
        }
        SdkError::TimeoutError(_) => format!("no answer from{to} in time (the SDK's timeout)"),
        SdkError::ConstructionFailure(_) => format!("could not build the request: {}", innermost(e)),
        SdkError::ResponseError(r) => answer_text(r.raw(), &to),
        SdkError::ServiceError(s) => answer_text(s.raw(), &to),
        _ => one_line(&DisplayErrorContext(e).to_string()),
    }
}

/// An HTTP answer that is not an AWS error: its status and what it was.
fn answer_text(raw: &HttpResponse, to: &str) -> String {
    let status = raw.status().as_u16();
    let kind = raw.headers().get("content-type").unwrap_or("");
    let body = raw.body().bytes().unwrap_or_default();
    let what = if kind.contains("html") || body.trim_ascii_start().starts_with(b"<!") || body.trim_ascii_start().to_ascii_lowercase().starts_with(b"<html") {
        "an HTML page".to_string()
    } else if body.trim_ascii().is_empty() {
        "an empty body".to_string()
    } else {
        format!("a body that is not an AWS answer ({})", if kind.is_empty() { "no content type" } else { kind })
    };
    format!("{to} answered HTTP {status} with {what}, not an AWS answer (is the endpoint or the region right?)").trim_start().to_string()
}

fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

fn has_source<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    chain(e).any(|e| e.downcast_ref::<T>().is_some())
}

/// The deepest cause's own words, on one line.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    chain(e).last().map(|e| one_line(&e.to_string())).unwrap_or_default()
}

/// Folds white space (including newlines) into single spaces and escapes any other control
/// character (text from AWS, such as an alarm's reason, may hold a terminal's escape codes).
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}

impl From<Problems> for Error {
    fn from(p: Problems) -> Self {
        Error::Config(p)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// True for the codes AWS answers when a resource is already gone: cleanup counts them as done.
pub fn is_not_found(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(c) if c.ends_with(".NotFound")
            || c.ends_with("NotFound")
            || c == "NoSuchEntity"
            || c == "ParameterNotFound"
            || c == "InvalidAMIID.Unavailable"
            || c == "InvalidInstanceID.Malformed"
    )
}

/// The endpoint every call goes to when one is set (--endpoint-url, AWS_ENDPOINT_URL), for
/// messages about not reaching it.
pub(crate) static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn endpoint_override() -> Option<String> {
    ENDPOINT.get().cloned().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
}

/// The shared-config profile in use (--profile, AWS_PROFILE), for messages about signing in.
pub(crate) static PROFILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn profile_in_use() -> Option<String> {
    PROFILE.get().cloned().or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_folds_white_space_and_escapes_control_characters() {
        assert_eq!(super::one_line("boom \x1b[31mred\x1b[0m\nsecond  line\r"), "boom \\u{1b}[31mred\\u{1b}[0m second line");
    }
}
