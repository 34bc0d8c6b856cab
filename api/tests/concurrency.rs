//! Exact totals and single winners under concurrency: the single writer at work.

mod common;

use common::{Mode, PREFIX, TestApp, from_now};
use http::{Method, StatusCode};

async fn a_thousand_concurrent_clicks_count_exactly_a_thousand(mode: Mode) {
    let app = std::sync::Arc::new(TestApp::start_mode(mode, &[]).await);
    app.assign_code("JAN-1", "usr_4491").await;
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.visit("JAN-1").await.status })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(app.totals("usr_4491", "").await.0, 1000);
    assert_eq!(app.totals("usr_4491", "?period=24h").await.0, 1000);
    assert_eq!(
        app.get(&format!("{PREFIX}/mentor/usr_4491")).await.body["pagination"]["total"],
        1000
    );
}

async fn fifty_concurrent_confirms_have_exactly_one_winner(mode: Mode) {
    let app = std::sync::Arc::new(TestApp::start_mode(mode, &[]).await);
    app.assign_code("JAN-1", "usr_4491").await;
    let id = app.click_id("JAN-1", &from_now(-60)).await;
    let tasks: Vec<_> = (0..50)
        .map(|member| {
            let app = app.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let body = format!(r#"{{"code":"JAN-1","new_member_id":"usr_m{member}"}}"#);
                let answer = app
                    .call(
                        Method::PUT,
                        &format!("{PREFIX}/{id}"),
                        &[("content-type", "application/json")],
                        Some(&body),
                    )
                    .await;
                (answer.status, answer.error().0.to_owned())
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::OK, _) => won += 1,
            (StatusCode::CONFLICT, code) => assert_eq!(code, "already_confirmed"),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(app.totals("usr_4491", "").await.1, 1);
}

async fn one_member_claimed_by_two_attributions_at_once_goes_to_one(mode: Mode) {
    let app = std::sync::Arc::new(TestApp::start_mode(mode, &[]).await);
    app.assign_code("JAN-1", "usr_1").await;
    app.assign_code("FEB-2", "usr_2").await;
    let first = app.click_id("JAN-1", &from_now(-60)).await;
    let second = app.click_id("FEB-2", &from_now(-60)).await;
    let claim = |id: String, code: &'static str| {
        let app = app.clone();
        tokio::spawn(async move {
            app.confirm(
                &id,
                &format!(r#"{{"code":"{code}","new_member_id":"usr_shared"}}"#),
            )
            .await
            .status
        })
    };
    let (a, b) = (claim(first, "JAN-1"), claim(second, "FEB-2"));
    let mut statuses = [a.await.unwrap(), b.await.unwrap()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let conversions = app.totals("usr_1", "").await.1 + app.totals("usr_2", "").await.1;
    assert_eq!(conversions, 1);
}

async fn racing_confirm_and_delete_leave_consistent_totals(mode: Mode) {
    let app = std::sync::Arc::new(TestApp::start_mode(mode, &[]).await);
    app.assign_code("JAN-1", "usr_1").await;
    for round in 0..20 {
        let id = app.click_id("JAN-1", &from_now(-60)).await;
        let confirm = {
            let app = app.clone();
            let id = id.clone();
            tokio::spawn(async move {
                app.confirm(
                    &id,
                    &format!(r#"{{"code":"JAN-1","new_member_id":"usr_r{round}"}}"#),
                )
                .await
                .status
            })
        };
        let delete = {
            let app = app.clone();
            tokio::spawn(async move {
                app.call(Method::DELETE, &format!("{PREFIX}/{id}"), &[], None)
                    .await
                    .status
            })
        };
        let (confirmed, deleted) = (confirm.await.unwrap(), delete.await.unwrap());
        assert_eq!(
            deleted,
            StatusCode::OK,
            "the delete always finds the attribution"
        );
        assert!(
            matches!(confirmed, StatusCode::OK | StatusCode::NOT_FOUND),
            "{confirmed}"
        );
    }
    // Every attribution was deleted, whichever command won: nothing may remain counted.
    assert_eq!(
        app.totals("usr_1", "").await,
        (0, 0, 0.0, "all_time".into())
    );
}

both_modes!(
    a_thousand_concurrent_clicks_count_exactly_a_thousand,
    fifty_concurrent_confirms_have_exactly_one_winner,
    one_member_claimed_by_two_attributions_at_once_goes_to_one,
    racing_confirm_and_delete_leave_consistent_totals,
);
