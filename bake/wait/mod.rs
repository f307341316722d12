//! Where bake spends time waiting. Transitions in AWS (instances, images, agents, commands,
//! refreshes) are followed through the process's shared [`watcher`]s: one batched describe per
//! tick for every bake and roll, within a per-region call budget. bake uses no SDK waiter (they
//! wait 15 s before their first re-check). Also here: [`poll`] for what is not AWS's (a lock
//! file), and [`retry`], the one retry of bake's own. EC2 is eventually consistent:
//! for a while after it creates something it may answer NotFound for it, so here NotFound means
//! "not yet" for whatever bake just created ([`CONSISTENCY_WINDOW`]).

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::types::{ImageState, InstanceStateName};
use tokio::time::Instant;

use crate::aws::Clients;
use crate::error::{Error, Result};

pub mod watcher;

/// How long after creating something bake takes AWS's NotFound for "not visible yet" rather than
/// "gone" (EC2's eventual consistency: seconds as a rule; this bounds the rare long tail).
pub const CONSISTENCY_WINDOW: Duration = Duration::from_secs(60);

/// The end of a wait that did not get what it waited for: `what resource in region why`.
pub fn gave_up(what: impl Into<String>, resource: impl Into<String>, region: &str, why: impl Into<String>) -> Error {
    Error::Wait { what: what.into(), resource: resource.into(), region: region.to_string(), why: why.into() }
}

fn is_not_found(code: Option<&str>) -> bool {
    code.map(|c| c.ends_with(".NotFound") || c.ends_with("NotFound")).unwrap_or(false)
}

/// Follows `key` on a shared watcher until `judge` decides: `Ok(Some(v))` done, `Ok(None)` not
/// yet, `Err` failed. `None` when `timeout` passes first (the caller says what it waited for).
/// `judge` sees what AWS answered for the key, `None` when the answer left it out.
pub async fn follow<S: watcher::Source, T>(
    w: &std::sync::Arc<watcher::Watcher<S>>,
    calls: &crate::aws::CallCounter,
    key: &str,
    timeout: Duration,
    mut judge: impl FnMut(Option<&S::State>) -> Result<Option<T>>,
) -> Result<Option<T>> {
    let mut watch = w.watch(key, calls);
    let now = Instant::now();
    let deadline = now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(crate::config::limits::WAIT_MAX));
    loop {
        let Ok(report) = tokio::time::timeout_at(deadline, watch.next()).await else { return Ok(None) };
        if let Some(e) = report.error {
            return Err(Error::Other(e));
        }
        if let Some(v) = judge(report.seen.as_ref())? {
            return Ok(Some(v));
        }
    }
}

/// Waits until instance `id` is in state `goal` (`running`, `stopped`, `terminated`). Not in
/// EC2's answer is "not yet" while the instance may not be visible ([`CONSISTENCY_WINDOW`]) and,
/// when waiting for `terminated`, "gone" after that.
pub async fn instance(c: &Clients, what: &str, id: &str, goal: InstanceStateName, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let failing: &[InstanceStateName] = match goal {
        InstanceStateName::Running => {
            &[InstanceStateName::ShuttingDown, InstanceStateName::Terminated, InstanceStateName::Stopping, InstanceStateName::Stopped]
        }
        InstanceStateName::Stopped => &[InstanceStateName::ShuttingDown, InstanceStateName::Terminated],
        _ => &[],
    };
    let found = follow(&watcher::of(c).instances, &c.calls, id, timeout, |seen| match seen.map(|i| i.state().and_then(|s| s.name())) {
        None => {
            let gone = goal == InstanceStateName::Terminated && started.elapsed() >= CONSISTENCY_WINDOW.min(timeout);
            Ok(gone.then_some(()))
        }
        Some(Some(s)) if *s == goal => Ok(Some(())),
        Some(Some(s)) if failing.contains(s) => Err(gave_up(what, id, &c.region, format!("is {} and cannot become {}", s.as_str(), goal.as_str()))),
        Some(_) => Ok(None),
    })
    .await?;
    found.ok_or_else(|| gave_up(what, id, &c.region, format!("did not become {} within {}", goal.as_str(), crate::config::Secs(timeout.as_secs()))))
}

/// Waits until image `id` is available and returns it; `failed` (or deregistered) ends the wait
/// with its reason. Not in EC2's answer before the image was ever seen is "not yet". `seen` is
/// called with every description (a pending image already names its snapshots).
pub async fn image(
    c: &Clients,
    what: &str,
    id: &str,
    timeout: Duration,
    mut seen: impl FnMut(&aws_sdk_ec2::types::Image) -> Result<()>,
) -> Result<aws_sdk_ec2::types::Image> {
    let started = Instant::now();
    let found = follow(&watcher::of(c).images, &c.calls, id, timeout, |img| {
        let Some(img) = img else {
            if started.elapsed() < CONSISTENCY_WINDOW {
                return Ok(None);
            }
            return Err(gave_up(what, id, &c.region, "no longer exists"));
        };
        seen(img)?;
        match img.state() {
            Some(ImageState::Available) => Ok(Some(img.clone())),
            Some(s @ (ImageState::Failed | ImageState::Error | ImageState::Invalid | ImageState::Deregistered)) => {
                let reason = img.state_reason().and_then(|r| r.message()).unwrap_or("no reason given");
                Err(gave_up(what, id, &c.region, format!("is {}: {reason}", s.as_str())))
            }
            _ => Ok(None),
        }
    })
    .await?;
    found.ok_or_else(|| gave_up(what, id, &c.region, format!("did not become available within {}", crate::config::Secs(timeout.as_secs()))))
}

/// Something the canaries' bake time watches.
pub enum Watch {
    /// CloudWatch alarms in a region: none may go into ALARM.
    Alarms { c: Clients, names: Vec<String> },
    /// A target group: none of these instances (id, group) it holds may turn unhealthy.
    Targets { c: Clients, arn: String, instances: Vec<(String, String)> },
}

impl std::fmt::Display for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Watch::Alarms { c, names } => write!(f, "alarms {} in {}", names.join(", "), c.place()),
            Watch::Targets { arn, instances, .. } => write!(f, "{} canary instance(s) in target group {arn}", instances.len()),
        }
    }
}

impl Watch {
    /// What is wrong now, as a sentence naming it and its region; `None` when all is well.
    async fn check(&self) -> Result<Option<String>> {
        match self {
            Watch::Alarms { c, names } => {
                let states = c.alarm_states(names).await?;
                Ok(states
                    .iter()
                    .find(|(_, (state, _))| state == "ALARM")
                    .map(|(name, (_, reason))| format!("alarm {name} went into ALARM in {} ({})", c.place(), crate::error::one_line(reason))))
            }
            Watch::Targets { c, arn, instances } => {
                for (id, state, reason, detail) in c.target_health(arn).await? {
                    let Some((_, group)) = instances.iter().find(|(i, _)| *i == id) else { continue };
                    if matches!(state.as_str(), "unhealthy" | "unhealthy.draining" | "unavailable") {
                        return Ok(Some(format!(
                            "instance {id} of canary group {group} is {state} in target group {arn} ({})",
                            crate::error::one_line(&format!("{reason}: {detail}"))
                        )));
                    }
                }
                Ok(None)
            }
        }
    }
}

/// Watches `watches` for `how_long`, every [`watcher::TICK`]: the first thing wrong, as a
/// sentence; `None` when all stayed well.
pub async fn canaries_healthy(watches: &[Watch], how_long: Duration) -> Result<Option<String>> {
    let end = Instant::now() + how_long;
    if watches.is_empty() {
        tokio::time::sleep_until(end).await;
        return Ok(None);
    }
    loop {
        for w in watches {
            if let Some(why) = w.check().await? {
                return Ok(Some(why));
            }
        }
        let now = Instant::now();
        if now >= end {
            return Ok(None);
        }
        tokio::time::sleep((end - now).min(watcher::TICK)).await;
    }
}

/// Retries `op` while AWS answers NotFound for something bake just created, within
/// [`CONSISTENCY_WINDOW`]; any other answer (or NotFound after the window) is returned as is.
pub async fn visible<T, F, Fut>(op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    visible_when(|e| is_not_found(e.code()), op).await
}

/// [`visible`] for services that say "not visible yet" their own way (`not_yet` tells).
pub async fn visible_when<T, F, Fut>(not_yet: fn(&Error) -> bool, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    retry(Backoff::within(Duration::from_millis(200), Duration::from_secs(5), CONSISTENCY_WINDOW), not_yet, |_, _| {}, op).await
}

/// How [`retry`] backs off: exponentially (with jitter) from `first` to `max`, at most `times`
/// retries or `total` time slept in all.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub times: Option<usize>,
    pub total: Option<Duration>,
}

impl Backoff {
    /// At most `times` retries.
    pub fn times(first: Duration, max: Duration, times: usize) -> Backoff {
        Backoff { first, max, times: Some(times), total: None }
    }
    /// As many retries as fit in `total`.
    pub fn within(first: Duration, max: Duration, total: Duration) -> Backoff {
        Backoff { first, max, times: None, total: Some(total) }
    }
}

/// The one retry of bake's own (the SDK retries throttling and 5xx itself): runs `op` again
/// while its error is one `when` accepts (AWS's eventual consistency: NotFound right after a
/// create, DependencyViolation until an interface is gone), backing off as `b` says; `notify`
/// hears each retry.
pub async fn retry<T, F, Fut>(b: Backoff, when: impl FnMut(&Error) -> bool, notify: impl FnMut(&Error, Duration), op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    use backon::{ExponentialBuilder, Retryable};
    let builder =
        ExponentialBuilder::default().with_min_delay(b.first).with_max_delay(b.max).with_max_times(b.times.unwrap_or(usize::MAX)).with_total_delay(b.total);
    op.retry(builder).sleep(tokio::time::sleep).when(when).notify(notify).await
}

#[cfg(test)]
mod tests {
    use super::watcher::{Source, Watcher};
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retry_runs_again_only_for_the_answers_it_accepts() {
        let n = AtomicU32::new(0);
        let b = Backoff::times(Duration::from_millis(100), Duration::from_secs(1), 3);
        let r: Result<()> = retry(
            b,
            |e| e.to_string() == "again",
            |_, _| {},
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Error::Other("again".into()))
            },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(n.load(Ordering::SeqCst), 4, "the first try and three retries");
        let n = AtomicU32::new(0);
        let r: Result<()> = retry(
            b,
            |e| e.to_string() == "again",
            |_, _| {},
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Error::Other("no".into()))
            },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(n.load(Ordering::SeqCst), 1, "another answer is returned at once");
    }

    struct Never(bool);

    impl Source for Never {
        type State = String;
        const CALL: &'static str = "test:Describe";
        fn batch(&self) -> usize {
            10
        }
        fn describe<'a>(&'a self, keys: &'a [String], _: aws_smithy_types::DateTime) -> watcher::Describe<'a, String> {
            Box::pin(async move {
                if self.0 {
                    return Err(Error::Other("test:Describe in us-east-1 failed: boom".into()));
                }
                Ok(keys.iter().map(|k| (k.clone(), "pending".to_string())).collect())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn follow_gives_up_at_the_deadline_and_passes_errors_on() {
        let calls = crate::aws::CallCounter::default();
        let w = Watcher::new(Never(false), "us-east-1");
        let start = Instant::now();
        let got: Option<()> = follow(&w, &calls, "i-1", Duration::from_secs(5), |s| {
            assert_eq!(s.map(String::as_str), Some("pending"));
            Ok(None)
        })
        .await
        .unwrap();
        assert!(got.is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(calls.snapshot()["test:Describe"] >= 5, "{:?}", calls.snapshot());
        let w = Watcher::new(Never(true), "us-east-1");
        let e = follow(&w, &calls, "i-1", Duration::from_secs(5), |_| Ok(Some(()))).await.unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }
}
