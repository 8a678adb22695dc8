//! Watch types: a stream of change events in revision order.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::types::{KeyRange, KeyValue};
use crate::Result;

/// Kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A put (create or update).
    Put,
    /// A delete (explicit, or by lease expiry/revoke).
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventType,
    /// The pair after the change; for deletes only `key` and `mod_revision` are set (as etcd).
    pub kv: KeyValue,
    /// The pair before the change, if the watch asked for it and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// What to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchRequest {
    /// Which keys.
    pub range: KeyRange,
    /// First revision to deliver (inclusive); 0 means "changes after the current revision".
    pub start_revision: i64,
    /// Attach the previous pair to each event.
    pub prev_kv: bool,
    /// Drop put events.
    pub no_put: bool,
    /// Drop delete events.
    pub no_delete: bool,
    /// Send a progress notification (an empty response with the current revision) when the
    /// watcher is idle and caught up, every `progress_interval` (backend default if `None`).
    pub progress_notify: bool,
}

impl WatchRequest {
    /// Watch `range` from now on.
    pub fn new(range: KeyRange) -> Self {
        WatchRequest {
            range,
            ..Default::default()
        }
    }
    /// Start at a past revision (inclusive).
    pub fn start_revision(mut self, rev: i64) -> Self {
        self.start_revision = rev;
        self
    }
    /// Attach previous pairs.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Ask for periodic progress notifications.
    pub fn progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
}

/// One message of a watch stream: events of one or more whole revisions, or a progress notice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchResponse {
    /// Revision the store was at when the response was made; for a progress notice, every
    /// change up to this revision has been delivered.
    pub revision: i64,
    /// Events in revision order; all events of one revision are in the same response.
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// Whether this is a progress notification (no events).
    pub fn is_progress(&self) -> bool {
        self.events.is_empty()
    }
}

/// Control side of a watch, implemented by each backend.
pub trait WatchControl: Send + Sync {
    /// Ask for a progress notification (delivered once the watcher has caught up).
    fn request_progress(&self);
    /// Stop the watch; the stream ends.
    fn cancel(&self);
}

/// A live watch: a stream of [`WatchResponse`]s.
///
/// The stream ends with `Err(StoreError::Compacted { .. })` if the watch cannot continue because
/// history it still needs was compacted, or `Err(StoreError::WatchCancelled(reason))` if the
/// store cancelled it; it never skips events silently. Dropping the stream cancels the watch.
pub struct WatchStream {
    src: Source,
    control: Box<dyn WatchControl>,
    done: bool,
}

/// Where a [`WatchStream`]'s messages come from.
enum Source {
    /// A task of the backend's sends them (etcd's watch stream, for one).
    Channel(mpsc::Receiver<Result<WatchResponse>>),
    /// Made when asked for, in the task that reads the stream: no task or channel per watch
    /// (the embedded store).
    Pull(Pin<Box<dyn Stream<Item = Result<WatchResponse>> + Send + Sync>>),
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("done", &self.done)
            .finish()
    }
}

impl WatchStream {
    /// Build a stream from a backend's channel and control handle.
    pub fn new(rx: mpsc::Receiver<Result<WatchResponse>>, control: Box<dyn WatchControl>) -> Self {
        WatchStream {
            src: Source::Channel(rx),
            control,
            done: false,
        }
    }

    /// Build a stream that makes each message when it is polled. `source` ends (`None`) once
    /// `control` has cancelled it.
    pub fn from_stream(
        source: impl Stream<Item = Result<WatchResponse>> + Send + Sync + 'static,
        control: Box<dyn WatchControl>,
    ) -> Self {
        WatchStream {
            src: Source::Pull(Box::pin(source)),
            control,
            done: false,
        }
    }

    /// The next message, or `None` once the watch has ended. Cancel-safe: a message being
    /// made when the future is dropped is not lost.
    pub async fn message(&mut self) -> Option<Result<WatchResponse>> {
        futures::StreamExt::next(self).await
    }

    /// Ask for a progress notification.
    pub fn request_progress(&self) {
        self.control.request_progress();
    }

    /// Cancel the watch.
    pub fn cancel(&mut self) {
        self.control.cancel();
        if let Source::Channel(rx) = &mut self.src {
            rx.close();
        }
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchResponse>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let p = match &mut self.src {
            Source::Channel(rx) => rx.poll_recv(cx),
            Source::Pull(s) => s.as_mut().poll_next(cx),
        };
        if let Poll::Ready(None | Some(Err(_))) = &p {
            self.done = true;
        }
        p
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.control.cancel();
    }
}

#[cfg(test)]
mod tests {
    /// A watch stream can be held in shared state and moved between tasks, whichever way
    /// its backend makes messages.
    #[test]
    fn a_watch_stream_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::WatchStream>();
    }
}
