//! Rate limits in: a token bucket per API key (`[server.limits] per_key`, on both
//! listeners) and one per source (`[plugins.<source>] rate_limit`), each checked
//! before any work is done. Over a limit: `429` with `Retry-After` and the
//! `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers),
//! and one noisy key never spends another's tokens.
//!
//! The buckets are GCRA ([`governor`]); a bucket whose rate the config changes starts
//! afresh with the new one.

use super::problem::Problem;
use crate::config::Rate;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use hyper::StatusCode;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;
type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Every bucket of the listeners.
#[derive(Debug, Default)]
pub(super) struct RateLimits {
    per_key: Mutex<Option<(Rate, Arc<Keyed>)>>,
    per_source: Mutex<HashMap<String, (Rate, Arc<Direct>)>>,
}

fn quota(rate: Rate) -> Quota {
    let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst()).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

impl RateLimits {
    /// Take a token of API key `key` under `rate` (none: no limit).
    pub(super) fn key(&self, rate: Option<Rate>, key: &str) -> Result<(), Problem> {
        let Some(rate) = rate else {
            return Ok(());
        };
        let limiter = {
            let mut slot = self.per_key.lock().unwrap_or_else(PoisonError::into_inner);
            match &*slot {
                Some((current, limiter)) if *current == rate => limiter.clone(),
                _ => {
                    let limiter = Arc::new(RateLimiter::keyed(quota(rate)).with_middleware());
                    *slot = Some((rate, limiter.clone()));
                    limiter
                }
            }
        };
        let clock = DefaultClock::default();
        limiter
            .check_key(&key.to_owned())
            .map(drop)
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(clock.now());
                over("key", &format!("API key `{key}`"), rate, wait)
            })
    }

    /// Take a token of source `source` under `rate` (none: no limit).
    pub(super) fn source(&self, rate: Option<Rate>, source: &str) -> Result<(), Problem> {
        self.bucket(rate, source, "source", &format!("source `{source}`"))
    }

    /// Take a token of API route `name` under `rate` (none: no limit).
    pub(super) fn api(&self, rate: Option<Rate>, name: &str) -> Result<(), Problem> {
        self.bucket(
            rate,
            &format!("api:{name}"),
            "api",
            &format!("API `{name}`"),
        )
    }

    /// Take a token of the bucket `bucket` under `rate`; `who` names it in the 429.
    fn bucket(
        &self,
        rate: Option<Rate>,
        bucket: &str,
        policy: &str,
        who: &str,
    ) -> Result<(), Problem> {
        let Some(rate) = rate else {
            return Ok(());
        };
        let limiter = {
            let mut all = self
                .per_source
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match all.get(bucket) {
                Some((current, limiter)) if *current == rate => limiter.clone(),
                _ => {
                    let limiter = Arc::new(RateLimiter::direct(quota(rate)).with_middleware());
                    all.insert(bucket.to_owned(), (rate, limiter.clone()));
                    limiter
                }
            }
        };
        let clock = DefaultClock::default();
        limiter.check().map(drop).map_err(|not_until| {
            let wait = not_until.wait_time_from(clock.now());
            over(policy, who, rate, wait)
        })
    }
}

/// The `429` of a bucket out of tokens for `wait`.
fn over(policy: &str, who: &str, rate: Rate, wait: std::time::Duration) -> Problem {
    // Whole seconds, rounded up: a client that waits that long gets a token.
    let seconds = wait.as_millis().div_ceil(1000).max(1) as u64;
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!(
            "{who} is over its limit of {} requests a second (bursts of {}): retry in {seconds} s",
            rate.per_second,
            rate.burst()
        ),
    )
    .retry_after(seconds)
    .header(
        "ratelimit-policy",
        format!(
            "\"{policy}\";q={};w={}",
            rate.burst(),
            rate.burst().div_ceil(rate.per_second.max(1))
        ),
    )
    .header("ratelimit", format!("\"{policy}\";r=0;t={seconds}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_per_key_and_says_when_to_come_back() {
        let limits = RateLimits::default();
        let rate = Some(Rate {
            per_second: 1,
            burst: Some(3),
        });
        for _ in 0..3 {
            assert!(limits.key(rate, "k_noisy").is_ok());
        }
        let refused = limits.key(rate, "k_noisy").unwrap_err();
        assert_eq!(refused.status(), 429);
        let reply = refused.reply();
        assert_eq!(reply.headers()["retry-after"], "1");
        assert_eq!(reply.headers()["ratelimit-policy"], "\"key\";q=3;w=3");
        assert_eq!(reply.headers()["ratelimit"], "\"key\";r=0;t=1");
        // Another key has its own bucket.
        assert!(limits.key(rate, "k_quiet").is_ok());
        // No limit configured: never refused.
        for _ in 0..100 {
            assert!(limits.key(None, "k_noisy").is_ok());
        }
    }

    #[test]
    fn a_source_has_one_bucket_and_a_new_rate_starts_afresh() {
        let limits = RateLimits::default();
        let one = Some(Rate {
            per_second: 1,
            burst: None,
        });
        assert!(limits.source(one, "stripe").is_ok());
        assert_eq!(limits.source(one, "stripe").unwrap_err().status(), 429);
        assert!(limits.source(one, "zuora").is_ok());
        let more = Some(Rate {
            per_second: 5,
            burst: None,
        });
        assert!(limits.source(more, "stripe").is_ok());
    }
}
