//! The one lease keepalive rule, shared by [`Session`](crate::Session) (renewing through a
//! [`Store`](weft_store::Store)) and by clients that renew some other way (the `weft` CLI
//! renews through the node's HTTP API).
//!
//! - Renew every TTL/3 after the last success.
//! - The **local deadline** is the send time of the last successful renewal + TTL − safety
//!   margin: the lease may expire any moment after it, so ownership is given up then.
//! - A failed renewal is retried every 200 ms (at most TTL/3) until the deadline, never given
//!   up earlier; each attempt is bounded by TTL/3 and by the time left, so one hung request
//!   does not use up the time for the others.
//! - A renewal that says the lease is gone ends at once.
//!
//! ```
//! use tokio::time::{Duration, Instant};
//! use weft_coord::{keep_alive, LostReason, Renewal};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut calls = 0;
//! let reason = keep_alive(Duration::from_secs(3), Duration::from_millis(300), Instant::now(), || {
//!     calls += 1;
//!     let answer = if calls < 4 { Renewal::Renewed } else { Renewal::Gone };
//!     async move { answer }
//! })
//! .await;
//! assert_eq!(reason, LostReason::Expired);
//! # }
//! ```

use std::future::Future;

use tokio::time::{Duration, Instant};

use crate::session::LostReason;

/// What one renewal attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease was renewed to its full TTL.
    Renewed,
    /// The lease no longer exists (expired or revoked).
    Gone,
    /// The attempt failed (unreachable, timed out, refused); try again.
    Failed,
}

/// Retry interval after a failed renewal (at most TTL/3).
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// The default safety margin: a tenth of the TTL, at least 100 ms.
pub fn default_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(100))
}

/// Keeps a lease granted at `granted_at` (sent time of the grant) alive with `renew` until it
/// is lost; returns why ([`LostReason::Deadline`] or [`LostReason::Expired`]). Stop it by
/// dropping the future.
pub async fn keep_alive<F, Fut>(
    ttl: Duration,
    margin: Duration,
    granted_at: Instant,
    mut renew: F,
) -> LostReason
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Renewal>,
{
    let period = ttl / 3;
    let retry = RETRY_INTERVAL.min(period);
    let mut deadline = granted_at + ttl.saturating_sub(margin);
    let mut next = granted_at + period;
    loop {
        tokio::time::sleep_until(next.min(deadline)).await;
        let sent = Instant::now();
        if sent >= deadline {
            return LostReason::Deadline;
        }
        let bound = (deadline - sent).min(period.max(Duration::from_millis(1)));
        match tokio::time::timeout(bound, renew()).await {
            Ok(Renewal::Renewed) => {
                deadline = sent + ttl.saturating_sub(margin);
                next = sent + period;
            }
            Ok(Renewal::Gone) => return LostReason::Expired,
            Ok(Renewal::Failed) | Err(_) => next = Instant::now() + retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Answers by the time since the start: failing inside `[from, to)`.
    fn outage(
        start: Instant,
        from: Duration,
        to: Duration,
        log: Arc<Mutex<Vec<Duration>>>,
    ) -> impl FnMut() -> std::future::Ready<Renewal> {
        move || {
            let t = start.elapsed();
            log.lock().unwrap().push(t);
            std::future::ready(if t >= from && t < to {
                Renewal::Failed
            } else {
                Renewal::Renewed
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_shorter_than_the_deadline_keeps_the_lease() {
        // TTL 3 s, margin 0.3 s: success at 1 s, so the deadline is 3.7 s. An outage of
        // 0.57 x TTL (1.7 s) from 1.5 s to 3.2 s used to cost the lock; renewals go on until
        // the deadline and the one at 3.2 s succeeds.
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let f = outage(
            start,
            Duration::from_millis(1500),
            Duration::from_millis(3200),
            log.clone(),
        );
        let ttl = Duration::from_secs(3);
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            keep_alive(ttl, Duration::from_millis(300), start, f),
        )
        .await;
        assert!(r.is_err(), "the lease is kept: {r:?}");
        let log = log.lock().unwrap();
        let retries = log
            .iter()
            .filter(|t| **t >= Duration::from_millis(1500) && **t < Duration::from_millis(3200))
            .count();
        assert!(
            retries >= 6,
            "retried every 200 ms through the outage: {log:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_outage_ends_at_the_local_deadline() {
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let f = outage(start, Duration::from_millis(1500), Duration::MAX, log);
        let reason = keep_alive(Duration::from_secs(3), Duration::from_millis(300), start, f).await;
        assert_eq!(reason, LostReason::Deadline);
        // Last success at 1 s: deadline 1 + 3 - 0.3 = 3.7 s.
        let lost_at = start.elapsed();
        assert!(
            lost_at >= Duration::from_millis(3700) && lost_at < Duration::from_millis(3750),
            "{lost_at:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_is_bounded_and_retried() {
        let start = Instant::now();
        let mut n = 0;
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            keep_alive(
                Duration::from_secs(3),
                Duration::from_millis(300),
                start,
                || {
                    n += 1;
                    let hang = n == 2;
                    async move {
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Renewal::Renewed
                    }
                },
            ),
        )
        .await;
        assert!(r.is_err(), "one hung request does not lose the lease");
    }

    #[tokio::test(start_paused = true)]
    async fn gone_ends_at_once() {
        let start = Instant::now();
        let reason = keep_alive(
            Duration::from_secs(3),
            Duration::from_millis(300),
            start,
            || std::future::ready(Renewal::Gone),
        )
        .await;
        assert_eq!(reason, LostReason::Expired);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
