//! The embedded mode: the production pipeline with a file log and a SQLite sink, in one
//! process, under one data directory.
//!
//! ```text
//!   DATA_DIR/writer.lock          held by the one process that writes here
//!   DATA_DIR/log/*.log            the embedded log (segments)
//!   DATA_DIR/referral.db          the store (SQLite, WAL), with the consumer's checkpoint
//!   DATA_DIR/dead-letters.jsonl   records the consumer could not decode
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;

use crate::codes::CodeDirectory;
use crate::config::PipelineArgs;
use crate::consumer::announce::InProcessAnnouncer;
use crate::consumer::fault::FaultPoint;
use crate::consumer::file::FileSource;
use crate::consumer::worker::{Worker, WorkerSettings};
use crate::consumer::{Consumer, ConsumerStatus};
use crate::log::file::{self, FileLog, FileLogSettings};
use crate::store::StoreError;
use crate::store::sqlite::{self, SqliteReader};
use crate::verdicts::VerdictWaiter;

/// File locked exclusively by the process that writes the data directory: a second process
/// on the same directory would be a second writer (of the log and of the store), so it is
/// refused at start.
pub const LOCK_FILE: &str = "writer.lock";
/// Where undecodable log records are set aside.
pub const DEAD_LETTER_FILE: &str = "dead-letters.jsonl";
/// The longest a record waits for its transaction: each SQLite commit is an fsync, so a
/// few tens of commits a second instead of hundreds; a read of a fresh click waits about
/// this much longer.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// Payload bytes the consumer gathers at most before a flush: far above what
/// `--commit-batch-max` records weigh, so the count decides.
const BATCH_MAX_BYTES: usize = 256 * 1024 * 1024;

/// Why the embedded pipeline cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] file::LogError),
    #[error("{0}")]
    Other(String),
}

/// The exclusive lock on a data directory, held for the process's lifetime (the OS
/// releases it when the process dies, even by SIGKILL).
pub struct DataDirLock {
    _file: std::fs::File,
}

/// The data directory holds visitors' IPs and user agents: only its owner may enter it,
/// whatever the umask gave the files inside.
fn owner_only(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(data_dir)
            .and_then(|()| owner_only(data_dir))
            .map_err(|error| OpenError::Other(format!("{}: {error}", data_dir.display())))?;
        let file = std::fs::File::create(data_dir.join(LOCK_FILE))
            .map_err(|error| OpenError::Other(format!("{}: {error}", data_dir.display())))?;
        file.try_lock().map_err(|_| {
            OpenError::Other(format!(
                "{} is in use by another process (only one writer per data directory)",
                data_dir.display()
            ))
        })?;
        Ok(Self { _file: file })
    }
}

/// The embedded pipeline, running.
pub struct Embedded {
    pub log: Arc<FileLog>,
    pub reader: SqliteReader,
    pub directory: CodeDirectory,
    pub verdicts: Arc<VerdictWaiter>,
    consumer: Consumer,
    _lock: DataDirLock,
}

impl Embedded {
    /// Locks the data directory, opens the store and the log (recovering it), and starts the
    /// consumer from the store's checkpoint. Must run inside a tokio runtime.
    pub fn open(args: &PipelineArgs) -> Result<Self, OpenError> {
        let data_dir: &Path = &args.data_dir;
        let lock = DataDirLock::acquire(data_dir)?;
        let (writer, reader) = sqlite::open(data_dir, args.sqlite_synchronous)?;
        let directory = CodeDirectory::from_assignments(writer.code_assignments()?);
        let checkpoint = writer
            .stored_checkpoints()?
            .get(&(file::TOPIC.to_owned(), 0))
            .copied()
            .unwrap_or(0);
        let settings = FileLogSettings {
            dir: data_dir.join(file::DIRECTORY),
            segment_bytes: args.log_segment_bytes,
            queue_capacity: args.log_queue_capacity,
            batch_max_events: args.log_queue_capacity,
            batch_max_bytes: file::BATCH_MAX_BYTES,
            fsync_interval: args.log_fsync_interval,
            max_apply_lag: args.max_apply_lag,
        };
        let (log, log_reader) = FileLog::open(&settings, u64::try_from(checkpoint).unwrap_or(0))?;
        let verdicts = VerdictWaiter::in_process();
        let announcer = InProcessAnnouncer {
            directory: directory.clone(),
            verdicts: verdicts.clone(),
            dead_letter_file: PathBuf::from(data_dir).join(DEAD_LETTER_FILE),
        };
        let fault = FaultPoint::from_env();
        if fault != FaultPoint::None {
            tracing::warn!(
                ?fault,
                "fault injection is set: this process will fail on purpose (tests only)"
            );
        }
        let worker = Arc::new(Mutex::new(Worker::new(
            Box::new(writer),
            Box::new(announcer),
            Handle::current(),
            WorkerSettings {
                batch_max_rows: args.commit_batch_max,
                batch_max_bytes: BATCH_MAX_BYTES,
                batch_max_wait: BATCH_WAIT,
                command_max_wait: BATCH_WAIT,
                seek_gaps: false,
                window_ms: args.attribution_window_ms(),
                dedup_window_ms: args.dedup_window_ms(),
                overlap_flushes: false,
            },
            fault,
        )));
        let source = FileSource::new(
            log_reader,
            &worker,
            args.commit_batch_max,
            args.max_apply_lag,
            args.max_apply_delay,
        );
        let consumer = Consumer::start(
            "referral-consumer",
            source,
            worker,
            Duration::from_secs(30),
            // The store was opened and migrated just now.
            true,
        )
        .map_err(|error| OpenError::Other(format!("cannot start the consumer: {error}")))?;
        tracing::info!(
            data_dir = %data_dir.display(),
            codes = directory.len(),
            log_end = log.end(),
            checkpoint,
            "embedded pipeline open"
        );
        Ok(Self {
            log: Arc::new(log),
            reader,
            directory,
            verdicts,
            consumer,
            _lock: lock,
        })
    }

    pub fn consumer_status(&self) -> Arc<ConsumerStatus> {
        self.consumer.status()
    }

    /// Stops taking events, writes what is queued, lets the store catch up with the log
    /// (within `drain`), then stops the consumer; waiting commands are answered.
    pub async fn shutdown(self, drain: Duration) {
        self.log.close(drain).await;
        if !self.log.caught_up(drain).await {
            tracing::warn!(
                lag = self.log.lag(),
                "the store did not catch up with the log before shutdown; it will at the next start"
            );
        }
        self.consumer.stop().await;
        self.verdicts.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::DataDirLock;

    #[test]
    fn the_data_directory_is_its_owners_only() {
        let parent = tempfile::tempdir().unwrap();
        let data_dir = parent.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _lock = DataDirLock::acquire(&data_dir).unwrap();
        let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A second writer on the same directory is refused.
        assert!(DataDirLock::acquire(&data_dir).is_err());
    }
}
