//! Every endpoint and every error of the contract, in process, run against both modes
//! (embedded, and Kafka + ClickHouse): both must answer the same.

mod common;

use common::{DOUBLED, Mode, PEER, PREFIX, TestApp, from_base, from_now};
use http::{Method, StatusCode};

async fn click_post_records_the_contract_record_on_both_prefixes(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    assert_eq!(
        app.assign_code("jan-verv-8f3a", "usr_4491").await.status,
        StatusCode::CREATED
    );
    let body = r#"{"code":"JAN-VERV-8F3A","ip_address":"185.12.34.56","user_agent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)","referrer_url":"https://instagram.com","occurred_at":"2026-03-20T14:22:00Z"}"#;
    let mut recorded: Vec<String> = Vec::new();
    for prefix in [PREFIX, DOUBLED] {
        let answer = app.send_json(Method::POST, prefix, body).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{prefix}: {:?}",
            answer.body
        );
        let record = &answer.body;
        assert!(record["id"].as_str().unwrap().starts_with("attr_"));
        assert_eq!(record["code"], "JAN-VERV-8F3A");
        assert_eq!(record["mentor_id"], "usr_4491");
        assert_eq!(record["type"], "click");
        assert_eq!(record["status"], "pending");
        assert_eq!(record["new_member_id"], serde_json::Value::Null);
        assert_eq!(record["ip_address"], "185.12.34.56");
        assert_eq!(
            record["user_agent"],
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"
        );
        assert_eq!(record["referrer_url"], "https://instagram.com");
        assert_eq!(record["occurred_at"], "2026-03-20T14:22:00Z");
        assert!(record["created_at"].as_str().unwrap() > "2026-03-20");
        assert_eq!(
            record.as_object().unwrap().len(),
            11,
            "exactly the contract's fields"
        );
        // What was answered is what is stored, under both prefixes, with the writer's
        // verdict: the same visitor again within the hour is a duplicate of the first.
        let id = record["id"].as_str().unwrap();
        let first = recorded.first().cloned();
        for read_prefix in [PREFIX, DOUBLED] {
            let stored = app.get(&format!("{read_prefix}/{id}")).await;
            assert_eq!(stored.status, StatusCode::OK);
            let mut stored = stored.body;
            let fields = stored.as_object_mut().unwrap();
            let verdict = fields.remove("verdict");
            let duplicate_of = fields.remove("duplicate_of");
            assert_eq!(&stored, record);
            match &first {
                None => assert_eq!((verdict, duplicate_of), (Some("counted".into()), None)),
                Some(first) => assert_eq!(
                    (verdict, duplicate_of),
                    (Some("duplicate".into()), Some(first.as_str().into()))
                ),
            }
        }
        recorded.push(id.to_owned());
    }
    app.stop().await;
}

async fn click_defaults_come_from_the_connection_and_headers(mode: Mode) {
    // The peer (203.0.113.7) is our ingress, behind our load balancer (10.0.0.0/8).
    let app = TestApp::start_mode(mode, &["--trusted-proxies", "203.0.113.0/24,10.0.0.0/8"]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let before = from_now(-1);
    let answer = app
        .call(
            Method::POST,
            PREFIX,
            &[
                ("content-type", "application/json"),
                ("user-agent", "Pixel/1.0"),
                ("referer", "https://blog.example.com/post"),
                ("x-forwarded-for", "185.12.34.56, 10.0.0.1"),
            ],
            Some(r#"{"code":"jan-1"}"#),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    assert_eq!(answer.body["code"], "JAN-1", "codes are stored upper case");
    assert_eq!(
        answer.body["ip_address"], "185.12.34.56",
        "the nearest X-Forwarded-For hop (from the right) not in --trusted-proxies"
    );
    assert_eq!(answer.body["user_agent"], "Pixel/1.0");
    assert_eq!(answer.body["referrer_url"], "https://blog.example.com/post");
    assert!(answer.body["occurred_at"].as_str().unwrap() >= before.as_str());
    // Hops left of the client are the client's own claims (proxies append): not believed.
    // The header's lines are one list, in order.
    let answer = app
        .call(
            Method::POST,
            PREFIX,
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", "192.0.2.1, 10.9.9.9"),
                ("x-forwarded-for", "185.12.34.56, 10.0.0.1"),
            ],
            Some(r#"{"code":"JAN-1"}"#),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    assert_eq!(answer.body["ip_address"], "185.12.34.56");
    app.stop().await;

    // Without trusting the peer, X-Forwarded-For is ignored.
    let app = TestApp::start_mode(mode, &[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let answer = app
        .call(
            Method::POST,
            PREFIX,
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", "185.12.34.56"),
            ],
            Some(r#"{"code":"JAN-1"}"#),
        )
        .await;
    assert_eq!(answer.body["ip_address"], "203.0.113.7");
    assert_eq!(answer.body["user_agent"], serde_json::Value::Null);
    app.stop().await;
}

async fn click_errors_are_json_with_status_and_field(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let cases: &[(&str, StatusCode, &str, Option<&str>)] = &[
        ("{", StatusCode::BAD_REQUEST, "malformed_json", None),
        ("[]", StatusCode::BAD_REQUEST, "malformed_json", None),
        ("", StatusCode::BAD_REQUEST, "malformed_json", None),
        (
            r#"{"code":"JAN-1","code":"NOPE-1"}"#,
            StatusCode::BAD_REQUEST,
            "malformed_json",
            Some("code"),
        ),
        (
            r#"{"code":"JAN-1","occurred_at":"1969-12-31T23:59:59Z"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("occurred_at"),
        ),
        (
            "{}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("code"),
        ),
        (
            r#"{"code":"X"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("code"),
        ),
        (
            r#"{"code":"NOPE-1"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_code",
            Some("code"),
        ),
        (
            r#"{"code":"JAN-1","ip_address":"1.2.3"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("ip_address"),
        ),
        (
            r#"{"code":"JAN-1","referrer_url":"javascript:alert(1)"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("referrer_url"),
        ),
        (
            r#"{"code":"JAN-1","occurred_at":"2026-03-20"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("occurred_at"),
        ),
        (
            r#"{"code":"JAN-1","user_agent":5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("user_agent"),
        ),
        (
            r#"{"code":"JAN-1","mentor_id":"usr_9"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_field",
            Some("mentor_id"),
        ),
    ];
    for (body, status, code, field) in cases {
        let answer = app.click(body).await;
        assert_eq!(answer.status, *status, "{body}: {:?}", answer.body);
        assert_eq!(answer.error(), (*code, *field), "{body}");
    }
    let future = format!(r#"{{"code":"JAN-1","occurred_at":"{}"}}"#, from_now(600));
    assert_eq!(
        app.click(&future).await.error(),
        ("invalid_field", Some("occurred_at"))
    );
    let long_agent = format!(r#"{{"code":"JAN-1","user_agent":"{}"}}"#, "a".repeat(1025));
    assert_eq!(
        app.click(&long_agent).await.error(),
        ("invalid_field", Some("user_agent"))
    );
    let long_referrer = format!(
        r#"{{"code":"JAN-1","referrer_url":"https://e.com/{}"}}"#,
        "a".repeat(2040)
    );
    assert_eq!(
        app.click(&long_referrer).await.error(),
        ("invalid_field", Some("referrer_url"))
    );

    let not_json = app
        .call(
            Method::POST,
            PREFIX,
            &[("content-type", "text/plain")],
            Some(r#"{"code":"JAN-1"}"#),
        )
        .await;
    assert_eq!(
        (not_json.status, not_json.error().0),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let huge = format!(
        r#"{{"code":"JAN-1","user_agent":"{}"}}"#,
        "a".repeat(17 * 1024)
    );
    let too_large = app.click(&huge).await;
    assert_eq!(
        (too_large.status, too_large.error().0),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    // Nothing refused was stored.
    let list = app.get(PREFIX).await;
    assert_eq!(list.body["pagination"]["total"], 0);
    app.stop().await;
}

async fn list_paginates_filters_and_orders_newest_first(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    // Instants relative to one base: the filters below must split them the same way
    // however long the test takes.
    let base = referral_schemas::Timestamp::now();
    app.assign_code("JAN-1", "usr_1").await;
    app.assign_code("FEB-2", "usr_2").await;
    let mut ids = Vec::new();
    for minutes in 1..=5 {
        ids.push(
            app.click_id("JAN-1", &from_base(base, -60 * (10 - minutes)))
                .await,
        );
    }
    let other = app.click_id("FEB-2", &from_base(base, -30)).await;
    let confirmed = app
        .confirm(&ids[0], r#"{"code":"JAN-1","new_member_id":"usr_new"}"#)
        .await;
    assert_eq!(confirmed.status, StatusCode::OK);

    let all = app.get(PREFIX).await;
    assert_eq!(
        all.body["pagination"],
        serde_json::json!({"page": 1, "limit": 20, "total": 6, "next_cursor": null})
    );
    let order: Vec<&str> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(order[0], other, "newest occurred_at first");
    assert_eq!(order[5], ids[0]);

    let page2 = app.get(&format!("{PREFIX}?page=2&limit=2")).await;
    let mut pagination = page2.body["pagination"].clone();
    let next = pagination.as_object_mut().unwrap().remove("next_cursor");
    assert_eq!(
        pagination,
        serde_json::json!({"page": 2, "limit": 2, "total": 6})
    );
    assert!(next.unwrap().is_string(), "a third page follows");
    let page2_ids: Vec<&str> = page2.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(page2_ids, vec![ids[3].as_str(), ids[2].as_str()]);

    let filtered = |query: &str| {
        let query = query.to_owned();
        let app = &app;
        async move {
            app.get(&format!("{PREFIX}?{query}")).await.body["pagination"]["total"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(filtered("code=feb-2").await, 1);
    assert_eq!(filtered("mentor_id=usr_1").await, 5);
    assert_eq!(filtered("status=confirmed").await, 1);
    assert_eq!(filtered("type=click").await, 5);
    assert_eq!(filtered("type=conversion&status=confirmed").await, 1);
    assert_eq!(
        filtered(&format!("from={}", from_base(base, -60 * 6 - 1))).await,
        3
    );
    assert_eq!(
        filtered(&format!("to={}", from_base(base, -60 * 6 - 1))).await,
        3
    );

    for (query, field) in [
        ("page=0", "page"),
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("status=paid", "status"),
        ("sort=asc", "sort"),
    ] {
        let answer = app.get(&format!("{PREFIX}?{query}")).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(answer.error().1, Some(field), "{query}");
    }
    app.stop().await;
}

async fn get_by_id_is_404_for_unknown_and_malformed_ids(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    for id in ["attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G", "attr_a1b2c3", "x"] {
        let answer = app.get(&format!("{PREFIX}/{id}")).await;
        assert_eq!(
            (answer.status, answer.error().0),
            (StatusCode::NOT_FOUND, "attribution_not_found"),
            "{id}"
        );
    }
    app.stop().await;
}

async fn confirmation_rules(mode: Mode) {
    let app = TestApp::start_mode(mode, &["--attribution-window", "30days"]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let occurred = from_now(-3600);
    let id = app.click_id("JAN-1", &occurred).await;
    let confirm = |body: String| {
        let id = id.clone();
        let app = &app;
        async move { app.confirm(&id, &body).await }
    };

    let mismatch = confirm(r#"{"code":"FEB-2","new_member_id":"usr_5892"}"#.into()).await;
    assert_eq!(
        (mismatch.status, mismatch.error()),
        (StatusCode::CONFLICT, ("code_mismatch", Some("code")))
    );
    let before_click = confirm(format!(
        r#"{{"code":"JAN-1","new_member_id":"usr_5892","confirmed_at":"{}"}}"#,
        from_now(-7200)
    ))
    .await;
    assert_eq!(
        (before_click.status, before_click.error()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_field", Some("confirmed_at"))
        )
    );
    let future = confirm(format!(
        r#"{{"code":"JAN-1","new_member_id":"usr_5892","confirmed_at":"{}"}}"#,
        from_now(120)
    ))
    .await;
    assert_eq!(
        (future.status, future.error()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_field", Some("confirmed_at"))
        )
    );
    let missing = confirm(r#"{"code":"JAN-1"}"#.into()).await;
    assert_eq!(missing.error(), ("invalid_field", Some("new_member_id")));
    let unknown = app
        .confirm(
            "attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G",
            r#"{"code":"JAN-1","new_member_id":"usr_5892"}"#,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let confirmed_at = from_now(-60);
    let body =
        format!(r#"{{"code":"jan-1","new_member_id":"usr_5892","confirmed_at":"{confirmed_at}"}}"#);
    let first = confirm(body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(
        first.body,
        serde_json::json!({
            "id": id, "code": "JAN-1", "mentor_id": "usr_1", "type": "conversion", "status": "confirmed",
            "new_member_id": "usr_5892", "confirmed_at": confirmed_at, "created_at": first.body["created_at"],
        })
    );
    // An idempotent retry answers the same, even with another (defaulted) confirmed_at.
    assert_eq!(confirm(body).await.body, first.body);
    let retry_without_time = confirm(r#"{"code":"JAN-1","new_member_id":"usr_5892"}"#.into()).await;
    assert_eq!(
        (retry_without_time.status, &retry_without_time.body),
        (StatusCode::OK, &first.body)
    );
    let other_member = confirm(r#"{"code":"JAN-1","new_member_id":"usr_7777"}"#.into()).await;
    assert_eq!(
        (other_member.status, other_member.error().0),
        (StatusCode::CONFLICT, "already_confirmed")
    );
    assert_eq!(
        app.totals("usr_1", "").await.1,
        1,
        "retries do not count twice"
    );

    // The member is taken: another attribution cannot claim them.
    let second = app.click_id("JAN-1", &from_now(-1800)).await;
    let taken = app
        .confirm(&second, r#"{"code":"JAN-1","new_member_id":"usr_5892"}"#)
        .await;
    assert_eq!(
        (taken.status, taken.error().0),
        (StatusCode::CONFLICT, "member_already_attributed")
    );

    // Outside the 30-day window.
    let old = app.click_id("JAN-1", &from_now(-31 * 86_400)).await;
    let expired = app
        .confirm(&old, r#"{"code":"JAN-1","new_member_id":"usr_8888"}"#)
        .await;
    assert_eq!(
        (expired.status, expired.error().0),
        (StatusCode::CONFLICT, "attribution_expired")
    );
    app.stop().await;
}

/// A reversal's rules, its idempotent retry, and the totals it restates: the conversion
/// leaves `total_conversions` of the period it was confirmed in (a calendar period in a
/// zone off the UTC hour included, read per slot) and counts in `reversed_conversions`.
async fn reversals_restate_the_totals_of_their_confirmation(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let now = referral_schemas::Timestamp::now();
    // Yesterday in Kolkata, 10 minutes before its midnight: an hour that midnight cuts.
    let midnight = zoneinfo_midnight("Asia/Kolkata", now.as_millis());
    let refunded = app.click_id("JAN-1", &from_base(midnight, -7200)).await;
    let kept = app.click_id("JAN-1", &from_now(-3600)).await;
    let pending = app.click_id("JAN-1", &from_now(-1800)).await;
    let refunded_confirmed_at = from_base(midnight, -600);
    let confirmed = app
        .confirm(
            &refunded,
            &format!(
                r#"{{"code":"JAN-1","new_member_id":"usr_a","confirmed_at":"{refunded_confirmed_at}"}}"#
            ),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let kept_confirmed_at = from_now(-60);
    app.confirm(
        &kept,
        &format!(
            r#"{{"code":"JAN-1","new_member_id":"usr_b","confirmed_at":"{kept_confirmed_at}"}}"#
        ),
    )
    .await;
    let reverse = |id: &str, body: &str| {
        let uri = format!("{PREFIX}/{id}/reversal");
        let body = body.to_owned();
        let app = &app;
        async move { app.send_json(Method::POST, &uri, &body).await }
    };

    let not_confirmed = reverse(&pending, r#"{"reason":"refund"}"#).await;
    assert_eq!(
        (not_confirmed.status, not_confirmed.error()),
        (StatusCode::CONFLICT, ("not_confirmed", Some("id")))
    );
    let unknown = reverse("attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G", r#"{"reason":"refund"}"#).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    for (body, status, expected) in [
        (
            "{}",
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_field", Some("reason")),
        ),
        (
            r#"{"reason":"  "}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_field", Some("reason")),
        ),
        (
            r#"{"reason":"a\u0007b"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_field", Some("reason")),
        ),
        (
            r#"{"reason":7}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_field", Some("reason")),
        ),
        (
            r#"{"reason":"refund","amount":5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            ("unknown_field", Some("amount")),
        ),
        ("[1]", StatusCode::BAD_REQUEST, ("malformed_json", None)),
    ] {
        let answer = reverse(&refunded, body).await;
        assert_eq!(
            (answer.status, answer.error()),
            (status, expected),
            "{body}"
        );
    }
    let long = format!(r#"{{"reason":"{}"}}"#, "é".repeat(201));
    assert_eq!(reverse(&refunded, &long).await.error().1, Some("reason"));
    let before = reverse(
        &refunded,
        &format!(
            r#"{{"reason":"refund","reversed_at":"{}"}}"#,
            from_base(midnight, -601)
        ),
    )
    .await;
    assert_eq!(
        (before.status, before.error()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_field", Some("reversed_at"))
        )
    );
    let future = reverse(
        &refunded,
        &format!(r#"{{"reason":"refund","reversed_at":"{}"}}"#, from_now(120)),
    )
    .await;
    assert_eq!(future.error(), ("invalid_field", Some("reversed_at")));

    let reversed_at = from_now(-30);
    let first = reverse(
        &refunded,
        &format!(r#"{{"reason":"refund","reversed_at":"{reversed_at}"}}"#),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["status"], "reversed");
    assert_eq!(first.body["type"], "conversion");
    assert_eq!(first.body["new_member_id"], "usr_a");
    assert_eq!(first.body["confirmed_at"], refunded_confirmed_at.as_str());
    assert_eq!(first.body["reversed_at"], reversed_at.as_str());
    assert_eq!(first.body["reversal_reason"], "refund");
    // The same reversal again (even without its instant) answers the same; another reason
    // conflicts; the record reads as it was answered.
    assert_eq!(
        reverse(&refunded, r#"{"reason":"refund"}"#).await.body,
        first.body
    );
    let other = reverse(&refunded, r#"{"reason":"chargeback"}"#).await;
    assert_eq!(
        (other.status, other.error()),
        (StatusCode::CONFLICT, ("already_reversed", Some("reason")))
    );
    assert_eq!(
        app.get(&format!("{PREFIX}/{refunded}")).await.body,
        first.body
    );
    // The member stays attributed: nobody else can claim them.
    let taken = app
        .confirm(&pending, r#"{"code":"JAN-1","new_member_id":"usr_a"}"#)
        .await;
    assert_eq!(taken.error().0, "member_already_attributed");
    let listed = app.get(&format!("{PREFIX}?status=reversed")).await;
    assert_eq!(listed.body["pagination"]["total"], 1);
    assert_eq!(listed.body["data"][0]["id"], refunded.as_str());
    assert_eq!(
        app.get(&format!("{PREFIX}?status=confirmed")).await.body["pagination"]["total"],
        1
    );

    // Totals: restated in every period that holds the confirmation.
    let totals = |query: &str| {
        let uri = format!("{PREFIX}/mentor/usr_1/total{query}");
        let app = &app;
        async move {
            let body = app.get(&uri).await.body;
            (
                body["total_clicks"].as_u64().unwrap(),
                body["total_conversions"].as_u64().unwrap(),
                body["reversed_conversions"].as_u64().unwrap(),
            )
        }
    };
    assert_eq!(totals("").await, (3, 1, 1));
    assert_eq!(totals("?period=7d").await, (3, 1, 1));
    let kept_before_midnight =
        referral_schemas::Timestamp::parse_rfc3339(&kept_confirmed_at).unwrap() < midnight;
    let yesterday = totals("?period=yesterday&tz=Asia/Kolkata").await;
    assert_eq!(
        (yesterday.1, yesterday.2),
        (u64::from(kept_before_midnight), 1),
        "the refunded conversion's day, read per slot around its cut hour"
    );
    let top = app.get(&format!("{PREFIX}/mentors/top?period=7d")).await;
    assert_eq!(top.body["data"][0]["total_conversions"], 1);

    // Deleting the reversed conversion removes its click and its reversal.
    let deleted = app
        .call(Method::DELETE, &format!("{PREFIX}/{refunded}"), &[], None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(totals("").await, (2, 1, 0));
    assert_eq!(
        reverse(&refunded, r#"{"reason":"refund"}"#).await.status,
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

async fn delete_removes_from_reads_lists_and_totals(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let converted = app.click_id("JAN-1", &from_now(-3600)).await;
    let pending = app.click_id("JAN-1", &from_now(-1800)).await;
    app.confirm(&converted, r#"{"code":"JAN-1","new_member_id":"usr_5892"}"#)
        .await;
    assert_eq!(
        app.totals("usr_1", "").await,
        (2, 1, 0.5, "all_time".into())
    );

    let deleted = app
        .call(Method::DELETE, &format!("{PREFIX}/{converted}"), &[], None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.body["id"], converted.as_str());
    assert_eq!(deleted.body["deleted"], true);
    assert!(deleted.body["deleted_at"].is_string());
    assert_eq!(
        app.get(&format!("{PREFIX}/{converted}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get(PREFIX).await.body["pagination"]["total"], 1);
    assert_eq!(
        app.totals("usr_1", "").await,
        (1, 0, 0.0, "all_time".into()),
        "one click and one conversion removed"
    );
    let again = app
        .call(Method::DELETE, &format!("{PREFIX}/{converted}"), &[], None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.totals("usr_1", "").await.0,
        1,
        "a second delete changes nothing"
    );
    // The member is free again once their attribution is gone.
    let reclaimed = app
        .confirm(&pending, r#"{"code":"JAN-1","new_member_id":"usr_5892"}"#)
        .await;
    assert_eq!(reclaimed.status, StatusCode::OK, "{:?}", reclaimed.body);
    app.stop().await;
}

async fn mentor_list_and_totals_by_period(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    app.assign_code("FEB-2", "usr_2").await;
    let recent = app.click_id("JAN-1", &from_now(-3600)).await;
    app.click_id("JAN-1", &from_now(-3 * 86_400)).await;
    app.click_id("JAN-1", &from_now(-20 * 86_400)).await;
    app.click_id("JAN-1", &from_now(-400 * 86_400)).await;
    app.click_id("FEB-2", &from_now(-60)).await;
    app.confirm(&recent, r#"{"code":"JAN-1","new_member_id":"usr_a"}"#)
        .await;

    let list = app.get(&format!("{PREFIX}/mentor/usr_1?limit=2")).await;
    let mut pagination = list.body["pagination"].clone();
    let next = pagination.as_object_mut().unwrap().remove("next_cursor");
    assert_eq!(
        pagination,
        serde_json::json!({"page": 1, "limit": 2, "total": 4})
    );
    assert!(next.unwrap().is_string());
    let first = &list.body["data"][0];
    assert_eq!(first["id"], recent.as_str());
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "code",
            "id",
            "mentor_id",
            "new_member_id",
            "occurred_at",
            "status",
            "type",
            "verdict"
        ]
    );
    assert_eq!(
        app.get(&format!("{PREFIX}/mentor/usr_1?status=pending"))
            .await
            .body["pagination"]["total"],
        3
    );

    assert_eq!(
        app.totals("usr_1", "").await,
        (4, 1, 0.25, "all_time".into())
    );
    assert_eq!(
        app.totals("usr_1", "?period=24h").await,
        (1, 1, 1.0, "24h".into())
    );
    assert_eq!(
        app.totals("usr_1", "?period=7d").await,
        (2, 1, 0.5, "7d".into())
    );
    assert_eq!(
        app.totals("usr_1", "?period=30d").await,
        (3, 1, 0.333, "30d".into())
    );
    assert_eq!(
        app.totals("usr_1", "?period=90d").await,
        (3, 1, 0.333, "90d".into())
    );
    let custom = format!(
        "?from={}&to={}",
        from_now(-30 * 86_400),
        from_now(-2 * 86_400)
    );
    assert_eq!(
        app.totals("usr_1", &custom).await,
        (2, 0, 0.0, "custom".into())
    );
    assert_eq!(
        app.totals("usr_2", "").await,
        (1, 0, 0.0, "all_time".into())
    );
    assert_eq!(
        app.totals("usr_nobody", "").await,
        (0, 0, 0.0, "all_time".into())
    );

    for query in [
        "?period=1y",
        "?period=7d&from=2026-01-01T00:00:00Z",
        "?from=tuesday",
    ] {
        let answer = app
            .get(&format!("{PREFIX}/mentor/usr_1/total{query}"))
            .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
    }
    let bad_mentor = app.get(&format!("{PREFIX}/mentor/usr%20one/total")).await;
    assert_eq!(bad_mentor.error(), ("invalid_field", Some("mentor_id")));
    app.stop().await;
}

async fn referral_codes_route_clicks_and_can_be_reassigned_or_retired(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    let created = app.assign_code("spring-24", "usr_1").await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["code"], "SPRING-24");
    let early = app.click_id("SPRING-24", &from_now(-60)).await;

    let moved = app.assign_code("SPRING-24", "usr_2").await;
    assert_eq!(
        (moved.status, &moved.body["mentor_id"]),
        (StatusCode::OK, &serde_json::json!("usr_2"))
    );
    let late = app.click_id("spring-24", &from_now(-30)).await;
    assert_eq!(
        app.get(&format!("{PREFIX}/{early}")).await.body["mentor_id"],
        "usr_1",
        "earlier clicks keep their mentor"
    );
    assert_eq!(
        app.get(&format!("{PREFIX}/{late}")).await.body["mentor_id"],
        "usr_2"
    );

    let one = app.get("/api/v1/referral-codes/spring-24").await;
    assert_eq!(
        (one.status, &one.body["mentor_id"]),
        (StatusCode::OK, &serde_json::json!("usr_2"))
    );
    app.assign_code("OTHER-1", "usr_2").await;
    app.assign_code("THIRD-1", "usr_3").await;
    let listed = app.get("/api/v1/referral-codes?mentor_id=usr_2").await;
    assert_eq!(listed.body["pagination"]["total"], 2);
    assert_eq!(listed.body["data"][0]["code"], "OTHER-1");
    assert_eq!(
        app.get("/api/v1/referral-codes").await.body["pagination"]["total"],
        3
    );

    let retired = app
        .call(
            Method::DELETE,
            "/api/v1/referral-codes/SPRING-24",
            &[],
            None,
        )
        .await;
    assert_eq!(
        (retired.status, &retired.body["deleted"]),
        (StatusCode::OK, &serde_json::json!(true))
    );
    assert_eq!(
        app.click(r#"{"code":"SPRING-24"}"#).await.error(),
        ("unknown_code", Some("code"))
    );
    assert_eq!(
        app.get("/api/v1/referral-codes/SPRING-24").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call(
            Method::DELETE,
            "/api/v1/referral-codes/SPRING-24",
            &[],
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        app.assign_code("x", "usr_1").await.error(),
        ("invalid_field", Some("code"))
    );
    let no_mentor = app
        .send_json(Method::PUT, "/api/v1/referral-codes/GOOD-1", "{}")
        .await;
    assert_eq!(no_mentor.error(), ("invalid_field", Some("mentor_id")));
    app.stop().await;
}

async fn tokens_guard_everything_but_the_click_post(mode: Mode) {
    let reader = "reader-0123456789abcdef";
    let writer = "writer-0123456789abcdef";
    let admin = "admin-00123456789abcdef";
    // The writer is configured by its token's SHA-256: the setting holds no usable token.
    let writer_digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(writer.as_bytes()))
    };
    let spec = format!("{reader}=read,sha256:{writer_digest}=read+write,{admin}=admin");
    let app = TestApp::start_mode(mode, &["--api-tokens", &spec]).await;
    let bearer = |token: &str| format!("Bearer {token}");
    let call = |method: Method, uri: String, token: Option<&str>, body: Option<&str>| {
        let app = &app;
        let auth = token.map(bearer);
        let body = body.map(str::to_owned);
        async move {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(auth) = auth.as_deref() {
                headers.push(("authorization", auth));
            }
            app.call(method, &uri, &headers, body.as_deref())
                .await
                .status
        }
    };
    let code_body = Some(r#"{"mentor_id":"usr_1"}"#);
    assert_eq!(
        call(
            Method::PUT,
            "/api/v1/referral-codes/JAN-1".into(),
            None,
            code_body
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            Method::PUT,
            "/api/v1/referral-codes/JAN-1".into(),
            Some(writer),
            code_body
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            Method::PUT,
            "/api/v1/referral-codes/JAN-1".into(),
            Some(admin),
            code_body
        )
        .await,
        StatusCode::CREATED
    );
    // The click POST is public.
    let click = app.visit("JAN-1").await;
    assert_eq!(click.status, StatusCode::CREATED);
    let id = click.body["id"].as_str().unwrap().to_owned();

    let unauthorized = app.get(PREFIX).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    assert!(unauthorized.headers.contains_key("www-authenticate"));
    assert_eq!(
        call(
            Method::GET,
            PREFIX.into(),
            Some("wrong-0123456789abcdef"),
            None
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(Method::GET, PREFIX.into(), Some(reader), None).await,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::GET, format!("{PREFIX}/{id}"), Some(reader), None).await,
        StatusCode::OK
    );
    assert_eq!(
        call(
            Method::GET,
            format!("{PREFIX}/mentor/usr_1/total"),
            Some(reader),
            None
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        call(
            Method::GET,
            "/api/v1/referral-codes".into(),
            Some(reader),
            None
        )
        .await,
        StatusCode::OK
    );
    let confirm_body = Some(r#"{"code":"JAN-1","new_member_id":"usr_9"}"#);
    assert_eq!(
        call(
            Method::PUT,
            format!("{PREFIX}/{id}"),
            Some(reader),
            confirm_body
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            Method::PUT,
            format!("{PREFIX}/{id}"),
            Some(writer),
            confirm_body
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::DELETE, format!("{PREFIX}/{id}"), Some(reader), None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Method::DELETE, format!("{PREFIX}/{id}"), Some(writer), None).await,
        StatusCode::OK
    );
    assert_eq!(
        call(
            Method::DELETE,
            "/api/v1/referral-codes/JAN-1".into(),
            Some(writer),
            None
        )
        .await,
        StatusCode::FORBIDDEN
    );
    app.stop().await;
}

async fn unknown_routes_and_methods_answer_json(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    let missing = app.get("/api/v2/nothing").await;
    assert_eq!(
        (missing.status, missing.error().0),
        (StatusCode::NOT_FOUND, "not_found")
    );
    for (method, uri) in [
        (Method::PATCH, PREFIX.to_owned()),
        (
            Method::POST,
            format!("{PREFIX}/attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G"),
        ),
        (Method::DELETE, format!("{DOUBLED}/mentor/usr_1")),
    ] {
        let answer = app.call(method.clone(), &uri, &[], None).await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        assert_eq!(answer.error().0, "method_not_allowed");
        assert!(answer.headers.contains_key("allow"), "{method} {uri}");
        assert_eq!(answer.headers["content-type"], "application/json");
    }
    app.stop().await;
}

async fn health_readiness_and_metrics(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    app.assign_code("JAN-1", "usr_1").await;
    // Answers carry visitors' data: no cache keeps them, no browser sniffs them as HTML.
    for answer in [
        app.click(r#"{"code":"JAN-1"}"#).await,
        app.click(r#"{"code":"NOPE-1"}"#).await,
        app.get("/api/v1/referral-attributions").await,
    ] {
        assert_eq!(answer.headers["cache-control"], "no-store");
        assert_eq!(answer.headers["x-content-type-options"], "nosniff");
    }
    let metrics = app.get("/metrics").await;
    let text = metrics.body.as_str().unwrap();
    // The pipeline's series: the embedded log and the consumer's flushes, or the
    // aggregator's (in process in these tests; in production it serves its own /metrics).
    let writer_series = match mode {
        Mode::Embedded => vec![
            "referral_log_batch_events_bucket",
            "referral_log_fsync_duration_seconds_bucket",
            "referral_apply_lag_events",
            "referral_flush_duration_seconds_bucket",
        ],
        Mode::Production => vec![
            "referral_batch_rows",
            "referral_clickhouse_insert_duration_seconds_bucket",
        ],
    };
    for series in [
        "referral_clicks_accepted_total",
        "referral_clicks_rejected_total{cause=\"unknown_code\"}",
        "referral_http_requests_total{route=\"/api/v1/referral-attributions\",method=\"POST\",status=\"201\"}",
        "referral_http_request_duration_seconds_bucket",
    ]
    .into_iter()
    .chain(writer_series)
    {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart_on_the_same_data_dir() {
    let app = TestApp::start(&[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let id = app.click_id("JAN-1", &from_now(-60)).await;
    let dir = app.stop().await;
    let app = TestApp::start_in(dir, &[]).await;
    assert_eq!(
        app.get(&format!("{PREFIX}/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.visit("JAN-1").await.status,
        StatusCode::CREATED,
        "codes are reloaded"
    );
    assert_eq!(app.totals("usr_1", "").await.0, 2);
    app.stop().await;
}

async fn a_flooding_client_gets_429_while_others_still_get_201(mode: Mode) {
    let app = TestApp::start_mode(
        mode,
        &[
            "--trusted-proxies",
            "203.0.113.0/24",
            "--rate-limit-per-ip",
            "1",
            "--rate-limit-per-ip-burst",
            "3",
        ],
    )
    .await;
    app.assign_code("JAN-1", "usr_1").await;
    let click_from = |ip: &'static str| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                PREFIX,
                &[
                    ("content-type", "application/json"),
                    ("x-forwarded-for", ip),
                ],
                Some(r#"{"code":"JAN-1"}"#),
            )
            .await
        }
    };
    for remaining in ["2", "1", "0"] {
        let answer = click_from("198.51.100.1").await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.headers["x-ratelimit-limit"], "3");
        assert_eq!(answer.headers["x-ratelimit-remaining"], remaining);
    }
    let limited = click_from("198.51.100.1").await;
    assert_eq!(
        (limited.status, limited.error().0),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    assert_eq!(click_from("198.51.100.2").await.status, StatusCode::CREATED);
    assert_eq!(
        app.get(PREFIX).await.body["pagination"]["total"],
        4,
        "the refused click was not stored"
    );
    app.stop().await;
}

/// No settling here: a client reads, confirms and deletes its own clicks right after the
/// 201 (in production mode, before the aggregator's next flush) and is served.
async fn a_click_is_readable_confirmable_and_deletable_right_after_its_201(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let first = app.visit("JAN-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let id = first.body["id"].as_str().unwrap();
    let read = app.get_now(&format!("{PREFIX}/{id}")).await;
    let mut stored = read.body.clone();
    let verdict = stored.as_object_mut().unwrap().remove("verdict");
    assert_eq!((read.status, &stored), (StatusCode::OK, &first.body));
    assert_eq!(verdict, Some("counted".into()));
    let confirmed = app
        .confirm(id, r#"{"code":"JAN-1","new_member_id":"usr_new"}"#)
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let second = app.visit("JAN-1").await;
    let second_id = second.body["id"].as_str().unwrap();
    let deleted = app
        .call(Method::DELETE, &format!("{PREFIX}/{second_id}"), &[], None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{:?}", deleted.body);
    // A verdict is answered once its flush is stored: totals are already right.
    let totals = app.get_now(&format!("{PREFIX}/mentor/usr_1/total")).await;
    assert_eq!(
        (
            &totals.body["total_clicks"],
            &totals.body["total_conversions"]
        ),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "{:?}",
        totals.body
    );
    app.stop().await;
}

/// Total of the unfiltered list (every live attribution), once the pipeline settled.
async fn attributions_stored(app: &TestApp) -> u64 {
    app.get(PREFIX).await.body["pagination"]["total"]
        .as_u64()
        .unwrap()
}

async fn links_record_clicks_and_always_answer_the_visitor(mode: Mode) {
    let fallback = "https://platform.example.com/welcome";
    let app = TestApp::start_mode(mode, &["--fallback-url", fallback]).await;
    let destination = "https://platform.example.com/join?src=mentor#signup";
    let body = format!(r#"{{"mentor_id":"usr_1","destination_url":"{destination}"}}"#);
    let code = app
        .send_json(Method::PUT, "/api/v1/referral-codes/JAN-LINK", &body)
        .await;
    assert_eq!(code.status, StatusCode::CREATED);
    assert_eq!(code.body["destination_url"], destination);
    app.assign_code("NO-DEST", "usr_2").await;
    let browser = [
        ("user-agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"),
        ("referer", "https://instagram.com/p/1"),
    ];

    // The redirect link: 302 to the destination, the visitor's query kept (but for an
    // attribution_id of their own), ours added before the fragment; the click is recorded
    // from the request.
    let redirect = app
        .call(
            Method::GET,
            "/r/jan-link?utm_source=ig&attribution_id=attr_FORGED",
            &browser,
            None,
        )
        .await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    assert_eq!(redirect.headers["cache-control"], "no-store");
    let location = redirect.headers["location"].to_str().unwrap().to_owned();
    let prefix = "https://platform.example.com/join?src=mentor&utm_source=ig&attribution_id=";
    assert!(location.starts_with(prefix), "{location}");
    assert!(location.ends_with("#signup"), "{location}");
    let id = &location[prefix.len()..location.len() - "#signup".len()];
    let stored = app.get(&format!("{PREFIX}/{id}")).await;
    assert_eq!(stored.status, StatusCode::OK, "{location}");
    assert_eq!(stored.body["code"], "JAN-LINK");
    assert_eq!(stored.body["mentor_id"], "usr_1");
    assert_eq!(stored.body["user_agent"], browser[0].1);
    assert_eq!(stored.body["referrer_url"], browser[1].1);
    assert_eq!(stored.body["ip_address"], PEER.split(':').next().unwrap());

    // The pixel, with and without `.gif`: always a 1x1 GIF, never cached.
    for path in ["/p/JAN-LINK.gif", "/p/JAN-LINK"] {
        let pixel = app.call(Method::GET, path, &browser, None).await;
        assert_eq!(pixel.status, StatusCode::OK, "{path}");
        assert_eq!(pixel.headers["content-type"], "image/gif");
        assert_eq!(pixel.headers["cache-control"], "no-store, private");
        assert_eq!(pixel.headers["content-length"], "43");
    }
    assert_eq!(attributions_stored(&app).await, 3);

    // HEAD (link previews, scanners): the same headers, nothing recorded.
    let head = app.call(Method::HEAD, "/r/JAN-LINK", &[], None).await;
    assert_eq!(head.status, StatusCode::FOUND);
    assert_eq!(head.headers["location"], destination);
    let head = app.call(Method::HEAD, "/p/JAN-LINK.gif", &[], None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-type"], "image/gif");
    assert_eq!(attributions_stored(&app).await, 3);

    // A code without a destination: recorded, sent to the fallback with its id.
    let no_destination = app.call(Method::GET, "/r/NO-DEST", &browser, None).await;
    assert_eq!(no_destination.status, StatusCode::FOUND);
    let location = no_destination.headers["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{fallback}?attribution_id=attr_")),
        "{location}"
    );
    assert_eq!(attributions_stored(&app).await, 4);

    // Unknown, malformed or retired codes: the fallback, nothing recorded; the pixel still
    // answers its GIF.
    let retired = app
        .call(Method::DELETE, "/api/v1/referral-codes/NO-DEST", &[], None)
        .await;
    assert_eq!(retired.status, StatusCode::OK);
    for path in ["/r/NOPE-404?x=1", "/r/%3Cscript%3E", "/r/NO-DEST?x=1"] {
        let answer = app.call(Method::GET, path, &browser, None).await;
        assert_eq!(answer.status, StatusCode::FOUND, "{path}");
        let location = answer.headers["location"].to_str().unwrap();
        assert!(
            location == fallback || location == format!("{fallback}?x=1"),
            "{path}: {location}"
        );
    }
    let pixel = app
        .call(Method::GET, "/p/NOPE-404.gif", &browser, None)
        .await;
    assert_eq!(
        (
            pixel.status,
            pixel.headers["content-type"].to_str().unwrap()
        ),
        (StatusCode::OK, "image/gif")
    );
    assert_eq!(attributions_stored(&app).await, 4);

    // Other methods are refused with the JSON 405 listing GET and HEAD.
    let post = app.call(Method::POST, "/r/JAN-LINK", &[], Some("{}")).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.error().0, "method_not_allowed");
    app.stop().await;

    // Without --fallback-url an unknown code gets a short 404 page.
    let app = TestApp::start_mode(mode, &[]).await;
    let missing = app.call(Method::GET, "/r/NOPE-404", &browser, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.headers["content-type"], "text/html; charset=utf-8");
    assert!(missing.body.as_str().unwrap().contains("not active"));
    app.stop().await;
}

async fn a_rate_limited_visitor_is_still_redirected_and_the_click_only_counted(mode: Mode) {
    let app = TestApp::start_mode(
        mode,
        &["--rate-limit-per-ip", "1", "--rate-limit-per-ip-burst", "1"],
    )
    .await;
    let body = r#"{"mentor_id":"usr_1","destination_url":"https://platform.example.com/join"}"#;
    app.send_json(Method::PUT, "/api/v1/referral-codes/JAN-LINK", body)
        .await;
    let mut recorded = 0;
    for _ in 0..4 {
        let answer = app.call(Method::GET, "/r/JAN-LINK", &[], None).await;
        assert_eq!(answer.status, StatusCode::FOUND);
        let location = answer.headers["location"].to_str().unwrap();
        assert!(
            location.starts_with("https://platform.example.com/join"),
            "{location}"
        );
        recorded += usize::from(location.contains("attribution_id="));
        let pixel = app.call(Method::GET, "/p/JAN-LINK.gif", &[], None).await;
        assert_eq!(pixel.status, StatusCode::OK);
    }
    assert_eq!(
        recorded, 1,
        "one click within the limit, the rest only counted"
    );
    assert_eq!(attributions_stored(&app).await, 1);
    // The refused visits are counted (the registry is the process's: tests running at the
    // same time add theirs).
    let metrics = app.get("/metrics").await;
    let text = metrics.body.as_str().unwrap();
    let series = r#"referral_link_visits_total{link="redirect",outcome="rate_limited"} "#;
    let counted: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    assert!(counted >= 3, "{text}");
    app.stop().await;
}

/// Every hit gets a verdict from the single writer: a person's first visit counts, the same
/// visitor (code, client IP, user agent) again within the window is a duplicate of it, a
/// crawler, preview fetcher or missing user agent is a bot. Totals count only counted
/// clicks; the rest are listed, filterable and summed in `filtered_clicks`.
async fn every_click_gets_a_verdict_and_totals_count_only_counted_ones(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    let body = r#"{"mentor_id":"usr_1","destination_url":"https://platform.example.com/join"}"#;
    app.send_json(Method::PUT, "/api/v1/referral-codes/JAN-1", body)
        .await;
    let visitor = format!(
        r#""ip_address":"185.12.34.56","user_agent":"{}""#,
        common::BROWSER
    );
    let post = |fields: String| {
        let app = &app;
        async move {
            let answer = app.click(&format!(r#"{{"code":"JAN-1",{fields}}}"#)).await;
            assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
            assert!(
                answer.body.get("verdict").is_none(),
                "decided after the 201"
            );
            answer.body["id"].as_str().unwrap().to_owned()
        }
    };
    let first = post(visitor.clone()).await;
    let repeat = post(visitor.clone()).await;
    let again = post(visitor.clone()).await;
    let preview = post(r#""ip_address":"185.12.34.56","user_agent":"Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)""#.into()).await;
    let no_agent = post(r#""ip_address":"185.12.34.57""#.into()).await;
    let headless = post(r#""user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36""#.into()).await;
    // The pixel then the link, from the same browser: the link is a repeat of the pixel.
    let browser = [("user-agent", common::BROWSER)];
    let pixel = app.call(Method::GET, "/p/JAN-1.gif", &browser, None).await;
    assert_eq!(pixel.status, StatusCode::OK);
    let link = app.call(Method::GET, "/r/JAN-1", &browser, None).await;
    assert_eq!(link.status, StatusCode::FOUND);
    let location = link.headers["location"].to_str().unwrap();
    let link_id = location.split("attribution_id=").nth(1).unwrap().to_owned();
    // A link preview's HEAD records nothing; its GET is a bot.
    let preview_agent = [("user-agent", "facebookexternalhit/1.1")];
    app.call(Method::HEAD, "/r/JAN-1", &preview_agent, None)
        .await;
    app.call(Method::GET, "/r/JAN-1", &preview_agent, None)
        .await;

    let verdict_of = |id: String| {
        let app = &app;
        async move {
            let answer = app.get(&format!("{PREFIX}/{id}")).await;
            assert_eq!(answer.status, StatusCode::OK, "{id}");
            (
                answer.body["verdict"].as_str().unwrap().to_owned(),
                answer.body["duplicate_of"].as_str().map(str::to_owned),
            )
        }
    };
    let counted = ("counted".to_owned(), None);
    let duplicate_of = |id: &str| ("duplicate".to_owned(), Some(id.to_owned()));
    let bot = ("bot".to_owned(), None);
    assert_eq!(verdict_of(first.clone()).await, counted);
    assert_eq!(verdict_of(repeat.clone()).await, duplicate_of(&first));
    assert_eq!(verdict_of(again.clone()).await, duplicate_of(&first));
    for id in [&preview, &no_agent, &headless] {
        assert_eq!(verdict_of(id.clone()).await, bot, "{id}");
    }
    let pixel_hit = app
        .get(&format!("{PREFIX}?verdict=counted&limit=100"))
        .await;
    let pixel_id = pixel_hit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .find(|id| *id != first)
        .expect("the pixel's click is counted");
    assert_eq!(verdict_of(link_id.clone()).await, duplicate_of(&pixel_id));

    // Totals: counted clicks only, the others by verdict; the rate is over counted ones.
    let totals = app.get(&format!("{PREFIX}/mentor/usr_1/total")).await;
    assert_eq!(totals.body["total_clicks"], 2, "{}", totals.body);
    assert_eq!(
        totals.body["filtered_clicks"],
        serde_json::json!({"duplicate": 3, "bot": 4})
    );
    // Lists show every recorded click and filter by verdict.
    let count = |query: &'static str| {
        let app = &app;
        async move {
            let answer = app.get(&format!("{PREFIX}{query}")).await;
            assert_eq!(answer.status, StatusCode::OK, "{query}: {:?}", answer.body);
            answer.body["pagination"]["total"].as_u64().unwrap()
        }
    };
    assert_eq!(count("").await, 9);
    assert_eq!(count("?verdict=duplicate").await, 3);
    assert_eq!(count("/mentor/usr_1?verdict=bot").await, 4);
    assert_eq!(count("/mentor/usr_1").await, 9);
    let listed = app
        .get(&format!("{PREFIX}/mentor/usr_1?verdict=duplicate"))
        .await;
    assert!(
        listed.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["verdict"] == "duplicate" && row["duplicate_of"].is_string()),
        "{}",
        listed.body
    );
    let bad = app.get(&format!("{PREFIX}?verdict=human")).await;
    assert_eq!(
        (bad.status, bad.error()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_field", Some("verdict"))
        )
    );

    // A duplicate is a real visitor and converts; a bot's click cannot.
    let refused = app
        .confirm(&preview, r#"{"code":"JAN-1","new_member_id":"usr_bot"}"#)
        .await;
    assert_eq!(
        (refused.status, refused.error()),
        (StatusCode::CONFLICT, ("not_a_visitor", Some("id")))
    );
    let converted = app
        .confirm(&repeat, r#"{"code":"JAN-1","new_member_id":"usr_new"}"#)
        .await;
    assert_eq!(converted.status, StatusCode::OK, "{:?}", converted.body);
    let totals = app.get(&format!("{PREFIX}/mentor/usr_1/total")).await;
    assert_eq!(
        (
            &totals.body["total_conversions"],
            &totals.body["conversion_rate"]
        ),
        (&serde_json::json!(1), &serde_json::json!(0.5))
    );
    // Deleting a duplicate takes it out of its own count.
    let deleted = app
        .send_json(Method::DELETE, &format!("{PREFIX}/{again}"), "")
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let totals = app.get(&format!("{PREFIX}/mentor/usr_1/total")).await;
    assert_eq!(
        totals.body["filtered_clicks"],
        serde_json::json!({"duplicate": 2, "bot": 4})
    );
    assert_eq!(totals.body["total_clicks"], 2);

    // Metrics count clicks by verdict.
    let metrics = app.call(Method::GET, "/metrics", &[], None).await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    for verdict in ["counted", "duplicate", "bot"] {
        let line = format!("referral_clicks_recorded_total{{verdict=\"{verdict}\"}}");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    app.stop().await;
}

/// Cursor pages see every matching attribution exactly once, however many clicks arrive
/// (with any `occurred_at`) while a client walks them; the export writes the same list.
async fn cursors_walk_every_attribution_once_and_exports_stream_them(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    app.assign_code("FEB-2", "usr_2").await;
    let base = referral_schemas::Timestamp::now();
    let mut before = std::collections::BTreeSet::new();
    for n in 0..23 {
        // Some share an instant: the id breaks the tie.
        let at = from_base(base, -60 * (n / 2));
        before.insert(app.click_id("JAN-1", &at).await);
    }
    app.click_id("FEB-2", &from_base(base, -5)).await;
    let walk = |first: String| {
        let app = &app;
        async move {
            let mut seen = Vec::new();
            let mut uri = first;
            for _ in 0..50 {
                let page = app.get(&uri).await;
                assert_eq!(page.status, StatusCode::OK, "{uri}: {:?}", page.body);
                for row in page.body["data"].as_array().unwrap() {
                    seen.push(row["id"].as_str().unwrap().to_owned());
                }
                assert!(page.body["pagination"]["total"].as_u64().unwrap() >= 23);
                match page.body["pagination"]["next_cursor"].as_str() {
                    Some(cursor) => {
                        uri = format!("{PREFIX}/mentor/usr_1?limit=5&cursor={cursor}");
                        // Clicks keep arriving, now and back-dated, while the walk goes on.
                        app.click_id("JAN-1", &from_now(0)).await;
                        app.click_id("JAN-1", &from_base(base, -90)).await;
                    }
                    None => return seen,
                }
            }
            panic!("the cursors never ended");
        }
    };
    let seen = walk(format!("{PREFIX}/mentor/usr_1?limit=5")).await;
    let unique: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an attribution was listed twice");
    assert!(before.is_subset(&unique), "an attribution was skipped");

    // Errors name the field.
    for (query, field) in [
        ("?cursor=nope", "cursor"),
        ("?cursor=c1.12.attr_x", "cursor"),
        (
            "?page=2&cursor=c1.1.attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G",
            "cursor",
        ),
    ] {
        let answer = app.get(&format!("{PREFIX}{query}")).await;
        assert_eq!(
            (answer.status, answer.error().1),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{query}"
        );
    }

    // Old clicks far apart: the export reads its pages in widening windows down the past.
    for days in [3, 40, 400] {
        app.click_id("JAN-1", &from_now(-days * 86_400)).await;
    }
    // The export: every matching attribution, once; CSV (with a header) and NDJSON agree
    // with the list.
    let listed = app.get(&format!("{PREFIX}/mentor/usr_1?limit=100")).await;
    let listed: std::collections::BTreeSet<String> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect();
    let csv = app
        .get(&format!("{PREFIX}/export?format=csv&mentor_id=usr_1"))
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let text = csv.body.as_str().unwrap().to_owned();
    let mut lines = text.split("\r\n").filter(|line| !line.is_empty());
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with(r#""id","code","mentor_id","type","status","verdict""#)
    );
    let exported: std::collections::BTreeSet<String> = lines
        .map(|line| line.split(',').next().unwrap().trim_matches('"').to_owned())
        .collect();
    assert_eq!(exported, listed);
    let ndjson = app
        .get(&format!(
            "{PREFIX}/export?format=ndjson&code=jan-1&verdict=counted"
        ))
        .await;
    assert_eq!(ndjson.headers["content-type"], "application/x-ndjson");
    let rows: Vec<serde_json::Value> = ndjson
        .body
        .as_str()
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), listed.len());
    assert!(
        rows.iter()
            .all(|row| row["code"] == "JAN-1" && row["verdict"] == "counted")
    );
    let bad = app.get(&format!("{PREFIX}/export?format=xlsx")).await;
    assert_eq!(
        (bad.status, bad.error().1),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("format"))
    );
    app.stop().await;
}

/// Buckets and counts as Python's `zoneinfo` computes them (an implementation that shares
/// nothing with the service's): `[{"start", "clicks", "conversions"}]`.
fn zoneinfo_series(
    zone: &str,
    interval: &str,
    from: &str,
    to: &str,
    clicks: &[&str],
    conversions: &[&str],
) -> serde_json::Value {
    let script = r#"
import json, sys, zoneinfo
from datetime import datetime, timedelta, timezone
a = json.load(sys.stdin)
z = zoneinfo.ZoneInfo(a["zone"])
parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)
start, end = parse(a["from"]), parse(a["to"])
local = start.astimezone(z)
buckets = []
if a["interval"] == "day":
    day = local.date()
    while True:
        b = datetime(day.year, day.month, day.day, tzinfo=z)
        if b.astimezone(timezone.utc) >= end: break
        n = day + timedelta(days=1)
        buckets.append((b, datetime(n.year, n.month, n.day, tzinfo=z)))
        day = n
else:
    b = local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)
    while b < end:
        buckets.append((b.astimezone(z), (b + timedelta(hours=1)).astimezone(z)))
        b += timedelta(hours=1)
def count(instants, lo, hi):
    return sum(1 for t in map(parse, instants) if lo <= t < hi)
print(json.dumps([{"start": lo.isoformat(), "clicks": count(a["clicks"], lo, hi),
                   "conversions": count(a["conversions"], lo, hi)} for lo, hi in buckets]))
"#;
    let input = serde_json::json!({
        "zone": zone, "interval": interval, "from": from, "to": to,
        "clicks": clicks, "conversions": conversions,
    });
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the independent computation");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Local midnight of the day `now_ms` falls in, by `zoneinfo`.
fn zoneinfo_midnight(zone: &str, now_ms: i64) -> referral_schemas::Timestamp {
    let script = "import sys, zoneinfo\nfrom datetime import datetime\n\
        z = zoneinfo.ZoneInfo(sys.argv[1])\n\
        d = datetime.fromtimestamp(int(sys.argv[2]) / 1000, z).date()\n\
        print(int(datetime(d.year, d.month, d.day, tzinfo=z).timestamp() * 1000))";
    let output = std::process::Command::new("python3")
        .args(["-c", script, zone, &now_ms.to_string()])
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    let millis = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    referral_schemas::Timestamp::from_millis(millis)
}

/// Time series and calendar totals in the viewer's zone: days of 23 and 25 hours at DST
/// changes, half- and quarter-hour offsets, each checked against `zoneinfo`.
async fn time_series_and_calendar_totals_follow_the_viewers_zone(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    app.assign_code("JAN-1", "usr_ts").await;
    let clicks = [
        "2026-10-31T23:59:00-04:00",
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T23:59:00-05:00",
        "2026-11-02T00:00:00-05:00",
        "2026-11-10T18:29:00Z",
        "2026-11-10T18:30:00Z",
        "2026-11-11T05:00:00Z",
        "2026-11-12T00:14:59Z",
        "2026-11-12T00:15:00Z",
        "2026-11-12T01:20:00Z",
    ];
    let mut ids = Vec::new();
    for at in clicks {
        ids.push(app.click_id("JAN-1", at).await);
    }
    let confirmed_at = "2026-11-01T23:30:00-05:00";
    let body = format!(
        r#"{{"code":"JAN-1","new_member_id":"usr_ts_new","confirmed_at":"{confirmed_at}"}}"#
    );
    assert_eq!(app.confirm(&ids[2], &body).await.status, StatusCode::OK);
    // Confirmed 16 minutes after its click, past Kolkata's midnight (18:30Z) in the same
    // UTC hour: that hour is read per slot, conversions included.
    let late_confirmed_at = "2026-11-10T18:45:00Z";
    let body = format!(
        r#"{{"code":"JAN-1","new_member_id":"usr_ts_new2","confirmed_at":"{late_confirmed_at}"}}"#
    );
    assert_eq!(app.confirm(&ids[6], &body).await.status, StatusCode::OK);

    for (zone, interval, from, to) in [
        (
            "America/New_York",
            "day",
            "2026-10-31T00:00:00-04:00",
            "2026-11-03T00:00:00-05:00",
        ),
        (
            "America/New_York",
            "hour",
            "2026-11-01T00:00:00-04:00",
            "2026-11-01T03:00:00-05:00",
        ),
        (
            "Asia/Kolkata",
            "day",
            "2026-11-10T00:00:00+05:30",
            "2026-11-12T00:00:00+05:30",
        ),
        (
            "Asia/Kathmandu",
            "hour",
            "2026-11-12T00:00:00Z",
            "2026-11-12T02:00:00Z",
        ),
        (
            "UTC",
            "week",
            "2026-10-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
        ),
    ] {
        let query = format!(
            "interval={interval}&tz={zone}&from={}&to={}",
            from.replace('+', "%2B"),
            to.replace('+', "%2B")
        );
        let answer = app
            .get(&format!("{PREFIX}/mentor/usr_ts/timeseries?{query}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{query}: {:?}", answer.body);
        assert_eq!(answer.body["tz"], zone);
        assert_eq!(answer.body["interval"], interval);
        let got: Vec<serde_json::Value> = answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|point| {
                serde_json::json!({
                    "start": point["start"], "clicks": point["clicks"],
                    "conversions": point["conversions"],
                })
            })
            .collect();
        if interval == "week" {
            // zoneinfo's side computes days and hours; weeks start on Monday and hold all.
            let total: u64 = got.iter().map(|p| p["clicks"].as_u64().unwrap()).sum();
            assert_eq!(total, clicks.len() as u64);
            assert_eq!(got[0]["start"], "2026-10-19T00:00:00+00:00");
            continue;
        }
        let expected = zoneinfo_series(
            zone,
            interval,
            from,
            to,
            &clicks,
            &[confirmed_at, late_confirmed_at],
        );
        assert_eq!(serde_json::Value::Array(got), expected, "{zone} {interval}");
    }

    // All time starts at the first click's day: 18:45Z is already the 11th in Kolkata,
    // though its UTC hour began on the 10th there.
    app.assign_code("KOL-1", "usr_kol").await;
    app.click_id("KOL-1", "2026-11-10T18:45:00Z").await;
    let all_time = app
        .get(&format!(
            "{PREFIX}/mentor/usr_kol/timeseries?interval=day&tz=Asia/Kolkata&period=all_time"
        ))
        .await;
    assert_eq!(all_time.status, StatusCode::OK, "{:?}", all_time.body);
    assert_eq!(
        all_time.body["data"][0]["start"],
        "2026-11-11T00:00:00+05:30"
    );
    assert_eq!(all_time.body["data"][0]["clicks"], 1);

    // Calendar totals: today and yesterday in Kolkata, around its local midnight.
    let now = referral_schemas::Timestamp::now();
    let midnight = zoneinfo_midnight("Asia/Kolkata", now.as_millis());
    let before = referral_schemas::Timestamp::from_millis(midnight.as_millis() - 1_000);
    let after = referral_schemas::Timestamp::from_millis(midnight.as_millis() + 1_000);
    app.click_id("JAN-1", &before.to_string()).await;
    if after <= now {
        app.click_id("JAN-1", &after.to_string()).await;
    }
    let totals = |period: &'static str| {
        let app = &app;
        async move {
            let answer = app
                .get(&format!(
                    "{PREFIX}/mentor/usr_ts/total?tz=Asia/Kolkata&period={period}"
                ))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
            assert_eq!(answer.body["period"], period);
            answer.body["total_clicks"].as_u64().unwrap()
        }
    };
    assert_eq!(totals("today").await, u64::from(after <= now));
    assert_eq!(totals("yesterday").await, 1);
    let bad = app
        .get(&format!("{PREFIX}/mentor/usr_ts/timeseries?tz=Mars/Base"))
        .await;
    assert_eq!(
        (bad.status, bad.error().1),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("tz"))
    );
    let too_many = app
        .get(&format!(
            "{PREFIX}/mentor/usr_ts/timeseries?interval=hour&period=90d"
        ))
        .await;
    assert_eq!(too_many.error().1, Some("interval"));
    app.stop().await;
}

/// The leaderboard ranks mentors by conversions (or counted clicks), then by id, over a
/// period in a zone; repeat visits and bots do not rank.
async fn the_leaderboard_ranks_mentors_by_conversions_or_clicks(mode: Mode) {
    let app = TestApp::start_mode(mode, &[]).await;
    for (code, mentor) in [("TOP-A", "usr_a"), ("TOP-B", "usr_b"), ("TOP-C", "usr_c")] {
        app.assign_code(code, mentor).await;
    }
    let recent = from_now(-3600);
    let mut ids = std::collections::HashMap::new();
    for (code, clicks) in [("TOP-A", 3), ("TOP-B", 2), ("TOP-C", 4)] {
        for _ in 0..clicks {
            ids.entry(code)
                .or_insert_with(Vec::new)
                .push(app.click_id(code, &recent).await);
        }
    }
    // Bots and repeats never rank.
    for _ in 0..5 {
        app.click(r#"{"code":"TOP-B","ip_address":"185.12.34.56"}"#)
            .await;
    }
    for (code, n, member) in [
        ("TOP-A", 0, "usr_m1"),
        ("TOP-B", 0, "usr_m2"),
        ("TOP-B", 1, "usr_m3"),
    ] {
        let body = format!(r#"{{"code":"{code}","new_member_id":"{member}"}}"#);
        assert_eq!(
            app.confirm(&ids[code][n], &body).await.status,
            StatusCode::OK
        );
    }
    let ranks = |query: &'static str| {
        let app = &app;
        async move {
            let answer = app.get(&format!("{PREFIX}/mentors/top{query}")).await;
            assert_eq!(answer.status, StatusCode::OK, "{query}: {:?}", answer.body);
            answer.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| {
                    (
                        row["mentor_id"].as_str().unwrap().to_owned(),
                        row["total_clicks"].as_u64().unwrap(),
                        row["total_conversions"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let row = |mentor: &str, clicks, conversions| (mentor.to_owned(), clicks, conversions);
    assert_eq!(
        ranks("?period=7d").await,
        [row("usr_b", 2, 2), row("usr_a", 3, 1), row("usr_c", 4, 0)]
    );
    assert_eq!(
        ranks("?by=clicks&limit=2").await,
        [row("usr_c", 4, 0), row("usr_a", 3, 1)]
    );
    // A calendar period off the UTC hour is counted exactly: an hour ago is this month in
    // both zones, but around the turn of a month (then this is not compared).
    let kolkata = ranks("?period=this_month&tz=Asia/Kolkata&by=clicks").await;
    let this_month_utc = ranks("?period=this_month&by=clicks").await;
    let month =
        |millis: i64| referral_schemas::Timestamp::from_millis(millis).to_string()[..7].to_owned();
    let now = referral_schemas::Timestamp::now().as_millis();
    let (hour, india) = (3_600_000, 19_800_000);
    let same_month =
        month(now - hour) == month(now) && month(now - hour + india) == month(now + india);
    if same_month {
        assert_eq!(kolkata.len(), 3);
        assert_eq!(kolkata, this_month_utc);
    }
    for (query, field) in [
        ("?by=money", "by"),
        ("?limit=0", "limit"),
        ("?tz=Nowhere", "tz"),
    ] {
        let answer = app.get(&format!("{PREFIX}/mentors/top{query}")).await;
        assert_eq!(
            (answer.status, answer.error().1),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{query}"
        );
    }
    app.stop().await;
}

/// Edges share nothing but the log: a visitor who clicks through one edge (a
/// `referral-ingest`) and again through another (`referral-api`) is one visitor, because
/// the single writer decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeat_through_another_edge_is_still_a_duplicate() {
    use http_body_util::BodyExt;
    let app = TestApp::start_mode(Mode::Production, &[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let brokers = app.kafka_brokers().unwrap().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = <referral_ingest::Config as clap::Parser>::try_parse_from([
        "referral-ingest",
        "--kafka-brokers",
        &brokers,
    ])
    .unwrap();
    let (stop, shutdown) = referral_kit::shutdown::channel();
    let edge = tokio::spawn(referral_ingest::run(listener, config, shutdown));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let visitor = format!(
        r#"{{"code":"JAN-1","ip_address":"185.12.34.56","user_agent":"{}"}}"#,
        common::BROWSER
    );
    // The other edge follows the codes topic: retry until it knows the code.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let first = loop {
        let request = http::Request::post(format!("http://{address}{PREFIX}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                visitor.clone(),
            )))
            .unwrap();
        if let Ok(response) = client.request(request).await {
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if status == StatusCode::CREATED {
                break body["id"].as_str().unwrap().to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second edge never took the click: {status} {body}"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let again = app.click(&visitor).await;
    assert_eq!(again.status, StatusCode::CREATED);
    let again = again.body["id"].as_str().unwrap().to_owned();
    let read = app.get(&format!("{PREFIX}/{again}")).await;
    assert_eq!(read.body["verdict"], "duplicate", "{}", read.body);
    assert_eq!(read.body["duplicate_of"], first.as_str());
    let read = app.get(&format!("{PREFIX}/{first}")).await;
    assert_eq!(read.body["verdict"], "counted", "{}", read.body);
    stop.trigger();
    edge.await.unwrap().unwrap();
    app.stop().await;
}

both_modes!(
    a_click_is_readable_confirmable_and_deletable_right_after_its_201,
    click_post_records_the_contract_record_on_both_prefixes,
    click_defaults_come_from_the_connection_and_headers,
    click_errors_are_json_with_status_and_field,
    list_paginates_filters_and_orders_newest_first,
    get_by_id_is_404_for_unknown_and_malformed_ids,
    confirmation_rules,
    reversals_restate_the_totals_of_their_confirmation,
    delete_removes_from_reads_lists_and_totals,
    mentor_list_and_totals_by_period,
    referral_codes_route_clicks_and_can_be_reassigned_or_retired,
    tokens_guard_everything_but_the_click_post,
    unknown_routes_and_methods_answer_json,
    health_readiness_and_metrics,
    a_flooding_client_gets_429_while_others_still_get_201,
    links_record_clicks_and_always_answer_the_visitor,
    a_rate_limited_visitor_is_still_redirected_and_the_click_only_counted,
    every_click_gets_a_verdict_and_totals_count_only_counted_ones,
    cursors_walk_every_attribution_once_and_exports_stream_them,
    time_series_and_calendar_totals_follow_the_viewers_zone,
    the_leaderboard_ranks_mentors_by_conversions_or_clicks,
);

// The click edge's defences. The edge is the same code in both modes (only the log behind
// it differs), so these run on the embedded pipeline only.

/// Proxies append the peer they saw to the client's `X-Forwarded-For`: a hop the client
/// writes on the left is its own claim, and must not buy it a fresh per-IP bucket (nor be
/// stored as its address). An IPv6 client is one client per /64.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spoofed_leftmost_hop_does_not_escape_the_per_ip_limit() {
    let app = TestApp::start(&[
        "--trusted-proxies",
        "203.0.113.0/24",
        "--rate-limit-per-ip",
        "1",
        "--rate-limit-per-ip-burst",
        "2",
        "--rate-limit-per-code",
        "0",
        "--rate-limit-global",
        "0",
    ])
    .await;
    app.assign_code("JAN-1", "usr_1").await;
    let click_via = |forwarded: Vec<String>| {
        let app = &app;
        async move {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(
                forwarded
                    .iter()
                    .map(|line| ("x-forwarded-for", line.as_str())),
            );
            app.call(Method::POST, PREFIX, &headers, Some(r#"{"code":"JAN-1"}"#))
                .await
        }
    };
    let first = click_via(vec!["192.0.2.200, 198.51.100.77".to_owned()]).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert_eq!(
        first.body["ip_address"], "198.51.100.77",
        "the client's own claim is not stored as its address"
    );
    assert_eq!(first.headers["x-ratelimit-remaining"], "1");
    let second = click_via(vec!["198.51.100.77".to_owned()]).await;
    assert_eq!(second.status, StatusCode::CREATED, "{:?}", second.body);
    assert_eq!(second.headers["x-ratelimit-remaining"], "0");
    for hop in 1..=8 {
        for forwarded in [
            vec![format!("192.0.2.{hop}, 198.51.100.77")],
            vec![format!("192.0.2.{hop}"), "198.51.100.77".to_owned()],
            vec![format!("203.0.113.{hop}, 198.51.100.77")],
        ] {
            let spoofed = click_via(forwarded.clone()).await;
            assert_eq!(
                (spoofed.status, spoofed.error().0),
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                "{forwarded:?}: {:?}",
                spoofed.body
            );
        }
    }
    assert_eq!(
        click_via(vec!["198.51.100.78".to_owned()]).await.status,
        StatusCode::CREATED,
        "another client is not limited"
    );

    // One /64, one bucket; the next /64 is another client.
    for (address, status) in [
        ("2001:db8:1:2::1", StatusCode::CREATED),
        ("2001:db8:1:2::2", StatusCode::CREATED),
        ("2001:db8:1:2::3", StatusCode::TOO_MANY_REQUESTS),
        (
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            StatusCode::TOO_MANY_REQUESTS,
        ),
        ("2001:db8:1:3::1", StatusCode::CREATED),
    ] {
        let answer = click_via(vec![address.to_owned()]).await;
        assert_eq!(answer.status, status, "{address}: {:?}", answer.body);
    }
    app.stop().await;
}

/// A body that signals when it is first read, and then never sends anything, nor its end:
/// a client trickling its body.
struct StalledBody(Option<tokio::sync::oneshot::Sender<()>>);

impl axum::body::HttpBody for StalledBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(read) = self.0.take() {
            let _ = read.send(());
        }
        std::task::Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

/// The in-flight permits guard the work, not the network: a click whose body is still on
/// its way holds none, so with `--max-in-flight 1` another click is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_body_does_not_hold_an_in_flight_permit() {
    let app = TestApp::start(&["--max-in-flight", "1"]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let (read, being_read) = tokio::sync::oneshot::channel();
    let mut stalled = http::Request::builder()
        .method(Method::POST)
        .uri(PREFIX)
        .header("content-type", "application/json")
        .header("content-length", "100")
        .body(axum::body::Body::new(StalledBody(Some(read))))
        .unwrap();
    stalled.extensions_mut().insert(axum::extract::ConnectInfo(
        common::PEER.parse::<std::net::SocketAddr>().unwrap(),
    ));
    let stalled = tokio::spawn({
        use tower::ServiceExt;
        app.router.clone().oneshot(stalled)
    });
    tokio::time::timeout(std::time::Duration::from_secs(10), being_read)
        .await
        .expect("the stalled click's body is being read")
        .unwrap();
    for _ in 0..2 {
        let answer = app.click(r#"{"code":"JAN-1"}"#).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    }
    assert!(!stalled.is_finished(), "the stalled click is still waiting");
    stalled.abort();
    app.stop().await;
}

/// Unknown codes are refused before the per-code and global buckets are spent: a flood of
/// them cannot get a real code, or every click, a 429. They still count against the
/// client's per-IP limit, which comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_codes_do_not_spend_the_code_and_global_limits() {
    let app = TestApp::start(&[
        "--rate-limit-per-ip",
        "1",
        "--rate-limit-per-ip-burst",
        "100",
        "--rate-limit-per-code",
        "1",
        "--rate-limit-per-code-burst",
        "1",
        "--rate-limit-global",
        "1",
        "--rate-limit-global-burst",
        "2",
    ])
    .await;
    app.assign_code("JAN-1", "usr_1").await;
    for attempt in 0..40 {
        // The same unknown code again and again, and a new one each time.
        let body = if attempt % 2 == 0 {
            r#"{"code":"NOPE-1"}"#.to_owned()
        } else {
            format!(r#"{{"code":"NOPE-{attempt}"}}"#)
        };
        let answer = app.click(&body).await;
        assert_eq!(
            (answer.status, answer.error()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                ("unknown_code", Some("code"))
            ),
            "{body}"
        );
    }
    let known = app.click(r#"{"code":"JAN-1"}"#).await;
    assert_eq!(known.status, StatusCode::CREATED, "{:?}", known.body);
    let remaining: u32 = known.headers["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining < 80,
        "the unknown codes counted against the client's per-IP limit: {remaining} left"
    );
    // The known code's own limit still applies.
    let again = app.click(r#"{"code":"JAN-1"}"#).await;
    assert_eq!(
        (again.status, again.error()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            ("rate_limited", Some("code"))
        )
    );
    app.stop().await;
}
