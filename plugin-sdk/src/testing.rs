//! Run a plugin's function natively, in its own tests: a fake host with config,
//! secrets, key-value data and recorded HTTP exchanges (each request is matched
//! against them and its recorded response replayed). One way for every kind: set the
//! host up, then [`Host::run`] the plugin's function (source, transform, sink or API)
//! inside it.
//!
//! ```
//! use tenon_sdk::testing::{Exchange, Host};
//! use tenon_sdk::{Failure, Receipt, config, http, kv};
//!
//! // The plugin's function, as it is written for the component.
//! fn deliver(body: &[u8]) -> Result<Receipt, Failure> {
//!     let url = config::require("url")?;
//!     let response = http::post_json(&url, &[], body)?;
//!     if !response.is_success() {
//!         return Err(response.failure());
//!     }
//!     kv::set("last", body)?;
//!     Ok(Receipt { reference: response.json::<serde_json::Value>()?["id"].to_string(), detail: None })
//! }
//!
//! let host = Host::new()
//!     .config("url", "https://erp.example/orders")
//!     .exchange(Exchange::post("https://erp.example/orders").respond(201, r#"{"id": 7}"#));
//! let receipt = host.run(|| deliver(br#"{"order": 1}"#)).unwrap();
//! assert_eq!(receipt.reference, "7");
//! assert_eq!(host.requests()[0].body, br#"{"order": 1}"#);
//! assert_eq!(host.kv_value("last").as_deref(), Some(&br#"{"order": 1}"#[..]));
//! host.assert_all_exchanged();
//! ```
//!
//! Outside [`Host::run`], the host interfaces panic with a message saying so: a
//! plugin's function only has a host inside one.

// Test support: a mistake in a test's set-up fails the test, loudly.
#![allow(clippy::panic, clippy::expect_used)]

use crate::Failure;
use crate::http::Response;
use crate::wit::log::Level;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A fake host for a plugin's function, set up in a test.
#[derive(Debug, Default, Clone)]
pub struct Host {
    state: Rc<RefCell<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// What the manifest allows, once [`Host::with_manifest`] gave one: the sandbox's
    /// checks, natively.
    declared: Option<Declared>,
    config: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    kv: BTreeMap<String, Vec<u8>>,
    exchanges: Vec<(Exchange, bool)>,
    sent: Vec<Sent>,
    logs: Vec<(String, String)>,
}

/// What a manifest lets a plugin use.
#[derive(Debug, Default)]
struct Declared {
    /// The `[config]` keys and `grants.config`.
    config: std::collections::BTreeSet<String>,
    /// `grants.kv`.
    kv: bool,
}

/// A recorded exchange: the request it answers (method, URL, optionally a body and
/// headers) and the response replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    method: String,
    url: String,
    json_body: Option<serde_json::Value>,
    headers: Vec<(String, String)>,
    status: u16,
    response_headers: Vec<(String, String)>,
    response_body: Vec<u8>,
}

/// A request the plugin sent, as the fake host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The method, upper case.
    pub method: String,
    /// The URL.
    pub url: String,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Sent {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

impl Exchange {
    /// An exchange for `method` on exactly `url` (query included), answering `200`
    /// with an empty body until [`respond`](Exchange::respond) says otherwise.
    pub fn new(method: &str, url: &str) -> Exchange {
        Exchange {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            json_body: None,
            headers: Vec::new(),
            status: 200,
            response_headers: Vec::new(),
            response_body: Vec::new(),
        }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Exchange {
        Exchange::new("GET", url)
    }

    /// `POST url`.
    pub fn post(url: &str) -> Exchange {
        Exchange::new("POST", url)
    }

    /// Matches only a request whose body is this JSON (compared as JSON values).
    #[must_use]
    pub fn with_json(mut self, body: serde_json::Value) -> Exchange {
        self.json_body = Some(body);
        self
    }

    /// Matches only a request carrying this header with this value.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Exchange {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The response replayed: `status` and `body`.
    #[must_use]
    pub fn respond(mut self, status: u16, body: impl Into<Vec<u8>>) -> Exchange {
        self.status = status;
        self.response_body = body.into();
        self
    }

    /// A header of the response replayed.
    #[must_use]
    pub fn respond_header(mut self, name: &str, value: &str) -> Exchange {
        self.response_headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    fn matches(&self, sent: &Sent) -> bool {
        self.method == sent.method
            && self.url == sent.url
            && self.json_body.as_ref().is_none_or(|want| {
                serde_json::from_slice::<serde_json::Value>(&sent.body)
                    .ok()
                    .as_ref()
                    == Some(want)
            })
            && self
                .headers
                .iter()
                .all(|(k, v)| sent.header(k) == Some(v.as_str()))
    }
}

impl Host {
    /// A host with nothing set.
    pub fn new() -> Host {
        Host::default()
    }

    /// The `[config]` defaults of a manifest (`plugin.toml`'s text), as the host
    /// gives them before the operator's values.
    ///
    /// # Panics
    /// When the text is not TOML or its `[config]` values are not text, numbers or
    /// booleans: a test's mistake.
    pub fn with_manifest(self, manifest: &str) -> Host {
        let table: toml::Table = manifest.parse().expect("the manifest is not TOML");
        let grants = table.get("grants").and_then(|g| g.as_table());
        let mut declared = Declared {
            kv: grants
                .and_then(|g| g.get("kv"))
                .and_then(toml::Value::as_bool)
                .unwrap_or(false),
            ..Declared::default()
        };
        let granted = grants
            .and_then(|g| g.get("config"))
            .and_then(toml::Value::as_array);
        for key in granted
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_str)
        {
            declared.config.insert(key.to_owned());
        }
        if let Some(config) = table.get("config").and_then(|c| c.as_table()) {
            declared.config.extend(config.keys().cloned());
        }
        self.state.borrow_mut().declared = Some(declared);
        if let Some(config) = table.get("config").and_then(|c| c.as_table()) {
            for (key, value) in config {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                        value.to_string()
                    }
                    other => panic!("config `{key}` = {other} is not a text, number or boolean"),
                };
                self.state.borrow_mut().config.insert(key.clone(), text);
            }
        }
        self
    }

    /// A configuration value.
    pub fn config(self, key: &str, value: &str) -> Host {
        self.state
            .borrow_mut()
            .config
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// A secret's value.
    pub fn secret(self, name: &str, value: &str) -> Host {
        self.state
            .borrow_mut()
            .secrets
            .insert(name.to_owned(), value.to_owned());
        self
    }

    /// A key-value entry already stored.
    pub fn kv(self, key: &str, value: &[u8]) -> Host {
        self.state
            .borrow_mut()
            .kv
            .insert(key.to_owned(), value.to_vec());
        self
    }

    /// A recorded exchange. Each answers one request: the first unused one that
    /// matches, in the order they were added.
    pub fn exchange(self, exchange: Exchange) -> Host {
        self.state.borrow_mut().exchanges.push((exchange, false));
        self
    }

    /// Run `f` (the plugin's function) with this host behind the SDK's interfaces.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<Host>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        let _restore = Restore(previous);
        f()
    }

    /// The requests the plugin sent, in order (matched or not).
    pub fn requests(&self) -> Vec<Sent> {
        self.state.borrow().sent.clone()
    }

    /// A key-value entry now.
    pub fn kv_value(&self, key: &str) -> Option<Vec<u8>> {
        self.state.borrow().kv.get(key).cloned()
    }

    /// What the plugin logged: (level, message).
    pub fn logs(&self) -> Vec<(String, String)> {
        self.state.borrow().logs.clone()
    }

    /// # Panics
    /// When a recorded exchange was never used: the plugin did not send a request the
    /// test expects.
    pub fn assert_all_exchanged(&self) {
        let state = self.state.borrow();
        let unused: Vec<String> = state
            .exchanges
            .iter()
            .filter(|(_, used)| !used)
            .map(|(e, _)| format!("{} {}", e.method, e.url))
            .collect();
        assert!(unused.is_empty(), "exchanges never requested: {unused:?}");
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Host>> = const { RefCell::new(None) };
}

fn with<T>(what: &str, f: impl FnOnce(&mut State) -> T) -> T {
    let host = CURRENT.with(|c| c.borrow().clone()).unwrap_or_else(|| {
        panic!(
            "tenon_sdk::{what} was called natively outside tenon_sdk::testing::Host::run: \
             a plugin's function has a host only in a component or inside a test's Host"
        )
    });
    let mut state = host.state.borrow_mut();
    f(&mut state)
}

/// The sandbox's refusal, natively: the call would fail with it, so the test does.
#[allow(clippy::panic, reason = "a test host: the denied call fails the test")]
fn denied(what: &str, why: &str) -> ! {
    panic!("sandbox denied: {what}: {why} (in the sandbox the call fails with this)")
}

pub(crate) fn config(key: &str) -> Option<String> {
    with("config", |s| {
        if s.declared.as_ref().is_some_and(|d| !d.config.contains(key)) {
            denied(
                &format!("config `{key}`"),
                "the key is neither in the manifest's [config] nor in grants.config",
            );
        }
        s.config.get(key).cloned()
    })
}

/// Key-value storage without `grants.kv`: the sandbox refuses the plugin at load.
fn kv_granted(s: &State) {
    if s.declared.as_ref().is_some_and(|d| !d.kv) {
        denied(
            "kv",
            "the manifest does not grant kv (`[grants] kv = true`): the plugin is refused at load",
        );
    }
}

pub(crate) fn secret(name: &str) -> Result<String, String> {
    with("secrets", |s| {
        s.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| format!("secret `{name}` is not granted or not provided"))
    })
}

pub(crate) fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
    with("kv", |s| {
        kv_granted(s);
        Ok(s.kv.get(key).cloned())
    })
}

pub(crate) fn set(key: &str, value: &[u8]) -> Result<(), String> {
    with("kv", |s| {
        kv_granted(s);
        s.kv.insert(key.to_owned(), value.to_vec());
        Ok(())
    })
}

pub(crate) fn delete(key: &str) -> Result<(), String> {
    with("kv", |s| {
        kv_granted(s);
        s.kv.remove(key);
        Ok(())
    })
}

pub(crate) fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    };
    with("log", |s| {
        s.logs.push((level.to_owned(), message.to_owned()))
    });
}

pub(crate) fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Failure> {
    with("http", |s| {
        let sent = Sent {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
                .collect(),
            body: body.to_vec(),
        };
        let found = s
            .exchanges
            .iter_mut()
            .find(|(e, used)| !used && e.matches(&sent));
        let answer = match found {
            Some((exchange, used)) => {
                *used = true;
                Ok(Response {
                    status: exchange.status,
                    headers: exchange
                        .response_headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                        .collect(),
                    body: exchange.response_body.clone(),
                })
            }
            None => Err(Failure::Invalid(format!(
                "testing: no recorded exchange answers {} {url}",
                sent.method
            ))),
        };
        s.sent.push(sent);
        answer
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_matched_once_each_and_unmatched_ones_fail() {
        let host = Host::new()
            .exchange(Exchange::get("http://a/x").respond(200, "one"))
            .exchange(
                Exchange::post("http://a/x")
                    .with_json(serde_json::json!({"n": 1}))
                    .with_header("authorization", "t")
                    .respond(201, "made"),
            );
        host.run(|| {
            assert_eq!(
                crate::http::get_json("http://a/x", &[]).unwrap().body,
                b"one"
            );
            // Used once: the same request again finds nothing.
            assert!(crate::http::get_json("http://a/x", &[]).is_err());
            let wrong =
                crate::http::post_json("http://a/x", &[("authorization", "t")], b"{\"n\": 2}");
            assert!(matches!(wrong, Err(Failure::Invalid(_))));
            let right =
                crate::http::post_json("http://a/x", &[("authorization", "t")], b"{ \"n\" : 1 }");
            assert_eq!(right.unwrap().status, 201);
        });
        assert_eq!(host.requests().len(), 4);
        host.assert_all_exchanged();
    }

    #[test]
    fn config_secrets_kv_and_logs_are_the_hosts() {
        let host = Host::new()
            .with_manifest(
                "name = \"x\"\n[config]\nurl = \"http://a\"\nretries = 3\n\
                 [grants]\nkv = true\nconfig = [\"other\"]\n",
            )
            .config("retries", "5")
            .secret("token", "s3cret")
            .kv("seen", b"1");
        host.run(|| {
            assert_eq!(crate::config::get("url").as_deref(), Some("http://a"));
            assert_eq!(crate::config::get("retries").as_deref(), Some("5"));
            assert!(crate::config::get("other").is_none());
            assert_eq!(crate::secrets::get("token").unwrap(), "s3cret");
            assert!(crate::secrets::get("nope").is_err());
            assert_eq!(crate::kv::get("seen").unwrap().as_deref(), Some(&b"1"[..]));
            crate::kv::set("new", b"2").unwrap();
            crate::kv::delete("seen").unwrap();
            crate::log::info("hello");
        });
        assert_eq!(host.kv_value("new").as_deref(), Some(&b"2"[..]));
        assert!(host.kv_value("seen").is_none());
        assert_eq!(host.logs(), [("info".to_owned(), "hello".to_owned())]);
    }

    #[test]
    #[should_panic(
        expected = "sandbox denied: config `rounding`: the key is neither in the manifest's [config] nor in grants.config"
    )]
    fn a_config_key_the_manifest_does_not_declare_is_denied_as_the_sandbox_denies_it() {
        let host = Host::new().with_manifest("name = \"x\"\n[config]\nurl = \"http://a\"\n");
        host.run(|| crate::config::get("rounding"));
    }

    #[test]
    #[should_panic(expected = "sandbox denied: kv: the manifest does not grant kv")]
    fn kv_without_its_grant_is_denied() {
        let host = Host::new().with_manifest("name = \"x\"\n");
        let _ = host.run(|| crate::kv::get("k"));
    }

    #[test]
    fn without_a_manifest_nothing_is_checked() {
        let host = Host::new().config("anything", "1");
        host.run(|| {
            assert_eq!(crate::config::get("anything").as_deref(), Some("1"));
            crate::kv::set("k", b"v").unwrap();
        });
    }

    #[test]
    #[should_panic(expected = "outside tenon_sdk::testing::Host::run")]
    fn outside_a_host_the_interfaces_say_so() {
        let _ = crate::config::get("url");
    }
}
