//! The SQLite store as the consumer and the API use it: a flush stored whole with its
//! checkpoint or not at all, the highest version kept, and a store of schema version 1
//! migrated in place.

use std::collections::HashMap;

use referral_schemas::Timestamp;
use referral_schemas::messages::{AssignCode, ClickEvent, ConfirmConversion, LogEvent};
use referral_schemas::query::HourRange;
use rusqlite::Connection;

use super::*;
use crate::plan::{self, Known, PartitionBatch, PartitionKey, References};
use crate::store::{AttributionReader, StoreWriter};

const ALL_TIME: HourRange = HourRange {
    from_hour: None,
    to_hour: None,
};
const WINDOW: i64 = 90 * 24 * 3_600_000;

fn key() -> PartitionKey {
    ("embedded-log".to_owned(), 0)
}

fn click(id: &str, at: i64) -> LogEvent {
    LogEvent::Click(ClickEvent {
        attribution_id: id.into(),
        code: "JAN-1".into(),
        mentor_id: "usr_1".into(),
        ip_address: "127.0.0.1".into(),
        user_agent: Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/120.0".into()),
        referrer_url: None,
        occurred_at: Timestamp::from_millis(at),
        received_at: Timestamp::from_millis(at),
    })
}

fn confirm(command: &str, id: &str, member: &str, at: i64) -> LogEvent {
    LogEvent::ConfirmConversion(ConfirmConversion {
        command_id: command.into(),
        attribution_id: id.into(),
        code: "JAN-1".into(),
        new_member_id: member.into(),
        confirmed_at: Timestamp::from_millis(at),
        issued_at: Timestamp::from_millis(at),
    })
}

/// Plans `events` (offsets from `first`) against what the store holds, as the consumer
/// does, and writes the plan's state rows.
async fn plan_and_write(
    writer: &mut SqliteWriter,
    first: i64,
    events: Vec<LogEvent>,
) -> plan::Plan {
    let batch = PartitionBatch {
        topic: key().0,
        partition: 0,
        end: first + events.len() as i64,
        events: (first..).zip(events).collect(),
    };
    let checkpoints = writer.checkpoints(&[key()]).await.unwrap();
    let known: Known = writer
        .load(&References::of(batch.events.iter().map(|(_, event)| event)))
        .await
        .unwrap();
    let plan = plan::plan(
        std::slice::from_ref(&batch),
        &checkpoints,
        known,
        WINDOW,
        &mut plan::DedupWindows::new(0),
        Timestamp::now(),
    );
    writer.write_state(&plan).await.unwrap();
    plan
}

#[tokio::test]
async fn a_flush_is_stored_whole_with_its_checkpoint_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, reader) = open(dir.path(), SqliteSynchronous::Normal).unwrap();
    let now = Timestamp::now().as_millis();

    // Written, then abandoned (a failed flush): nothing of it is visible or stored.
    let abandoned = plan_and_write(&mut writer, 0, vec![click("attr_1", now - 5_000)]).await;
    assert_eq!(abandoned.checkpoints.len(), 1);
    writer.abandon();
    assert!(reader.attribution("attr_1").await.unwrap().is_none());
    assert_eq!(
        writer.checkpoints(&[key()]).await.unwrap(),
        HashMap::from([(key(), 0)])
    );

    // The same flush again, committed: rows, totals and checkpoint together.
    let events = vec![
        click("attr_1", now - 5_000),
        click("attr_2", now - 4_000),
        confirm("cmd_1", "attr_1", "usr_9", now - 1_000),
    ];
    let plan = plan_and_write(&mut writer, 0, events.clone()).await;
    writer.commit(&plan, "token").await.unwrap();
    let totals = reader.mentor_totals("usr_1", ALL_TIME).await.unwrap();
    assert_eq!((totals.clicks, totals.conversions), (2, 1));
    assert_eq!(
        writer.checkpoints(&[key()]).await.unwrap(),
        HashMap::from([(key(), 3)])
    );
    assert_eq!(
        writer.stored_checkpoints().unwrap(),
        HashMap::from([(key(), 3)])
    );

    // Redelivered (a crash after the commit, before the source's commit): skipped whole.
    let replay = plan_and_write(&mut writer, 0, events).await;
    assert_eq!(replay.skipped, 3);
    writer.commit(&replay, "token").await.unwrap();
    let totals = reader.mentor_totals("usr_1", ALL_TIME).await.unwrap();
    assert_eq!((totals.clicks, totals.conversions), (2, 1), "nothing twice");

    // A commit without its rows is refused rather than storing a checkpoint alone.
    assert!(writer.commit(&replay, "token").await.is_err());
}

#[tokio::test]
async fn the_highest_version_of_a_row_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, reader) = open(dir.path(), SqliteSynchronous::Normal).unwrap();
    let now = Timestamp::now().as_millis();
    let first = plan_and_write(
        &mut writer,
        0,
        vec![
            click("attr_1", now - 5_000),
            confirm("cmd_1", "attr_1", "usr_9", now - 1_000),
        ],
    )
    .await;
    writer.commit(&first, "a").await.unwrap();
    // A stale row (the click's version 1) written again, as a replay may: it loses.
    let mut stale = plan::Plan::default();
    stale.attributions.push(first.attributions[0].clone());
    assert_eq!(stale.attributions[0].version, 1);
    writer.write_state(&stale).await.unwrap();
    writer.commit(&stale, "b").await.unwrap();
    let attribution = reader.attribution("attr_1").await.unwrap().unwrap();
    assert_eq!(attribution.new_member_id.as_deref(), Some("usr_9"));
}

#[tokio::test]
async fn codes_are_listed_for_the_directory_and_retired_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, reader) = open(dir.path(), SqliteSynchronous::Normal).unwrap();
    let assign = |command: &str, code: &str| {
        LogEvent::AssignCode(AssignCode {
            command_id: command.into(),
            code: code.into(),
            mentor_id: "usr_1".into(),
            destination_url: None,
            issued_at: Timestamp::now(),
        })
    };
    let retire = LogEvent::RetireCode(referral_schemas::messages::RetireCode {
        command_id: "cmd_3".into(),
        code: "FEB-2".into(),
        issued_at: Timestamp::now(),
    });
    let plan = plan_and_write(
        &mut writer,
        0,
        vec![assign("cmd_1", "JAN-1"), assign("cmd_2", "FEB-2"), retire],
    )
    .await;
    writer.commit(&plan, "t").await.unwrap();
    assert_eq!(
        writer.code_assignments().unwrap(),
        vec![("JAN-1".to_owned(), "usr_1".to_owned(), None)]
    );
    assert!(reader.referral_code("FEB-2").await.unwrap().is_none());
    let page = reader
        .referral_codes(
            Some("usr_1"),
            referral_schemas::query::PageRequest { page: 1, limit: 20 },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 1);
}

#[tokio::test]
async fn a_store_of_schema_version_1_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        connection.execute_batch(migrations::SQLITE[0].sql).unwrap();
        connection
            .execute_batch(
                "INSERT INTO attributions VALUES ('attr_1', 'JAN-1', 'usr_1', 'conversion', \
                 'confirmed', 'usr_9', '127.0.0.1', NULL, NULL, 1000, 2000, 1000, NULL); \
                 INSERT INTO attributed_members VALUES ('usr_9', 'attr_1'); \
                 INSERT INTO referral_codes VALUES ('JAN-1', 'usr_1', 1, 1); \
                 PRAGMA user_version = 1;",
            )
            .unwrap();
    }
    let (mut writer, reader) = open(dir.path(), SqliteSynchronous::Normal).unwrap();
    assert!(reader.attribution("attr_1").await.unwrap().is_some());
    assert_eq!(writer.code_assignments().unwrap().len(), 1);
    assert_eq!(
        writer.checkpoints(&[key()]).await.unwrap(),
        HashMap::from([(key(), 0)])
    );
    // The confirmed row got the version of one applied command: a replayed click loses.
    let known = writer
        .load(&References::of([&confirm(
            "cmd_x", "attr_1", "usr_9", 3000,
        )]))
        .await
        .unwrap();
    assert_eq!(known.attributions["attr_1"].version, 2);
    assert_eq!(known.members["usr_9"].holder(), Some("attr_1"));
}
