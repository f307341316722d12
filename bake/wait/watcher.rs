//! The shared watchers: one per (service, kind, region) in a bake process, shared by every bake and
//! roll running in it. A caller registers what it waits for (an instance, an image, an agent, a
//! command, a group's refreshes) and reads each report; the watcher describes everything
//! registered in one batched call per tick (a few where AWS caps a call's ids), right after a
//! registration and then every [`TICK`], and hands each caller what AWS said of its key. Their
//! calls, like every other describe of the process, keep to the budget of their service and
//! region ([`crate::pace`]): at most so many a second, however many bakes run. A throttled tick slows its
//! watcher down instead of failing anyone; any other error reaches the callers of that tick.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_autoscaling::types::InstanceRefresh;
use aws_sdk_ec2::types::{Filter, Image, Instance};
use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey, CommandInvocation, InstanceInformation, InstanceInformationStringFilter};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::aws::{CallCounter, Clients};
use crate::config::limits;
use crate::error::{Error, Result};

/// How often a watcher with callers describes their keys (and how late, at most, a caller hears
/// of a transition when the budget allows).
pub const TICK: Duration = Duration::from_secs(1);

/// The longest a throttled watcher waits between ticks.
const SLOWEST: Duration = Duration::from_secs(16);

/// Ticks in a row that may fail for a passing reason (throttling, a 5xx, a timeout) before their
/// callers hear the error (with the slowdown, about two minutes).
const PATIENCE: u32 = 10;

/// What one tick told a caller about its key.
#[derive(Clone, Debug)]
pub struct Report<S> {
    /// What AWS answered for the key; `None`: it was not in the answer (not visible yet, or gone).
    pub seen: Option<S>,
    /// The tick failed (after the SDK's retries): why, naming the call and region.
    pub error: Option<String>,
}

pub type Describe<'a, S> = Pin<Box<dyn Future<Output = Result<Vec<(String, S)>>> + Send + 'a>>;

/// What a watcher watches: how to describe a batch of keys.
pub trait Source: Send + Sync + 'static {
    type State: Clone + Send + Sync + 'static;
    /// `service:Operation`, as counted for the callers.
    const CALL: &'static str;
    /// At most this many keys per call.
    fn batch(&self) -> usize;
    /// One call (or its pages) describing `keys`; keys AWS does not answer for are absent.
    fn describe<'a>(&'a self, keys: &'a [String], since: aws_smithy_types::DateTime) -> Describe<'a, Self::State>;
}

struct Caller<S> {
    key: String,
    calls: CallCounter,
    since: aws_smithy_types::DateTime,
    /// How often this caller needs news, and when it is next due.
    every: Duration,
    due: Instant,
    tx: watch::Sender<Option<Report<S>>>,
}

struct Inner<S> {
    callers: BTreeMap<u64, Caller<S>>,
    next_id: u64,
    running: bool,
}

/// One watcher: its source, its callers, its loop (running while it has callers).
pub struct Watcher<S: Source> {
    source: S,
    region: String,
    inner: Mutex<Inner<S::State>>,
    wake: Notify,
}

/// A caller's registration: reports arrive through it; dropping it leaves the watcher.
pub struct Watch<S: Source> {
    owner: Arc<Watcher<S>>,
    id: u64,
    rx: watch::Receiver<Option<Report<S::State>>>,
}

impl<S: Source> Watch<S> {
    /// The next report (the first comes from the tick right after registering).
    pub async fn next(&mut self) -> Report<S::State> {
        loop {
            if self.rx.changed().await.is_err() {
                // The watcher is gone (never while a Watch holds it): report an error, not a hang.
                return Report { seen: None, error: Some("the watcher stopped".into()) };
            }
            if let Some(r) = self.rx.borrow_and_update().clone() {
                return r;
            }
        }
    }
}

impl<S: Source> Drop for Watch<S> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.owner.inner.lock() {
            inner.callers.remove(&self.id);
        }
    }
}

impl<S: Source> Watcher<S> {
    pub fn new(source: S, region: &str) -> Arc<Watcher<S>> {
        Arc::new(Watcher {
            source,
            region: region.to_string(),
            inner: Mutex::new(Inner { callers: BTreeMap::new(), next_id: 0, running: false }),
            wake: Notify::new(),
        })
    }

    /// Registers a caller waiting on `key` and describes it at once (right after the call that
    /// started a transition); its calls count against `calls`.
    pub fn watch(self: &Arc<Self>, key: &str, calls: &CallCounter) -> Watch<S> {
        self.register(key, calls, TICK, true)
    }

    /// Registers a caller that needs news only `every` so often, from the watcher's next tick
    /// on (what is not expected to change: a builder's state while its command runs).
    pub fn watch_every(self: &Arc<Self>, key: &str, calls: &CallCounter, every: Duration) -> Watch<S> {
        self.register(key, calls, every.max(TICK), false)
    }

    fn register(self: &Arc<Self>, key: &str, calls: &CallCounter, every: Duration, at_once: bool) -> Watch<S> {
        let (tx, rx) = watch::channel(None);
        let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
        let due = if at_once { Instant::now() } else { Instant::now() + every };
        let (id, start) = match self.inner.lock() {
            Ok(mut inner) => {
                let id = inner.next_id;
                inner.next_id += 1;
                inner.callers.insert(id, Caller { key: key.to_string(), calls: calls.clone(), since: now, every, due, tx });
                let start = !inner.running;
                inner.running = true;
                (id, start)
            }
            Err(_) => (u64::MAX, false),
        };
        if start {
            tokio::spawn(self.clone().run());
        } else if at_once {
            self.wake.notify_one();
        }
        Watch { owner: self.clone(), id, rx }
    }

    async fn run(self: Arc<Self>) {
        let mut interval = TICK;
        let mut failures = 0u32;
        loop {
            let Some((keys, since, ticked)) = self.keys() else { return };
            if keys.is_empty() {
                // Nobody is due yet: sleep until the first is (or a registration wakes us).
                self.sleep(interval).await;
                continue;
            }
            tracing::trace!(call = S::CALL, region = %self.region, keys = keys.len(), "tick");
            let mut seen: BTreeMap<String, S::State> = BTreeMap::new();
            let mut error = None;
            let mut throttled = false;
            let mut calls = 0u64;
            for chunk in keys.chunks(self.source.batch().max(1)) {
                // One attempt (the watchers' clients do not retry), paced by the process's budget
                // for the service (crate::pace).
                calls += 1;
                match self.source.describe(chunk, since).await {
                    Ok(found) => seen.extend(found),
                    Err(e) if passing(&e) && failures < PATIENCE => {
                        throttled = true;
                        error = Some(e.to_string());
                        break;
                    }
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            if throttled {
                failures += 1;
                interval = (interval * 2).min(SLOWEST);
                tracing::debug!(call = S::CALL, region = %self.region, ?interval, error = error.as_deref().unwrap_or(""), "slowing down");
                error = None;
            } else {
                failures = 0;
                interval = TICK;
            }
            if let Ok(mut inner) = self.inner.lock() {
                let now = Instant::now();
                for (id, c) in inner.callers.iter_mut() {
                    if !ticked.contains(id) {
                        continue;
                    }
                    // The call that covered this caller's key (one, however many keys it named).
                    c.calls.add(S::CALL, calls.min(1));
                    c.due = now + if throttled { interval } else { c.every };
                    if !throttled {
                        c.tx.send_replace(Some(Report { seen: seen.get(&c.key).cloned(), error: error.clone() }));
                    }
                }
            }
            self.sleep(interval).await;
        }
    }

    /// Until the next caller is due, or a registration asks for a tick at once; after a
    /// throttled tick, `interval` whatever happens (new callers wait for it too).
    async fn sleep(&self, interval: Duration) {
        let now = Instant::now();
        let first = self.inner.lock().ok().and_then(|i| i.callers.values().map(|c| c.due).min()).unwrap_or(now + interval);
        if interval > TICK {
            tokio::time::sleep_until(first.max(now + interval)).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(first) => {}
            _ = self.wake.notified() => {}
        }
    }

    /// The keys of the callers due now (each once), the earliest registration, and which
    /// callers this tick serves; `None` (and the loop ends) when nobody waits.
    fn keys(&self) -> Option<(Vec<String>, aws_smithy_types::DateTime, Vec<u64>)> {
        let mut inner = self.inner.lock().ok()?;
        if inner.callers.is_empty() {
            inner.running = false;
            return None;
        }
        // A caller due within the next tenth of a second rides along with this tick.
        let soon = Instant::now() + Duration::from_millis(100);
        let due: Vec<u64> = inner.callers.iter().filter(|(_, c)| c.due <= soon).map(|(id, _)| *id).collect();
        let mut keys: Vec<String> = due.iter().filter_map(|id| inner.callers.get(id)).map(|c| c.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let since = inner.callers.values().map(|c| c.since).min_by_key(|d| d.secs()).unwrap_or(aws_smithy_types::DateTime::from_secs(0));
        Some((keys, since, due))
    }
}

/// A failure that passes: throttling, a server error, no answer at all (a timeout, a connection
/// refused). The watcher slows down and tries again; its callers hear of it only after
/// [`PATIENCE`] ticks in a row.
fn passing(e: &Error) -> bool {
    match e {
        Error::Aws { code: None, .. } => true,
        Error::Aws { code: Some(c), .. } => matches!(
            c.as_str(),
            "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequestsException"
                | "RequestThrottled"
                | "RequestThrottledException"
                | "InternalError"
                | "InternalFailure"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "Unavailable"
                | "RequestTimeout"
                | "RequestTimeoutException"
        ),
        _ => false,
    }
}

/// EC2 instances, by `instance-id` filter (an id not visible yet is simply not answered).
pub struct Instances(aws_sdk_ec2::Client, String);

impl Source for Instances {
    type State = Instance;
    const CALL: &'static str = "ec2:DescribeInstances";
    fn batch(&self) -> usize {
        limits::EC2_FILTER_VALUES
    }
    fn describe<'a>(&'a self, keys: &'a [String], _: aws_smithy_types::DateTime) -> Describe<'a, Instance> {
        Box::pin(async move {
            let reservations: Vec<aws_sdk_ec2::types::Reservation> = self
                .0
                .describe_instances()
                .filters(Filter::builder().name("instance-id").set_values(Some(keys.to_vec())).build())
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("ec2:DescribeInstances", format!("{} instance(s)", keys.len()), &self.1, &e))?;
            Ok(reservations.iter().flat_map(|r| r.instances()).filter_map(|i| Some((i.instance_id()?.to_string(), i.clone()))).collect())
        })
    }
}

/// Images, by `image-id` filter.
pub struct Images(aws_sdk_ec2::Client, String);

impl Source for Images {
    type State = Image;
    const CALL: &'static str = "ec2:DescribeImages";
    fn batch(&self) -> usize {
        limits::EC2_FILTER_VALUES
    }
    fn describe<'a>(&'a self, keys: &'a [String], _: aws_smithy_types::DateTime) -> Describe<'a, Image> {
        Box::pin(async move {
            let images: Vec<Image> = self
                .0
                .describe_images()
                .filters(Filter::builder().name("image-id").set_values(Some(keys.to_vec())).build())
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("ec2:DescribeImages", format!("{} image(s)", keys.len()), &self.1, &e))?;
            Ok(images.into_iter().filter_map(|i| Some((i.image_id()?.to_string(), i))).collect())
        })
    }
}

/// SSM agents, by the `InstanceIds` filter of DescribeInstanceInformation.
pub struct Agents(aws_sdk_ssm::Client, String);

impl Source for Agents {
    type State = InstanceInformation;
    const CALL: &'static str = "ssm:DescribeInstanceInformation";
    fn batch(&self) -> usize {
        limits::SSM_INSTANCE_ID_FILTER_VALUES
    }
    fn describe<'a>(&'a self, keys: &'a [String], _: aws_smithy_types::DateTime) -> Describe<'a, InstanceInformation> {
        Box::pin(async move {
            let filter = InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .set_values(Some(keys.to_vec()))
                .build()
                .map_err(|e| Error::Other(format!("ssm:DescribeInstanceInformation filter: {e}")))?;
            let infos: Vec<InstanceInformation> = self
                .0
                .describe_instance_information()
                .filters(filter)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("ssm:DescribeInstanceInformation", format!("{} instance(s)", keys.len()), &self.1, &e))?;
            Ok(infos.into_iter().filter_map(|i| Some((i.instance_id()?.to_string(), i))).collect())
        })
    }
}

/// Command invocations: one command by its id, several by every invocation since the earliest
/// registration (SSM cannot list several command ids in one call).
pub struct Commands(aws_sdk_ssm::Client, String);

impl Source for Commands {
    type State = CommandInvocation;
    const CALL: &'static str = "ssm:ListCommandInvocations";
    fn batch(&self) -> usize {
        usize::MAX
    }
    fn describe<'a>(&'a self, keys: &'a [String], since: aws_smithy_types::DateTime) -> Describe<'a, CommandInvocation> {
        Box::pin(async move {
            let mut req = self.0.list_command_invocations();
            if let [one] = keys {
                req = req.command_id(one);
            } else {
                // A minute early: the clocks of this machine and of SSM may differ a little.
                let after = aws_smithy_types::DateTime::from_secs(since.secs() - 60)
                    .fmt(aws_smithy_types::date_time::Format::DateTime)
                    .map_err(|e| Error::Other(format!("cannot format a time for ssm:ListCommandInvocations: {e}")))?;
                let filter = CommandFilter::builder()
                    .key(CommandFilterKey::InvokedAfter)
                    .value(after)
                    .build()
                    .map_err(|e| Error::Other(format!("ssm:ListCommandInvocations filter: {e}")))?;
                req = req.filters(filter);
            }
            let invocations: Vec<CommandInvocation> = req
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| Error::aws("ssm:ListCommandInvocations", format!("{} command(s)", keys.len()), &self.1, &e))?;
            Ok(invocations.into_iter().filter_map(|i| Some((i.command_id()?.to_string(), i))).filter(|(id, _)| keys.contains(id)).collect())
        })
    }
}

/// A group's instance refreshes (Auto Scaling answers for one group per call).
pub struct Refreshes(aws_sdk_autoscaling::Client, String);

impl Source for Refreshes {
    type State = Vec<InstanceRefresh>;
    const CALL: &'static str = "autoscaling:DescribeInstanceRefreshes";
    fn batch(&self) -> usize {
        1
    }
    fn describe<'a>(&'a self, keys: &'a [String], _: aws_smithy_types::DateTime) -> Describe<'a, Vec<InstanceRefresh>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for group in keys {
                let pages: Vec<_> = self
                    .0
                    .describe_instance_refreshes()
                    .auto_scaling_group_name(group)
                    .into_paginator()
                    .send()
                    .try_collect()
                    .await
                    .map_err(|e| Error::aws("autoscaling:DescribeInstanceRefreshes", format!("group {group}"), &self.1, &e))?;
                out.push((group.clone(), pages.iter().flat_map(|p| p.instance_refreshes().iter().cloned()).collect()));
            }
            Ok(out)
        })
    }
}

/// The watchers of one region.
pub struct Region {
    pub instances: Arc<Watcher<Instances>>,
    pub images: Arc<Watcher<Images>>,
    pub agents: Arc<Watcher<Agents>>,
    pub commands: Arc<Watcher<Commands>>,
    pub refreshes: Arc<Watcher<Refreshes>>,
}

static REGIONS: OnceLock<Mutex<BTreeMap<String, Arc<Region>>>> = OnceLock::new();

/// The watchers of `c`'s region (and account: another account's are its own, with its
/// credentials), made on first use (from `c`'s configuration, uncounted: each caller counts the
/// calls made for it).
pub fn of(c: &Clients) -> Arc<Region> {
    let all = REGIONS.get_or_init(Default::default);
    let mut map = match all.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    map.entry(c.place())
        .or_insert_with(|| {
            let region = aws_config::Region::new(c.region.clone());
            // One attempt a call: the watcher retries at its own pace, within its budget.
            let once = aws_config::retry::RetryConfig::disabled();
            let ec2 = aws_sdk_ec2::Client::from_conf(aws_sdk_ec2::config::Builder::from(&c.base).region(region.clone()).retry_config(once.clone()).build());
            let ssm = aws_sdk_ssm::Client::from_conf(aws_sdk_ssm::config::Builder::from(&c.base).region(region.clone()).retry_config(once.clone()).build());
            let asg = aws_sdk_autoscaling::Client::from_conf(aws_sdk_autoscaling::config::Builder::from(&c.base).region(region).retry_config(once).build());
            let r = &c.place();
            Arc::new(Region {
                instances: Watcher::new(Instances(ec2.clone(), r.clone()), r),
                images: Watcher::new(Images(ec2, r.clone()), r),
                agents: Watcher::new(Agents(ssm.clone(), r.clone()), r),
                commands: Watcher::new(Commands(ssm, r.clone()), r),
                refreshes: Watcher::new(Refreshes(asg, r.clone()), r),
            })
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(Arc<Mutex<Vec<Vec<String>>>>);

    impl Source for Counting {
        type State = String;
        const CALL: &'static str = "test:Describe";
        fn batch(&self) -> usize {
            2
        }
        fn describe<'a>(&'a self, keys: &'a [String], _: aws_smithy_types::DateTime) -> Describe<'a, String> {
            Box::pin(async move {
                if let Ok(mut log) = self.0.lock() {
                    log.push(keys.to_vec());
                }
                Ok(keys.iter().filter(|k| k.as_str() != "gone").map(|k| (k.clone(), format!("state of {k}"))).collect())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn callers_share_batched_ticks_and_leave_cleanly() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let w = Watcher::new(Counting(log.clone()), "us-east-1");
        let calls = CallCounter::default();
        let mut a = w.watch("a", &calls);
        let mut b = w.watch("b", &calls);
        let mut gone = w.watch("gone", &calls);
        assert_eq!(a.next().await.seen.as_deref(), Some("state of a"));
        assert_eq!(b.next().await.seen.as_deref(), Some("state of b"));
        assert!(gone.next().await.seen.is_none(), "a key AWS does not answer for is absent");
        drop(gone);
        drop(a);
        // Reports are the latest value: read past any from before the drops.
        tokio::time::sleep(TICK * 2).await;
        let _ = b.next().await;
        let _ = b.next().await;
        let ticks = log.lock().unwrap().clone();
        // Every tick asks for every key at once (two per call at most, as the source says).
        assert!(ticks.iter().all(|t| t.len() <= 2), "{ticks:?}");
        assert!(ticks.iter().any(|t| t == &["a".to_string(), "b".to_string()]), "{ticks:?}");
        assert_eq!(ticks.last().unwrap(), &["b".to_string()], "a caller that left is not described again");
        drop(b);
        tokio::time::sleep(TICK * 3).await;
        let n = log.lock().unwrap().len();
        tokio::time::sleep(TICK * 3).await;
        assert_eq!(log.lock().unwrap().len(), n, "no caller, no call");
    }
}
