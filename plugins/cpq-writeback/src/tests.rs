//! The sink through its entry point, in a test host: the booking of the example's plain
//! quote written back as Salesforce's REST API takes it, and Salesforce's errors.

use super::*;

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

const ACCOUNT: &str = "https://acme.my.salesforce.com/services/data/v60.0/sobjects/Account/CRM_Account_Id__c/0015g00000XyZ12AAB";

#[test]
fn a_customer_is_pushed_to_its_account_with_the_fields_the_crm_owns() {
    let mut party = Party::new("0015g00000XyZ12AAB");
    party.name = Some("Northwind Traders GmbH".into());
    party.country = Some("DE".into());
    party.parent = Some("0015g00000XyZ00AAA".into());
    let host = host().exchange(
        Exchange::new("PATCH", ACCOUNT)
            .with_json(json!({"Name": "Northwind Traders GmbH", "BillingCountryCode": "DE", "Parent": {"CRM_Account_Id__c": "0015g00000XyZ00AAA"}}))
            .respond(204, ""),
    );
    let message = Message::encode(kinds::CUSTOMER_UPSERTED, &party.id, &party).unwrap();
    let receipt = host.run(|| write_back(message.clone(), "k")).unwrap();
    assert_eq!(receipt.reference, "Account/0015g00000XyZ12AAB");
    host.assert_all_exchanged();
    // Not undone: the CRM owns the account.
    let undone = host.run(|| undo(message, receipt, "u"));
    assert!(matches!(undone, Err(Failure::Invalid(_))));
}

#[test]
fn a_write_back_is_undone_by_clearing_its_field() {
    let host = host().exchange(
        Exchange::new("PATCH", URL)
            .with_json(json!({"ERP_Order_Number__c": null}))
            .respond(204, ""),
    );
    let booking = booking(OrderCategory::Physical);
    let message = Message::encode(kinds::ORDER_BOOKED, &booking.quote_number, &booking).unwrap();
    let delivered = Receipt {
        reference: "a0q5g000001AbCdAAK.ERP_Order_Number__c".into(),
        detail: None,
    };
    let receipt = host.run(|| undo(message, delivered, "u")).unwrap();
    assert_eq!(
        receipt.detail.as_deref(),
        Some("quote Q-00101: ERP_Order_Number__c cleared")
    );
    host.assert_all_exchanged();
}

#[test]
fn accounts_are_read_back_page_by_page() {
    let first = "https://acme.my.salesforce.com/services/data/v60.0/query?q=SELECT%20Id%2C%20CRM_Account_Id__c%2C%20Name%2C%20BillingCountryCode%2C%20Parent.CRM_Account_Id__c%20FROM%20Account%20WHERE%20CRM_Account_Id__c%20%21%3D%20null%20ORDER%20BY%20Id";
    let host = host()
        .exchange(Exchange::get(first).respond(
            200,
            r#"{"totalSize": 2, "done": false, "nextRecordsUrl": "/services/data/v60.0/query/01gxx-2000",
                "records": [{"attributes": {"type": "Account"}, "Id": "001A", "CRM_Account_Id__c": "0015g00000XyZ12AAB", "Name": "Northwind", "BillingCountryCode": "DE", "Parent": null}]}"#,
        ))
        .exchange(Exchange::get("https://acme.my.salesforce.com/services/data/v60.0/query/01gxx-2000").respond(
            200,
            r#"{"totalSize": 2, "done": true,
                "records": [{"attributes": {"type": "Account"}, "Id": "001B", "CRM_Account_Id__c": "0015g00000XyZ34AAB", "Name": "Contoso", "BillingCountryCode": "FR", "Parent": {"attributes": {"type": "Account"}, "CRM_Account_Id__c": "0015g00000XyZ12AAB"}}]}"#,
        ));
    let query = tenon_sdk::records::Query {
        kind: "account".into(),
        since: String::new(),
        until: String::new(),
    };
    let entries = host.run(|| read_records(query.clone())).unwrap();
    host.assert_all_exchanged();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].field("name"), Some("Northwind"));
    assert_eq!(entries[0].field("parent"), None);
    assert_eq!(entries[1].reference, "0015g00000XyZ34AAB");
    assert_eq!(entries[1].field("parent"), Some("0015g00000XyZ12AAB"));
    let invoices = tenon_sdk::records::Query {
        kind: "invoice".into(),
        ..query
    };
    assert!(matches!(
        host.run(|| read_records(invoices)),
        Err(Failure::Invalid(_))
    ));
}
