//! A retry budget with exact accounting: over any stretch shorter than its TTL, retries are at
//! most `ratio` × requests, plus a floor of `min_per_sec` retries per second.
//!
//! tower's `TpsBudget` charges `(1 / ratio) as isize` per retry, so a ratio whose inverse is not
//! whole (0.3, 0.4, 0.7) lets through more retries than it promises (0.3 allowed 33 retries in
//! 100 requests). Here every request deposits `ratio` and every retry withdraws 1, both in
//! fixed point (millionths), so 100 requests at 0.3 allow exactly 30 retries.
//!
//! Deposits and withdrawals land in one of ten slots covering the TTL; a slot older than the
//! TTL is cleared, which forgets its requests and its retries together.
//!
//! ```
//! use std::time::Duration;
//! use weft_resilience::retry::RetryBudget;
//!
//! let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.3).unwrap();
//! let mut retries = 0;
//! for _ in 0..100 {
//!     budget.deposit(); // one request
//!     if budget.withdraw() {
//!         retries += 1; // it failed and may retry
//!     }
//! }
//! assert_eq!(retries, 30);
//! ```

use std::sync::Mutex;

use tokio::time::{Duration, Instant};

use crate::circuit::ConfigError;

/// Fixed-point unit: one retry.
const UNIT: i64 = 1_000_000;
/// Slots over the TTL.
const SLOTS: usize = 10;
/// Largest ratio accepted.
pub const MAX_RATIO: f64 = 1000.0;
/// Shortest TTL accepted.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest TTL accepted.
pub const MAX_TTL: Duration = Duration::from_secs(60);

struct Slots {
    balance: [i64; SLOTS],
    current: usize,
    /// When the current slot began.
    started: Instant,
}

/// A retry budget shared by every request of one client, route or service.
pub struct RetryBudget {
    slot_len: Duration,
    /// Credit of one request, in millionths of a retry.
    deposit: i64,
    /// Retries always allowed over one TTL (`min_per_sec` × TTL), in millionths.
    reserve: i64,
    slots: Mutex<Slots>,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &(self.deposit as f64 / UNIT as f64))
            .field("reserve", &(self.reserve / UNIT))
            .field("balance", &self.balance())
            .finish()
    }
}

impl RetryBudget {
    /// Retries at most `ratio` of the requests of the last `ttl` (exact to a millionth of the
    /// ratio), plus `min_per_sec` retries per second whatever the traffic.
    ///
    /// `ttl` must be within 1 s..=60 s and `ratio` within 0..=1000 (finite); anything else is a
    /// [`ConfigError`].
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self, ConfigError> {
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(ConfigError::Invalid(format!(
                "retry budget TTL {ttl:?} must be within 1s..=60s"
            )));
        }
        if !(ratio.is_finite() && (0.0..=MAX_RATIO).contains(&ratio)) {
            return Err(ConfigError::Invalid(format!(
                "retry budget ratio {ratio} must be within 0..=1000"
            )));
        }
        let reserve = i64::from(min_per_sec)
            .saturating_mul(ttl.as_millis() as i64)
            .saturating_mul(UNIT / 1000);
        Ok(RetryBudget {
            slot_len: ttl / SLOTS as u32,
            deposit: (ratio * UNIT as f64).round() as i64,
            reserve,
            slots: Mutex::new(Slots {
                balance: [0; SLOTS],
                current: 0,
                started: Instant::now(),
            }),
        })
    }

    /// [`RetryBudget::new`] with a ratio given as `f32` (as configuration files give it),
    /// rounded to its shortest decimal first so that `0.3f32` means 0.3.
    pub fn from_f32(ttl: Duration, min_per_sec: u32, ratio: f32) -> Result<Self, ConfigError> {
        let exact: f64 = ratio.to_string().parse().unwrap_or(f64::NAN);
        Self::new(ttl, min_per_sec, exact)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = s.started.elapsed();
        if elapsed >= self.slot_len {
            let n = (elapsed.as_nanos() / self.slot_len.as_nanos().max(1)) as u64;
            for _ in 0..n.min(SLOTS as u64) {
                s.current = (s.current + 1) % SLOTS;
                let c = s.current;
                s.balance[c] = 0;
            }
            let advance = self.slot_len.saturating_mul(n.min(u32::MAX as u64) as u32);
            s.started += advance;
        }
        s
    }

    /// Records one request (call it once per request, before or after its first attempt).
    pub fn deposit(&self) {
        let mut s = self.slots();
        let c = s.current;
        s.balance[c] = s.balance[c].saturating_add(self.deposit);
    }

    /// Takes one retry from the budget; `false` (and nothing taken) if it has none left.
    pub fn withdraw(&self) -> bool {
        let mut s = self.slots();
        let total: i64 = s.balance.iter().sum::<i64>() + self.reserve;
        if total < UNIT {
            return false;
        }
        let c = s.current;
        s.balance[c] -= UNIT;
        true
    }

    /// Whole retries available now.
    pub fn balance(&self) -> i64 {
        let s = self.slots();
        (s.balance.iter().sum::<i64>() + self.reserve).max(0) / UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(ratio: f64, requests: u32) -> u32 {
        let b = RetryBudget::new(Duration::from_secs(10), 0, ratio).unwrap();
        let mut n = 0;
        for _ in 0..requests {
            b.deposit();
            // Each failing request retries until the budget says no.
            while b.withdraw() {
                n += 1;
            }
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn ratios_are_exact() {
        for (ratio, want) in [
            (0.1, 10),
            (0.2, 20),
            (0.25, 25),
            (0.3, 30),
            (0.4, 40),
            (0.7, 70),
            (1.0, 100),
            (2.5, 250),
            (0.0, 0),
        ] {
            assert_eq!(retries(ratio, 100), want, "ratio {ratio}");
        }
        // 1/3 is not a finite decimal: never more than a third.
        assert_eq!(retries(1.0 / 3.0, 100), 33);
    }

    #[tokio::test(start_paused = true)]
    async fn f32_ratios_mean_their_decimal() {
        for (ratio, want) in [(0.3f32, 30), (0.7, 70), (0.4, 40), (0.15, 15)] {
            let b = RetryBudget::from_f32(Duration::from_secs(10), 0, ratio).unwrap();
            let mut n = 0;
            for _ in 0..100 {
                b.deposit();
                n += u32::from(b.withdraw());
            }
            assert_eq!(n, want, "ratio {ratio}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_without_requests_and_expires_with_the_ttl() {
        let b = RetryBudget::new(Duration::from_secs(2), 3, 0.0).unwrap();
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        assert_eq!(n, 6, "3 per second over a 2 s TTL");
        b.deposit();
        assert!(!b.withdraw());
        // Deposits leave the window after the TTL: the withdrawals too.
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert_eq!(b.balance(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn old_deposits_expire() {
        let b = RetryBudget::new(Duration::from_secs(1), 0, 1.0).unwrap();
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.balance(), 10);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.balance(), 10, "still inside the TTL");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(b.balance(), 0, "older than the TTL");
    }

    #[test]
    fn bad_settings_are_errors_not_panics() {
        let s = Duration::from_secs(1);
        for (ttl, ratio) in [
            (Duration::from_millis(999), 0.1),
            (Duration::from_secs(61), 0.1),
            (s, -0.1),
            (s, 1000.5),
            (s, f64::NAN),
            (s, f64::INFINITY),
        ] {
            let e = RetryBudget::new(ttl, 1, ratio).unwrap_err();
            assert!(e.to_string().contains("retry budget"), "{e}");
        }
        assert!(RetryBudget::from_f32(s, 1, f32::NAN).is_err());
    }
}
