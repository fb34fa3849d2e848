//! The call to SAP (in the component only: it needs `wasi:http`).

use super::*;
use sap_odata::client::Service;
use tenon_sdk::api::{Request, Response};
use tenon_sdk::{config, log};

#[tenon_sdk::api]
fn simulate(request: Request) -> Result<Response, Failure> {
    // The caller's part: a bad request is `invalid` (400) before anything else.
    let simulation = parse(&request.body)?;
    // The server's part: whatever fails from here on is not the caller's doing.
    let settings = Settings::from_config(config::get).map_err(exchange_failure)?;
    let body = simulation_body(&simulation, &settings).to_string();
    let service = Service::from_config("service_url").map_err(exchange_failure)?;
    let sap = service
        .post_json("A_SalesOrderSimulation", body.as_bytes())
        .map_err(exchange_failure)?;
    if !sap.is_success() {
        let failure = sap_failure(sap.status, &sap.body);
        log::warn(&format!(
            "SAP refused the simulation for {}: {failure}",
            simulation.sold_to
        ));
        return Err(failure);
    }
    let sap: Value = serde_json::from_slice(&sap.body)
        .map_err(|e| Failure::Retryable(format!("SAP's simulation answer is not JSON: {e}")))?;
    Response::json(200, &answer(&simulation, &settings, &sap)?)
}
