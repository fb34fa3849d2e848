//! The JSON-RPC client (in the component only: it needs `wasi:http`).

use super::*;
use base64::Engine as _;
use tenon_sdk::{Message, Receipt};

#[tenon_sdk::sink]
fn deliver(message: Message, _idempotency_key: &str) -> Result<Receipt, Failure> {
    let order: Order = message.decode()?;
    let mut rpc = Rpc::connect()?;
    rpc.deliver(&order)
}

/// A JSON-RPC connection, logged in.
struct Rpc {
    endpoint: String,
    user: String,
    /// The `Authorization` header and the user's context (company...), as kept in kv.
    session: Option<Session>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Session {
    authorization: String,
    context: Value,
}

const SESSION_KEY: &str = "session";

impl Rpc {
    fn connect() -> Result<Rpc, Failure> {
        use tenon_sdk::{config, kv};
        let url = config::require("url")?;
        let database = config::require("database")?;
        let user = config::get("user").unwrap_or_else(|| "admin".into());
        let session = kv::get(SESSION_KEY)?.and_then(|v| serde_json::from_slice(&v).ok());
        Ok(Rpc {
            endpoint: format!("{}/{database}/rpc/", url.trim_end_matches('/')),
            user,
            session,
        })
    }

    fn login(&mut self) -> Result<(), Failure> {
        let password = tenon_sdk::secrets::get("tryton_password")?;
        let body = json!({
            "id": 0,
            "method": "common.db.login",
            "params": [self.user, {"password": password}, "en"],
        });
        let response =
            tenon_sdk::http::post_json(&self.endpoint, &[], body.to_string().as_bytes())?;
        let result = parse_answer(response.status, &response.body).map_err(|e| match e {
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
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{uid}:{session}", self.user));
        let authorization = format!("Session {token}");
        // The user's preferences carry the company the records belong to.
        let body =
            json!({"id": 0, "method": "model.res.user.get_preferences", "params": [true, {}]});
        let response = tenon_sdk::http::post_json(
            &self.endpoint,
            &[("authorization", authorization.as_str())],
            body.to_string().as_bytes(),
        )?;
        let preferences = parse_answer(response.status, &response.body).map_err(Failure::from)?;
        let mut context = serde_json::Map::new();
        for key in ["company", "companies", "language"] {
            if let Some(value) = preferences.get(key) {
                context.insert(key.to_owned(), value.clone());
            }
        }
        let session = Session {
            authorization,
            context: Value::Object(context),
        };
        let stored = serde_json::to_vec(&session)
            .map_err(|e| Failure::Invalid(format!("cannot keep the session: {e}")))?;
        tenon_sdk::kv::set(SESSION_KEY, &stored)?;
        self.session = Some(session);
        Ok(())
    }

    /// Call `method` with `params` (the context is added), logging in when needed.
    fn call(&mut self, method: &str, params: Vec<Value>) -> Result<Value, Failure> {
        for attempt in 0..2 {
            let session = match &self.session {
                Some(session) => session.clone(),
                None => {
                    self.login()?;
                    self.session
                        .clone()
                        .ok_or_else(|| Failure::Retryable("no session".into()))?
                }
            };
            let mut params = params.clone();
            params.push(session.context.clone());
            let body = json!({"id": 1, "method": method, "params": params}).to_string();
            let response = tenon_sdk::http::post_json(
                &self.endpoint,
                &[("authorization", session.authorization.as_str())],
                body.as_bytes(),
            )?;
            match parse_answer(response.status, &response.body) {
                Err(RpcError::Unauthorized) if attempt == 0 => self.session = None,
                other => return other.map_err(Failure::from),
            }
        }
        Err(RpcError::Unauthorized.into())
    }

    fn search_one(&mut self, model: &str, domain: Value) -> Result<Option<i64>, Failure> {
        let ids = self.call(
            &format!("model.{model}.search"),
            vec![domain, json!(0), json!(1), Value::Null],
        )?;
        Ok(ids.get(0).and_then(Value::as_i64))
    }

    fn deliver(&mut self, order: &Order) -> Result<Receipt, Failure> {
        if let Some(id) = self.search_one("sale.sale", json!([["reference", "=", order.id]]))? {
            return Ok(receipt(id, "already created"));
        }
        let mut reasons = Vec::new();
        // The customer master's Tryton code, else the CRM id (the parties' code).
        let party_code = order
            .customer
            .external_ids
            .get("tryton")
            .unwrap_or(&order.customer.id);
        let party = self.search_one("party.party", json!([["code", "=", party_code]]))?;
        if party.is_none() {
            reasons.push(format!(
                "customer `{}` ({}) is not a Tryton party",
                order.customer.id,
                order.customer.name.as_deref().unwrap_or("no name")
            ));
        }
        let currency = self.search_one(
            "currency.currency",
            json!([["code", "=", order.currency.code()]]),
        )?;
        if currency.is_none() {
            reasons.push(format!("currency {} is not in Tryton", order.currency));
        }
        let codes: Vec<&str> = order.lines.iter().map(|l| l.product.code_or_id()).collect();
        let found = self.call(
            "model.product.product.search_read",
            vec![
                json!([["code", "in", codes]]),
                json!(0),
                Value::Null,
                Value::Null,
                json!(["code", "sale_uom", "default_uom"]),
            ],
        )?;
        let products: BTreeMap<String, ProductRef> = found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let unit = p
                    .get("sale_uom")
                    .and_then(Value::as_i64)
                    .or_else(|| p.get("default_uom").and_then(Value::as_i64))?;
                Some((
                    p.get("code")?.as_str()?.to_owned(),
                    ProductRef {
                        id: p.get("id")?.as_i64()?,
                        unit,
                    },
                ))
            })
            .collect();
        let values = match (party, currency) {
            (Some(party), Some(currency)) => sale_values(order, party, currency, &products),
            _ => sale_values(order, 0, 0, &products).map(|_| Value::Null),
        };
        match values {
            Err(missing) => reasons.extend(missing),
            Ok(_) if !reasons.is_empty() => {}
            Ok(values) => {
                let ids = self.call("model.sale.sale.create", vec![json!([values])])?;
                let id = ids.get(0).and_then(Value::as_i64).ok_or_else(|| {
                    Failure::Retryable(format!("unexpected create answer: {ids}"))
                })?;
                return Ok(receipt(id, "created"));
            }
        }
        Err(Failure::Rejected(reasons))
    }
}

fn receipt(id: i64, what: &str) -> Receipt {
    Receipt {
        reference: format!("sale.sale/{id}"),
        detail: Some(format!("draft sale {what}")),
    }
}
