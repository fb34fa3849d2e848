//! The `sap-simulation` API plugin through the binary, against the stand-in of SAP's
//! sales order simulation (`tenon_testkit::sap_simulation`), which checks each request
//! as SAP does (Basic authentication, the CSRF token with its session cookie, the deep
//! insert against SAP's published OpenAPI definition of the service) and prices from a
//! table: exact amounts and availability dates, SAP's refusals as 422 with SAP's
//! messages, an SAP that is down as 503, bad input as 400 without calling SAP.

use crate::support::{Tenon, Workspace};
use serde_json::{Value, json};
use tenon_cli::client;
use tenon_testkit::sap_simulation::{SERVICE_PATH, SapSimulation, Seen};

const API: &str = "/v1/apis/sap-prices";

/// The simulation as an API, its user and password from the environment; a second
/// instance of the plugin logs on with a wrong password.
fn config(service_url: &str) -> String {
    format!(
        r#"
[plugins.sap-sim]
path = "plugins/sap-simulation"
config = {{ service_url = "{service_url}", sales_organization = "1010" }}
secrets = ["sap_user", "sap_password"]
grants = {{ http = ["http://127.0.0.1:*"] }}

[plugins.sap-sim-wrong-password]
path = "plugins/sap-simulation"
config = {{ service_url = "{service_url}", sales_organization = "1010" }}
secrets = {{ sap_user = "sap_user", sap_password = "wrong_password" }}
grants = {{ http = ["http://127.0.0.1:*"] }}

[apis.sap-prices]
plugin = "sap-sim"
methods = ["POST"]
deadline_ms = 5000

[apis.sap-prices-wrong-password]
plugin = "sap-sim-wrong-password"
methods = ["POST"]
deadline_ms = 5000

[secrets]
sap_user = {{ env = "TEST_SAP_SIM_USER" }}
sap_password = {{ env = "TEST_SAP_SIM_PASSWORD" }}
wrong_password = {{ env = "TEST_SAP_SIM_WRONG_PASSWORD" }}
"#
    )
}

async fn start(sap: &SapSimulation) -> (Workspace, Tenon) {
    let ws = Workspace::new();
    ws.write_config(&config(&sap.service_url()));
    let setup = sap.setup();
    let tenon = Tenon::start_with_env(
        &ws,
        &[
            ("TEST_SAP_SIM_USER", setup.user.as_str()),
            ("TEST_SAP_SIM_PASSWORD", setup.password.as_str()),
            ("TEST_SAP_SIM_WRONG_PASSWORD", "not-the-password"),
        ],
    );
    (ws, tenon)
}

async fn simulate(tenon: &Tenon, path: &str, body: &Value) -> client::Response {
    tenon
        .request(
            "POST",
            path,
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
}

fn json_of(reply: &client::Response) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&reply.body)))
}

/// The request SAP's CSRF flow needs: a token fetch with the user's credentials.
fn assert_token_fetch(seen: &Seen, sap: &SapSimulation) {
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str(), seen.status),
        ("GET", format!("{SERVICE_PATH}/").as_str(), 200)
    );
    assert_eq!(seen.header("x-csrf-token"), Some("Fetch"));
    assert_eq!(
        seen.header("authorization"),
        Some(sap.authorization().as_str())
    );
}

/// A simulation `POST` with the token and cookies of session `session`.
fn assert_post(seen: &Seen, sap: &SapSimulation, session: u32, status: u16) {
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str(), seen.status),
        (
            "POST",
            format!("{SERVICE_PATH}/A_SalesOrderSimulation").as_str(),
            status
        )
    );
    assert_eq!(
        seen.header("authorization"),
        Some(sap.authorization().as_str())
    );
    assert!(
        seen.header("x-csrf-token")
            .is_some_and(|t| t.starts_with(&format!("csrf-{session}-"))),
        "{seen:?}"
    );
    assert_eq!(
        seen.header("cookie"),
        Some(format!("SAP_SESSIONID_S4H_100={session}; sap-usercontext=sap-client=100").as_str())
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread")]
async fn prices_and_availability_come_from_sap_through_its_csrf_flow() {
    let sap = SapSimulation::start().await.unwrap();
    let (_ws, tenon) = start(&sap).await;

    // Three items: one in stock, one partly in stock until a restock, one priced per 10.
    let reply = simulate(
        &tenon,
        API,
        &json!({
            "sold_to": "10100001",
            "currency": "EUR",
            "requested_date": "2026-12-01",
            "items": [
                {"material": "TG11", "quantity": "2", "plant": "1010"},
                {"material": "TG12", "quantity": "5", "unit": "PC"},
                {"material": "TG13", "quantity": 4},
            ],
        }),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    let price = |amount: &str, per: &str| json!({"condition_type": "PPR0", "amount": amount, "per": per, "unit": "PC"});
    assert_eq!(
        json_of(&reply),
        json!({
            "sold_to": "10100001",
            "currency": "EUR",
            "net_amount": "82.95",
            "tax_amount": "15.76",
            "gross_amount": "98.71",
            "available_on": "2026-12-15",
            "items": [
                {
                    "item": "10", "material": "TG11", "plant": "1010",
                    "quantity": "2", "unit": "PC",
                    "net_amount": "25.00", "tax_amount": "4.75",
                    "price": price("12.50", "1"),
                    "confirmed_quantity": "2", "available_on": "2026-12-01",
                    "schedule": [{"date": "2026-12-01", "quantity": "2"}],
                },
                {
                    "item": "20", "material": "TG12", "plant": "1010",
                    "quantity": "5", "unit": "PC",
                    "net_amount": "39.95", "tax_amount": "7.59",
                    "price": price("7.99", "1"),
                    "confirmed_quantity": "5", "available_on": "2026-12-15",
                    "schedule": [
                        {"date": "2026-12-01", "quantity": "3"},
                        {"date": "2026-12-15", "quantity": "2"},
                    ],
                },
                {
                    "item": "30", "material": "TG13", "plant": "1010",
                    "quantity": "4", "unit": "PC",
                    "net_amount": "18.00", "tax_amount": "3.42",
                    "price": price("45.00", "10"),
                    "confirmed_quantity": "4", "available_on": "2026-12-01",
                    "schedule": [{"date": "2026-12-01", "quantity": "4"}],
                },
            ],
        })
    );

    // SAP saw exactly its CSRF flow: the token fetched, then the deep insert with the
    // token and the session's cookies, every request with the user's credentials.
    let seen = sap.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_token_fetch(&seen[0], &sap);
    assert_post(&seen[1], &sap, 1, 201);
    let pricing_and_schedule =
        json!({"to_PricingElement": {"results": []}, "to_ScheduleLine": {"results": []}});
    let item = |number: &str, fields: Value| {
        let mut item = json!({"SalesOrderItem": number});
        for source in [fields, pricing_and_schedule.clone()] {
            for (k, v) in source.as_object().unwrap() {
                item[k] = v.clone();
            }
        }
        item
    };
    assert_eq!(
        seen[1].body,
        Some(json!({
            "SalesOrderType": "OR",
            "SalesOrganization": "1010",
            "DistributionChannel": "10",
            "OrganizationDivision": "00",
            "SoldToParty": "10100001",
            "TransactionCurrency": "EUR",
            "RequestedDeliveryDate": "/Date(1796083200000)/",
            "to_Pricing": {},
            "to_Item": {"results": [
                item("10", json!({"Material": "TG11", "RequestedQuantity": "2", "Plant": "1010"})),
                item("20", json!({"Material": "TG12", "RequestedQuantity": "5", "RequestedQuantityUnit": "PC"})),
                item("30", json!({"Material": "TG13", "RequestedQuantity": "4"})),
            ]},
        }))
    );

    // Without a date or a currency: SAP's (today, EUR). An item SAP cannot confirm has
    // no availability date, and neither has the whole.
    sap.clear_requests();
    let reply = simulate(
        &tenon,
        API,
        &json!({"sold_to": "10100001", "items": [
            {"material": "TG14", "quantity": "1"},
            {"material": "TG11", "quantity": "1"},
        ]}),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let answer = json_of(&reply);
    assert_eq!(
        (
            &answer["net_amount"],
            &answer["tax_amount"],
            &answer["gross_amount"],
            &answer["available_on"]
        ),
        (
            &json!("111.50"),
            &json!("21.19"),
            &json!("132.69"),
            &Value::Null
        )
    );
    assert_eq!(answer["items"][0]["confirmed_quantity"], "0");
    assert_eq!(answer["items"][0]["available_on"], Value::Null);
    assert_eq!(answer["items"][0]["schedule"], json!([]));
    assert_eq!(answer["items"][1]["available_on"], "2026-12-01");
    let seen = sap.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].body.as_ref().unwrap().get("RequestedDeliveryDate"),
        None
    );
    assert_eq!(
        seen[1].body.as_ref().unwrap().get("TransactionCurrency"),
        None
    );

    // The token expires: SAP answers 403 `Required`; a fresh token, the POST again.
    sap.clear_requests();
    sap.expire_next_token();
    let reply = simulate(
        &tenon,
        API,
        &json!({"sold_to": "10100001", "items": [{"material": "TG11", "quantity": "1"}]}),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(json_of(&reply)["net_amount"], "12.50");
    let seen = sap.requests();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert_token_fetch(&seen[0], &sap);
    assert_post(&seen[1], &sap, 3, 403);
    assert_token_fetch(&seen[2], &sap);
    assert_post(&seen[3], &sap, 4, 201);

    // Every body sent, and every answer the stand-in gave, fit SAP's definition.
    assert_eq!(sap.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn sap_refusals_bad_input_and_outages_are_422_400_and_503() {
    let sap = SapSimulation::start().await.unwrap();
    let (_ws, tenon) = start(&sap).await;
    let problem = |reply: &client::Response| {
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/problem+json"),
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        json_of(reply)
    };

    // SAP refuses: a blocked customer and an unknown material, every message of its
    // OData error as a reason.
    let reply = simulate(
        &tenon,
        API,
        &json!({"sold_to": "10100009", "items": [
            {"material": "TG11", "quantity": "1"},
            {"material": "TG99", "quantity": "1"},
        ]}),
    )
    .await;
    assert_eq!(
        reply.status,
        422,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let refused = problem(&reply);
    assert_eq!(refused["type"], "urn:tenon:problem:rejected");
    assert_eq!(
        refused["reasons"],
        json!([
            "SAP: Sold-to party 10100009 is blocked for sales (VP/203)",
            "SAP: Material TG99 is not defined for sales org.1010, distr.chan.10, language EN (V1/392)",
        ])
    );
    let reply = simulate(
        &tenon,
        API,
        &json!({"sold_to": "10100001", "currency": "USD", "items": [{"material": "TG11", "quantity": "1"}]}),
    )
    .await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        problem(&reply)["reasons"],
        json!([
            "SAP: Enter rate EUR / USD rate type M for 01.12.2026 in the system settings (SG/105)"
        ])
    );

    // Bad input: 400 with every reason, and SAP never called.
    sap.clear_requests();
    for (body, expected) in [
        (json!({"items": []}), "missing field `sold_to`"),
        (
            json!({"sold_to": "10100001", "items": []}),
            "`items` is empty: ask for at least one item",
        ),
        (
            json!({"sold_to": "10100001", "items": [{"material": "TG11", "qty": "1"}]}),
            "unknown field `qty`",
        ),
        (
            json!({"sold_to": "10100001", "requested_date": "01.12.2026", "items": [
                {"material": "TG11", "quantity": 2.5},
                {"material": "TG11", "quantity": "0"},
                {"material": "X".repeat(41), "quantity": "1.0001"},
            ]}),
            "`requested_date` `01.12.2026` is not a date YYYY-MM-DD; \
             item 1: quantity 2.5 is not a decimal: give it as a string such as \"2.5\"; \
             item 2: quantity 0 is not positive; \
             item 3: material `XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX` is longer than SAP's 40 characters; \
             item 3: quantity 1.0001 does not fit SAP's Edm.Decimal(15, 3)",
        ),
    ] {
        let reply = simulate(&tenon, API, &body).await;
        assert_eq!(
            reply.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let invalid = problem(&reply);
        assert_eq!(invalid["type"], "urn:tenon:problem:invalid-request");
        let detail = invalid["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{detail}");
    }
    let reply = tenon
        .request(
            "POST",
            API,
            Some(("application/json", b"{not json".to_vec())),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        problem(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("not the expected JSON")
    );
    assert_eq!(
        sap.requests(),
        Vec::<Seen>::new(),
        "SAP is not called for bad input"
    );

    // SAP is down: 503 with Retry-After, SAP's status in the detail; then back.
    sap.set_unavailable(true);
    let one = json!({"sold_to": "10100001", "items": [{"material": "TG11", "quantity": "1"}]});
    let reply = simulate(&tenon, API, &one).await;
    assert_eq!(
        reply.status,
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    let unavailable = problem(&reply);
    assert_eq!(unavailable["type"], "urn:tenon:problem:unavailable");
    assert!(
        unavailable["detail"]
            .as_str()
            .unwrap()
            .contains("SAP HTTP 503"),
        "{unavailable}"
    );
    sap.set_unavailable(false);
    let reply = simulate(&tenon, API, &one).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // SAP refuses Tenon's credentials: nothing the caller can change, so 503.
    sap.clear_requests();
    let reply = simulate(&tenon, "/v1/apis/sap-prices-wrong-password", &one).await;
    assert_eq!(
        reply.status,
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        problem(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("SAP HTTP 401"),
    );
    let seen = sap.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!((seen[0].method.as_str(), seen[0].status), ("GET", 401));

    assert_eq!(sap.violations(), Vec::<String>::new());
}

/// The stand-in refuses what SAP would, so the tests above mean something: no
/// credentials, no token, a body that strays from SAP's definition.
#[tokio::test(flavor = "multi_thread")]
async fn the_stand_in_refuses_what_sap_would() {
    let sap = SapSimulation::start().await.unwrap();
    let root = sap.service_url();
    let auth = sap.authorization();
    let post = format!("{root}/A_SalesOrderSimulation");

    // No credentials: 401, even for the token.
    let reply = client::request(
        "GET",
        &format!("{root}/"),
        &[("x-csrf-token", "Fetch")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401);

    // A token, but a POST without its session cookie: 403 `Required`.
    let fetched = client::request(
        "GET",
        &format!("{root}/"),
        &[("authorization", &auth), ("x-csrf-token", "Fetch")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(fetched.status, 200);
    let token = fetched.header("x-csrf-token").unwrap().to_owned();
    let cookie = fetched
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let body = |value: Value| Some(("application/json", value.to_string().into_bytes()));
    let good = json!({
        "SalesOrderType": "OR", "SalesOrganization": "1010", "DistributionChannel": "10",
        "OrganizationDivision": "00", "SoldToParty": "10100001",
        "to_Item": [{"SalesOrderItem": "10", "Material": "TG11", "RequestedQuantity": "1"}],
    });
    let reply = client::request(
        "POST",
        &post,
        &[("authorization", &auth), ("x-csrf-token", &token)],
        body(good.clone()),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-csrf-token"), Some("Required"));

    // With both, a body off SAP's definition: 400, every violation named.
    let headers = [
        ("authorization", auth.as_str()),
        ("x-csrf-token", token.as_str()),
        ("cookie", cookie.as_str()),
    ];
    let mut wrong = good.clone();
    wrong["Colour"] = json!("red");
    wrong["SoldToParty"] = json!("10100001-TOO-LONG");
    wrong["RequestedDeliveryDate"] = json!("2026-12-01");
    wrong["to_Item"][0]["RequestedQuantity"] = json!("1.2345");
    wrong["to_Item"][0]["NetAmount"] = json!("10.00");
    let reply = client::request("POST", &post, &headers, body(wrong))
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(
        sap.violations(),
        [
            "A_SalesOrderSimulationType-create.Colour: no such property in A_SalesOrderSimulationType-create",
            "A_SalesOrderSimulationType-create.RequestedDeliveryDate: `2026-12-01` is not an OData date /Date(ms)/",
            "A_SalesOrderSimulationType-create.SoldToParty: `10100001-TOO-LONG` is longer than maxLength 10",
            "A_SalesOrderSimulationType-create.to_Item[0].NetAmount: no such property in A_SalesOrderItemSimulationType-create",
            "A_SalesOrderSimulationType-create.to_Item[0].RequestedQuantity: `1.2345` is not a decimal(15, 3)",
        ]
    );

    // The documented example's shape (plain arrays, `to_Pricing: {}`) is accepted,
    // and answered as SAP's definition says: `{"d": ...}`, decimals as strings.
    let mut documented = good;
    documented["to_Pricing"] = json!({});
    let reply = client::request("POST", &post, &headers, body(documented))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let d = &json_of(&reply)["d"];
    assert_eq!(d["to_Pricing"]["TotalNetAmount"], "12.50");
    assert_eq!(d["to_Item"]["results"][0]["RequestedQuantity"], "1.000");
    assert!(d["to_Item"]["results"][0]["to_ScheduleLine"]["__deferred"].is_object());
    assert_eq!(
        sap.violations().len(),
        5,
        "its own answer fits the definition"
    );
}
