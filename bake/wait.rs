//! Where bake spends time waiting: one poll helper (probe, sleep on tokio's clock with a growing
//! interval, give up at a deadline), and the waits built on it for instances and images. bake
//! uses no SDK waiter (they wait 15 s before their first re-check). EC2 is eventually consistent:
//! for a while after it creates something it may answer NotFound for it, so here NotFound means
//! "not yet" for whatever bake just created ([`CONSISTENCY_WINDOW`]).

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::types::{ImageState, InstanceStateName};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::time::Instant;

use crate::aws::Clients;
use crate::error::{Error, Result};

/// How long after creating something bake takes AWS's NotFound for "not visible yet" rather than
/// "gone" (EC2's eventual consistency: seconds as a rule; this bounds the rare long tail).
pub const CONSISTENCY_WINDOW: Duration = Duration::from_secs(60);

/// The end of a wait that did not get what it waited for: `what resource in region why`.
pub fn gave_up(what: impl Into<String>, resource: impl Into<String>, region: &str, why: impl Into<String>) -> Error {
    Error::Wait { what: what.into(), resource: resource.into(), region: region.to_string(), why: why.into() }
}

/// Polls of something that changes within seconds (instances, images): at once, then after half
/// a second, then every second; never more than twice a second.
fn quick(timeout: Duration) -> Poll {
    Poll::new(Duration::from_millis(500), Duration::from_secs(1), timeout)
}

fn is_not_found(code: Option<&str>) -> bool {
    code.map(|c| c.ends_with(".NotFound") || c.ends_with("NotFound")).unwrap_or(false)
}

/// Waits until instance `id` is in state `goal` (`running`, `stopped`, `terminated`). NotFound is
/// "not yet" while the instance may not be visible ([`CONSISTENCY_WINDOW`]) and, when waiting
/// for `terminated`, "gone" after that.
pub async fn instance(c: &Clients, what: &str, id: &str, goal: InstanceStateName, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let failing: &[InstanceStateName] = match goal {
        InstanceStateName::Running => {
            &[InstanceStateName::ShuttingDown, InstanceStateName::Terminated, InstanceStateName::Stopping, InstanceStateName::Stopped]
        }
        InstanceStateName::Stopped => &[InstanceStateName::ShuttingDown, InstanceStateName::Terminated],
        _ => &[],
    };
    let found = poll(quick(timeout), || async {
        let r = match c.ec2.describe_instances().instance_ids(id).send().await {
            Ok(r) => r,
            Err(e) if is_not_found(e.code()) => {
                let gone = goal == InstanceStateName::Terminated && started.elapsed() >= CONSISTENCY_WINDOW.min(timeout);
                return Ok(gone.then_some(()));
            }
            Err(e) => return Err(Error::aws("ec2:DescribeInstances", format!("{what} {id}"), &c.region, &e)),
        };
        let state =
            r.reservations().iter().flat_map(|r| r.instances()).find(|i| i.instance_id() == Some(id)).and_then(|i| i.state()).and_then(|s| s.name()).cloned();
        match state {
            Some(s) if s == goal => Ok(Some(())),
            Some(s) if failing.contains(&s) => Err(gave_up(what, id, &c.region, format!("is {} and cannot become {}", s.as_str(), goal.as_str()))),
            _ => Ok(None),
        }
    })
    .await?;
    found.ok_or_else(|| gave_up(what, id, &c.region, format!("did not become {} within {}", goal.as_str(), crate::config::Secs(timeout.as_secs()))))
}

/// Waits until image `id` is available and returns it; `failed` (or deregistered) ends the wait
/// with its reason. NotFound before the image was ever seen is "not yet". `seen` is called with
/// every description (a pending image already names its snapshots).
pub async fn image(
    c: &Clients,
    what: &str,
    id: &str,
    timeout: Duration,
    mut seen: impl FnMut(&aws_sdk_ec2::types::Image) -> Result<()>,
) -> Result<aws_sdk_ec2::types::Image> {
    let started = Instant::now();
    let seen = std::sync::Mutex::new(&mut seen);
    let found = poll(quick(timeout), || async {
        let r = match c.ec2.describe_images().image_ids(id).send().await {
            Ok(r) => r,
            Err(e) if is_not_found(e.code()) && started.elapsed() < CONSISTENCY_WINDOW => return Ok(None),
            Err(e) => return Err(Error::aws("ec2:DescribeImages", format!("{what} {id}"), &c.region, &e)),
        };
        let Some(img) = r.images().iter().find(|i| i.image_id() == Some(id)) else {
            if started.elapsed() < CONSISTENCY_WINDOW {
                return Ok(None);
            }
            return Err(gave_up(what, id, &c.region, "no longer exists"));
        };
        if let Ok(mut f) = seen.lock() {
            (*f)(img)?;
        }
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

/// How to poll: first interval, growth factor, largest interval, overall timeout, and whether to
/// probe at once or only after the first interval.
#[derive(Clone, Copy, Debug)]
pub struct Poll {
    pub first: Duration,
    pub factor: f64,
    pub max: Duration,
    pub timeout: Duration,
    pub probe_at_once: bool,
}

impl Poll {
    /// Starts at `first`, grows by half each time, never above `max`.
    pub fn new(first: Duration, max: Duration, timeout: Duration) -> Poll {
        Poll { first, factor: 1.5, max, timeout, probe_at_once: true }
    }

    /// The first probe comes after the first interval: for what was just started and cannot have
    /// ended yet (an instance refresh), so that no call is spent on a certain "not yet".
    pub fn after_first_interval(self) -> Poll {
        Poll { probe_at_once: false, ..self }
    }
}

/// Calls `probe` until it returns `Some`; `Ok(None)` when the timeout passed first. Errors from
/// `probe` end the poll at once.
pub async fn poll<T, F, Fut>(p: Poll, mut probe: F) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    // A timeout beyond what the clock can hold waits as long as it can, never panics.
    let now = Instant::now();
    let deadline = now.checked_add(p.timeout).unwrap_or_else(|| now + Duration::from_secs(crate::config::limits::WAIT_MAX));
    let mut interval = p.first;
    let mut probe_now = p.probe_at_once;
    let mut probes = 0u32;
    loop {
        if probe_now {
            probes += 1;
            if let Some(v) = probe().await? {
                tracing::trace!(probes, waited = ?now.elapsed(), "the wait is over");
                return Ok(Some(v));
            }
        }
        probe_now = true;
        let now = Instant::now();
        if now >= deadline {
            tracing::debug!(probes, "gave up waiting at the deadline");
            return Ok(None);
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = Duration::from_secs_f64((interval.as_secs_f64() * p.factor).min(p.max.as_secs_f64()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn polls_with_growing_intervals_until_ready() {
        let n = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let got = poll(Poll::new(Duration::from_millis(100), Duration::from_secs(1), Duration::from_secs(60)), || async {
            Ok((n.fetch_add(1, Ordering::SeqCst) == 5).then_some(42))
        })
        .await
        .unwrap();
        assert_eq!(got, Some(42));
        // 100 + 150 + 225 + 337.5 + 506.25 ms
        let waited = start.elapsed().as_millis();
        assert!((1300..1330).contains(&waited), "{waited}");
    }

    #[tokio::test(start_paused = true)]
    async fn can_wait_one_interval_before_the_first_probe() {
        let n = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let got = poll(Poll::new(Duration::from_millis(100), Duration::from_secs(1), Duration::from_secs(60)).after_first_interval(), || async {
            n.fetch_add(1, Ordering::SeqCst);
            Ok(Some(start.elapsed().as_millis()))
        })
        .await
        .unwrap();
        assert_eq!(got, Some(100));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let got: Option<()> = poll(Poll::new(Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(5)), || async { Ok(None) }).await.unwrap();
        assert_eq!(got, None);
    }
}
