//! Per-peer gossip and request rate limits: token buckets for messages and bytes (sans-IO: time passed in).

use std::time::Instant;

/// A token bucket: `burst` tokens at most, refilled at `per_sec`.
#[derive(Clone, Debug)]
struct Bucket {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(burst: f64, per_sec: f64, now: Instant) -> Self {
        Self { burst, per_sec, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        self.last = now;
    }
}

/// Limits of one peer's gossip: messages per second and bytes per second, each with a burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    pub messages_per_sec: f64,
    pub message_burst: f64,
    pub bytes_per_sec: f64,
    pub byte_burst: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            messages_per_sec: 200.0,
            message_burst: 1000.0,
            bytes_per_sec: 8.0 * 1024.0 * 1024.0,
            byte_burst: 32.0 * 1024.0 * 1024.0,
        }
    }
}

impl RateLimits {
    /// Defaults for one peer's application requests: the cluster state's anti-entropy sends
    /// a few per second per peer, a catch-up a burst of them.
    pub fn requests() -> Self {
        Self {
            messages_per_sec: 100.0,
            message_burst: 500.0,
            bytes_per_sec: 16.0 * 1024.0 * 1024.0,
            byte_burst: 64.0 * 1024.0 * 1024.0,
        }
    }
}

/// One peer's buckets.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    messages: Bucket,
    bytes: Bucket,
}

impl RateLimiter {
    pub fn new(limits: RateLimits, now: Instant) -> Self {
        Self {
            messages: Bucket::new(limits.message_burst, limits.messages_per_sec, now),
            bytes: Bucket::new(limits.byte_burst, limits.bytes_per_sec, now),
        }
    }

    /// Whether a message of `len` bytes at `now` is within the limits; takes its tokens if so.
    pub fn allow(&mut self, len: usize, now: Instant) -> bool {
        self.messages.refill(now);
        self.bytes.refill(now);
        let len = len as f64;
        if self.messages.tokens < 1.0 || self.bytes.tokens < len {
            return false;
        }
        self.messages.tokens -= 1.0;
        self.bytes.tokens -= len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> RateLimits {
        RateLimits { messages_per_sec: 10.0, message_burst: 5.0, bytes_per_sec: 1000.0, byte_burst: 2000.0 }
    }

    #[test]
    fn burst_then_refill_by_messages() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(limits(), t0);
        assert_eq!((0..8).filter(|_| r.allow(1, t0)).count(), 5);
        assert!(!r.allow(1, t0 + Duration::from_millis(50)));
        assert!(r.allow(1, t0 + Duration::from_millis(100)), "one token after 100 ms");
        assert!(!r.allow(1, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn bytes_are_limited_too() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(limits(), t0);
        assert!(r.allow(1500, t0));
        assert!(!r.allow(600, t0), "only 500 bytes left");
        assert!(r.allow(500, t0));
        assert!(r.allow(1000, t0 + Duration::from_secs(1)));
        assert!(!r.allow(2001, t0 + Duration::from_secs(60)), "larger than the burst");
    }
}
