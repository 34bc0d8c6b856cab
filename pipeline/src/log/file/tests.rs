//! The embedded log against a real file system: group commit, dense offsets across
//! restarts, segments rolled and deleted, the lag bound, and a write that fails (a real
//! `EFBIG` from the kernel, in a child process with a file-size limit).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use referral_schemas::Timestamp;
use referral_schemas::messages::{ClickEvent, LogEvent, LogMessage};

use super::frame;
use super::segment;
use super::*;

fn settings(dir: &Path) -> FileLogSettings {
    FileLogSettings {
        dir: dir.to_owned(),
        segment_bytes: 64 * 1024 * 1024,
        queue_capacity: 10_000,
        batch_max_events: 10_000,
        batch_max_bytes: BATCH_MAX_BYTES,
        fsync_interval: Duration::from_micros(250),
        max_apply_lag: u64::MAX,
    }
}

fn click(n: usize) -> LogEvent {
    LogEvent::Click(ClickEvent {
        attribution_id: format!("attr_{n:08}"),
        code: "JAN-1".into(),
        mentor_id: "usr_1".into(),
        ip_address: "203.0.113.7".into(),
        user_agent: Some("x".repeat(n % 300)),
        referrer_url: None,
        occurred_at: Timestamp::from_millis(1_700_000_000_000),
        received_at: Timestamp::from_millis(1_700_000_000_000),
    })
}

/// Every record from `from` on, as (offset, attribution id).
fn read_all(reader: &mut LogReader) -> Vec<(u64, String)> {
    let mut records = Vec::new();
    loop {
        let read = reader
            .read(100_000, Duration::from_millis(50), |offset, payload| {
                let message = LogMessage::from_json(payload).unwrap();
                let LogEvent::Click(click) = message.event else {
                    panic!("not a click at {offset}");
                };
                records.push((offset, click.attribution_id));
            })
            .unwrap();
        if read == 0 {
            return records;
        }
    }
}

/// Bytes of whole batches at the start of a segment (before its free space).
fn data_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while at < bytes.len() && !segment::is_free_space(&bytes[at..]) {
        at += frame::parse_batch(&bytes[at..]).unwrap().header.batch_len();
    }
    at
}

/// Batches in the segment files of `dir` (each one fsync).
fn batches_on_disk(dir: &Path) -> usize {
    let mut batches = 0;
    for segment in segment::list(dir).unwrap() {
        let bytes = std::fs::read(&segment.path).unwrap();
        let mut at = 0;
        while at < bytes.len() && !segment::is_free_space(&bytes[at..]) {
            at += frame::parse_batch(&bytes[at..]).unwrap().header.batch_len();
            batches += 1;
        }
    }
    batches
}

/// Publishes clicks `0..count` from as many tasks at once; each must be acknowledged.
async fn publish_concurrently(log: &Arc<FileLog>, count: usize) {
    let tasks: Vec<_> = (0..count)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.publish(click(n)).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_group_committed_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut reader) = FileLog::open(&settings(dir.path()), 0).unwrap();
    let log = Arc::new(log);
    publish_concurrently(&log, 500).await;
    assert_eq!(log.end(), 500);
    let records = tokio::task::spawn_blocking(move || read_all(&mut reader))
        .await
        .unwrap();
    let offsets: Vec<u64> = records.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, (0..500).collect::<Vec<_>>(), "dense, in order");
    let mut ids: Vec<&str> = records.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 500, "each record once");
    log.close(Duration::from_secs(5)).await;
    let batches = batches_on_disk(dir.path());
    assert!(
        batches < 500,
        "expected group commits, got {batches} fsyncs for 500 records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_to_its_byte_budget_whatever_the_queue_holds() {
    let dir = tempfile::tempdir().unwrap();
    // Everything queued within one fsync window, far past the batch's byte budget.
    let budget = 64 * 1024;
    let tight = FileLogSettings {
        batch_max_bytes: budget,
        fsync_interval: Duration::from_millis(300),
        ..settings(dir.path())
    };
    let (log, mut reader) = FileLog::open(&tight, 0).unwrap();
    let log = Arc::new(log);
    publish_concurrently(&log, 600).await;
    let records = tokio::task::spawn_blocking(move || read_all(&mut reader))
        .await
        .unwrap();
    assert_eq!(records.len(), 600, "every acknowledged record readable");
    log.close(Duration::from_secs(5)).await;
    for segment in segment::list(dir.path()).unwrap() {
        let bytes = std::fs::read(&segment.path).unwrap();
        let mut at = 0;
        while at < bytes.len() && !segment::is_free_space(&bytes[at..]) {
            let batch = frame::parse_batch(&bytes[at..]).unwrap();
            let largest_record = 8 + 600;
            assert!(
                batch.header.batch_len() <= frame::HEADER_BYTES + budget + largest_record,
                "a batch of {} bytes",
                batch.header.batch_len()
            );
            at += batch.header.batch_len();
        }
    }
    assert!(batches_on_disk(dir.path()) > 1);
}

#[tokio::test]
async fn a_restart_continues_the_offsets_and_reads_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(&settings(dir.path()), 0).unwrap();
    for n in 0..10 {
        log.publish(click(n)).await.unwrap();
    }
    log.close(Duration::from_secs(5)).await;
    let (log, mut reader) = FileLog::open(&settings(dir.path()), 4).unwrap();
    assert_eq!(log.end(), 10);
    log.publish(click(10)).await.unwrap();
    let records = tokio::task::spawn_blocking(move || read_all(&mut reader))
        .await
        .unwrap();
    assert_eq!(
        records
            .iter()
            .map(|(offset, _)| *offset)
            .collect::<Vec<_>>(),
        (4..11).collect::<Vec<_>>()
    );
    assert_eq!(records.last().unwrap().1, "attr_00000010");
    log.close(Duration::from_secs(5)).await;
    // A checkpoint past the log's end means acknowledged records went missing.
    assert!(matches!(
        FileLog::open(&settings(dir.path()), 12),
        Err(LogError::Missing { .. })
    ));
}

#[tokio::test]
async fn a_torn_tail_is_cut_at_open_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(&settings(dir.path()), 0).unwrap();
    for n in 0..3 {
        log.publish(click(n)).await.unwrap();
    }
    log.close(Duration::from_secs(5)).await;
    // The start of a batch that never finished writing, where the next batch goes.
    let active = segment::list(dir.path()).unwrap().pop().unwrap();
    let mut torn = Vec::new();
    frame::encode_batch(3, &[b"never acknowledged".as_slice()], &mut torn);
    torn.truncate(torn.len() - 5);
    let mut bytes = std::fs::read(&active.path).unwrap();
    let data_end = data_len(&bytes);
    bytes[data_end..data_end + torn.len()].copy_from_slice(&torn);
    std::fs::write(&active.path, &bytes).unwrap();
    let (log, mut reader) = FileLog::open(&settings(dir.path()), 0).unwrap();
    assert_eq!(log.end(), 3);
    log.publish(click(3)).await.unwrap();
    let records = tokio::task::spawn_blocking(move || read_all(&mut reader))
        .await
        .unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(records[3].1, "attr_00000003");
    log.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn segments_roll_and_are_deleted_once_the_store_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let small = FileLogSettings {
        segment_bytes: 4096,
        ..settings(dir.path())
    };
    let (log, mut reader) = FileLog::open(&small, 0).unwrap();
    for n in 0..200 {
        log.publish(click(n)).await.unwrap();
    }
    let segments = segment::list(dir.path()).unwrap();
    assert!(segments.len() > 3, "{} segments", segments.len());
    let records = {
        let shared = reader.shared().clone();
        let records = tokio::task::spawn_blocking(move || read_all(&mut reader))
            .await
            .unwrap();
        // The store applied the first 100: the segments wholly below go.
        release(&shared, 100);
        let left = segment::list(dir.path()).unwrap();
        assert!(left.len() < segments.len());
        assert!(
            left[0].base <= 100,
            "a segment holding offset 100 was deleted"
        );
        assert_eq!(log.applied(), 100);
        assert_eq!(log.lag(), 100);
        records
    };
    assert_eq!(records.len(), 200, "records read across segments");
    log.close(Duration::from_secs(5)).await;
    // Reopened at the checkpoint, the rest is still there.
    let (log, mut reader) = FileLog::open(&small, 100).unwrap();
    let rest = tokio::task::spawn_blocking(move || read_all(&mut reader))
        .await
        .unwrap();
    assert_eq!(rest.first().map(|(offset, _)| *offset), Some(100));
    assert_eq!(rest.len(), 100);
    // Everything applied: every segment but the active one goes, and a new log continues
    // at the checkpoint even with the directory emptied.
    release(&log.shared, 200);
    log.close(Duration::from_secs(5)).await;
    for segment in segment::list(dir.path()).unwrap() {
        std::fs::remove_file(segment.path).unwrap();
    }
    let (log, _) = FileLog::open(&small, 200).unwrap();
    assert_eq!(log.end(), 200);
    log.publish(click(200)).await.unwrap();
    assert_eq!(log.end(), 201);
    log.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn past_the_lag_bound_events_are_refused_at_once_and_readiness_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bounded = FileLogSettings {
        max_apply_lag: 5,
        ..settings(dir.path())
    };
    let (log, _) = FileLog::open(&bounded, 0).unwrap();
    for n in 0..6 {
        log.publish(click(n)).await.unwrap();
    }
    assert_eq!(
        log.publish(click(6)).await,
        Err(PublishError::Backlogged { lag: 6, bound: 5 })
    );
    let reason = log.readiness().unwrap_err();
    assert!(reason.contains("behind"), "{reason}");
    release(&log.shared, 4);
    assert_eq!(log.readiness(), Ok(()));
    assert_eq!(log.publish(click(6)).await, Ok(()));
    log.close(Duration::from_secs(5)).await;
    assert_eq!(log.publish(click(7)).await, Err(PublishError::Closed));
    assert!(log.readiness().is_err());
}

/// Set in the child process of [`a_write_that_fails_is_refused_and_the_log_stays_usable`].
const EFBIG_CHILD: &str = "REFERRAL_TEST_EFBIG_DIR";

#[test]
fn a_write_that_fails_is_refused_and_the_log_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "log::file::tests::efbig_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(EFBIG_CHILD, dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the child's checks failed: {status}");
    // What the child acknowledged is all there, readable, after its limit is gone.
    let acknowledged: u64 = std::fs::read_to_string(dir.path().join("acknowledged"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (log, mut reader) = FileLog::open(&settings(dir.path()), 0).unwrap();
        assert_eq!(log.end(), acknowledged);
        let records = tokio::task::spawn_blocking(move || read_all(&mut reader))
            .await
            .unwrap();
        assert_eq!(records.len() as u64, acknowledged);
        log.close(Duration::from_secs(5)).await;
    });
}

/// Runs only as the child above: with a file-size limit the kernel refuses writes past it
/// (EFBIG, as a full disk refuses them with ENOSPC), and the log must refuse those events,
/// cut what part of the batch reached the file, and take events again once space is back.
#[test]
fn efbig_child() {
    let Some(dir) = std::env::var_os(EFBIG_CHILD) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    const LIMIT: u64 = 64 * 1024;
    // SAFETY: plain syscalls on this (child) process's own limits and signal disposition.
    unsafe {
        // Past the limit the kernel also sends SIGXFSZ, whose default is to kill.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        let lowered = libc::rlimit {
            rlim_cur: LIMIT,
            rlim_max: limit.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lowered), 0);
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (log, _) = FileLog::open(&settings(&dir), 0).unwrap();
        let mut acknowledged = 0u64;
        let refused = loop {
            match log.publish(click(299)).await {
                Ok(()) => acknowledged += 1,
                Err(error) => break error,
            }
            assert!(acknowledged < 10_000, "the limit was never reached");
        };
        assert!(
            matches!(&refused, PublishError::Failed(cause) if cause.contains("write")),
            "{refused:?}"
        );
        assert!(acknowledged > 0);
        // Nothing of the refused batch stays in the file.
        let active = segment::list(&dir).unwrap().pop().unwrap();
        let len = std::fs::metadata(&active.path).unwrap().len();
        assert!(len <= LIMIT);
        assert_eq!(batches_on_disk(&dir) as u64, acknowledged);
        // Space comes back: the same log takes events again.
        unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        log.publish(click(1)).await.unwrap();
        acknowledged += 1;
        assert_eq!(log.end(), acknowledged);
        log.close(Duration::from_secs(5)).await;
        std::fs::write(dir.join("acknowledged"), acknowledged.to_string()).unwrap();
    });
}

/// Publishers are answered whichever way the answers travel: by the answering task of the
/// runtime that opened the log, from the appender's thread when the log was opened outside
/// a runtime, and from the appender's thread again once the opening runtime is gone.
#[test]
fn publishers_are_answered_with_or_without_the_answering_task() {
    let dir = tempfile::tempdir().unwrap();
    let publish_three = |log: &FileLog, runtime: &tokio::runtime::Runtime, from: usize| {
        runtime.block_on(async {
            for n in from..from + 3 {
                let published = tokio::time::timeout(Duration::from_secs(5), log.publish(click(n)));
                published.await.unwrap().unwrap();
            }
        });
    };
    let publishing = tokio::runtime::Runtime::new().unwrap();
    // Opened outside any runtime: no answering task.
    let (log, reader) = FileLog::open(&settings(dir.path()), 0).unwrap();
    publish_three(&log, &publishing, 0);
    assert_eq!(log.end(), 3);
    publishing.block_on(log.close(Duration::from_secs(5)));
    drop((log, reader));
    // Opened in a runtime that is then shut down: its answering task is gone with it.
    let opening = tokio::runtime::Runtime::new().unwrap();
    let (log, mut reader) = opening
        .block_on(async { FileLog::open(&settings(dir.path()), 0) })
        .unwrap();
    publish_three(&log, &publishing, 3);
    drop(opening);
    publish_three(&log, &publishing, 6);
    assert_eq!(log.end(), 9);
    publishing.block_on(log.close(Duration::from_secs(5)));
    let ids: Vec<String> = read_all(&mut reader)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let expected: Vec<String> = (0..9).map(|n| format!("attr_{n:08}")).collect();
    assert_eq!(ids, expected);
}
