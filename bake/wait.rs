//! The one poll helper, for what has no SDK waiter (the SSM agent, command invocations): probe,
//! sleep on tokio's clock with a growing interval, give up at a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;

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
    let deadline = Instant::now() + p.timeout;
    let mut interval = p.first;
    let mut probe_now = p.probe_at_once;
    loop {
        if probe_now {
            if let Some(v) = probe().await? {
                return Ok(Some(v));
            }
        }
        probe_now = true;
        let now = Instant::now();
        if now >= deadline {
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
        let got: Option<()> = poll(Poll::new(Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(5)), || async {
            Ok(None)
        })
        .await
        .unwrap();
        assert_eq!(got, None);
    }
}
