//! Group commit: callers leave a job in a queue and wait for its outcome; one task runs every job waiting at that
//! moment with one call of the given write (one store transaction), then again while more arrived meanwhile. Under
//! a burst, dozens of requests share one transaction (one write lock taken, one commit, one wake-up of the writer
//! per group instead of per request); a lone job is written at once, alone. The gate groups its pairing writes
//! this way and the signer its audit rows.
//!
//! The task is spawned by the caller that found nobody writing, so a caller dropped mid-way (its client went away)
//! never strands the queue, and a job already queued is still written.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A queue of jobs `J` whose outcomes are `R`. Cheap to clone (one shared queue).
pub struct GroupCommit<J, R> {
    queue: Arc<Mutex<Queue<J, R>>>,
    max_group: usize,
}

impl<J, R> Clone for GroupCommit<J, R> {
    fn clone(&self) -> Self {
        GroupCommit { queue: self.queue.clone(), max_group: self.max_group }
    }
}

struct Queue<J, R> {
    waiting: Vec<(J, oneshot::Sender<R>)>,
    running: bool,
}

impl<J: Send + 'static, R: Send + 'static> GroupCommit<J, R> {
    /// At most `max_group` jobs share one write (a bound on how long one group holds the store's write lock).
    pub fn new(max_group: usize) -> Self {
        GroupCommit {
            queue: Arc::new(Mutex::new(Queue { waiting: Vec::new(), running: false })),
            max_group: max_group.max(1),
        }
    }

    /// Runs `job` with whatever else is waiting and returns its outcome. `write` takes a group of jobs and returns
    /// one outcome per job, in order; the caller that starts the writing task gives it its `write` (every caller
    /// of one queue passes an equivalent one). `None` when the writing task died (it panicked) before answering.
    pub async fn submit<F, Fut>(&self, job: J, write: F) -> Option<R>
    where
        F: Fn(Vec<J>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.waiting.push((job, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.drain(write).await });
        }
        rx.await.ok()
    }

    /// Writes groups until the queue is empty.
    async fn drain<F, Fut>(self, write: F)
    where
        F: Fn(Vec<J>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        // If `write` panics, the jobs waiting are answered `None` and the next caller starts a new task.
        struct Unwind<'a, J, R>(&'a Mutex<Queue<J, R>>);
        impl<J, R> Drop for Unwind<'_, J, R> {
            fn drop(&mut self) {
                let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
                q.waiting.clear();
                q.running = false;
            }
        }
        let unwind = Unwind(&self.queue);
        loop {
            let group: Vec<(J, oneshot::Sender<R>)> = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.waiting.is_empty() {
                    // Under the lock: a caller arriving after this starts a new task.
                    q.running = false;
                    drop(q);
                    std::mem::forget(unwind);
                    return;
                }
                let n = q.waiting.len().min(self.max_group);
                q.waiting.drain(..n).collect()
            };
            let (jobs, answers): (Vec<J>, Vec<_>) = group.into_iter().unzip();
            for (answer, outcome) in answers.into_iter().zip(write(jobs).await) {
                let _ = answer.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_share_groups_and_each_gets_its_own_outcome() {
        let q: GroupCommit<u32, u32> = GroupCommit::new(16);
        let groups = Arc::new(Mutex::new(Vec::<usize>::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let (q, groups) = (q.clone(), groups.clone());
            tasks.spawn(async move {
                let out = q
                    .submit(i, move |jobs: Vec<u32>| {
                        let groups = groups.clone();
                        async move {
                            groups.lock().unwrap().push(jobs.len());
                            // A write takes a while: callers arriving meanwhile form the next group.
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                            jobs.into_iter().map(|j| j * 10).collect()
                        }
                    })
                    .await;
                assert_eq!(out, Some(i * 10), "each job gets its own outcome");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let groups = groups.lock().unwrap().clone();
        assert_eq!(groups.iter().sum::<usize>(), 200, "every job written once");
        assert!(groups.iter().all(|&n| n <= 16), "no group above its bound: {groups:?}");
        assert!(groups.len() < 200, "concurrent jobs shared groups: {groups:?}");
        assert!(!q.queue.lock().unwrap().running, "the task ended with the queue empty");
    }

    #[tokio::test]
    async fn a_write_that_panics_answers_none_and_the_next_job_is_written() {
        let q: GroupCommit<u32, u32> = GroupCommit::new(4);
        let out = q.submit(1, |_jobs: Vec<u32>| async move { panic!("a write failed badly") }).await;
        assert_eq!(out, None);
        let out = q.submit(2, |jobs: Vec<u32>| async move { jobs }).await;
        assert_eq!(out, Some(2), "a new task writes after a dead one");
    }
}
