//! Reading sagas without running an orchestrator, and an orchestrator started on first use.
//!
//! A node that never runs a saga should not write to its store or hold a lease for it (an
//! etcd user comparing revisions would see them). [`Lazy`] starts the orchestrator on the
//! first submission or operator action, or as soon as the store holds work for it: unowned
//! running or compensating sagas, or the member key of a previous incarnation under its name
//! (whose sagas it resumes at once). [`Reader`] answers queries meanwhile, with reads only.

use std::sync::Arc;

use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio::time::Duration;
use weft_store::{KeyRange, RangeRequest, Store};

use crate::error::{Result, SagaError};
use crate::log::{check_id, member_key, member_prefix, Log};
use crate::orch::{Builder, Orchestrator, SagaView};
use crate::state::{SagaRecord, Status};

/// Reads sagas from a store (no writes, no lease).
#[derive(Clone)]
pub struct Reader {
    log: Log,
}

impl Reader {
    /// Reads from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Reader {
            log: Log::new(store),
        }
    }

    /// A saga with its definition, input and timeline.
    pub async fn get(&self, id: &str) -> Result<SagaView> {
        check_id(id)?;
        let loaded = self.log.load(id).await?;
        let stored = self.log.stored(id).await?;
        let timeline = self.log.events(id).await?;
        Ok(SagaView {
            record: loaded.record,
            definition: stored.def,
            input: stored.input,
            timeline,
        })
    }

    /// Sagas with `status` (all when `None`), at most `limit` per status (0: all).
    pub async fn list(&self, status: Option<Status>, limit: i64) -> Result<Vec<SagaRecord>> {
        let statuses: Vec<Status> = match status {
            Some(s) => vec![s],
            None => Status::ALL.to_vec(),
        };
        let mut out = Vec::new();
        for st in statuses {
            for id in self.log.ids(st, limit).await? {
                match self.log.load(&id).await {
                    Ok(l) => out.push(l.record),
                    Err(SagaError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// How many sagas are in each status (for metrics).
    pub async fn counts(&self) -> Result<Vec<(Status, usize)>> {
        let mut out = Vec::new();
        for st in Status::ALL {
            out.push((st, self.log.count(st).await?));
        }
        Ok(out)
    }

    /// Whether an orchestrator named `name` should run now: running or compensating sagas
    /// that nobody owns, or a member key under `name` (a previous incarnation's sagas).
    pub async fn work_for(&self, name: &str) -> Result<bool> {
        let member = self
            .log
            .store()
            .range(RangeRequest::new(KeyRange::key(member_key(name))).count_only())
            .await?;
        if member.count > 0 {
            return Ok(true);
        }
        let owned = self.log.owned().await?;
        for st in [Status::Running, Status::Compensating] {
            if self
                .log
                .ids(st, 0)
                .await?
                .iter()
                .any(|id| !owned.contains(id))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Makes the orchestrator's builder (called once, when it starts).
pub type MakeBuilder = Box<dyn Fn() -> Builder + Send + Sync>;

/// An orchestrator started on first use, or when the store holds work for it.
pub struct Lazy {
    reader: Reader,
    name: String,
    make: MakeBuilder,
    cell: OnceCell<Orchestrator>,
}

impl Lazy {
    /// An orchestrator named `name` on `store`, built by `make` when it starts.
    pub fn new(store: Arc<dyn Store>, name: &str, make: MakeBuilder) -> Arc<Lazy> {
        Arc::new(Lazy {
            reader: Reader::new(store),
            name: name.to_string(),
            make,
            cell: OnceCell::new(),
        })
    }

    /// The orchestrator, started now if it was not.
    pub async fn get(&self) -> Result<&Orchestrator> {
        self.cell
            .get_or_try_init(|| async {
                tracing::info!(orchestrator = %self.name, "starting the saga orchestrator");
                (self.make)().start().await
            })
            .await
    }

    /// The orchestrator, if it started.
    pub fn started(&self) -> Option<&Orchestrator> {
        self.cell.get()
    }

    /// Reads without starting it.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Checks now, whenever an orchestrator's member key disappears (its sagas are unowned
    /// then), and every `interval`, whether the store holds work for this orchestrator (see
    /// [`Reader::work_for`]); starts it when it does. The task ends once it started. Reads
    /// and watches only.
    pub fn watch_for_work(self: &Arc<Self>, interval: Duration) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let store = me.reader.log.store().clone();
            let mut members = None;
            loop {
                if me.started().is_some() {
                    return;
                }
                match me.reader.work_for(&me.name).await {
                    Ok(true) => match me.get().await {
                        Ok(_) => return,
                        Err(e) => tracing::warn!(error = %e, "cannot start the saga orchestrator"),
                    },
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot look for saga work"),
                }
                if members.is_none() {
                    let req = weft_store::WatchRequest {
                        no_put: true,
                        ..weft_store::WatchRequest::new(KeyRange::prefix(member_prefix()))
                    };
                    members = store.watch(req).await.ok();
                }
                let gone = async {
                    match members.as_mut() {
                        Some(w) => matches!(w.message().await, Some(Ok(_))),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    alive = gone => if !alive { members = None },
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        })
    }
}
