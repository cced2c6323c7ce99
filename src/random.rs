//! A tiny seeded random source (xorshift64), so that fault injection and backoff jitter
//! are repeatable from a seed. Not for anything that needs real randomness.

use std::sync::{Mutex, PoisonError};

/// A seeded generator shared between threads.
#[derive(Debug)]
pub(crate) struct SeededRng(Mutex<u64>);

impl SeededRng {
    /// A generator from `seed` (any value; zero is mapped to a non-zero state).
    pub(crate) fn new(seed: u64) -> Self {
        Self(Mutex::new(seed | 1))
    }

    /// A uniform number in `[0, 1)`.
    pub(crate) fn unit(&self) -> f64 {
        let mut x = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 11) as f64 / (1u64 << 53) as f64
    }
}
