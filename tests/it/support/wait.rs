//! Polling waits with a deadline. Tests never sleep a fixed time to "let something happen": they poll the condition
//! they need, briefly (1 ms doubling to 25 ms between polls, never past the deadline), and fail naming what they
//! waited for when the deadline passes.

use std::time::{Duration, Instant};

/// Longest pause between two polls: short enough to keep tests fast, long enough not to spin on 2 cores.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Pauses of 1, 2, 4, … ms up to [`MAX_POLL_INTERVAL`], cut short at `deadline`; `None` once it has passed.
struct Pauses {
    deadline: Instant,
    next: Duration,
}

impl Pauses {
    fn new(deadline: Instant) -> Pauses {
        Pauses { deadline, next: Duration::from_millis(1) }
    }

    fn next(&mut self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
        let pause = self.next.min(left);
        self.next = (self.next * 2).min(MAX_POLL_INTERVAL);
        Some(pause)
    }
}

/// Polls `cond` until it holds (true) or `deadline` passes (false). Also a precise "until X happens or that moment
/// comes, whichever is first": it never sleeps past the deadline.
pub fn poll_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    let mut pauses = Pauses::new(deadline);
    loop {
        if cond() {
            return true;
        }
        match pauses.next() {
            Some(pause) => std::thread::sleep(pause),
            None => return false,
        }
    }
}

/// Async [`poll_until`], sleeping with tokio between polls (a blocking sleep would stall the test's runtime).
pub async fn poll_until_async(deadline: Instant, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let mut pauses = Pauses::new(deadline);
    loop {
        if cond().await {
            return true;
        }
        match pauses.next() {
            Some(pause) => tokio::time::sleep(pause).await,
            None => return false,
        }
    }
}

/// Polls `cond` until it holds; panics, naming `what`, when `deadline` passes first.
pub async fn wait_until_async(what: &str, deadline: Instant, cond: impl AsyncFnMut() -> bool) {
    assert!(poll_until_async(deadline, cond).await, "timed out waiting until {what}");
}
