//! The life of one supervised process as a pure state machine (no I/O, no clock of its own): the tokio driver
//! feeds it events with the time, and carries out the actions it returns. Tested exhaustively without processes.
//!
//! exited → (spawn) → running → (exit) → backoff → (timer) → running …; stop from any state → stopping → exited.
//! Restarts back off exponentially (capped at 30 s); a process that stayed up for a while starts again from the
//! shortest delay, so one crash after a long run is back within a fraction of a second.

use std::time::Duration;

/// Shortest restart delay: short enough that a killed instance is back well within 2 s.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long counts as healthy and resets the backoff.
pub const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// This many exits within `CRASH_WINDOW` is a crash loop (reported in status; restarts go on, backed off).
pub const CRASH_LOOP_EXITS: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(120);
/// How long a process gets after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Time as the driver measures it (monotonic, from any origin).
pub type Instant = Duration;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum State {
    /// Not running and not meant to be (before start, after stop).
    Exited,
    /// Waiting to restart after an exit.
    Backoff {
        #[serde(skip)]
        until: Instant,
    },
    Running {
        pid: u32,
        #[serde(skip)]
        since: Instant,
    },
    /// SIGTERM sent; SIGKILL at `deadline`.
    Stopping {
        pid: u32,
        #[serde(skip)]
        deadline: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Run the process (start of supervision).
    Start,
    /// The driver spawned it.
    Spawned { pid: u32 },
    /// The driver could not spawn it.
    SpawnFailed,
    /// The process exited (any reason).
    Exited,
    /// A timer the machine asked for fired (or any later tick).
    Tick,
    /// Stop for good (shutdown, or the instance is no longer wanted).
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Spawn,
    Terminate {
        pid: u32,
    },
    Kill {
        pid: u32,
    },
    /// Send a `Tick` at this time.
    WakeAt(Instant),
}

#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    /// Whether the process should be running (false once `Stop` arrived).
    wanted: bool,
    attempt: u32,
    restarts: u64,
    recent_exits: Vec<Instant>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine { state: State::Exited, wanted: false, attempt: 0, restarts: 0, recent_exits: Vec::new() }
    }
}

impl Machine {
    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn restarts(&self) -> u64 {
        self.restarts
    }
    pub fn is_crash_loop(&self) -> bool {
        self.recent_exits.len() >= CRASH_LOOP_EXITS
    }
    /// Done: stopped for good and the process is gone.
    pub fn is_finished(&self) -> bool {
        !self.wanted && self.state == State::Exited
    }

    fn backoff(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
    }

    fn note_exit(&mut self, now: Instant) {
        self.recent_exits.retain(|t| now.saturating_sub(*t) < CRASH_WINDOW);
        self.recent_exits.push(now);
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        use Action::*;
        match (&self.state, event) {
            (State::Exited, Event::Start) => {
                self.wanted = true;
                vec![Spawn]
            }
            (_, Event::Start) => {
                self.wanted = true;
                vec![]
            }
            (State::Exited | State::Backoff { .. }, Event::Spawned { pid }) => {
                if self.wanted {
                    self.state = State::Running { pid, since: now };
                    vec![]
                } else {
                    // Stop arrived while the spawn was in flight: take it down at once.
                    self.state = State::Stopping { pid, deadline: now + STOP_GRACE };
                    vec![Terminate { pid }, WakeAt(now + STOP_GRACE)]
                }
            }
            (State::Exited | State::Backoff { .. }, Event::SpawnFailed) => self.schedule_restart(now),
            (State::Running { since, .. }, Event::Exited) => {
                if now.saturating_sub(*since) >= HEALTHY_RUN {
                    self.attempt = 0;
                }
                self.note_exit(now);
                if self.wanted { self.schedule_restart(now) } else { self.exited() }
            }
            (State::Stopping { .. }, Event::Exited) => self.exited(),
            (State::Backoff { until }, Event::Tick) if now >= *until && self.wanted => {
                self.restarts += 1;
                vec![Spawn]
            }
            (State::Stopping { pid, deadline }, Event::Tick) if now >= *deadline => {
                let pid = *pid;
                // Keep waiting for the exit; SIGKILL cannot be ignored.
                self.state = State::Stopping { pid, deadline: now + STOP_GRACE };
                vec![Kill { pid }, WakeAt(now + STOP_GRACE)]
            }
            (State::Running { pid, .. }, Event::Stop) => {
                let pid = *pid;
                self.wanted = false;
                self.state = State::Stopping { pid, deadline: now + STOP_GRACE };
                vec![Terminate { pid }, WakeAt(now + STOP_GRACE)]
            }
            (State::Backoff { .. } | State::Exited, Event::Stop) => {
                self.wanted = false;
                self.state = State::Exited;
                vec![]
            }
            // Anything else (a stale tick, a duplicate stop) changes nothing.
            _ => vec![],
        }
    }

    fn schedule_restart(&mut self, now: Instant) -> Vec<Action> {
        let until = now + self.backoff();
        self.attempt = self.attempt.saturating_add(1);
        self.state = State::Backoff { until };
        vec![Action::WakeAt(until)]
    }

    fn exited(&mut self) -> Vec<Action> {
        self.state = State::Exited;
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Instant {
        Duration::from_secs_f64(secs)
    }

    fn running(m: &mut Machine, pid: u32, now: Instant) {
        assert_eq!(m.handle(Event::Start, now), vec![Action::Spawn]);
        assert_eq!(m.handle(Event::Spawned { pid }, now), vec![]);
    }

    #[test]
    fn restarts_with_exponential_backoff_capped_at_30s() {
        let mut m = Machine::default();
        running(&mut m, 1, s(0.0));
        let mut now = s(0.0);
        let mut delays = Vec::new();
        for pid in 2..12 {
            now += s(0.01);
            let actions = m.handle(Event::Exited, now);
            let [Action::WakeAt(at)] = actions[..] else { panic!("{actions:?}") };
            delays.push((at - now).as_secs_f64());
            assert_eq!(m.handle(Event::Tick, at - s(0.001)), vec![], "no early restart");
            assert_eq!(m.handle(Event::Tick, at), vec![Action::Spawn]);
            m.handle(Event::Spawned { pid }, at);
            now = at;
        }
        assert_eq!(&delays[..5], &[0.2, 0.4, 0.8, 1.6, 3.2]);
        assert!(delays.iter().all(|d| *d <= 30.0));
        assert_eq!(*delays.last().unwrap(), 30.0);
        assert!(m.is_crash_loop());
        assert_eq!(m.restarts(), 10);
    }

    #[test]
    fn a_crash_after_a_healthy_run_restarts_fast() {
        let mut m = Machine::default();
        running(&mut m, 1, s(0.0));
        for _ in 0..3 {
            m.handle(Event::Exited, s(1.0));
            m.handle(Event::Tick, s(100.0));
            m.handle(Event::Spawned { pid: 2 }, s(100.0));
        }
        let actions = m.handle(Event::Exited, s(500.0));
        assert_eq!(actions, vec![Action::WakeAt(s(500.2))]);
        assert!(!m.is_crash_loop());
    }

    #[test]
    fn stop_terms_then_kills_and_finishes_on_exit() {
        let mut m = Machine::default();
        running(&mut m, 7, s(0.0));
        let a = m.handle(Event::Stop, s(1.0));
        assert_eq!(a, vec![Action::Terminate { pid: 7 }, Action::WakeAt(s(4.0))]);
        assert_eq!(m.handle(Event::Tick, s(4.0)), vec![Action::Kill { pid: 7 }, Action::WakeAt(s(7.0))]);
        assert!(!m.is_finished());
        assert_eq!(m.handle(Event::Exited, s(4.1)), vec![]);
        assert!(m.is_finished());
        assert_eq!(m.handle(Event::Tick, s(30.0)), vec![], "no restart after stop");
    }

    #[test]
    fn stop_during_backoff_or_spawn_never_leaves_a_process() {
        let mut m = Machine::default();
        running(&mut m, 1, s(0.0));
        m.handle(Event::Exited, s(0.1));
        assert_eq!(m.handle(Event::Stop, s(0.15)), vec![]);
        assert!(m.is_finished());
        assert_eq!(m.handle(Event::Tick, s(5.0)), vec![]);

        let mut m = Machine::default();
        assert_eq!(m.handle(Event::Start, s(0.0)), vec![Action::Spawn]);
        m.handle(Event::Stop, s(0.0));
        let a = m.handle(Event::Spawned { pid: 9 }, s(0.01));
        assert_eq!(a[0], Action::Terminate { pid: 9 });
        m.handle(Event::Exited, s(0.02));
        assert!(m.is_finished());
    }

    #[test]
    fn spawn_failure_backs_off() {
        let mut m = Machine::default();
        m.handle(Event::Start, s(0.0));
        assert_eq!(m.handle(Event::SpawnFailed, s(0.0)), vec![Action::WakeAt(s(0.2))]);
        assert_eq!(m.handle(Event::Tick, s(0.2)), vec![Action::Spawn]);
    }
}
