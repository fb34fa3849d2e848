//! The sink through its entry point, in a test host: the booking of the example's plain
//! quote written back as Salesforce's REST API takes it, and Salesforce's errors.

use super::*;
use tenon_sdk::model::kinds;
use tenon_sdk::testing::{Exchange, Host};

const URL: &str =
    "https://acme.my.salesforce.com/services/data/v60.0/sobjects/SBQQ__Quote__c/a0q5g000001AbCdAAK";

fn booking(category: OrderCategory) -> Booking {
    Booking {
        order: "Q-00101-P".into(),
        quote_id: "a0q5g000001AbCdAAK".into(),
        quote_number: "Q-00101".into(),
        category,
        customer: "0015g00000XyZ12AAB".into(),
        system: "erp-de".into(),
        reference: "0000001000".into(),
        detail: None,
    }
}

fn host() -> Host {
    Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("instance_url", "https://acme.my.salesforce.com/")
        .secret("salesforce_token", "00Dxx0000001gPL!token")
}

fn deliver(host: &Host, booking: &Booking) -> Result<Receipt, Failure> {
    let message = Message::encode(kinds::ORDER_BOOKED, &booking.quote_number, booking).unwrap();
    host.run(|| write_back(message, "k"))
}

#[test]
fn the_erp_number_is_patched_onto_the_quote_field_of_its_category() {
    let physical = host().exchange(
        Exchange::new("PATCH", URL)
            .with_header("authorization", "Bearer 00Dxx0000001gPL!token")
            .with_json(json!({"ERP_Order_Number__c": "0000001000"}))
            .respond(204, ""),
    );
    assert_eq!(
        deliver(&physical, &booking(OrderCategory::Physical))
            .unwrap()
            .detail
            .unwrap(),
        "quote Q-00101 (a0q5g000001AbCdAAK): ERP_Order_Number__c = 0000001000"
    );
    physical.assert_all_exchanged();
    let subscriptions = host()
        .config("subscription_field", "Billing_Order__c")
        .exchange(
            Exchange::new("PATCH", URL)
                .with_json(json!({"Billing_Order__c": "0000001000"}))
                .respond(204, ""),
        );
    assert!(deliver(&subscriptions, &booking(OrderCategory::Subscription)).is_ok());
    subscriptions.assert_all_exchanged();
}

#[test]
fn salesforce_errors_are_classified_with_their_messages() {
    let answer = |status: u16, body: Value| {
        host().exchange(Exchange::new("PATCH", URL).respond(status, body.to_string()))
    };
    assert_eq!(
        deliver(
            &answer(400, json!([{"message": "No such column 'ERP_Order_Number__c' on sobject of type SBQQ__Quote__c", "errorCode": "INVALID_FIELD"}])),
            &booking(OrderCategory::Physical)
        ),
        Err(Failure::Rejected(vec![
            "Salesforce: No such column 'ERP_Order_Number__c' on sobject of type SBQQ__Quote__c (INVALID_FIELD)".into()
        ]))
    );
    assert_eq!(
        deliver(
            &answer(401, json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])),
            &booking(OrderCategory::Physical)
        ),
        Err(Failure::Invalid(
            "Salesforce: Session expired or invalid (INVALID_SESSION_ID) (replace the `salesforce_token` secret)".into()
        ))
    );
    assert!(matches!(
        deliver(&answer(503, json!([])), &booking(OrderCategory::Physical)),
        Err(Failure::Retryable(_))
    ));
    // An id that is not a Salesforce Id is never put in the path.
    let mut odd = booking(OrderCategory::Physical);
    odd.quote_id = "../../sobjects/User/005".into();
    assert!(matches!(deliver(&host(), &odd), Err(Failure::Rejected(_))));
    assert!(matches!(
        deliver(&host().config("physical_field", "Bad Field"), &booking(OrderCategory::Physical)),
        Err(Failure::Invalid(why)) if why.contains("not a Salesforce field API name")
    ));
}
