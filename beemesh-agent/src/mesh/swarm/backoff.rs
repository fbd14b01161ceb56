//! Exponential back-off for redialing bootstrap and remembered peers (sans-IO: time passed in).

use std::time::{Duration, Instant};

/// When the next attempt may start; doubles after each failure up to `cap`.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    delay: Duration,
    next: Option<Instant>,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap: cap.max(base), delay: base, next: None }
    }

    /// Whether an attempt may start at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// An attempt failed at `now`: the next waits the current delay, which then doubles.
    /// Returns that wait.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.delay;
        self.next = Some(now + wait);
        self.delay = (self.delay * 2).min(self.cap);
        wait
    }

    /// An attempt is under way from `now`: no other starts before `timeout` passes.
    pub fn started(&mut self, now: Instant, timeout: Duration) {
        self.next = Some(now + timeout);
    }

    /// Success: the next failure waits the base delay again, and an attempt may start at once.
    pub fn reset(&mut self) {
        self.delay = self.base;
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        assert!(b.ready(t0));
        let waits: Vec<u128> = (0..5).map(|_| b.failed(t0).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
        assert!(!b.ready(t0 + Duration::from_millis(499)));
        assert!(b.ready(t0 + Duration::from_millis(500)));
        b.reset();
        assert!(b.ready(t0));
        assert_eq!(b.failed(t0), Duration::from_millis(100));
    }

    #[test]
    fn an_attempt_under_way_holds_off_others() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        b.started(t0, Duration::from_secs(5));
        assert!(!b.ready(t0 + Duration::from_secs(4)));
        assert!(b.ready(t0 + Duration::from_secs(5)));
    }
}
