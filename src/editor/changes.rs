//! The change lock: deploys, other editor writes, resyncs and promotions never interleave.
//!
//! An editor write or a resync holds the lock for its whole fan-out. A promotion must not wait
//! on a slow or hung instance's deploy, so it first *fences* the holder (cancels the token the
//! holder registered: its outstanding calls are abandoned and their instances marked out of
//! step) and then takes the lock. The lock outlives configuration reloads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Changes {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// The current holder's fence.
    fence: Mutex<CancellationToken>,
}

/// Holding the change lock; `fence` is cancelled when a promotion needs the lock.
pub struct ChangeGuard {
    _lock: OwnedMutexGuard<()>,
    pub fence: CancellationToken,
}

impl Changes {
    /// Takes the lock within `wait`, registering a fence for this holder.
    pub async fn lock(&self, wait: Duration) -> Option<ChangeGuard> {
        let lock = tokio::time::timeout(wait, self.lock.clone().lock_owned()).await.ok()?;
        let fence = CancellationToken::new();
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = fence.clone();
        Some(ChangeGuard { _lock: lock, fence })
    }

    /// For a promotion: fences the current holder, then takes the lock within `wait`.
    pub async fn take_over(&self, wait: Duration) -> Option<OwnedMutexGuard<()>> {
        self.fence.lock().unwrap_or_else(|e| e.into_inner()).cancel();
        tokio::time::timeout(wait, self.lock.clone().lock_owned()).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_take_over_fences_the_holder_and_waits_for_it() {
        let c = Arc::new(Changes::default());
        let held = c.lock(Duration::from_secs(1)).await.expect("free");
        assert!(c.lock(Duration::from_millis(10)).await.is_none(), "held");
        let taking = tokio::spawn({
            let c = c.clone();
            async move { c.take_over(Duration::from_secs(5)).await.is_some() }
        });
        held.fence.cancelled().await;
        drop(held);
        assert!(taking.await.unwrap());
    }
}
