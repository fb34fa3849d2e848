//! Transform plugin: legal-entity routing. Each order gets the header
//! `tenon-entity` naming the legal entity that books it, from the customer's country
//! and the rules in config (`entities`, a JSON object from country to entity, `*` for
//! the rest). Flows subscribe to `OrderAccepted` `when = { tenon-entity = "DE01" }`,
//! each with the ERP sink of its entity: adding an entity is a rule and a flow in the
//! config, no code.

use std::collections::BTreeMap;
use tenon_sdk::model::Order;
use tenon_sdk::{Failure, Message, config};

#[cfg(test)]
mod tests;

/// The header this router sets.
pub const ENTITY_HEADER: &str = "tenon-entity";

/// Tag the order with the legal entity that books it.
#[tenon_sdk::transform]
fn route_to_entity(mut input: Message) -> Result<Vec<Message>, Failure> {
    let order: Order = input.decode()?;
    let rules: BTreeMap<String, String> =
        serde_json::from_str(&config::get("entities").unwrap_or_else(|| "{}".into()))
            .map_err(|e| Failure::Invalid(format!("config `entities`: {e}")))?;
    let entity = entity_for(order.customer.country.as_deref(), &rules)
        .map_err(|reason| Failure::Rejected(vec![reason]))?;
    input
        .headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case(ENTITY_HEADER));
    input.headers.push((ENTITY_HEADER.into(), entity));
    Ok(vec![input])
}

/// The entity of a customer country under `rules`.
pub fn entity_for(
    country: Option<&str>,
    rules: &BTreeMap<String, String>,
) -> Result<String, String> {
    country
        .and_then(|c| {
            rules
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(c))
                .map(|(_, v)| v.clone())
        })
        .or_else(|| rules.get("*").cloned())
        .ok_or_else(|| {
            format!(
                "no legal entity for customer country {}: config `entities` has no rule for it and no `*`",
                country.unwrap_or("(none)")
            )
        })
}
