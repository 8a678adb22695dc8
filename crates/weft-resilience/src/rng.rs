//! Injectable randomness for jitter and probabilistic rejection.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of uniform random numbers in `[0, 1)`. Pass a deterministic one in tests.
pub trait Random: Send + Sync {
    /// The next number in `[0, 1)`.
    fn next_f64(&self) -> f64;
}

/// A small, fast, lock-free xorshift generator (not cryptographic).
#[derive(Debug)]
pub struct XorShift(AtomicU64);

impl XorShift {
    /// A generator with a fixed seed (a zero seed is replaced by a constant).
    pub fn seeded(seed: u64) -> Self {
        XorShift(AtomicU64::new(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        }))
    }

    /// A generator seeded from the clock.
    pub fn from_time() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self::seeded(t)
    }
}

impl Default for XorShift {
    fn default() -> Self {
        Self::from_time()
    }
}

impl Random for XorShift {
    fn next_f64(&self) -> f64 {
        let mut x = self.0.load(Ordering::Relaxed);
        loop {
            let mut n = x;
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            match self
                .0
                .compare_exchange_weak(x, n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (n >> 11) as f64 / (1u64 << 53) as f64,
                Err(cur) => x = cur,
            }
        }
    }
}

impl<F: Fn() -> f64 + Send + Sync> Random for F {
    fn next_f64(&self) -> f64 {
        self()
    }
}
