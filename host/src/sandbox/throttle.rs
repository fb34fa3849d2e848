//! Rate limits out: what one plugin instance may send to the systems it calls (a
//! cloud ERP's API limits), shared by all its versions, whatever the plugin does.
//!
//! - `[plugins.<name>] outbound = { per_second, burst, concurrency }`: a request waits
//!   for a token of the instance's bucket and a free slot before it is sent;
//! - a `429` or `503` with `Retry-After` (seconds or an HTTP date) **pauses the
//!   instance** until then: no request of it leaves the host before (each one is
//!   refused at once), its workers lease nothing, the message that got the answer
//!   retries after the pause and keeps its place (its business key waits behind
//!   it). A circuit, not a retry per message: every message of the flow would
//!   otherwise keep hitting the limited API.

use crate::config::Outbound;
use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The longest pause a `Retry-After` may impose (a misbehaving server must not stop a
/// flow for a day).
pub const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

/// Why an instance sends nothing until when.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Pause {
    /// Until when (ms since the Unix epoch).
    pub until_ms: u64,
    /// What asked for it, e.g. `HTTP 429 from https://erp.example.com:443`.
    pub reason: String,
}

/// One instance's gate.
#[derive(Debug, Default)]
pub struct Throttle {
    settings: Mutex<Outbound>,
    bucket: Mutex<Option<Arc<Bucket>>>,
    slots: Mutex<Option<Arc<Semaphore>>>,
    pause: Mutex<Option<Pause>>,
}

/// What a request holds while it is in flight (its concurrency slot).
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code, reason = "held, not read")] Option<OwnedSemaphorePermit>);

impl Throttle {
    /// Apply the instance's `outbound` settings (a change starts a fresh bucket).
    pub fn configure(&self, outbound: Outbound) {
        let mut settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
        if *settings == outbound && (outbound.per_second.is_none() || self.bucket().is_some()) {
            return;
        }
        *settings = outbound;
        *self.bucket.lock().unwrap_or_else(PoisonError::into_inner) =
            outbound.per_second.map(|rate| {
                let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
                let burst = outbound.burst.and_then(NonZeroU32::new).unwrap_or(rate);
                Arc::new(RateLimiter::direct(
                    Quota::per_second(rate).allow_burst(burst),
                ))
            });
        *self.slots.lock().unwrap_or_else(PoisonError::into_inner) = outbound
            .concurrency
            .map(|n| Arc::new(Semaphore::new(n.max(1))));
    }

    fn bucket(&self) -> Option<Arc<Bucket>> {
        self.bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wait for a token and a slot; refused at once (with the pause) while paused.
    pub async fn admit(&self) -> Result<Admitted, Pause> {
        if let Some(pause) = self.paused() {
            return Err(pause);
        }
        if let Some(bucket) = self.bucket() {
            bucket.until_ready().await;
        }
        let slots = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let permit = match slots {
            Some(slots) => slots.acquire_owned().await.ok(),
            None => None,
        };
        // A pause that began while this one waited holds it too.
        match self.paused() {
            Some(pause) => Err(pause),
            None => Ok(Admitted(permit)),
        }
    }

    /// Send nothing for `wait` (at most [`MAX_PAUSE`]), because of `reason`; a pause
    /// already longer stays.
    pub fn pause(&self, wait: Duration, reason: String) {
        let until_ms = crate::model::now_ms() + wait.min(MAX_PAUSE).as_millis() as u64;
        let mut pause = self.pause.lock().unwrap_or_else(PoisonError::into_inner);
        if pause.as_ref().is_none_or(|p| p.until_ms < until_ms) {
            tracing::warn!(until_ms, %reason, "outbound requests paused");
            *pause = Some(Pause { until_ms, reason });
        }
    }

    /// The pause in force, if any.
    pub fn paused(&self) -> Option<Pause> {
        let mut pause = self.pause.lock().unwrap_or_else(PoisonError::into_inner);
        if pause
            .as_ref()
            .is_some_and(|p| p.until_ms <= crate::model::now_ms())
        {
            *pause = None;
        }
        pause.clone()
    }

    /// How long the pause in force has to run.
    pub fn remaining(&self) -> Duration {
        self.paused().map_or(Duration::ZERO, |p| {
            Duration::from_millis(p.until_ms.saturating_sub(crate::model::now_ms()))
        })
    }
}

/// The gates of every instance of an engine, by instance name.
#[derive(Debug, Default)]
pub struct Throttles(Mutex<HashMap<String, Arc<Throttle>>>);

impl Throttles {
    /// The gate of instance `name`, with `outbound` applied.
    pub fn of(&self, name: &str, outbound: Outbound) -> Arc<Throttle> {
        let throttle = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone();
        throttle.configure(outbound);
        throttle
    }
}

/// How long a `Retry-After` value asks to wait: delay-seconds or an HTTP date.
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let wait = retry_after(&soon).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[tokio::test]
    async fn a_pause_refuses_at_once_and_lapses() {
        let throttle = Throttle::default();
        assert!(throttle.admit().await.is_ok());
        throttle.pause(Duration::from_millis(150), "HTTP 429".into());
        let refused = throttle.admit().await.unwrap_err();
        assert_eq!(refused.reason, "HTTP 429");
        assert!(throttle.remaining() > Duration::from_millis(50));
        // A shorter pause does not cut a longer one.
        throttle.pause(Duration::from_millis(1), "later".into());
        assert_eq!(throttle.paused().unwrap().reason, "HTTP 429");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(throttle.paused().is_none());
        assert!(throttle.admit().await.is_ok());
    }

    #[tokio::test]
    async fn the_rate_and_the_slots_hold_requests_back() {
        let throttle = Throttle::default();
        throttle.configure(Outbound {
            per_second: Some(20),
            burst: Some(1),
            concurrency: Some(1),
        });
        let started = std::time::Instant::now();
        for _ in 0..5 {
            drop(throttle.admit().await.unwrap());
        }
        // One token at once, twenty a second: the fifth waits ~200 ms.
        assert!(started.elapsed() >= Duration::from_millis(150));
        let held = throttle.admit().await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(100), throttle.admit()).await;
        assert!(second.is_err(), "the one slot is held");
        drop(held);
        assert!(throttle.admit().await.is_ok());
    }
}
