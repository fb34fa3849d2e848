//! The JSON-RPC client, over the SDK's `http` (`wasi:http` in the component; a test's
//! recorded exchanges natively).

use super::{RpcError, authorization, endpoint, parse_answer, request_body};
use serde_json::{Map, Value, json};
use tenon_sdk::Failure;

/// A logged-in session: the `Authorization` header and the user's context (company,
/// companies, language) that every call carries.
#[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq)]
pub struct Session {
    /// `Session base64(user:uid:session)`.
    pub authorization: String,
    /// The user's preferences that Tryton needs in the context.
    pub context: Value,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("authorization", &"<redacted>")
            .field("context", &self.context)
            .finish()
    }
}

/// Called with each new session (the sink keeps it in key-value storage).
type OnLogin = Box<dyn FnMut(&Session) -> Result<(), Failure>>;

/// A JSON-RPC connection to one database, logged in on first use.
pub struct Client {
    endpoint: String,
    user: String,
    session: Option<Session>,
    on_login: Option<OnLogin>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("user", &self.user)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The server of the plugin's configuration: `url`, `database`, `user` (default
    /// `admin`); the password is the secret `tryton_password`, read at login.
    pub fn from_config() -> Result<Client, Failure> {
        use tenon_sdk::config;
        let url = config::require("url")?;
        let database = config::require("database")?;
        let user = config::get("user").unwrap_or_else(|| "admin".into());
        Ok(Client {
            endpoint: endpoint(&url, &database),
            user,
            session: None,
            on_login: None,
        })
    }

    /// Start from a session kept earlier (it is renewed if Tryton refuses it).
    #[must_use]
    pub fn with_session(mut self, session: Option<Session>) -> Client {
        self.session = session;
        self
    }

    /// Call `keep` with each new session, right after the login.
    #[must_use]
    pub fn on_login(
        mut self,
        keep: impl FnMut(&Session) -> Result<(), Failure> + 'static,
    ) -> Client {
        self.on_login = Some(Box::new(keep));
        self
    }

    fn post(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<Result<Value, RpcError>, Failure> {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let response = tenon_sdk::http::post_json(&self.endpoint, &headers, body)?;
        Ok(parse_answer(response.status, &response.body))
    }

    /// Log in (`common.db.login`), then read the user's preferences
    /// (`model.res.user.get_preferences`) for the context.
    fn login(&mut self) -> Result<Session, Failure> {
        let password = tenon_sdk::secrets::get("tryton_password")?;
        let body = request_body(
            0,
            "common.db.login",
            &[json!(self.user), json!({"password": password}), json!("en")],
        );
        let result = self.post(None, &body)?.map_err(|e| match e {
            RpcError::Unauthorized | RpcError::Refused(_) => Failure::Invalid(format!(
                "Tryton refused the login of `{}`: check the user and the secret",
                self.user
            )),
            other => other.into(),
        })?;
        let (Some(uid), Some(session)) = (result.get(0), result.get(1).and_then(Value::as_str))
        else {
            return Err(Failure::Retryable(format!(
                "unexpected login answer: {result}"
            )));
        };
        let authorization = authorization(&self.user, uid, session);
        // The user's preferences carry the company the records belong to.
        let body = request_body(
            0,
            "model.res.user.get_preferences",
            &[json!(true), json!({})],
        );
        let preferences = self
            .post(Some(&authorization), &body)?
            .map_err(Failure::from)?;
        let mut context = Map::new();
        for key in ["company", "companies", "language"] {
            if let Some(value) = preferences.get(key) {
                context.insert(key.to_owned(), value.clone());
            }
        }
        let session = Session {
            authorization,
            context: Value::Object(context),
        };
        if let Some(keep) = &mut self.on_login {
            keep(&session)?;
        }
        self.session = Some(session.clone());
        Ok(session)
    }

    /// The session, logging in when there is none yet.
    pub fn session(&mut self) -> Result<Session, Failure> {
        match &self.session {
            Some(session) => Ok(session.clone()),
            None => self.login(),
        }
    }

    /// Call `method` with `params`, the session's context last; log in when needed,
    /// and once more if Tryton refuses the session.
    pub fn call(&mut self, method: &str, params: Vec<Value>) -> Result<Value, Failure> {
        self.call_in(method, params, &Map::new())
    }

    /// [`Client::call`] with `extra` added to the session's context (e.g. the
    /// `quantity` and `customer` a sale price is for).
    pub fn call_in(
        &mut self,
        method: &str,
        params: Vec<Value>,
        extra: &Map<String, Value>,
    ) -> Result<Value, Failure> {
        for attempt in 0..2 {
            let session = self.session()?;
            let mut context = match session.context {
                Value::Object(context) => context,
                _ => Map::new(),
            };
            context.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            let mut params = params.clone();
            params.push(Value::Object(context));
            let body = request_body(1, method, &params);
            match self.post(Some(&session.authorization), &body)? {
                Err(RpcError::Unauthorized) if attempt == 0 => self.session = None,
                other => return other.map_err(Failure::from),
            }
        }
        Err(RpcError::Unauthorized.into())
    }

    /// The id of the first record of `model` that matches `domain`.
    pub fn search_one(&mut self, model: &str, domain: Value) -> Result<Option<i64>, Failure> {
        let ids = self.call(
            &format!("model.{model}.search"),
            vec![domain, json!(0), json!(1), Value::Null],
        )?;
        Ok(ids.get(0).and_then(Value::as_i64))
    }

    /// `model.<model>.search_read`: the `fields` of the records that match `domain`
    /// (at most `limit`), in the session's context plus `extra`.
    pub fn search_read(
        &mut self,
        model: &str,
        domain: Value,
        limit: Option<u32>,
        fields: &[&str],
        extra: &Map<String, Value>,
    ) -> Result<Vec<Value>, Failure> {
        let found = self.call_in(
            &format!("model.{model}.search_read"),
            vec![domain, json!(0), json!(limit), Value::Null, json!(fields)],
            extra,
        )?;
        match found {
            Value::Array(records) => Ok(records),
            other => Err(Failure::Retryable(format!(
                "unexpected search_read answer: {other}"
            ))),
        }
    }
}
