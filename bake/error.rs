//! bake's errors. Each prints as one sentence naming what failed, the resource and the region.

use std::fmt;

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
    /// An AWS SDK error, as one sentence: `CODE: message` for service errors, the cause chain
    /// on one line otherwise.
    pub fn aws<E, R>(action: &str, resource: impl Into<String>, region: &str, e: &SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug,
    {
        let code = e.code().map(str::to_string);
        let detail = match (e.code(), e.message()) {
            (Some(c), Some(m)) if !m.is_empty() => format!("{c}: {m}"),
            (Some(c), _) => c.to_string(),
            _ => one_line(&DisplayErrorContext(e).to_string()),
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

/// Folds white space (including newlines) into single spaces.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
