//! Who may call what: the request's API key ([`crate::auth`]) against the route's
//! scope, and every admin action and refusal in the audit log. Requests refused
//! without a valid key are recorded at most [`ANONYMOUS_PER_MINUTE`] in any minute
//! (the rest counted): anyone who reaches a port must not be able to fill the audit
//! log.

use super::State;
use super::problem::Problem;
use crate::auth::{ApiKey, Scope};
use crate::store::audit::{AuditRecord, Decision};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, PoisonError};

pub(super) fn json_body(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    let declared_empty = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0");
    let no_body = declared_empty
        || (!headers.contains_key(CONTENT_LENGTH)
            && !headers.contains_key(hyper::header::TRANSFER_ENCODING));
    match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json")
        }
        None => no_body,
    }
}

/// Why a request was refused before it reached its route.
#[derive(Debug)]
pub(super) enum Refused {
    /// No `Authorization: Bearer` header.
    NoKey,
    /// A token that is not a live key's.
    UnknownKey,
    /// A live key without the route's scope.
    Scope {
        key: String,
        name: String,
        wanted: Scope,
    },
}

impl From<Refused> for Problem {
    /// The 401 or 403 to answer.
    fn from(refused: Refused) -> Problem {
        match refused {
            Refused::NoKey => Problem::unauthorized(
                "this endpoint needs an API key: `Authorization: Bearer <token>`",
            ),
            Refused::UnknownKey => Problem::unauthorized("the API key is unknown or revoked"),
            Refused::Scope { key, name, wanted } => Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!("key `{key}` ({name}) does not hold scope `{wanted}`"),
            ),
        }
    }
}

/// The live key a request's bearer token belongs to; a refusal is audited.
pub(super) fn authenticate(state: &State, req: &Request<Incoming>) -> Result<ApiKey, Refused> {
    let target = format!("{} {}", req.method(), req.uri().path());
    let Some(token) = crate::auth::bearer(req.headers()) else {
        audit_api(
            state,
            None,
            &target,
            Decision::Deny,
            Some("no API key".into()),
        );
        return Err(Refused::NoKey);
    };
    state.keys.verify(token).ok_or_else(|| {
        let reason = "unknown or revoked API key".to_owned();
        audit_api(state, None, &target, Decision::Deny, Some(reason));
        Refused::UnknownKey
    })
}

/// The request's key, if it holds `wanted`; a refusal is audited.
pub(super) fn authorize(
    state: &State,
    req: &Request<Incoming>,
    wanted: &Scope,
) -> Result<ApiKey, Refused> {
    let key = authenticate(state, req)?;
    if key.allows(wanted) {
        return Ok(key);
    }
    let target = format!("{} {}", req.method(), req.uri().path());
    let reason = format!("the key lacks scope `{wanted}`");
    audit_api(state, Some(&key.id), &target, Decision::Deny, Some(reason));
    Err(Refused::Scope {
        key: key.id,
        name: key.name,
        wanted: wanted.clone(),
    })
}

/// Headers that carry credentials for Tenon itself, never passed to a source plugin.
pub(super) const CREDENTIAL_HEADERS: [hyper::header::HeaderName; 3] = [
    hyper::header::AUTHORIZATION,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::COOKIE,
];

/// Requests refused without a valid key, recorded one by one up to
/// [`ANONYMOUS_PER_MINUTE`] in any minute; the rest are counted in one record: anyone
/// who reaches a port must not be able to fill the audit log.
static ANONYMOUS: RefusalGate = RefusalGate {
    recorded: Mutex::new(VecDeque::new()),
    dropped: AtomicU64::new(0),
};

/// Anonymous refusals recorded one by one in any minute.
const ANONYMOUS_PER_MINUTE: usize = 60;

struct RefusalGate {
    /// When the refusals recorded in the last minute were (ms since the Unix epoch),
    /// oldest first: a sliding minute, so a burst across a clock minute's turn is
    /// held to the same count.
    recorded: Mutex<VecDeque<u64>>,
    /// Refusals not recorded since the last one that was.
    dropped: AtomicU64,
}

impl RefusalGate {
    /// Whether to record this refusal; with, when refusals went unrecorded before it,
    /// how many.
    fn admit(&self) -> (bool, u64) {
        self.admit_at(crate::model::now_ms())
    }

    /// [`RefusalGate::admit`] at `now` (ms since the Unix epoch).
    fn admit_at(&self, now: u64) -> (bool, u64) {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        while recorded
            .front()
            .is_some_and(|&at| now.saturating_sub(at) >= 60_000)
        {
            recorded.pop_front();
        }
        if recorded.len() < ANONYMOUS_PER_MINUTE {
            recorded.push_back(now);
            (true, self.dropped.swap(0, Relaxed))
        } else {
            self.dropped.fetch_add(1, Relaxed);
            (false, 0)
        }
    }
}

/// Record an API action or refusal in the audit log.
pub(super) fn audit_api(
    state: &State,
    key: Option<&str>,
    target: &str,
    decision: Decision,
    reason: Option<String>,
) {
    let capability = match decision {
        Decision::Allow => "admin",
        Decision::Deny => "auth",
    };
    if key.is_none() && decision == Decision::Deny {
        let (admit, dropped) = ANONYMOUS.admit();
        if dropped > 0 {
            state.runtime.node().audit().record(AuditRecord {
                seq: 0,
                at_ms: crate::model::now_ms(),
                plugin: String::new(),
                digest: String::new(),
                key: None,
                capability: "auth".into(),
                target: "requests without a valid key".into(),
                decision,
                reason: Some(format!(
                    "{dropped} more refused before this one, not recorded one by one"
                )),
            });
        }
        if !admit {
            tracing::debug!(target, "request without a valid key refused");
            return;
        }
    }
    state.runtime.node().audit().record(AuditRecord {
        seq: 0,
        at_ms: crate::model::now_ms(),
        plugin: String::new(),
        digest: String::new(),
        key: key.map(str::to_owned),
        capability: capability.into(),
        target: target.chars().take(512).collect(),
        decision,
        reason,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_refusals_are_recorded_at_most_sixty_in_any_minute() {
        let gate = RefusalGate {
            recorded: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
        };
        // A burst just before a clock minute turns, and one just after it: the
        // second is held to what the first left of the same sliding minute.
        let turn = 60_000 * 29_000_000;
        for _ in 0..ANONYMOUS_PER_MINUTE {
            assert_eq!(gate.admit_at(turn - 1), (true, 0));
        }
        assert_eq!(gate.admit_at(turn - 1), (false, 0));
        for _ in 0..99 {
            assert_eq!(gate.admit_at(turn + 1), (false, 0));
        }
        // A minute after the burst, refusals are recorded again, the first with how
        // many went unrecorded.
        assert_eq!(gate.admit_at(turn + 59_999), (true, 100));
        assert_eq!(gate.admit_at(turn + 59_999), (true, 0));
    }
}
