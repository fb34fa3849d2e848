//! Accounts as Salesforce's REST API returns them, one, several and as a query
//! result, through the entry point; bad records refused, each named.

use super::*;
use tenon_sdk::testing::Host;

const NORTHWIND: &str = r#"{
  "attributes": {"type": "Account", "url": "/services/data/v60.0/sobjects/Account/0015g00000XyZ12AAB"},
  "Id": "0015g00000XyZ12AAB", "Name": "Northwind Traders GmbH", "BillingCountryCode": "de",
  "ParentId": "0015g00000XyZ00AAA", "Credit_Hold__c": true
}"#;

fn request(body: &str) -> RawRequest {
    RawRequest {
        content_type: "application/json".into(),
        headers: vec![],
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn an_account_becomes_a_customer_with_its_hierarchy_and_flags() {
    let host = Host::new()
        .with_manifest(include_str!("../plugin.toml"))
        .config("credit_hold_field", "Credit_Hold__c");
    let out = host.run(|| ingest_accounts(request(NORTHWIND))).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, "CustomerUpserted");
    assert_eq!(out[0].key, "0015g00000XyZ12AAB");
    let party: Party = out[0].decode().unwrap();
    assert_eq!(party.name.as_deref(), Some("Northwind Traders GmbH"));
    assert_eq!(party.country.as_deref(), Some("DE"));
    assert_eq!(party.parent.as_deref(), Some("0015g00000XyZ00AAA"));
    assert!(party.credit_hold);
    assert!(!party.blocked);
}

#[test]
fn lists_and_query_results_give_every_account() {
    let query = format!(
        r#"{{"totalSize": 2, "done": true, "records": [{NORTHWIND},
            {{"attributes": {{"type": "Account"}}, "Id": "0015g00000XyZ34", "Name": "Contoso Retail SAS", "BillingCountryCode": "FR"}}]}}"#
    );
    let parties = accounts(query.as_bytes(), &Flags::default()).unwrap();
    assert_eq!(parties.len(), 2);
    assert_eq!(parties[1].id, "0015g00000XyZ34");
    assert!(!parties[0].credit_hold, "no flag field configured");
    let list = format!("[{NORTHWIND}]");
    assert_eq!(
        accounts(list.as_bytes(), &Flags::default()).unwrap().len(),
        1
    );
}

#[test]
fn bad_records_are_refused_each_named() {
    let body = r#"[{"attributes": {"type": "Contact"}, "Id": "0035g00000XyZ12AAB", "Name": "A"},
                   {"Name": "no id"},
                   {"Id": "short", "Name": "x"},
                   {"Id": "0015g00000XyZ12AAB"},
                   {"Id": "0015g00000XyZ12AAB", "Name": "x", "BillingCountryCode": "Germany"}]"#;
    let Err(Failure::Invalid(why)) = accounts(body.as_bytes(), &Flags::default()) else {
        panic!("refused");
    };
    for expected in [
        "record 1: a `Contact` record, not an `Account`",
        "record 2: no `Id`",
        "record 3: `Id` `short` is not a Salesforce record Id",
        "record 4: account 0015g00000XyZ12AAB has no `Name`",
        "record 5: account 0015g00000XyZ12AAB: `BillingCountryCode` `Germany` is not an ISO 3166-1 alpha-2 code",
    ] {
        assert!(why.contains(expected), "`{expected}` in {why}");
    }
    assert!(matches!(
        accounts(b"[]", &Flags::default()),
        Err(Failure::Invalid(_))
    ));
    assert!(matches!(
        accounts(b"42", &Flags::default()),
        Err(Failure::Invalid(_))
    ));
    assert!(matches!(
        accounts(b"{", &Flags::default()),
        Err(Failure::Invalid(_))
    ));
}
