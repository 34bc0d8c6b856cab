//! The ClickHouse schema and every query the API runs, on two engines: the ClickHouse
//! 18.16 server the other tests use, and a current engine (chdb, ClickHouse 26.x) in
//! process. The same data is written to both and every query must give the same answer.
//!
//! The data is written by the production writer (plan + sink) into 18.16, then copied row
//! for row (`FORMAT Values`) into chdb's base tables; chdb's materialized views fill the
//! sorted copies, so the views' DDL is exercised there too.

use std::collections::HashMap;
use std::time::Duration;

use referral_load_tests::services::{ClickHouseServer, chdb_run};
use referral_pipeline::plan::{self, Known, PartitionBatch, References};
use referral_pipeline::store::clickhouse::queries::{
    self, ATTRIBUTION_COLUMNS, CODE_COLUMNS, ListTotal, ReadQuery,
};
use referral_pipeline::store::clickhouse::reader::ClickHouseReader;
use referral_pipeline::store::clickhouse::sink::ClickHouseSink;
use referral_pipeline::store::clickhouse::{ClickHouseSettings, migrate};
use referral_pipeline::store::span::SlotSpan;
use referral_pipeline::store::{
    AttributionReader, MentorTotals, SlotCounts, StoreWriter, TopWindow,
};
use referral_schemas::messages::{
    AssignCode, ClickEvent, ConfirmConversion, DeleteAttribution, LogEvent, RetireCode,
    ReverseConversion,
};
use referral_schemas::migrations::{CLICKHOUSE, statements};
use referral_schemas::query::{AttributionFilter, HourRange, PageRequest, RankBy};
use referral_schemas::timestamp::HOUR_MS;
use referral_schemas::verdict::ClickVerdict;
use referral_schemas::{AttributionKind, AttributionStatus, Timestamp};
use serde_json::Value;

/// Tables the writer inserts into (the sorted copies are filled by materialized views).
const BASE_TABLES: &[&str] = &[
    "attributions",
    "attributed_members",
    "referral_codes",
    "command_verdicts",
    "mentor_totals",
];

/// Drops migration 5's copy of the conversions and the record of every migration, so the
/// next `migrate` creates the copy again from what is stored.
async fn forget_conversions_copy(settings: &ClickHouseSettings) {
    for statement in [
        "DROP TABLE attributions_by_confirmation_feed",
        "DROP TABLE attributions_by_confirmation",
        "DROP TABLE schema_migrations",
    ] {
        settings
            .client()
            .query(statement)
            .execute()
            .await
            .expect(statement);
    }
}

/// `[at(h), at(h + 1))` for every other hour `h` in `[from, to)`: more ranges than an
/// `OR` is used for, each on the hour, so the slot set is read.
fn every_other_hour(from: i64, to: i64) -> Vec<(i64, i64)> {
    (from..to)
        .step_by(2)
        .map(|hour| (at(hour).as_millis(), at(hour + 1).as_millis()))
        .collect()
}

/// A fixed instant: 2026-03-20T10:00:00Z plus `hours`.
fn at(hours: i64) -> Timestamp {
    Timestamp::from_millis(1_773_997_200_000 + hours * HOUR_MS)
}

/// The dedup window of the fixture: a visitor's click within two hours of its counted one
/// is a duplicate.
const DEDUP_WINDOW_MS: i64 = 2 * HOUR_MS;

/// One click an hour; every tenth from a link-preview bot.
fn click(id: &str, code: &str, mentor: &str, hours: i64) -> LogEvent {
    let agent = if hours % 10 == 9 {
        "Twitterbot/1.0"
    } else {
        "Mozilla/5.0 (X11; Linux x86_64) 'quoted' \\ Firefox/120.0"
    };
    LogEvent::Click(ClickEvent {
        attribution_id: id.into(),
        code: code.into(),
        mentor_id: mentor.into(),
        ip_address: "203.0.113.7".into(),
        user_agent: Some(agent.into()),
        referrer_url: (hours % 2 == 0).then(|| "https://instagram.com".into()),
        occurred_at: at(hours),
        received_at: at(hours),
    })
}

/// Clicks over three days for three mentors, confirmations, a deletion, codes.
fn history() -> Vec<LogEvent> {
    let mut events = vec![
        LogEvent::AssignCode(AssignCode {
            command_id: "cmd_code_1".into(),
            code: "JAN-1".into(),
            mentor_id: "usr_jan".into(),
            destination_url: None,
            issued_at: at(0),
        }),
        LogEvent::AssignCode(AssignCode {
            command_id: "cmd_code_2".into(),
            code: "ANA-1".into(),
            mentor_id: "usr_ana".into(),
            destination_url: None,
            issued_at: at(0),
        }),
        LogEvent::AssignCode(AssignCode {
            command_id: "cmd_code_3".into(),
            code: "OLD-1".into(),
            mentor_id: "usr_ana".into(),
            destination_url: None,
            issued_at: at(0),
        }),
        LogEvent::RetireCode(RetireCode {
            command_id: "cmd_code_4".into(),
            code: "OLD-1".into(),
            issued_at: at(1),
        }),
    ];
    for n in 0..60_i64 {
        let (code, mentor) = match n % 3 {
            0 | 1 => ("JAN-1", "usr_jan"),
            _ => ("ANA-1", "usr_ana"),
        };
        events.push(click(&format!("attr_{n:03}"), code, mentor, n));
    }
    for (command, id, member, hours) in [
        ("cmd_c1", "attr_000", "new_1", 70),
        ("cmd_c2", "attr_002", "new_2", 71),
        ("cmd_c3", "attr_004", "new_1", 72), // member taken: rejected
        ("cmd_c4", "attr_030", "new_3", 73),
        ("cmd_c5", "attr_009", "new_4", 73), // a bot's click: rejected
    ] {
        events.push(LogEvent::ConfirmConversion(ConfirmConversion {
            command_id: command.into(),
            attribution_id: id.into(),
            code: if id == "attr_002" { "ANA-1" } else { "JAN-1" }.into(),
            new_member_id: member.into(),
            confirmed_at: at(hours),
            issued_at: at(hours),
        }));
    }
    events.push(LogEvent::DeleteAttribution(DeleteAttribution {
        command_id: "cmd_d1".into(),
        attribution_id: "attr_030".into(),
        issued_at: at(74),
    }));
    events
}

/// Writes the history as two flushes through the production writer.
async fn write_history(settings: &ClickHouseSettings) {
    let events = history();
    let (first, second) = events.split_at(40);
    write_flushes(settings, &[first, second], 0).await;
}

/// Writes each of `flushes` as one flush of partition 0 through the production writer, the
/// first at offset `next`.
async fn write_flushes(settings: &ClickHouseSettings, flushes: &[&[LogEvent]], mut next: i64) {
    let mut sink = ClickHouseSink::connect(settings).await.expect("connect");
    let mut dedup = plan::DedupWindows::new(DEDUP_WINDOW_MS);
    for &part in flushes {
        let key = ("referral-events".to_owned(), 0);
        let checkpoints = sink
            .checkpoints(std::slice::from_ref(&key))
            .await
            .expect("checkpoint");
        let batch = PartitionBatch {
            topic: key.0.clone(),
            partition: 0,
            events: (next..).zip(part.iter().cloned()).collect(),
            end: next + part.len() as i64,
        };
        next = batch.end;
        let known: Known = sink.load(&References::of(part.iter())).await.expect("load");
        let plan = plan::plan(
            std::slice::from_ref(&batch),
            &checkpoints,
            known,
            90 * 24 * HOUR_MS,
            &mut dedup,
            at(80),
        );
        sink.write_state(&plan).await.expect("state");
        sink.commit(&plan, "fixture").await.expect("totals");
    }
}

fn total_query(filter: &AttributionFilter) -> ReadQuery {
    match queries::list_total(filter) {
        ListTotal::Days(query) | ListTotal::Bounded(query) => query,
    }
}

/// `query` as a subquery between `before` and `after`.
fn wrapped(before: &str, query: ReadQuery, after: &str) -> ReadQuery {
    ReadQuery {
        sql: format!("{before} ({}) {after}", query.sql),
        binds: query.binds,
    }
}

/// Every query the API runs, with the columns `?fields` stands for.
fn api_queries() -> Vec<(&'static str, ReadQuery, &'static str)> {
    let page = |page, limit| PageRequest { page, limit };
    let mentor = |id: &str| AttributionFilter {
        mentor_id: Some(id.into()),
        ..AttributionFilter::default()
    };
    let all = AttributionFilter::default();
    let pending_jan = AttributionFilter {
        status: Some(AttributionStatus::Pending),
        code: Some("JAN-1".into()),
        ..AttributionFilter::default()
    };
    let conversions_in_range = AttributionFilter {
        kind: Some(AttributionKind::Conversion),
        from: Some(at(0)),
        to: Some(at(10)),
        ..AttributionFilter::default()
    };
    let counted_below = queries::CountedBelow {
        topic: "referral-events",
        partition: 0,
        checkpoint: 50,
        since_id: None,
    };
    let duplicates = AttributionFilter {
        verdict: Some(ClickVerdict::Duplicate),
        ..AttributionFilter::default()
    };
    let bots_of_jan = AttributionFilter {
        mentor_id: Some("usr_jan".into()),
        verdict: Some(ClickVerdict::Bot),
        ..AttributionFilter::default()
    };
    let mentor_window = AttributionFilter {
        mentor_id: Some("usr_jan".into()),
        from: Some(at(5)),
        to: Some(at(40)),
        ..AttributionFilter::default()
    };
    let hours = |from: Option<i64>, to: Option<i64>| HourRange {
        from_hour: from.map(|h| at(h).hour_bucket()),
        to_hour: to.map(|h| at(h).hour_bucket()),
    };
    vec![
        (
            "attribution live",
            queries::attribution("attr_001"),
            ATTRIBUTION_COLUMNS,
        ),
        (
            "attribution deleted",
            queries::attribution("attr_030"),
            ATTRIBUTION_COLUMNS,
        ),
        (
            "attribution unknown",
            queries::attribution("attr_999"),
            ATTRIBUTION_COLUMNS,
        ),
        ("list all: count", queries::attribution_count(&all), ""),
        ("list all: total", total_query(&all), ""),
        (
            "list all: page 1",
            queries::attribution_page(&all, page(1, 20)),
            ATTRIBUTION_COLUMNS,
        ),
        (
            "list all: page 3",
            queries::attribution_page(&all, page(3, 20)),
            ATTRIBUTION_COLUMNS,
        ),
        (
            "list pending JAN-1: count",
            queries::attribution_count(&pending_jan),
            "",
        ),
        (
            "list pending JAN-1",
            queries::attribution_page(&pending_jan, page(1, 100)),
            ATTRIBUTION_COLUMNS,
        ),
        (
            "list conversions in range",
            queries::attribution_page(&conversions_in_range, page(1, 10)),
            ATTRIBUTION_COLUMNS,
        ),
        (
            "list duplicates: count",
            queries::attribution_count(&duplicates),
            "",
        ),
        (
            "list duplicates",
            queries::attribution_page(&duplicates, page(1, 100)),
            ATTRIBUTION_COLUMNS,
        ),
        ("mentor bots: total", total_query(&bots_of_jan), ""),
        (
            "mentor bots",
            queries::attribution_page(&bots_of_jan, page(1, 100)),
            ATTRIBUTION_COLUMNS,
        ),
        ("mentor list: total", total_query(&mentor("usr_jan")), ""),
        // Without FINAL the versions of a row are read as they are stored (merged or not):
        // compared as the set of clicks they describe.
        (
            "newest counted click below 50",
            wrapped(
                "SELECT newest FROM",
                queries::newest_counted(&counted_below),
                "",
            ),
            "",
        ),
        (
            "counted clicks below 50",
            wrapped(
                "SELECT DISTINCT * FROM",
                queries::counted_clicks(&counted_below, at(10).as_millis()),
                "ORDER BY created_at, id",
            ),
            "",
        ),
        (
            "leaderboard by conversions",
            queries::top_mentors(hours(None, None), RankBy::Conversions, 10),
            "",
        ),
        (
            "leaderboard by clicks, a window",
            queries::top_mentors(hours(Some(3), Some(50)), RankBy::Clicks, 1),
            "",
        ),
        (
            "leaderboard by time",
            queries::top_by_time(hours(None, None), RankBy::Conversions, 10),
            "",
        ),
        (
            "leaderboard by time, a window",
            queries::top_by_time(hours(Some(3), Some(50)), RankBy::Clicks, 5),
            "",
        ),
        (
            "leaderboard by time, whole weeks",
            queries::top_by_time(hours(Some(-200), Some(300)), RankBy::Clicks, 5),
            "",
        ),
        (
            "clicks by mentor",
            queries::clicks_by_mentor(Some(at(3).as_millis()), at(50).as_millis()),
            "",
        ),
        (
            "conversions by mentor",
            queries::conversions_by_mentor(None, at(80).as_millis()),
            "",
        ),
        (
            "click slots",
            queries::mentor_click_slots(
                "usr_jan",
                &[
                    (at(2).as_millis(), at(9).as_millis()),
                    (at(20).as_millis(), at(50).as_millis()),
                ],
            ),
            "",
        ),
        (
            "click slots, a boundary inside a slot",
            queries::mentor_click_slots(
                "usr_jan",
                &[
                    (at(2).as_millis(), at(9).as_millis() - 7),
                    (at(20).as_millis(), at(50).as_millis()),
                ],
            ),
            "",
        ),
        (
            "click slots, a slot set",
            queries::mentor_click_slots("usr_jan", &every_other_hour(0, 60)),
            "",
        ),
        (
            "conversion slots, a slot set",
            queries::mentor_conversion_slots("usr_jan", &every_other_hour(0, 90)),
            "",
        ),
        (
            "conversion slots",
            queries::mentor_conversion_slots(
                "usr_jan",
                &[
                    (0, at(30).as_millis()),
                    (at(40).as_millis(), at(80).as_millis()),
                ],
            ),
            "",
        ),
        (
            "mentor hours",
            queries::mentor_hours("usr_jan", None, at(80).as_millis() / 3_600_000 + 1),
            "",
        ),
        (
            "mentor list: count",
            queries::attribution_count(&mentor("usr_jan")),
            "",
        ),
        (
            "mentor list",
            queries::attribution_page(&mentor("usr_jan"), page(2, 7)),
            ATTRIBUTION_COLUMNS,
        ),
        (
            "mentor window",
            queries::attribution_page(&mentor_window, page(1, 50)),
            ATTRIBUTION_COLUMNS,
        ),
        (
            "totals all time",
            queries::mentor_totals("usr_jan", hours(None, None)),
            "",
        ),
        (
            "totals since",
            queries::mentor_totals("usr_ana", hours(Some(13), None)),
            "",
        ),
        (
            "totals custom",
            queries::mentor_totals("usr_jan", hours(Some(3), Some(50))),
            "",
        ),
        (
            "totals empty",
            queries::mentor_totals("usr_jan", hours(Some(9), Some(9))),
            "",
        ),
        (
            "totals unknown mentor",
            queries::mentor_totals("usr_nobody", hours(None, None)),
            "",
        ),
        ("code live", queries::referral_code("JAN-1"), CODE_COLUMNS),
        (
            "code retired",
            queries::referral_code("OLD-1"),
            CODE_COLUMNS,
        ),
        ("codes: count", queries::code_count(None), ""),
        ("codes", queries::code_page(None, page(1, 20)), CODE_COLUMNS),
        (
            "codes of mentor: count",
            queries::code_count(Some("usr_ana")),
            "",
        ),
        (
            "codes of mentor",
            queries::code_page(Some("usr_ana"), page(1, 20)),
            CODE_COLUMNS,
        ),
        ("verdict", queries::verdict("cmd_c3"), ""),
        (
            "verdicts",
            queries::verdicts(&["cmd_c3".to_owned(), "cmd_nope".to_owned()]),
            "",
        ),
        (
            "stored ids",
            // attr_030: confirmed, then deleted (three versions): one row, still stored.
            queries::stored_attribution_ids(&[
                "attr_000".to_owned(),
                "attr_030".to_owned(),
                "attr_nope".to_owned(),
            ]),
            "",
        ),
        ("checkpoints", queries::checkpoints(), ""),
        ("checkpoint", queries::checkpoint("referral-events", 0), ""),
        (
            "checkpoint unknown",
            queries::checkpoint("referral-events", 7),
            "",
        ),
    ]
}

/// JSONEachRow text as rows, every scalar as text (engines differ in quoting 64-bit ints).
fn rows(text: &str) -> Vec<Value> {
    fn normalize(value: Value) -> Value {
        match value {
            Value::Number(number) => Value::String(number.to_string()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
            other => other,
        }
    }
    let parsed: Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        Value::Array(
            text.lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| serde_json::from_str(line).expect("a JSON row"))
                .collect(),
        )
    });
    match normalize(parsed) {
        Value::Array(items) => items,
        other => vec![other],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_and_api_queries_give_the_same_answers_on_18_16_and_a_current_engine() {
    let server = ClickHouseServer::start();
    let settings = ClickHouseSettings {
        url: server.http_url(),
        database: "referral".into(),
        user: "default".into(),
        password: None,
        insert_timeout: Duration::from_secs(30),
        read_threads: 1,
        cluster: None,
        insert_quorum: 0,
        sequential_reads: false,
    };
    let report = migrate::migrate(&settings)
        .await
        .expect("migrations on 18.16");
    assert_eq!(
        report.applied,
        vec![1, 3, 4, 5, 6, 7, 8, 9],
        "18.16 defers the token migration"
    );
    assert_eq!(report.deferred, vec![2]);
    // A second run is a no-op.
    let again = migrate::migrate(&settings).await.expect("migrate again");
    assert!(again.applied.is_empty());
    // Every migration can run again over its own effects (two runners at once, or one that
    // died before recording): with the record gone, all of them apply again without error,
    // the ADD COLUMN of 3 included (18.16 has no IF NOT EXISTS for it).
    settings
        .client()
        .query("DROP TABLE schema_migrations")
        .execute()
        .await
        .expect("drop the record");
    migrate::refuse_newer_schema(&settings)
        .await
        .expect("a fresh store passes");
    let replayed = migrate::migrate(&settings)
        .await
        .expect("migrate over itself");
    assert_eq!(replayed.applied, vec![1, 3, 4, 5, 6, 7, 8, 9]);
    write_history(&settings).await;

    // What the API reads on 18.16, through the production reader.
    let reader = ClickHouseReader::new(&settings);
    let totals = reader
        .mentor_totals(
            "usr_jan",
            HourRange {
                from_hour: None,
                to_hour: None,
            },
        )
        .await
        .expect("totals");
    // 40 JAN-1 clicks, one of them (attr_030, counted) deleted after its confirmation;
    // attr_000 confirmed; attr_004's confirmation refused (member taken), attr_009's too (a
    // bot). Of the 39 left, every tenth hour is a bot (4) and the click an hour after a
    // counted one of the same visitor a duplicate (16).
    assert_eq!(
        (
            totals.clicks,
            totals.duplicates,
            totals.bots,
            totals.conversions
        ),
        (19, 16, 4, 1)
    );
    let repeat = reader
        .attribution("attr_004")
        .await
        .expect("read")
        .expect("live");
    assert_eq!(repeat.verdict, Some(ClickVerdict::Duplicate));
    assert_eq!(repeat.duplicate_of.as_deref(), Some("attr_003"));
    assert!(
        reader
            .attribution("attr_030")
            .await
            .expect("read")
            .is_none()
    );
    let confirmed = reader
        .attribution("attr_000")
        .await
        .expect("read")
        .expect("live");
    assert_eq!(confirmed.new_member_id.as_deref(), Some("new_1"));
    let page = reader
        .attributions(
            &AttributionFilter {
                mentor_id: Some("usr_jan".into()),
                ..AttributionFilter::default()
            },
            PageRequest { page: 1, limit: 5 },
        )
        .await
        .expect("list");
    assert_eq!(page.total, 39);
    assert_eq!(page.attributions[0].id, "attr_058");
    let codes = reader
        .referral_codes(None, PageRequest { page: 1, limit: 20 })
        .await
        .expect("codes");
    assert_eq!(codes.total, 2, "the retired code is not listed");

    // A series read per slot (every hour cut) equals the one read from the hourly totals,
    // and migration 5 copies the conversions stored before it: with its copy dropped and
    // migrated again, the slots read the same.
    let to = at(100).as_millis();
    let by_slot = SlotSpan::new(Some(0), to).cut_at((-1..100).map(|hour| at(hour).as_millis() + 1));
    let slot_sums = |slots: &[SlotCounts]| {
        slots
            .iter()
            .fold(MentorTotals::default(), |mut sums, slot| {
                sums.add(slot.totals);
                sums
            })
    };
    let fine = reader
        .mentor_slots("usr_jan", &by_slot)
        .await
        .expect("slots");
    let coarse = reader
        .mentor_slots("usr_jan", &SlotSpan::new(Some(0), to))
        .await
        .expect("hours");
    // Every event of the history is on the hour: both reads key them alike.
    assert_eq!(fine, coarse);
    // Every other hour cut: the cut hours are read by their slot set, not one range.
    let alternate = reader
        .mentor_slots(
            "usr_jan",
            &SlotSpan::new(Some(0), to)
                .cut_at((-1..100).step_by(2).map(|hour| at(hour).as_millis() + 1)),
        )
        .await
        .expect("alternate slots");
    assert_eq!(alternate, coarse);
    assert_eq!(slot_sums(&fine), totals);
    assert_eq!(slot_sums(&coarse), totals);
    forget_conversions_copy(&settings).await;
    assert!(
        reader.mentor_slots("usr_jan", &by_slot).await.is_err(),
        "the per-slot read needs the copy"
    );
    migrate::migrate(&settings).await.expect("migrate again");
    let copied = reader
        .mentor_slots("usr_jan", &by_slot)
        .await
        .expect("slots");
    assert_eq!(copied, fine);

    // A reversal, a third flush: usr_jan's conversion of attr_000 (confirmed at hour 70)
    // leaves its conversions and counts as reversed, in the totals and per slot; the copy
    // of the conversions that migrations 5 and 7 make again carries it.
    let reversal = [LogEvent::ReverseConversion(ReverseConversion {
        command_id: "cmd_r1".into(),
        attribution_id: "attr_000".into(),
        reason: "refund".into(),
        reversed_at: at(75),
        issued_at: at(75),
    })];
    write_flushes(&settings, &[&reversal], history().len() as i64).await;
    let restated = reader
        .mentor_totals(
            "usr_jan",
            HourRange {
                from_hour: None,
                to_hour: None,
            },
        )
        .await
        .expect("restated totals");
    assert_eq!(
        (restated.clicks, restated.conversions, restated.reversals),
        (totals.clicks, totals.conversions - 1, 1)
    );
    let reversed_slots = reader
        .mentor_slots("usr_jan", &by_slot)
        .await
        .expect("slots after the reversal");
    assert_eq!(slot_sums(&reversed_slots), restated);
    assert_eq!(
        slot_sums(
            &reader
                .mentor_slots("usr_jan", &SlotSpan::new(Some(0), to))
                .await
                .expect("hours after the reversal")
        ),
        restated
    );
    forget_conversions_copy(&settings).await;
    migrate::migrate(&settings)
        .await
        .expect("migrate again over a reversal");
    assert_eq!(
        reader
            .mentor_slots("usr_jan", &by_slot)
            .await
            .expect("slots from the copy made again"),
        reversed_slots
    );

    // The same schema and data on the current engine.
    let mut script: Vec<String> = vec![
        "CREATE DATABASE IF NOT EXISTS referral".into(),
        "USE referral".into(),
    ];
    for migration in CLICKHOUSE {
        script.extend(statements(migration.sql));
    }
    let ddl_count = script.len();
    for table in BASE_TABLES {
        let values = server.query(&format!("SELECT * FROM referral.{table} FORMAT Values"));
        script.push(format!(
            "INSERT INTO referral.{table} VALUES {}",
            values.trim()
        ));
    }
    let queries = api_queries();
    for (_, query, columns) in &queries {
        script.push(query.render(columns));
    }
    // The backfill of an older writer's day (no 'time_day' or 'time_week' row; day 20011
    // is in the week of Monday 20010), then the probe below stays last.
    script.push(
        "INSERT INTO mentor_totals (mentor_id, grain, bucket, clicks, conversions, next_offset) \
         VALUES ('usr_weekold', 'day', 20011, 5, 1, 0)"
            .into(),
    );
    script.push(queries::fill_backfill(7).render(""));
    script.push(
        "SELECT grain, bucket, clicks, conversions FROM mentor_totals_backfill FINAL \
         WHERE mentor_id = 'usr_weekold' ORDER BY grain"
            .into(),
    );
    let backfill_read = script.len() - 1;
    // Newer dedup: the same token twice is one insert on servers that have tokens.
    script.push(
        "INSERT INTO mentor_totals SETTINGS insert_deduplication_token = 'probe' \
         VALUES ('usr_probe', 'day', 1, 1, 0, 0)"
            .into(),
    );
    script.push(
        "INSERT INTO mentor_totals SETTINGS insert_deduplication_token = 'probe' \
         VALUES ('usr_probe', 'day', 1, 1, 0, 0)"
            .into(),
    );
    script.push(
        "SELECT toInt64(sum(clicks)) AS clicks FROM mentor_totals WHERE mentor_id = 'usr_probe'"
            .into(),
    );

    let results = chdb_run(&script);
    assert_eq!(results.len(), script.len());
    for (statement, result) in script
        .iter()
        .zip(&results)
        .take(ddl_count + BASE_TABLES.len())
    {
        assert!(
            result.is_ok(),
            "current engine refused:\n{statement}\n{result:?}"
        );
    }
    let mut differences = HashMap::new();
    let mut answered = HashMap::new();
    for (index, (name, query, columns)) in queries.iter().enumerate() {
        let current = results[ddl_count + BASE_TABLES.len() + index]
            .as_ref()
            .unwrap_or_else(|error| panic!("{name}: current engine refused: {error}"));
        let old = server
            .try_query_with(
                &format!("{} FORMAT JSONEachRow", query.render(columns)),
                &[("database", "referral")],
            )
            .unwrap_or_else(|error| panic!("{name}: 18.16 refused: {error}"));
        answered.insert(*name, rows(&old).len());
        if rows(current) != rows(&old) {
            differences.insert(*name, (rows(&old), rows(current)));
        }
    }
    assert!(differences.is_empty(), "18.16 vs current: {differences:#?}");
    // The comparison saw real answers, not empty ones everywhere.
    assert_eq!(
        answered["list all: page 1"], 21,
        "a page and the row after it"
    );
    assert_eq!(answered["list all: page 3"], 19, "59 live attributions");
    assert_eq!(answered["mentor list"], 8);
    assert_eq!(answered["codes"], 2);
    assert_eq!(
        answered["stored ids"], 2,
        "a deleted attribution is stored once"
    );
    assert_eq!(answered["mentor bots"], 4);
    assert_eq!(answered["list duplicates"], 16);
    assert!(answered["click slots"] > 10);
    assert_eq!(
        answered["click slots, a boundary inside a slot"],
        answered["click slots"]
    );
    assert_eq!(answered["leaderboard by conversions"], 2);
    assert_eq!(answered["leaderboard by clicks, a window"], 1);
    // attr_000 alone: the range from 0 would catch a click copied as a conversion at 0.
    assert_eq!(answered["conversion slots"], 1);
    // From the fixture: usr_jan's live clicks on even hours before hour 60 (one slot each),
    // and its one conversion, confirmed at hour 70.
    assert_eq!(answered["click slots, a slot set"], 19);
    assert_eq!(answered["conversion slots, a slot set"], 1);
    assert!(answered["mentor hours"] > 10);
    assert_eq!(answered["leaderboard by time"], 2);
    assert_eq!(answered["leaderboard by time, a window"], 2);
    assert_eq!(answered["leaderboard by time, whole weeks"], 2);
    assert_eq!(answered["attribution unknown"], 0);
    let backfilled = results[backfill_read]
        .as_ref()
        .expect("the backfill on the current engine");
    assert_eq!(
        rows(backfilled),
        vec![
            serde_json::json!({"grain": "day", "bucket": "20011", "clicks": "5", "conversions": "1"}),
            serde_json::json!({"grain": "week", "bucket": "20010", "clicks": "5", "conversions": "1"}),
        ]
    );
    let probe = results
        .last()
        .and_then(|result| result.as_ref().ok())
        .expect("probe");
    assert_eq!(rows(probe), vec![serde_json::json!({"clicks": "1"})]);

    // Migration 5 while a writer's insert is running: an insert that started before the
    // feed existed reaches neither the feed nor a copy that read before it landed; the
    // runner waits for it before copying. (The slow insert sleeps 2 s before its rows.)
    forget_conversions_copy(&settings).await;
    let slow_client = settings.client();
    let slow_insert = tokio::spawn(async move {
        slow_client
            .query(
                "INSERT INTO attributions (id, code, mentor_id, kind, status, ip_address, \
                 occurred_at, confirmed_at, created_at, version) \
                 SELECT concat('attr_slow_', toString(number)), 'SLOW-1', 'usr_slow', \
                 'conversion', 'confirmed', '', toInt64(0), toInt64(1000), toInt64(0), \
                 toUInt64(1) FROM numbers(10) WHERE sleep(2) = 0",
            )
            .execute()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    migrate::migrate(&settings)
        .await
        .expect("migrate during an insert");
    slow_insert.await.expect("join").expect("slow insert");
    let copied: u64 = settings
        .client()
        .query(
            "SELECT count() FROM attributions_by_confirmation FINAL WHERE mentor_id = 'usr_slow'",
        )
        .fetch_one()
        .await
        .expect("count the copy");
    assert_eq!(copied, 10, "the copy waited for the running insert");

    // Leaderboards by time: a writer of this release marked the backfill filled when it
    // connected (on an empty store) and wrote 'time_day' rows beside the 'day' rows, so
    // the by-time read ranks as the scan of every mentor's daily totals does.
    let whole = TopWindow::Hours(HourRange {
        from_hour: None,
        to_hour: None,
    });
    let ranked = |rows: Vec<(String, MentorTotals)>| -> Vec<(String, u64, u64)> {
        rows.into_iter()
            .map(|(mentor, sums)| (mentor, sums.clicks, sums.conversions))
            .collect()
    };
    let all = HourRange {
        from_hour: None,
        to_hour: None,
    };
    // The leaderboard by clicks as the scan of every mentor's totals ranks it.
    let scanned = |settings: ClickHouseSettings, hours: HourRange| async move {
        let rows: Vec<(String, i64, i64, i64, i64)> =
            queries::top_mentors(hours, RankBy::Clicks, 100)
                .to_clickhouse(&settings.client())
                .fetch_all()
                .await
                .expect("scan");
        rows.into_iter()
            .map(|(mentor, clicks, _, _, conversions)| (mentor, clicks as u64, conversions as u64))
            .collect::<Vec<_>>()
    };
    let by_time = ranked(
        ClickHouseReader::new(&settings)
            .top_mentors(whole, RankBy::Clicks, 100)
            .await
            .expect("by time"),
    );
    assert_eq!(by_time, scanned(settings.clone(), all).await);
    assert_eq!(by_time.len(), 2);
    // An older writer's daily totals (no 'time_day' rows) on a store whose backfill is
    // not filled yet: the reader scans until a writer of this release connects and fills
    // it; a second fill stores the same differences.
    for statement in [
        "DROP TABLE mentor_totals_backfill",
        "DROP TABLE schema_migrations",
    ] {
        settings
            .client()
            .query(statement)
            .execute()
            .await
            .expect(statement);
    }
    migrate::migrate(&settings).await.expect("migrate again");
    settings
        .client()
        .query(
            "INSERT INTO mentor_totals (mentor_id, grain, bucket, clicks, conversions, next_offset) \
             VALUES ('usr_old', 'day', 20000, 50, 2, 0), ('usr_old', 'day', 20001, 7, 0, 0), \
             ('usr_jan', 'day', 20001, 100, 0, 0), ('usr_old', 'hour', 480005, 3, 1, 0), \
             ('usr_old', 'hour', 480030, 4, 0, 0), ('usr_old', 'day', 20004, 11, 0, 0), \
             ('usr_old', 'day', 20010, 13, 1, 0), ('usr_five', 'day', 20003, 9, 1, 0), \
             ('00020003:usr_five', 'time_day', 20003, 9, 1, 0), \
             ('usr_five', 'day', 20011, 20, 0, 0), ('00020011:usr_five', 'time_day', 20011, 20, 0, 0)",
        )
        .execute()
        .await
        .expect("an older writer's rows");
    let before_fill = ranked(
        ClickHouseReader::new(&settings)
            .top_mentors(whole, RankBy::Clicks, 100)
            .await
            .expect("scan before the fill"),
    );
    let expected = scanned(settings.clone(), all).await;
    assert_eq!(before_fill, expected);
    assert_eq!(expected[0].0, "usr_jan");
    assert!(
        expected.contains(&("usr_old".to_owned(), 81, 3)),
        "{expected:?}"
    );
    ClickHouseSink::connect(&settings)
        .await
        .expect("a writer connects");
    let reader = ClickHouseReader::new(&settings);
    assert_eq!(
        ranked(
            reader
                .top_mentors(whole, RankBy::Clicks, 100)
                .await
                .expect("filled")
        ),
        expected
    );
    // A window of ragged hours and whole days: by time (hours and days) as the scan.
    let window = HourRange {
        from_hour: Some(480_003),
        to_hour: Some(480_050),
    };
    let window_scan = scanned(settings.clone(), window).await;
    assert_eq!(
        ranked(
            reader
                .top_mentors(TopWindow::Hours(window), RankBy::Clicks, 100)
                .await
                .expect("window by time")
        ),
        window_scan
    );
    assert_eq!(
        window_scan,
        vec![
            ("usr_jan".to_owned(), 100, 0),
            ("usr_old".to_owned(), 10, 1)
        ]
    );
    // A window of whole weeks (day 20003 is a Monday: weeks 20003 and 20010), ragged days
    // and ragged hours, over an older release's days (no 'time_week' rows; 'usr_five' also
    // has 'time_day' rows, as migration 5's release wrote them): by time as the scan.
    let weeks = HourRange {
        from_hour: Some(19_999 * 24 + 5),
        to_hour: Some(20_017 * 24 + 3),
    };
    let split = referral_schemas::query::split_weeks(Some(20_000), Some(20_017));
    assert_eq!(split.weekly, Some((Some(20_003), Some(20_017))));
    let weeks_scan = scanned(settings.clone(), weeks).await;
    assert_eq!(
        weeks_scan,
        vec![
            ("usr_jan".to_owned(), 100, 0),
            ("usr_old".to_owned(), 81, 3),
            ("usr_five".to_owned(), 29, 1)
        ]
    );
    assert_eq!(
        ranked(
            reader
                .top_mentors(TopWindow::Hours(weeks), RankBy::Clicks, 100)
                .await
                .expect("weeks by time")
        ),
        weeks_scan
    );
    queries::fill_backfill(u64::MAX >> 1)
        .to_clickhouse(&settings.client())
        .execute()
        .await
        .expect("fill again");
    assert_eq!(
        ranked(
            reader
                .top_mentors(whole, RankBy::Clicks, 100)
                .await
                .expect("filled twice")
        ),
        expected
    );

    // A store migrated by a newer release is refused by this writer.
    migrate::refuse_newer_schema(&settings)
        .await
        .expect("this build's schema passes");
    settings
        .client()
        .query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', now())")
        .execute()
        .await
        .expect("record a future migration");
    let refused = migrate::refuse_newer_schema(&settings).await.unwrap_err();
    assert!(
        refused.to_string().contains("newer than this build"),
        "{refused}"
    );
}
