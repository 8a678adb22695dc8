//! The orchestrator: submits sagas, runs the ones it owns, takes over the ones whose owner
//! died, answers queries and operator actions, and removes finished sagas after their
//! retention.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Duration;
use weft_coord::{Session, SessionOptions};
use weft_shard::{Node, Placement, Rendezvous};
use weft_store::{EventType, KeyRange, Store, WatchRequest};

use crate::def::SagaDef;
use crate::error::{Result, SagaError};
use crate::invoke::{Invoker, Registry, Resolver};
use crate::lazy::Reader;
use crate::log::{
    check_id, control_key, control_prefix, index_prefix, member_prefix, state_key, Event, Log,
    Stored,
};
use crate::run::{drive, now_ms, Control, Ctx};
use crate::state::{Phase, SagaRecord, Status, StepStatus};

/// Orchestrator settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// This orchestrator's name, unique among those sharing a store. Starting again under the
    /// same name takes over the previous incarnation's sagas at once (its lease is revoked).
    pub name: String,
    /// Session TTL, seconds: how long sagas of a dead orchestrator wait to be taken over.
    pub ttl: i64,
    /// How long finished sagas are kept.
    pub retention: Duration,
    /// How often finished sagas past their retention are removed, and unowned sagas looked
    /// for (besides watching owner keys disappear).
    pub sweep_interval: Duration,
    /// Largest input, bytes.
    pub max_input_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: "weft".into(),
            ttl: 10,
            retention: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(30),
            max_input_bytes: 256 * 1024,
        }
    }
}

/// A saga as the API shows it (and as the CLI reads it back).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SagaView {
    /// The record (status, steps, parked).
    #[serde(flatten)]
    pub record: SagaRecord,
    /// The definition.
    pub definition: SagaDef,
    /// The input.
    pub input: Value,
    /// The timeline.
    pub timeline: Vec<Event>,
}

struct Owned {
    control: mpsc::UnboundedSender<Control>,
    /// `None` while reserved: a saga being created here, its task not started yet.
    task: Option<JoinHandle<()>>,
}

struct Inner {
    opts: Options,
    log: Log,
    session: Session,
    ctx: Arc<Ctx>,
    owned: Mutex<HashMap<String, Owned>>,
    background: Mutex<Vec<JoinHandle<()>>>,
    rescan: Notify,
    crashed: Arc<AtomicBool>,
    /// The live orchestrators' names (refreshed when a member key changes).
    members: Mutex<Vec<String>>,
    /// Callers of `wait` on sagas of this orchestrator, by id: each gets the record at rest.
    /// Lock order: `owned`, then `waiters` (a saga's task leaves `owned` and takes its
    /// waiters in one step, so a waiter added while the saga is owned is always served).
    waiters: Mutex<HashMap<String, Vec<tokio::sync::oneshot::Sender<SagaRecord>>>>,
}

/// Runs sagas on a store. Cloning shares it.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

/// Building an [`Orchestrator`].
pub struct Builder {
    store: Arc<dyn Store>,
    opts: Options,
    registry: Registry,
    resolver: Option<Resolver>,
    fault: Arc<dyn Fn(u64) -> bool + Send + Sync>,
    rng: Arc<dyn weft_resilience::rng::Random>,
}

impl Builder {
    /// Settings.
    pub fn options(mut self, opts: Options) -> Self {
        self.opts = opts;
        self
    }

    /// Local step functions.
    pub fn registry(mut self, r: Registry) -> Self {
        self.registry = r;
        self
    }

    /// Resolves `service` names of HTTP steps to an address (e.g. weft-coord discovery).
    pub fn resolver(mut self, r: Resolver) -> Self {
        self.resolver = Some(r);
        self
    }

    /// The jitter source of retries.
    pub fn random(mut self, r: impl weft_resilience::rng::Random + 'static) -> Self {
        self.rng = Arc::new(r);
        self
    }

    /// A fault hook for crash tests: called before and after every durable write with the
    /// number of writes so far; returning `true` crashes the orchestrator on the spot (no
    /// more writes, no lease revoke), as `kill -9` would.
    #[doc(hidden)]
    pub fn fault(mut self, f: impl Fn(u64) -> bool + Send + Sync + 'static) -> Self {
        self.fault = Arc::new(f);
        self
    }

    /// Starts: a session, this orchestrator's member key, recovery of unowned sagas, the
    /// takeover watch and the retention sweeper.
    pub async fn start(self) -> Result<Orchestrator> {
        let log = Log::new(self.store.clone());
        check_id(&self.opts.name).map_err(|_| {
            SagaError::InvalidArgument(format!(
                "orchestrator name {:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
                self.opts.name
            ))
        })?;
        // A previous incarnation under this name is dead (or about to be): take its sagas now.
        if let Some(old) = log.member_lease(&self.opts.name).await? {
            let _ = self.store.lease_revoke(old).await;
        }
        let session = Session::new(
            self.store.clone(),
            SessionOptions {
                ttl: self.opts.ttl,
                ..Default::default()
            },
        )
        .await?;
        log.register_member(&self.opts.name, session.lease())
            .await?;
        let crashed = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            log: log.clone(),
            invoker: Invoker::new(self.registry, self.resolver),
            fault: self.fault,
            writes: Arc::new(AtomicU64::new(0)),
            crashed: crashed.clone(),
            rng: self.rng,
        });
        let o = Orchestrator {
            inner: Arc::new(Inner {
                opts: self.opts,
                log,
                session,
                ctx,
                owned: Mutex::default(),
                background: Mutex::default(),
                rescan: Notify::new(),
                waiters: Mutex::default(),
                members: Mutex::default(),
                crashed,
            }),
        };
        *o.inner.members.lock().expect("lock") = o.inner.log.members().await?;
        let weak = Arc::downgrade(&o.inner);
        let store = o.inner.log.store().clone();
        let running = index_prefix(Status::Running);
        let bg = vec![
            tokio::spawn(takeover_loop(weak.clone())),
            tokio::spawn(watch_prefix(
                weak.clone(),
                store.clone(),
                member_prefix(),
                on_member,
            )),
            tokio::spawn(watch_prefix(weak.clone(), store.clone(), running, on_new)),
            tokio::spawn(watch_prefix(
                weak.clone(),
                store,
                control_prefix(),
                on_control,
            )),
        ];
        o.inner.background.lock().expect("lock").extend(bg);
        o.inner.rescan.notify_one();
        Ok(o)
    }
}

impl Orchestrator {
    /// An orchestrator on `store`.
    pub fn builder(store: Arc<dyn Store>) -> Builder {
        Builder {
            store,
            opts: Options::default(),
            registry: Registry::new(),
            resolver: None,
            fault: Arc::new(|_| false),
            rng: Arc::new(weft_resilience::rng::XorShift::default()),
        }
    }

    /// This orchestrator's name.
    pub fn name(&self) -> &str {
        &self.inner.opts.name
    }

    /// Durable writes made so far by this orchestrator's sagas (creation excluded).
    pub fn writes(&self) -> u64 {
        self.inner.ctx.writes.load(Ordering::SeqCst)
    }

    /// Validates and stores a saga, then runs it. With an `id` the submission is idempotent:
    /// the same id with the same definition and input answers the existing saga. A bad
    /// definition stores nothing.
    pub async fn submit(&self, def: SagaDef, input: Value, id: Option<String>) -> Result<String> {
        def.validate()?;
        let size = serde_json::to_vec(&input).map(|v| v.len()).unwrap_or(0);
        if size > self.inner.opts.max_input_bytes {
            return Err(SagaError::InvalidArgument(format!(
                "input of {size} bytes is over the limit of {} bytes",
                self.inner.opts.max_input_bytes
            )));
        }
        let id = match id {
            Some(id) => {
                check_id(&id)?;
                id
            }
            None => new_id(&*self.inner.ctx.rng),
        };
        let now = now_ms();
        let mut record = SagaRecord::new(&id, &def, now);
        let ready = record.ready(&def);
        record.start(&ready, Phase::Action, now);
        let mut events = vec![Event::new("submitted", now).detail(format!("by {}", self.name()))];
        events.extend(
            ready
                .iter()
                .map(|s| Event::new("started", now).step(s, Phase::Action)),
        );
        record.events = events.len() as u64;
        let stored = Stored { def, input };
        self.check_alive()?;
        // New sagas are spread over the live orchestrators by rendezvous on the id: this one
        // runs its own share and leaves the rest for their orchestrator to claim.
        let mine = preferred(&self.inner, &id) == self.name();
        let owner = mine.then(|| (self.name(), self.inner.session.lease()));
        // Reserved before it exists, so an `abort` that sees it finds its control channel.
        let reserved = mine.then(|| reserve(&self.inner, &id)).flatten();
        let created = self
            .inner
            .log
            .create(&stored, &record, &events, owner)
            .await;
        if !matches!(created, Ok(Some(_))) && reserved.is_some() {
            unreserve(&self.inner, &id);
        }
        match created? {
            Some(rev) => {
                metrics::counter!("weft_saga_submitted_total").increment(1);
                if let Some(control) = reserved {
                    let loaded = crate::log::Loaded {
                        record,
                        mod_revision: rev,
                    };
                    let known = Some((Arc::new(stored), loaded));
                    start_reserved(&self.inner, id.clone(), rev, None, known, control);
                }
                Ok(id)
            }
            None => {
                let existing = self.inner.log.stored(&id).await?;
                if existing.def == stored.def && existing.input == stored.input {
                    Ok(id)
                } else {
                    Err(SagaError::Conflict {
                        id,
                        message: "exists with another definition or input".into(),
                    })
                }
            }
        }
    }

    fn check_alive(&self) -> Result<()> {
        if self.inner.crashed.load(Ordering::SeqCst) || self.inner.session.lost_reason().is_some() {
            return Err(SagaError::NotOwner(
                "(this orchestrator lost its session)".into(),
            ));
        }
        Ok(())
    }

    fn spawn(&self, id: String, owner_rev: i64) {
        spawn_task(&self.inner, id, owner_rev, None, None);
    }

    /// A saga with its definition, input and timeline.
    pub async fn get(&self, id: &str) -> Result<SagaView> {
        self.reader().get(id).await
    }

    /// Sagas with `status` (all when `None`), at most `limit` per status (0: all).
    pub async fn list(&self, status: Option<Status>, limit: i64) -> Result<Vec<SagaRecord>> {
        self.reader().list(status, limit).await
    }

    /// How many sagas are in each status (for metrics).
    pub async fn counts(&self) -> Result<Vec<(Status, usize)>> {
        self.reader().counts().await
    }

    /// Reads without this orchestrator.
    pub fn reader(&self) -> Reader {
        Reader::new(self.inner.log.store().clone())
    }

    /// Waits until the saga is committed, compensated, parked or aborted, at most `timeout`.
    /// Works for sagas of any orchestrator (it watches the store); sagas of this one are
    /// noticed without a store round trip.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<SagaRecord> {
        let fut = async {
            loop {
                let (tx, mut local) = tokio::sync::oneshot::channel();
                // Registered before any read, so that a saga this orchestrator runs (or takes
                // over and brings to rest meanwhile) is not missed.
                if self.add_waiter(id, tx) {
                    // Ours: its task hands over the record at rest, no store read. The
                    // timer covers a task that ends without it (its ownership lost).
                    tokio::select! {
                        r = &mut local => match r {
                            Ok(record) => return Ok(record),
                            Err(_) => continue,
                        },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                let l = self.inner.log.load(id).await?;
                if l.record.status.is_at_rest() {
                    return Ok(l.record);
                }
                let mut w = self
                    .inner
                    .log
                    .store()
                    .watch(
                        WatchRequest::new(KeyRange::key(state_key(id)))
                            .start_revision(l.mod_revision + 1),
                    )
                    .await?;
                tokio::select! {
                    _ = w.message() => {}
                    r = &mut local => if let Ok(record) = r { return Ok(record) },
                }
            }
        };
        let r = tokio::time::timeout(timeout, fut).await;
        // Waiters whose receiver is gone (this call's, or other timed-out ones).
        {
            let mut waiters = self.inner.waiters.lock().expect("lock");
            if let Some(ws) = waiters.get_mut(id) {
                ws.retain(|w| !w.is_closed());
                if ws.is_empty() {
                    waiters.remove(id);
                }
            }
        }
        match r {
            Ok(r) => r,
            Err(_) => Err(SagaError::Conflict {
                id: id.to_string(),
                message: format!("not at rest after {timeout:?}"),
            }),
        }
    }

    /// Registers `tx` as a waiter on saga `id`; whether this orchestrator runs it now (then
    /// its task is sure to serve the waiter, see `Inner::waiters`).
    fn add_waiter(&self, id: &str, tx: tokio::sync::oneshot::Sender<SagaRecord>) -> bool {
        let owned = self.inner.owned.lock().expect("lock");
        let mut waiters = self.inner.waiters.lock().expect("lock");
        waiters.entry(id.to_string()).or_default().push(tx);
        owned.contains_key(id)
    }

    /// Operator: runs a parked saga again from where it stopped (its failing call gets a fresh
    /// set of retries).
    pub async fn resume(&self, id: &str) -> Result<()> {
        self.operate(id, "resumed", None, |r| {
            if r.status != Status::Parked {
                return Err(format!(
                    "is {}; only a parked saga can be resumed",
                    r.status.as_str()
                ));
            }
            r.parked = None;
            r.status = Status::Compensating;
            Ok(())
        })
        .await
    }

    /// Operator: marks the parked saga's failing step as done (its compensation as applied by
    /// hand), then runs the saga on.
    pub async fn skip(&self, id: &str, step: &str) -> Result<()> {
        self.operate(id, "skipped", Some(step), |r| {
            let parked = match (&r.status, &r.parked) {
                (Status::Parked, Some(p)) => p.clone(),
                _ => {
                    return Err(format!(
                        "is {}; only the failing step of a parked saga can be skipped",
                        r.status.as_str()
                    ))
                }
            };
            if parked.step != step {
                return Err(format!(
                    "step {step:?} is not the parked step (the parked step is {:?})",
                    parked.step
                ));
            }
            let s = r.steps.get_mut(step).expect("the parked step exists");
            s.status = StepStatus::Compensated;
            s.compensation_finished_ms = Some(now_ms());
            r.parked = None;
            r.status = Status::Compensating;
            Ok(())
        })
        .await
    }

    /// Operator: a running saga compensates now; a parked saga is given up (`aborted`, final:
    /// nothing more runs; what was not compensated is left as the timeline shows). A running
    /// saga of another orchestrator gets the request through the store: its owner (or whoever
    /// takes it over) compensates once it sees it, unless the saga finished first.
    pub async fn abort(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let owned_here = {
            let owned = self.inner.owned.lock().expect("lock");
            owned.get(id).map(|o| o.control.clone())
        };
        let l = self.inner.log.load(id).await?;
        match l.record.status {
            Status::Running => match owned_here {
                Some(c) => {
                    let _ = c.send(Control::Abort);
                    Ok(())
                }
                // Its owner (or whoever takes it over) watches for the request.
                None => self.inner.log.request(id, "abort").await,
            },
            Status::Parked => {
                self.operate(id, "aborted", None, |r| {
                    r.status = Status::Aborted;
                    Ok(())
                })
                .await
            }
            st => Err(SagaError::Conflict {
                id: id.to_string(),
                message: format!(
                    "is {}; abort applies to a running or a parked saga",
                    st.as_str()
                ),
            }),
        }
    }

    /// Claims an unowned saga, changes its record with `f` in a fenced write (logged as
    /// `kind`), and runs it if it is not at rest.
    async fn operate(
        &self,
        id: &str,
        kind: &str,
        step: Option<&str>,
        f: impl FnOnce(&mut SagaRecord) -> std::result::Result<(), String>,
    ) -> Result<()> {
        check_id(id)?;
        self.check_alive()?;
        let loaded = self.inner.log.load(id).await?;
        let mut next = loaded.record.clone();
        f(&mut next).map_err(|message| SagaError::Conflict {
            id: id.to_string(),
            message,
        })?;
        let rev = self
            .inner
            .log
            .claim(id, self.name(), self.inner.session.lease(), None)
            .await?
            .ok_or_else(|| SagaError::Conflict {
                id: id.to_string(),
                message: "is owned by an orchestrator that is running it".into(),
            })?;
        let now = now_ms();
        let mut ev = Event::new(kind, now).detail(format!("by an operator on {}", self.name()));
        if let Some(s) = step {
            ev = ev.step(s, Phase::Compensation);
        }
        next.updated_ms = now;
        next.events = loaded.record.events + 1;
        let release = next.status.is_at_rest();
        match self
            .inner
            .log
            .commit(&loaded, &next, &[ev], rev, release)
            .await
        {
            Ok(_) if !release => {
                self.spawn(id.to_string(), rev);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.inner.log.release(id, rev).await;
                Err(e)
            }
        }
    }

    /// Stops running sagas and gives them up for others to take over (the lease is revoked).
    pub async fn shutdown(&self) {
        for h in self.inner.background.lock().expect("lock").drain(..) {
            h.abort();
        }
        let owned: Vec<Owned> = self
            .inner
            .owned
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, o)| o)
            .collect();
        for t in owned.into_iter().filter_map(|o| o.task) {
            t.abort();
        }
        let _ = self.inner.session.close().await;
    }

    /// Crashes on the spot, as `kill -9` would: tasks stop, nothing more is written, the lease
    /// is left to expire (or to be revoked by the next incarnation of this name).
    #[doc(hidden)]
    pub fn crash(&self) {
        self.inner.crashed.store(true, Ordering::SeqCst);
        self.inner.session.simulate_crash();
        for h in self.inner.background.lock().expect("lock").drain(..) {
            h.abort();
        }
        for (_, o) in self.inner.owned.lock().expect("lock").drain() {
            if let Some(t) = o.task {
                t.abort();
            }
        }
    }

    /// Whether the fault hook (or [`Orchestrator::crash`]) crashed this orchestrator.
    #[doc(hidden)]
    pub fn has_crashed(&self) -> bool {
        self.inner.crashed.load(Ordering::SeqCst)
    }

    /// Removes finished sagas older than the retention; returns how many.
    pub async fn sweep(&self) -> Result<usize> {
        sweep(&self.inner).await
    }
}

/// A time-ordered id: milliseconds (hex) and 32 random bits.
fn new_id(rng: &dyn weft_resilience::rng::Random) -> String {
    let r = (rng.next_f64() * u32::MAX as f64) as u32;
    format!("{:011x}-{r:08x}", now_ms())
}

fn spawn_task(
    inner: &Arc<Inner>,
    id: String,
    owner_rev: i64,
    note: Option<Event>,
    known: Option<(Arc<Stored>, crate::log::Loaded)>,
) {
    let Some(control) = reserve(inner, &id) else {
        return;
    };
    start_reserved(inner, id.clone(), owner_rev, note, known, control);
    // A request made while nobody owned the saga.
    let inner = inner.clone();
    tokio::spawn(async move { serve_control(&inner, &id).await });
}

/// Reserves `id` in the owned set for a saga about to be created here; its control
/// receiver, or `None` if the id is owned here already.
fn reserve(inner: &Arc<Inner>, id: &str) -> Option<mpsc::UnboundedReceiver<Control>> {
    let mut owned = inner.owned.lock().expect("lock");
    if owned.contains_key(id) {
        return None;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    owned.insert(
        id.to_string(),
        Owned {
            control: tx,
            task: None,
        },
    );
    Some(rx)
}

/// Gives a reservation back (the create failed or found the id taken); waiters registered
/// meanwhile look again.
fn unreserve(inner: &Arc<Inner>, id: &str) {
    let mut owned = inner.owned.lock().expect("lock");
    if owned.get(id).is_some_and(|o| o.task.is_none()) {
        owned.remove(id);
        inner.waiters.lock().expect("lock").remove(id);
    }
}

/// Starts the task of a saga reserved in the owned set. For a saga created here no request
/// can be pending in the store: from before the create, `abort` found the reservation's
/// channel (a saga taken over is checked by `spawn_task`).
fn start_reserved(
    inner: &Arc<Inner>,
    id: String,
    owner_rev: i64,
    note: Option<Event>,
    known: Option<(Arc<Stored>, crate::log::Loaded)>,
    control: mpsc::UnboundedReceiver<Control>,
) {
    let mut owned = inner.owned.lock().expect("lock");
    // Gone if the orchestrator shut down or crashed meanwhile.
    if let Some(o) = owned.get_mut(&id).filter(|o| o.task.is_none()) {
        let run = run_task(inner, id.clone(), owner_rev, note, known, control);
        o.task = Some(tokio::spawn(run));
    }
}

/// A saga's task: drives it to rest (retrying after errors), then hands the record to the
/// waiters and leaves the owned set.
fn run_task(
    inner: &Arc<Inner>,
    task_id: String,
    owner_rev: i64,
    note: Option<Event>,
    known: Option<(Arc<Stored>, crate::log::Loaded)>,
    mut rx: mpsc::UnboundedReceiver<Control>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let weak = Arc::downgrade(inner);
    let ctx = inner.ctx.clone();
    async move {
        let mut delay = Duration::from_millis(100);
        let (mut note, mut known) = (note, known);
        loop {
            match drive(
                &ctx,
                &task_id,
                owner_rev,
                &mut rx,
                note.take(),
                known.take(),
            )
            .await
            {
                Ok(record) => {
                    tracing::debug!(saga = %task_id, status = record.status.as_str(), "saga at rest");
                    if let Some(inner) = weak.upgrade() {
                        // Out of `owned` and its waiters taken in one step (see `waiters`).
                        let ws = {
                            let mut owned = inner.owned.lock().expect("lock");
                            owned.remove(&task_id);
                            let mut waiters = inner.waiters.lock().expect("lock");
                            waiters.remove(&task_id)
                        };
                        for w in ws.into_iter().flatten() {
                            let _ = w.send(record.clone());
                        }
                    }
                    // Already out of `owned`: a task started since for the same id stays.
                    return;
                }
                Err(SagaError::NotOwner(_)) => break,
                Err(e) if ctx.crashed.load(Ordering::SeqCst) => {
                    tracing::debug!(saga = %task_id, error = %e, "orchestrator crashed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(saga = %task_id, error = %e, "saga task failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Some(inner) = weak.upgrade() {
            inner.owned.lock().expect("lock").remove(&task_id);
        }
    }
}

/// Unowned running or compensating sagas that this orchestrator should take (rendezvous over
/// the live orchestrators; any of them once the preferred one had a sweep interval to act).
async fn takeover_scan(inner: &Arc<Inner>, all: bool) -> Result<()> {
    if inner.crashed.load(Ordering::SeqCst) {
        return Ok(());
    }
    let owned = inner.log.owned().await?;
    // The live set as of now (a dead orchestrator's member key is what woke this scan).
    *inner.members.lock().expect("lock") = inner.log.members().await?;
    for st in [Status::Running, Status::Compensating] {
        for id in inner.log.ids(st, 0).await? {
            if owned.contains(&id) {
                continue;
            }
            if !all && preferred(inner, &id) != inner.opts.name {
                continue;
            }
            if let Some(rev) = inner
                .log
                .claim(&id, &inner.opts.name, inner.session.lease(), Some(st))
                .await?
            {
                tracing::info!(saga = %id, orchestrator = %inner.opts.name, "took over saga");
                metrics::counter!("weft_saga_takeovers_total").increment(1);
                let note = Event::new("taken_over", now_ms())
                    .detail(format!("by {} (its owner's lease ended)", inner.opts.name));
                spawn_task(inner, id, rev, Some(note), None);
            }
        }
    }
    Ok(())
}

async fn takeover_loop(weak: std::sync::Weak<Inner>) {
    let mut ticks = 0u64;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let interval = inner.opts.sweep_interval;
        let woken = tokio::time::timeout(interval, inner.rescan.notified())
            .await
            .is_ok();
        // Rendezvous first; every orchestrator takes what is left a round later.
        let all = !woken && ticks % 2 == 1;
        if let Err(e) = takeover_scan(&inner, all).await {
            tracing::warn!(error = %e, "saga takeover scan failed");
        }
        if woken {
            // The preferred owner had its chance; let anyone take the rest soon.
            let inner2 = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = takeover_scan(&inner2, true).await;
            });
        } else {
            ticks += 1;
            if let Err(e) = sweep(&inner).await {
                tracing::warn!(error = %e, "saga retention sweep failed");
            }
        }
    }
}

/// The orchestrator that should run saga `id`: rendezvous over the live ones.
fn preferred(inner: &Inner, id: &str) -> String {
    let members = inner.members.lock().expect("lock");
    if members.len() <= 1 {
        // Alone (the common case): no placement to build on every submission.
        return inner.opts.name.clone();
    }
    let nodes: Vec<Node> = members.iter().map(Node::new).collect();
    match Rendezvous::new(&nodes) {
        Ok(p) if !nodes.is_empty() => p.locate(id.as_bytes()).to_string(),
        _ => inner.opts.name.clone(),
    }
}

type OnEvents = fn(Arc<Inner>, Vec<weft_store::Event>) -> futures::future::BoxFuture<'static, ()>;

/// Watches `prefix` and hands every batch of events to `on` (reconnecting after errors).
async fn watch_prefix(
    weak: std::sync::Weak<Inner>,
    store: Arc<dyn Store>,
    prefix: String,
    on: OnEvents,
) {
    loop {
        let mut w = match store
            .watch(WatchRequest::new(KeyRange::prefix(prefix.clone())))
            .await
        {
            Ok(w) => w,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(m) = w.message().await {
            let Some(inner) = weak.upgrade() else { return };
            match m {
                Ok(resp) => on(inner, resp.events).await,
                Err(_) => break,
            }
        }
        if weak.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A member key changed: refresh the live set; one that disappeared (its lease expired or was
/// revoked, which also deleted its owner keys) triggers a takeover scan. (Owner keys are not
/// watched: every saga at rest deletes its own.)
fn on_member(
    inner: Arc<Inner>,
    events: Vec<weft_store::Event>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        if let Ok(m) = inner.log.members().await {
            *inner.members.lock().expect("lock") = m;
        }
        if events.iter().any(|e| e.kind == EventType::Delete) {
            inner.rescan.notify_one();
        }
    })
}

fn id_of(key: &[u8], prefix: &str) -> String {
    String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default()).into_owned()
}

/// A saga was created: claim it if this orchestrator is its preferred owner and nobody owns it.
fn on_new(
    inner: Arc<Inner>,
    events: Vec<weft_store::Event>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        if inner.members.lock().expect("lock").len() <= 1 {
            // Alone: every saga created here is already ours.
            return;
        }
        let prefix = index_prefix(Status::Running);
        for e in events.iter().filter(|e| e.kind == EventType::Put) {
            let id = id_of(&e.kv.key, &prefix);
            if inner.crashed.load(Ordering::SeqCst)
                || preferred(&inner, &id) != inner.opts.name
                || inner.owned.lock().expect("lock").contains_key(&id)
            {
                continue;
            }
            match inner
                .log
                .claim(
                    &id,
                    &inner.opts.name,
                    inner.session.lease(),
                    Some(Status::Running),
                )
                .await
            {
                Ok(Some(rev)) => {
                    let note = Event::new("claimed", now_ms())
                        .detail(format!("by {} (its share of new sagas)", inner.opts.name));
                    spawn_task(&inner, id, rev, Some(note), None);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(saga = %id, error = %e, "cannot claim a new saga"),
            }
        }
    })
}

/// An operator's request for a saga this orchestrator runs.
fn on_control(
    inner: Arc<Inner>,
    events: Vec<weft_store::Event>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let prefix = control_prefix();
        for e in events.iter().filter(|e| e.kind == EventType::Put) {
            let id = id_of(&e.kv.key, &prefix);
            serve_control(&inner, &id).await;
        }
    })
}

/// Passes a pending `abort` request to the saga's task, if this orchestrator runs it.
async fn serve_control(inner: &Arc<Inner>, id: &str) {
    let control = inner
        .owned
        .lock()
        .expect("lock")
        .get(id)
        .map(|o| o.control.clone());
    let Some(control) = control else { return };
    let pending = inner
        .log
        .store()
        .range(weft_store::RangeRequest::new(KeyRange::key(control_key(id))).count_only())
        .await
        .map(|r| r.count > 0)
        .unwrap_or(false);
    if pending {
        let _ = control.send(Control::Abort);
        let _ = inner.log.request_served(id).await;
    }
}

/// Removes the sagas that finished before the retention, oldest first, through the time
/// index: the work is the sagas removed, not every saga kept.
async fn sweep(inner: &Arc<Inner>) -> Result<usize> {
    let cutoff = now_ms()
        .saturating_sub(inner.opts.retention.as_millis() as u64)
        .saturating_add(1);
    let mut removed = 0;
    loop {
        let batch = inner.log.finished_before(cutoff, 256).await?;
        if batch.is_empty() {
            return Ok(removed);
        }
        for (id, key) in batch {
            let status = match inner.log.load(&id).await {
                Ok(l) => l.record.status,
                // Only the index entry is left.
                Err(SagaError::NotFound(_)) => Status::Committed,
                Err(e) => return Err(e),
            };
            inner.log.remove(&id, status, &key).await?;
            metrics::counter!("weft_saga_removed_total", "status" => status.as_str()).increment(1);
            removed += 1;
        }
    }
}
