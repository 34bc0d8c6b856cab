//! What only the embedded mode has: a store that is applied from the embedded log a moment
//! after the 201, within a bound. Past the bound (`--max-apply-lag`) clicks and commands
//! are refused at once with 503 and `Retry-After`, and `/readyz` says why; once the store
//! catches up, everything acknowledged is there, once.
//!
//! The store is held back the way a real one is: another process holds SQLite's write lock
//! (a backup, an operator's shell), so the consumer's transactions wait and fail.

mod common;

use std::time::{Duration, Instant};

use common::{PREFIX, TestApp, from_now};
use http::StatusCode;
use rusqlite::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_lag_bound_clicks_get_503_and_nothing_acknowledged_is_lost() {
    let app = TestApp::start(&["--max-apply-lag", "5"]).await;
    app.assign_code("JAN-1", "usr_1").await;
    // The store is locked by someone else: the consumer cannot apply anything.
    let blocker = Connection::open(app.dir.path().join("referral.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let mut acknowledged = Vec::new();
    let refused = loop {
        let answer = app
            .click(&format!(
                r#"{{"code":"JAN-1","occurred_at":"{}",{}}}"#,
                from_now(-10),
                common::new_visitor()
            ))
            .await;
        if answer.status != StatusCode::CREATED {
            break answer;
        }
        acknowledged.push(answer.body["id"].as_str().unwrap().to_owned());
        assert!(acknowledged.len() <= 6, "the lag bound was not enforced");
    };
    assert_eq!(acknowledged.len(), 6, "acknowledged up to the bound");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error().0, "overloaded");
    assert!(refused.headers.contains_key("retry-after"));
    let ready = app.get_now("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let reason = ready.body["reason"].as_str().unwrap();
    assert!(reason.contains("6 events behind the log"), "{reason}");

    // The lock goes: the store catches up, readiness comes back, clicks are taken again.
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get_now("/readyz").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "the store never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.visit("JAN-1").await.status, StatusCode::CREATED);
    for id in &acknowledged {
        assert_eq!(
            app.get(&format!("{PREFIX}/{id}")).await.status,
            StatusCode::OK,
            "acknowledged click {id} lost"
        );
    }
    assert_eq!(
        app.totals("usr_1", "").await.0,
        7,
        "each click counted once"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_click_is_readable_right_after_its_201_while_the_store_lags() {
    let app = TestApp::start(&["--read-after-write-wait", "10s"]).await;
    app.assign_code("JAN-1", "usr_1").await;
    let blocker = Connection::open(app.dir.path().join("referral.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let answer = app.click(r#"{"code":"JAN-1"}"#).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    // The read waits for the store (bounded) instead of answering 404.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        blocker.execute_batch("ROLLBACK").unwrap();
    });
    let started = Instant::now();
    let read = app.get_now(&format!("{PREFIX}/{id}")).await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it did wait"
    );
    release.await.unwrap();
    // An id that was never acknowledged is 404 at once when nothing is pending.
    app.settle().await;
    let started = Instant::now();
    let missing = app
        .get_now(&format!("{PREFIX}/attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G"))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(started.elapsed() < Duration::from_secs(1));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_fails_its_writes_fails_readiness_until_it_recovers() {
    let app = TestApp::start(&[]).await;
    app.assign_code("JAN-1", "usr_1").await;
    assert_eq!(app.get_now("/readyz").await.status, StatusCode::OK);
    let blocker = Connection::open(app.dir.path().join("referral.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // Well below the lag bound: the log takes the click, the store cannot apply it.
    let answer = app.visit("JAN-1").await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let ready = app.get_now("/readyz").await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            break ready.body["reason"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "readiness never saw the store fail"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("store"), "{reason}");
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get_now("/readyz").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "readiness never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.totals("usr_1", "").await.0, 1, "the click applied once");
    app.stop().await;
}
