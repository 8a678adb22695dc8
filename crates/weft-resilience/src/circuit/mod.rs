//! Circuit breaker: closed, open, half-open, plus forced-open, forced-closed and disabled.
//!
//! - A sliding window (by call count, or by time in buckets) tracks failures and slow calls.
//!   Once it holds `minimum_calls`, a failure rate or slow-call rate at or above its threshold
//!   opens the breaker.
//! - Open rejects at once for `wait_in_open`, growing by `backoff_multiplier` each time probes
//!   fail again, spread by jitter, and never longer than `max_wait_in_open` (jitter included).
//!   Once the wait is over the breaker is half-open: the next call, or the next
//!   [`CircuitBreaker::state`] read, makes the transition and publishes it.
//! - Half-open admits exactly `half_open_probes` probe calls, each with `probe_timeout`;
//!   everything else is rejected at once. When all probes have finished, the breaker closes or
//!   opens again by the same thresholds. A cancelled probe frees its slot; a probe that runs
//!   past its deadline is cancelled and counts as a failure, so half-open can neither let a
//!   herd through nor stay stuck.
//! - Every state change is published with the window snapshot that caused it
//!   ([`CircuitBreaker::subscribe`]) and as metrics.
//!
//! The closed-state path is one atomic load on admission and one uncontended mutex section to
//! record the outcome; the clock is read only when slow-call detection or a time window needs it.
//!
//! **Where a rejection shows up.** [`CircuitBreaker::call`] returns [`Error::Rejected`]. Through
//! the tower layer, `poll_ready` never rejects (it is backpressure: an error there means the
//! service is broken for good, and a `Buffer` or balancer would drop it); the call is refused in
//! `call`, and its response future resolves at once to a `BoxError` holding
//! [`CallNotPermitted`]. Recognise it with [`is_rejected`] or [`rejection`]; a half-open probe
//! past its deadline resolves to [`ProbeTimeout`] ([`is_probe_timeout`]).

mod error;
mod future;
mod layer;
mod service;
pub mod window;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio::time::{Duration, Instant};

pub use error::{
    is_probe_timeout, is_rejected, rejection, CallNotPermitted, ConfigError, Error, ProbeTimeout,
};
pub use future::ResponseFuture;
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreakerService;
use window::{AtomicCountWindow, Snapshot, TimeWindow};

use crate::classify::{Classify, ErrorsAreFailures, Outcome};
use crate::rng::{Random, XorShift};

/// Breaker state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Calls pass; outcomes are recorded.
    Closed = 0,
    /// Calls are rejected until the wait is over.
    Open = 1,
    /// A bounded number of probe calls pass.
    HalfOpen = 2,
    /// Manually opened: every call is rejected until the state is changed by hand.
    ForcedOpen = 3,
    /// Manually closed: every call passes and is recorded, the breaker never opens.
    ForcedClosed = 4,
    /// Off: every call passes, nothing is recorded.
    Disabled = 5,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::ForcedClosed,
            _ => State::Disabled,
        }
    }
}

/// The states an operator may set by hand with [`CircuitBreaker::force`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Manual {
    /// Reject every call until told otherwise.
    ForcedOpen,
    /// Let every call pass (recorded); never open.
    ForcedClosed,
    /// Let every call pass, record nothing.
    Disabled,
    /// Back to automatic operation, starting closed with an empty window.
    Closed,
}

impl From<Manual> for State {
    fn from(m: Manual) -> State {
        match m {
            Manual::ForcedOpen => State::ForcedOpen,
            Manual::ForcedClosed => State::ForcedClosed,
            Manual::Disabled => State::Disabled,
            Manual::Closed => State::Closed,
        }
    }
}

/// The kind of sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `size` calls.
    Count {
        /// Calls in the window.
        size: u32,
    },
    /// The calls of the last `window`, in `buckets` buckets.
    Time {
        /// Length of the window.
        window: Duration,
        /// Number of buckets.
        buckets: u32,
    },
}

/// Breaker settings; build with [`CircuitBreaker::builder`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Sliding window.
    pub window: WindowKind,
    /// Open at or above this failure rate, percent in `(0, 100]`.
    pub failure_rate_threshold: f64,
    /// Open at or above this slow-call rate, percent in `(0, 100]` (`None`: off).
    pub slow_call_rate_threshold: Option<f64>,
    /// A call at least this long is slow.
    pub slow_call_duration: Duration,
    /// No decision before the window holds this many calls.
    pub minimum_calls: u32,
    /// First wait in open state.
    pub wait_in_open: Duration,
    /// Each consecutive reopening multiplies the wait by this (1.0: constant).
    pub backoff_multiplier: f64,
    /// Longest wait in open state, after backoff and jitter.
    pub max_wait_in_open: Duration,
    /// Random spread of the wait, as a fraction in `[0, 1)` (0.1: ±10 %), applied before the
    /// cap.
    pub jitter: f64,
    /// Probe calls admitted in half-open state.
    pub half_open_probes: u32,
    /// Deadline of each probe call.
    pub probe_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: WindowKind::Count { size: 100 },
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: None,
            slow_call_duration: Duration::from_secs(60),
            minimum_calls: 20,
            wait_in_open: Duration::from_secs(30),
            backoff_multiplier: 1.0,
            max_wait_in_open: Duration::from_secs(300),
            jitter: 0.0,
            half_open_probes: 5,
            probe_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Checks every setting; the breaker refuses to build with invalid ones.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let pct = |what, v: f64| {
            if v > 0.0 && v <= 100.0 {
                Ok(())
            } else {
                Err(ConfigError::Threshold { what, value: v })
            }
        };
        pct("failure_rate_threshold", self.failure_rate_threshold)?;
        if let Some(s) = self.slow_call_rate_threshold {
            pct("slow_call_rate_threshold", s)?;
        }
        match self.window {
            WindowKind::Count { size: 0 } => {
                return Err(ConfigError::EmptyWindow("count window of 0 calls"))
            }
            WindowKind::Time { window, .. } if window.is_zero() => {
                return Err(ConfigError::EmptyWindow("time window of zero length"))
            }
            WindowKind::Time { buckets: 0, .. } => {
                return Err(ConfigError::EmptyWindow("time window with no buckets"))
            }
            WindowKind::Time { window, buckets } if window / buckets < Duration::from_micros(1) => {
                return Err(ConfigError::Invalid(
                    "time window buckets shorter than 1 µs".into(),
                ))
            }
            _ => {}
        }
        if self.half_open_probes == 0 {
            return Err(ConfigError::ZeroProbes);
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::Invalid(
                "minimum_calls must be at least 1".into(),
            ));
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return Err(ConfigError::Invalid(format!(
                "backoff_multiplier {} must be >= 1",
                self.backoff_multiplier
            )));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(ConfigError::Invalid(format!(
                "jitter {} must be within [0, 1)",
                self.jitter
            )));
        }
        if self.wait_in_open.is_zero() || self.max_wait_in_open < self.wait_in_open {
            return Err(ConfigError::Invalid(
                "wait_in_open must be > 0 and <= max_wait_in_open".into(),
            ));
        }
        if self.probe_timeout.is_zero() || self.slow_call_duration.is_zero() {
            return Err(ConfigError::Invalid(
                "probe_timeout and slow_call_duration must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// A state change and the window that caused it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    /// Previous state.
    pub from: State,
    /// New state.
    pub to: State,
    /// The window (or the probes, leaving half-open) when it happened.
    pub snapshot: Snapshot,
}

/// Ticket for one admitted call; hand it back with [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use = "record the outcome with CircuitBreaker::record (or release it)"]
pub struct Permit {
    generation: u64,
    start: Option<Instant>,
    probe: bool,
}

impl Permit {
    /// Whether this call is a half-open probe (it must finish within the probe timeout).
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

struct Inner {
    /// The time window (time-based configurations only; count windows are lock-free).
    window: Option<TimeWindow>,
    open_until: Instant,
    reopenings: u32,
    probes_admitted: u32,
    probes: Snapshot,
}

struct Metrics {
    /// Failed, slow and rejected calls since the breaker was built, and the calls recorded
    /// outside the window (probes, calls admitted in an earlier state), readable without the
    /// metrics recorder ([`CircuitBreaker::totals`]). Successes are not counted on their own:
    /// they are the window's records (`AtomicCountWindow::recorded`, or `records` for time
    /// windows) plus `outside` minus the failures, so the closed-state success path touches
    /// no counter beyond the window's (a second shared counter there doubled the cost of a
    /// call under contention: `benches/breaker.rs`).
    totals: Counts,
    success: metrics::Counter,
    failure: metrics::Counter,
    slow: metrics::Counter,
    rejected: metrics::Counter,
    state: metrics::Gauge,
    failure_rate: metrics::Gauge,
    slow_rate: metrics::Gauge,
}

#[derive(Default)]
struct Counts {
    failure: AtomicU64,
    slow: AtomicU64,
    rejected: AtomicU64,
    outside: AtomicU64,
}

/// Calls since a breaker was built, by outcome ([`CircuitBreaker::totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Admitted calls that succeeded.
    pub success: u64,
    /// Admitted calls that failed.
    pub failure: u64,
    /// Admitted calls slower than the slow-call duration (also counted as success or failure).
    pub slow: u64,
    /// Calls refused without running (open, or half-open with its probes taken).
    pub rejected: u64,
}

/// A circuit breaker. Share it with `Arc`; use it through [`CircuitBreaker::call`] or as a
/// tower layer ([`CircuitBreakerLayer`]).
pub struct CircuitBreaker {
    name: String,
    cfg: Config,
    timed: bool,
    count: Option<AtomicCountWindow>,
    records: AtomicU64,
    state: AtomicU8,
    generation: AtomicU64,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Transition>,
    rng: Box<dyn Random>,
    metrics: Metrics,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.raw_state())
            .finish()
    }
}

/// Builds a [`CircuitBreaker`].
pub struct Builder {
    name: String,
    cfg: Config,
    rng: Option<Box<dyn Random>>,
}

impl Builder {
    /// Replaces the whole configuration.
    pub fn config(mut self, cfg: Config) -> Self {
        self.cfg = cfg;
        self
    }
    /// Failure-rate threshold in percent.
    pub fn failure_rate(mut self, pct: f64) -> Self {
        self.cfg.failure_rate_threshold = pct;
        self
    }
    /// Slow-call detection: a call of at least `duration` is slow; open at `pct` percent.
    pub fn slow_calls(mut self, pct: f64, duration: Duration) -> Self {
        self.cfg.slow_call_rate_threshold = Some(pct);
        self.cfg.slow_call_duration = duration;
        self
    }
    /// Window of the last `size` calls.
    pub fn count_window(mut self, size: u32) -> Self {
        self.cfg.window = WindowKind::Count { size };
        self
    }
    /// Window of the last `window`, in `buckets` buckets.
    pub fn time_window(mut self, window: Duration, buckets: u32) -> Self {
        self.cfg.window = WindowKind::Time { window, buckets };
        self
    }
    /// Minimum calls before any decision.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.cfg.minimum_calls = n;
        self
    }
    /// Wait in open state, growth per reopening, cap.
    pub fn wait_in_open(mut self, first: Duration, multiplier: f64, max: Duration) -> Self {
        self.cfg.wait_in_open = first;
        self.cfg.backoff_multiplier = multiplier;
        self.cfg.max_wait_in_open = max;
        self
    }
    /// Jitter fraction of the open wait.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.cfg.jitter = fraction;
        self
    }
    /// Probes in half-open state and their deadline.
    pub fn half_open(mut self, probes: u32, probe_timeout: Duration) -> Self {
        self.cfg.half_open_probes = probes;
        self.cfg.probe_timeout = probe_timeout;
        self
    }
    /// The random source for jitter (deterministic in tests).
    pub fn random(mut self, rng: impl Random + 'static) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }
    /// Validates the settings and builds the breaker.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        self.cfg.validate()?;
        let now = Instant::now();
        let (count, window) = match self.cfg.window {
            WindowKind::Count { size } => (Some(AtomicCountWindow::new(size)), None),
            WindowKind::Time { window, buckets } => {
                (None, Some(TimeWindow::new(window, buckets, now)))
            }
        };
        let timed = self.cfg.slow_call_rate_threshold.is_some()
            || matches!(self.cfg.window, WindowKind::Time { .. });
        let name = self.name;
        let l = |outcome: &'static str| metrics::counter!("weft_breaker_calls_total", "breaker" => name.clone(), "outcome" => outcome);
        let metrics = Metrics {
            totals: Default::default(),
            success: l("success"),
            failure: l("failure"),
            slow: l("slow"),
            rejected: l("rejected"),
            state: metrics::gauge!("weft_breaker_state", "breaker" => name.clone()),
            failure_rate: metrics::gauge!("weft_breaker_failure_rate", "breaker" => name.clone()),
            slow_rate: metrics::gauge!("weft_breaker_slow_call_rate", "breaker" => name.clone()),
        };
        Ok(CircuitBreaker {
            name,
            timed,
            count,
            records: AtomicU64::new(0),
            state: AtomicU8::new(State::Closed as u8),
            generation: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                window,
                open_until: now,
                reopenings: 0,
                probes_admitted: 0,
                probes: Snapshot::default(),
            }),
            events: broadcast::channel(64).0,
            rng: self.rng.unwrap_or_else(|| Box::new(XorShift::default())),
            metrics,
            cfg: self.cfg,
        })
    }
}

impl CircuitBreaker {
    /// A builder with the defaults of [`Config::default`].
    pub fn builder(name: impl Into<String>) -> Builder {
        Builder {
            name: name.into(),
            cfg: Config::default(),
            rng: None,
        }
    }

    /// The breaker's name (a metrics label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current state. An open breaker whose wait is over reads `HalfOpen`: this read makes
    /// the transition (and publishes it to [`CircuitBreaker::subscribe`]) if no call did yet.
    pub fn state(&self) -> State {
        let state = self.raw_state();
        if state != State::Open {
            return state;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if self.raw_state() == State::Open && now >= inner.open_until {
            let snap = self.snapshot_locked(&mut inner, now);
            self.transition(&mut inner, State::HalfOpen, snap, now);
        }
        self.raw_state()
    }

    /// When an open breaker lets probes through (`None` unless open).
    pub fn open_until(&self) -> Option<Instant> {
        let inner = self.lock();
        (self.raw_state() == State::Open).then_some(inner.open_until)
    }

    fn raw_state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// State changes, each with the window snapshot that caused it.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }

    /// Calls counted since the breaker was built, by outcome (the Hystrix view's rates are
    /// differences of two readings).
    pub fn totals(&self) -> Totals {
        let t = &self.metrics.totals;
        let failure = t.failure.load(Ordering::Relaxed);
        let window = match &self.count {
            Some(c) => c.recorded(),
            None => self.records.load(Ordering::Relaxed),
        };
        let recorded = window + t.outside.load(Ordering::Relaxed);
        Totals {
            success: recorded.saturating_sub(failure),
            failure,
            slow: t.slow.load(Ordering::Relaxed),
            rejected: t.rejected.load(Ordering::Relaxed),
        }
    }

    /// The current window totals.
    pub fn snapshot(&self) -> Snapshot {
        match &self.count {
            Some(c) => c.snapshot(),
            None => self
                .lock()
                .window
                .as_mut()
                .map(|w| w.snapshot(Instant::now()))
                .unwrap_or_default(),
        }
    }

    fn snapshot_locked(&self, inner: &mut Inner, now: Instant) -> Snapshot {
        match &self.count {
            Some(c) => c.snapshot(),
            None => inner
                .window
                .as_mut()
                .map(|w| w.snapshot(now))
                .unwrap_or_default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transition(&self, inner: &mut Inner, to: State, snapshot: Snapshot, now: Instant) {
        let from = self.raw_state();
        if from == to {
            return;
        }
        match to {
            State::Open => {
                inner.reopenings = if from == State::HalfOpen {
                    inner.reopenings + 1
                } else {
                    0
                };
                let base = self.cfg.wait_in_open.as_secs_f64()
                    * self.cfg.backoff_multiplier.powi(inner.reopenings as i32);
                let spread = if self.cfg.jitter > 0.0 {
                    1.0 + self.cfg.jitter * (2.0 * self.rng.next_f64() - 1.0)
                } else {
                    1.0
                };
                let max = self.cfg.max_wait_in_open.as_secs_f64();
                let wait = (base.min(max) * spread).min(max);
                inner.open_until = now + Duration::from_secs_f64(wait);
            }
            State::HalfOpen => {
                inner.probes_admitted = 0;
                inner.probes = Snapshot::default();
            }
            State::Closed => {
                inner.reopenings = 0;
                if let Some(w) = inner.window.as_mut() {
                    w.reset();
                }
                if let Some(c) = &self.count {
                    c.reset();
                }
            }
            _ => {}
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.state.store(to as u8, Ordering::Release);
        self.metrics.state.set(to as u8 as f64);
        tracing::info!(breaker = %self.name, ?from, ?to, failure_rate = snapshot.failure_rate(), slow_rate = snapshot.slow_rate(), "circuit breaker state change");
        let _ = self.events.send(Transition { from, to, snapshot });
    }

    /// Sets a state by hand: [`Manual::ForcedOpen`], [`Manual::ForcedClosed`],
    /// [`Manual::Disabled`], or back to automatic with [`Manual::Closed`]. (Open and half-open
    /// are reached only by the breaker's own rules.)
    pub fn force(&self, to: Manual) {
        let mut inner = self.lock();
        let now = Instant::now();
        let snap = self.snapshot_locked(&mut inner, now);
        self.transition(&mut inner, to.into(), snap, now);
    }

    /// Asks to run one call. On success, run it and hand the permit back to
    /// [`CircuitBreaker::record`].
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, CallNotPermitted> {
        let state = self.state.load(Ordering::Acquire);
        if state == State::Closed as u8 || state == State::ForcedClosed as u8 {
            let generation = self.generation.load(Ordering::Acquire);
            let start = if self.timed {
                Some(Instant::now())
            } else {
                None
            };
            return Ok(Permit {
                generation,
                start,
                probe: false,
            });
        }
        if state == State::Disabled as u8 {
            return Ok(Permit {
                generation: u64::MAX,
                start: None,
                probe: false,
            });
        }
        self.acquire_slow()
    }

    #[cold]
    fn acquire_slow(&self) -> Result<Permit, CallNotPermitted> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut state = self.raw_state();
        if state == State::Open && now >= inner.open_until {
            let snap = self.snapshot_locked(&mut inner, now);
            self.transition(&mut inner, State::HalfOpen, snap, now);
            state = State::HalfOpen;
        }
        if state == State::HalfOpen && inner.probes_admitted < self.cfg.half_open_probes {
            inner.probes_admitted += 1;
            return Ok(Permit {
                generation: self.generation.load(Ordering::Acquire),
                start: Some(now),
                probe: true,
            });
        }
        if matches!(state, State::Closed | State::ForcedClosed | State::Disabled) {
            drop(inner);
            return self.try_acquire();
        }
        self.metrics.rejected.increment(1);
        self.metrics.totals.rejected.fetch_add(1, Ordering::Relaxed);
        Err(CallNotPermitted { state })
    }

    /// Records how an admitted call ended.
    #[inline]
    pub fn record(&self, permit: Permit, outcome: Outcome) {
        if permit.generation == u64::MAX {
            return;
        }
        let now = permit.start.map(|_| Instant::now());
        let slow = match (permit.start, now) {
            (Some(s), Some(n)) => {
                self.cfg.slow_call_rate_threshold.is_some() && n - s >= self.cfg.slow_call_duration
            }
            _ => false,
        };
        let failure = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignore => return self.release(permit),
        };
        if failure {
            self.metrics.failure.increment(1);
            self.metrics.totals.failure.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.success.increment(1);
        }
        if slow {
            self.metrics.slow.increment(1);
            self.metrics.totals.slow.fetch_add(1, Ordering::Relaxed);
        }
        if permit.probe {
            self.metrics.totals.outside.fetch_add(1, Ordering::Relaxed);
            return self.record_probe(permit, failure, slow, now);
        }
        if permit.generation != self.generation.load(Ordering::Acquire) {
            // Admitted in an earlier state: its outcome no longer says anything.
            self.metrics.totals.outside.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Closed state: lock-free for count windows.
        let (seq, snap) = match &self.count {
            Some(c) => c.record(failure, slow),
            None => {
                let mut inner = self.lock();
                let now = now.unwrap_or_else(Instant::now);
                let w = inner.window.as_mut().expect("time window");
                w.record(failure, slow, now);
                (
                    self.records.fetch_add(1, Ordering::Relaxed),
                    w.snapshot(now),
                )
            }
        };
        if snap.calls < self.cfg.minimum_calls {
            return;
        }
        if seq.is_multiple_of(64) {
            self.metrics.failure_rate.set(snap.failure_rate());
            self.metrics.slow_rate.set(snap.slow_rate());
        }
        if self.trips(&snap) {
            let mut inner = self.lock();
            if self.raw_state() == State::Closed
                && permit.generation == self.generation.load(Ordering::Acquire)
            {
                self.metrics.failure_rate.set(snap.failure_rate());
                self.metrics.slow_rate.set(snap.slow_rate());
                self.transition(
                    &mut inner,
                    State::Open,
                    snap,
                    now.unwrap_or_else(Instant::now),
                );
            }
        }
    }

    #[cold]
    fn record_probe(&self, permit: Permit, failure: bool, slow: bool, now: Option<Instant>) {
        let mut inner = self.lock();
        if permit.generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        inner.probes.calls += 1;
        inner.probes.failures += u32::from(failure);
        inner.probes.slow += u32::from(slow);
        if inner.probes.calls >= self.cfg.half_open_probes {
            let snap = inner.probes;
            let to = if self.trips(&snap) {
                State::Open
            } else {
                State::Closed
            };
            self.transition(&mut inner, to, snap, now.unwrap_or_else(Instant::now));
        }
    }

    /// Gives back a permit whose call was cancelled: a probe's slot is freed.
    pub fn release(&self, permit: Permit) {
        if permit.probe {
            let mut inner = self.lock();
            if permit.generation == self.generation.load(Ordering::Acquire) {
                inner.probes_admitted = inner.probes_admitted.saturating_sub(1);
            }
        }
    }

    fn trips(&self, s: &Snapshot) -> bool {
        s.failure_rate() >= self.cfg.failure_rate_threshold
            || self
                .cfg
                .slow_call_rate_threshold
                .is_some_and(|t| s.slow_rate() >= t)
    }

    /// Runs a synchronous `f` through the breaker; `Err` results are failures. (Probe
    /// deadlines cannot interrupt synchronous code; a slow probe is still counted as slow.)
    #[inline]
    pub fn call_sync<T, E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, Error<E>> {
        let permit = self.try_acquire().map_err(Error::Rejected)?;
        let r = f();
        self.record(
            permit,
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        );
        r.map_err(Error::Inner)
    }

    /// Runs `f` through the breaker; `Err` results are failures.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.call_with(&ErrorsAreFailures, f).await
    }

    /// Runs `f` through the breaker, classifying results with `classifier`.
    pub async fn call_with<C, F, Fut, T, E>(&self, classifier: &C, f: F) -> Result<T, Error<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(Error::Rejected)?;
        let mut guard = PermitGuard {
            breaker: self,
            permit: Some(permit),
        };
        let result = if guard.permit.as_ref().is_some_and(Permit::is_probe) {
            match tokio::time::timeout(self.cfg.probe_timeout, f()).await {
                Ok(r) => r,
                Err(_) => {
                    self.record(guard.permit.take().expect("permit"), Outcome::Failure);
                    return Err(Error::ProbeTimeout(ProbeTimeout));
                }
            }
        } else {
            f().await
        };
        let outcome = classifier.classify(&result);
        self.record(guard.permit.take().expect("permit"), outcome);
        result.map_err(Error::Inner)
    }
}

/// Releases the permit if the call's future is dropped before it finished.
struct PermitGuard<'a> {
    breaker: &'a CircuitBreaker,
    permit: Option<Permit>,
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.release(p);
        }
    }
}

/// Shared handle, as used by the layer.
pub type SharedBreaker = Arc<CircuitBreaker>;

#[cfg(test)]
mod tests;
