//! Polling waits with a deadline. The e2e tests never sleep a fixed time to "let things settle": they poll the
//! condition they need, quickly (every 25 ms), and fail loudly, naming what they waited for, after a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between polls: short enough to keep tests fast, long enough not to spin on 2 cores.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `poll` until it returns true; returns how long that took. Panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut poll: impl FnMut() -> bool) -> Duration {
    wait_for(what, timeout, || poll().then_some(())).1
}

/// Polls `poll` until it returns `Some(value)`; returns the value and how long it took. Panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut poll: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(value) = poll() {
            return (value, start.elapsed());
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Async [`wait_until`]: `poll` returns a future; sleeps with tokio between polls.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut poll: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_async(what, timeout, || {
        let fut = poll();
        async move { fut.await.then_some(()) }
    })
    .await
    .1
}

/// Async [`wait_for`].
pub async fn wait_for_async<T, F, Fut>(what: &str, timeout: Duration, mut poll: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = poll().await {
            return (value, start.elapsed());
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
