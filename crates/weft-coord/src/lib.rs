//! Coordination recipes on any [`weft_store::Store`]: sessions, distributed locks and
//! semaphores with fencing tokens, leader election with terms, and service discovery.
//!
//! Every recipe is written once against `Arc<dyn Store>` and runs unchanged on the embedded
//! store and on etcd. Every lock, leadership and registration belongs to a [`Session`] (one
//! lease kept alive in the background); there is no lease-less variant, so a crashed process
//! never leaves a lock held forever.
//!
//! ```
//! use std::sync::Arc;
//! use weft_coord::{Mutex, Session, SessionOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store: Arc<dyn weft_store::Store> =
//!     Arc::new(weft_store::embedded::Embedded::open(dir.path(), Default::default()).await?);
//! let session = Session::new(store, SessionOptions { ttl: 10, ..Default::default() }).await?;
//! let guard = Mutex::new(&session, "jobs")?.lock().await?;
//! // Pass the fencing token to whatever the lock protects; it rejects older tokens.
//! println!("holding the lock with token {}", guard.fencing_token());
//! guard.unlock().await?;
//! session.close().await?;
//! # Ok(()) }
//! ```

mod discovery;
mod election;
mod error;
mod held;
mod keepalive;
mod lock;
mod session;

#[cfg(feature = "suite")]
pub mod suite;

pub use discovery::{
    probe, CacheOptions, CachedView, DiscoveryEvent, Health, HealthCheck, Instance, Registration,
    Registry, ServiceCache, ServiceSnapshot, SERVICE_PREFIX,
};
pub use election::{Election, Leader, Leadership, ELECTION_PREFIX};
pub use error::{CoordError, Result};
pub use held::HeldKey;
pub use keepalive::{default_margin, keep_alive, Renewal, RETRY_INTERVAL};
pub use lock::{release_parts, LockGuard, Mutex, Semaphore, LOCK_PREFIX, SEMAPHORE_PREFIX};
pub use session::{LostReason, Session, SessionOptions};
