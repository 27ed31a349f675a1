//! [`DecodeBudget`]: the bytes that image decodes in flight may hold together
//! (`limits.decode_budget_bytes`). Each decode reserves its cost, read from the image header
//! ([`asen_models::decode_cost`]), before any pixel is decoded, and gives it back when the
//! decoded image is dropped. When the budget is spent a decode waits up to
//! `limits.decode_wait_ms`, then fails with [`ServiceError::Busy`] (the API answers 503 with
//! `Retry-After`).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Result, ServiceError};

/// Bytes shared by concurrent decodes.
#[derive(Debug)]
pub struct DecodeBudget {
    total: u64,
    wait: Duration,
    used: Mutex<u64>,
    freed: Condvar,
}

/// A reservation from a [`DecodeBudget`], given back on drop.
#[derive(Debug)]
pub struct DecodePermit {
    budget: Arc<DecodeBudget>,
    bytes: u64,
}

impl DecodeBudget {
    /// A budget of `total` bytes; a decode waits at most `wait` for room.
    pub fn new(total: u64, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            total,
            wait,
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserve `bytes` (at most the whole budget), waiting up to the configured time for
    /// other decodes to finish; [`ServiceError::Busy`] when no room was made.
    pub fn acquire(self: &Arc<Self>, bytes: u64) -> Result<DecodePermit> {
        let bytes = bytes.min(self.total);
        let deadline = Instant::now() + self.wait;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used + bytes > self.total {
            let now = Instant::now();
            if now >= deadline {
                return Err(ServiceError::Busy {
                    what: format!(
                        "image decoding: {} of {} bytes of limits.decode_budget_bytes are in use, {bytes} more needed",
                        *used, self.total
                    ),
                    retry_after_s: 1,
                });
            }
            used = self
                .freed
                .wait_timeout(used, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += bytes;
        Ok(DecodePermit {
            budget: self.clone(),
            bytes,
        })
    }
}

impl Drop for DecodePermit {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(self.bytes);
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_is_busy_after_the_wait() {
        let budget = DecodeBudget::new(100, Duration::from_millis(20));
        let _held = budget.acquire(80).unwrap();
        let started = Instant::now();
        let err = budget.acquire(30).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(matches!(err, ServiceError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("80 of 100"), "{err}");
    }

    #[test]
    fn dropping_a_permit_gives_its_bytes_back() {
        let budget = DecodeBudget::new(100, Duration::ZERO);
        let held = budget.acquire(80).unwrap();
        assert_eq!(budget.in_use(), 80);
        drop(held);
        assert_eq!(budget.in_use(), 0);
        budget.acquire(100).unwrap();
    }

    #[test]
    fn a_waiting_decode_gets_room_freed_by_another() {
        let budget = DecodeBudget::new(100, Duration::from_secs(10));
        let held = budget.acquire(100).unwrap();
        let b = budget.clone();
        let waiter = std::thread::spawn(move || b.acquire(50).map(|p| p.bytes));
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert_eq!(waiter.join().unwrap().unwrap(), 50);
    }
}
