//! What live traffic shows about an instance: whether requests are waiting while it answers
//! nothing. A hung event loop answers nothing at all, so requests that wait longer than the
//! probe time-out with no answer of any kind (to other requests or to probes) since they were
//! sent are evidence of a hang, as a probe time-out is (`control/health/probe.rs`).
//!
//! The request path pays two relaxed loads and a clock reading per request, and a store at
//! most once per millisecond and direction: times are kept in whole milliseconds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

pub struct Activity {
    base: Instant,
    /// When the oldest request sent after the last answer was sent (ms since `base`, +1).
    waiting_since: AtomicU64,
    /// When the instance last answered anything (ms since `base`, +1; 0: never).
    answered_at: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { base: Instant::now(), waiting_since: AtomicU64::new(0), answered_at: AtomicU64::new(0) }
    }
}

impl Activity {
    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// A request is being sent to the instance.
    pub fn sent(&self) {
        let since = self.waiting_since.load(Relaxed);
        if since <= self.answered_at.load(Relaxed) {
            // The last waiting request was answered: this one is now the oldest unanswered.
            let now = self.now();
            if since != now {
                self.waiting_since.store(now, Relaxed);
            }
        }
    }

    /// The instance answered something (a response head, a probe).
    pub fn answered(&self) {
        let now = self.now();
        if self.answered_at.load(Relaxed) != now {
            self.answered_at.store(now, Relaxed);
        }
    }

    /// How long requests have waited with nothing answered since, and which wait this is (its
    /// start: the same value for as long as that wait lasts). None while nothing waits.
    pub fn unanswered(&self) -> Option<(u64, Duration)> {
        silent(self.waiting_since.load(Relaxed), self.answered_at.load(Relaxed), self.now())
    }
}

/// The decision, on the three readings: waiting since `since` (0: never), last answer at
/// `answered`, now `now`.
fn silent(since: u64, answered: u64, now: u64) -> Option<(u64, Duration)> {
    (since > answered).then(|| (since, Duration::from_millis(now.saturating_sub(since))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_counted_from_the_first_request_after_the_last_answer() {
        let ms = Duration::from_millis;
        assert_eq!(silent(0, 0, 500), None, "nothing ever sent");
        assert_eq!(silent(100, 100, 500), None, "answered in the same millisecond");
        assert_eq!(silent(100, 250, 500), None, "answered since");
        assert_eq!(silent(100, 50, 500), Some((100, ms(400))));
        assert_eq!(silent(100, 0, 100), Some((100, ms(0))));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_waiting_with_no_answer_make_a_silence_that_any_answer_ends() {
        let a = Activity::default();
        assert_eq!(a.unanswered(), None);
        a.sent();
        tokio::time::advance(Duration::from_millis(30)).await;
        a.sent(); // a later request does not move the start of the wait
        tokio::time::advance(Duration::from_millis(370)).await;
        let (wait, long) = a.unanswered().expect("waiting");
        assert_eq!(long, Duration::from_millis(400));
        a.answered();
        assert_eq!(a.unanswered(), None, "an answer ends the wait");
        tokio::time::advance(Duration::from_millis(5)).await;
        a.sent();
        tokio::time::advance(Duration::from_millis(5)).await;
        let (next, long) = a.unanswered().expect("a new wait");
        assert!(next != wait);
        assert_eq!(long, Duration::from_millis(5));
    }
}
