//! The export measurement (issue 15): `GET /export?format=ndjson` and `format=csv`, each
//! streamed over one connection and read as it arrives (rows counted at each newline,
//! never the whole body held), every row checked, with referral-api's resident memory
//! sampled from /proc every 100 ms while it streams.

use std::borrow::Cow;
use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header};
use referral_load_tests::bench::{CpuWindow, Service, connect, pid_text, runtime};
use referral_load_tests::services::ClickHouseServer;
use referral_schemas::Timestamp;
use referral_schemas::timestamp::DAY_MS;
use serde::Deserialize;

use crate::data::Dataset;
use crate::options::Options;
use crate::{PREFIX, Result};

/// The issue's goal for an export.
pub const GOAL_ROWS_PER_SECOND: u64 = 200_000;
/// How often referral-api's RSS is sampled while an export streams.
const RSS_EVERY: Duration = Duration::from_millis(100);
/// How long after an export its "after" RSS is read.
const RSS_SETTLE: Duration = Duration::from_secs(1);
/// Cells of a CSV row (the API's `CSV_HEADER`), and where the id and `occurred_at` are.
const CSV_CELLS: usize = 16;
const CSV_ID: usize = 0;
const CSV_OCCURRED_AT: usize = 11;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    pub const ALL: [Self; 2] = [Self::Ndjson, Self::Csv];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Csv => "csv",
        }
    }
}

/// One export, measured.
#[derive(Debug)]
pub struct ExportRun {
    pub format: Format,
    /// Live attributions the export should hold (generated data).
    pub expected: u64,
    /// Data rows received (the CSV header not counted), and body bytes.
    pub rows: u64,
    pub bytes: u64,
    /// From sending the request to the first body bytes, and to the body's end.
    pub first_byte: Option<Duration>,
    pub elapsed: Duration,
    /// referral-api's VmRSS in KiB: before the request, the highest sample while the body
    /// streamed, and [`RSS_SETTLE`] after its end; samples taken while streaming.
    pub rss_before: Option<u64>,
    pub rss_peak: Option<u64>,
    pub rss_after: Option<u64>,
    pub rss_samples: usize,
    pub cpu: Vec<(&'static str, f64)>,
    /// Rows out of order, malformed or missing, and the first reason.
    pub wrong: u64,
    pub first_wrong: Option<String>,
}

impl ExportRun {
    pub fn rows_per_second(&self) -> u64 {
        (self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)) as u64
    }

    pub fn goal_met(&self) -> bool {
        self.wrong == 0 && self.rows_per_second() >= GOAL_ROWS_PER_SECOND
    }

    fn summary(&self) -> String {
        let mib = |kib: Option<u64>| kib.map_or_else(|| "?".to_owned(), mib);
        format!(
            "{} rows (expected {}) in {:.1} s: {} rows/s; RSS before {} / peak {} / after {} \
             MiB; {} wrong{}",
            self.rows,
            self.expected,
            self.elapsed.as_secs_f64(),
            self.rows_per_second(),
            mib(self.rss_before),
            mib(self.rss_peak),
            mib(self.rss_after),
            self.wrong,
            self.first_wrong
                .as_ref()
                .map(|why| format!(" (first: {why})"))
                .unwrap_or_default()
        )
    }
}

/// KiB as MiB, 1 decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The `from` of an export of the last `--export-days` (`None`: everything).
fn export_from(options: &Options) -> Option<Timestamp> {
    options
        .export_days
        .map(|days| Timestamp::now().saturating_sub_millis(days * DAY_MS))
}

/// Each format in turn, one connection each.
pub fn measure_all(
    options: &Options,
    data: &Dataset,
    api_port: u16,
    api: &mut Service,
    clickhouse: &ClickHouseServer,
) -> Result<Vec<ExportRun>> {
    let mut runs = Vec::new();
    for format in Format::ALL {
        let from = export_from(options);
        if from.is_some_and(|from| from.as_millis() < data.recent.since) {
            return Err("--export-days reaches before the generated instants kept".to_owned());
        }
        let expected = from.map_or(data.live, |from| data.recent.live_since(from.as_millis()));
        let mut path = format!("{PREFIX}/export?format={}", format.as_str());
        if let Some(from) = from {
            path.push_str(&format!("&from={from}"));
        }
        let pid = api.pid().ok_or("referral-api has no process id")?;
        let rss_before = vm_rss_kib(pid);
        let cpu = CpuWindow::start(&[
            ("ClickHouse", pid_text(clickhouse.pid())),
            ("referral-api", pid_text(Some(pid))),
            ("bench client", "self".to_owned()),
        ]);
        let sampler = RssSampler::start(pid);
        let streamed = runtime()?.block_on(stream(api_port, &path, format, &data.newest_live.1));
        let (rss_peak, rss_samples) = sampler.finish();
        let cpu = cpu.finish();
        let mut streamed = streamed?;
        thread::sleep(RSS_SETTLE);
        let rss_after = vm_rss_kib(pid);
        if streamed.rows.rows != expected {
            streamed.rows.note(format!(
                "{} rows, expected {expected} live attributions",
                streamed.rows.rows
            ));
        }
        let run = ExportRun {
            format,
            expected,
            rows: streamed.rows.rows,
            bytes: streamed.bytes,
            first_byte: streamed.first_byte,
            elapsed: streamed.elapsed,
            rss_before,
            rss_peak: rss_peak.max(rss_before),
            rss_after,
            rss_samples,
            cpu,
            wrong: streamed.rows.wrong,
            first_wrong: streamed.rows.first_wrong,
        };
        eprintln!("GET {path}: {}", run.summary());
        runs.push(run);
        api.check_alive()?;
    }
    Ok(runs)
}

/// VmRSS of a process in KiB, from /proc/<pid>/status.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// A thread reading a process's VmRSS every [`RSS_EVERY`] until finished.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(Option<u64>, usize)>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let (mut peak, mut samples) = (None, 0);
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = vm_rss_kib(pid) {
                    peak = peak.max(Some(rss));
                    samples += 1;
                }
                thread::sleep(RSS_EVERY);
            }
            (peak, samples)
        });
        Self { stop, thread }
    }

    /// The highest sample and how many were taken.
    fn finish(self) -> (Option<u64>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((None, 0))
    }
}

struct Streamed {
    rows: Rows,
    bytes: u64,
    first_byte: Option<Duration>,
    elapsed: Duration,
}

/// The export at `path`, read frame by frame as it arrives.
async fn stream(port: u16, path: &str, format: Format, newest: &str) -> Result<Streamed> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let mut sender = connect::<Empty<Bytes>>(address).await?;
    let request = Request::get(path)
        .header(header::HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .map_err(|error| error.to_string())?;
    sender
        .ready()
        .await
        .map_err(|error| format!("GET {path}: {error}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("GET {path}: {error}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let text = body
            .collect()
            .await
            .map(|body| String::from_utf8_lossy(&body.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!("GET {path}: status {status}: {text}"));
    }
    let mut rows = Rows::new(format, newest);
    let (mut bytes, mut first_byte) = (0_u64, None);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    first_byte.get_or_insert_with(|| started.elapsed());
                    bytes += data.len() as u64;
                    rows.feed(&data);
                }
            }
            Err(error) => {
                rows.note(format!("the body was cut: {error}"));
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    rows.finish();
    Ok(Streamed {
        rows,
        bytes,
        first_byte,
        elapsed,
    })
}

/// The keys of an NDJSON row checked here (the rest is skipped unparsed).
#[derive(Deserialize)]
struct RowKeys<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
}

/// The rows of an export as they arrive: a line is a row once its newline is in (a CSV row
/// ends with CRLF; no generated value holds a line break). Each row's id and `occurred_at`
/// are read: the list is newest first by (`occurred_at`, id), so each row must come
/// strictly after the one before (which also means none twice), and the first is the
/// newest live click.
struct Rows {
    format: Format,
    newest: String,
    /// The part of a row whose newline has not arrived yet.
    partial: Vec<u8>,
    header_seen: bool,
    rows: u64,
    last: Option<(i64, String)>,
    wrong: u64,
    first_wrong: Option<String>,
}

impl Rows {
    fn new(format: Format, newest: &str) -> Self {
        Self {
            format,
            newest: newest.to_owned(),
            partial: Vec::new(),
            header_seen: false,
            rows: 0,
            last: None,
            wrong: 0,
            first_wrong: None,
        }
    }

    fn note(&mut self, why: String) {
        self.wrong += 1;
        self.first_wrong.get_or_insert(why);
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(newline) = chunk.iter().position(|byte| *byte == b'\n') {
            let (line, rest) = chunk.split_at(newline);
            chunk = &rest[1..];
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
                whole.clear();
                self.partial = whole;
            }
        }
        self.partial.extend_from_slice(chunk);
    }

    /// The end of the body: nothing may be left without its newline.
    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let tail = self.partial.len();
            self.note(format!("the body ends inside a row ({tail} bytes)"));
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.format == Format::Csv && !self.header_seen {
            self.header_seen = true;
            if !line.starts_with(b"\"id\",") {
                self.note(format!(
                    "CSV header {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(40)])
                ));
            }
            return;
        }
        self.rows += 1;
        let keys = match self.format {
            Format::Ndjson => serde_json::from_slice::<RowKeys<'_>>(line)
                .ok()
                .map(|keys| (keys.id, keys.occurred_at)),
            Format::Csv => csv_keys(line),
        };
        let Some((id, occurred_at)) = keys else {
            let row = self.rows;
            self.note(format!("row {row} is malformed"));
            return;
        };
        let Ok(at) = Timestamp::parse_rfc3339(&occurred_at).map(Timestamp::as_millis) else {
            self.note(format!("row {}: occurred_at {occurred_at:?}", self.rows));
            return;
        };
        match &mut self.last {
            None => {
                if id != self.newest {
                    let newest = self.newest.clone();
                    self.note(format!(
                        "the first row is {id}, not the newest live {newest}"
                    ));
                }
                self.last = Some((at, id.into_owned()));
            }
            Some((last_at, last_id)) => {
                if (at, id.as_ref()) >= (*last_at, last_id.as_str()) {
                    let why = format!("row {}: {id} is not after {last_id}", self.rows);
                    *last_at = at;
                    id.as_ref().clone_into(last_id);
                    self.note(why);
                } else {
                    *last_at = at;
                    id.as_ref().clone_into(last_id);
                }
            }
        }
    }
}

/// The id and `occurred_at` of a CSV row whose cells are all quoted (as the API writes
/// them; a quote inside a cell is doubled): `None` unless it has the export's 14 cells.
fn csv_keys(line: &[u8]) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    let text = std::str::from_utf8(line).ok()?;
    let bytes = text.as_bytes();
    let (mut cells, mut at, mut id, mut occurred_at) = (0, 0, None, None);
    loop {
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let start = at + 1;
        let mut end = start;
        // Up to the closing quote, over doubled ones.
        loop {
            match bytes.get(end) {
                Some(b'"') if bytes.get(end + 1) == Some(&b'"') => end += 2,
                Some(b'"') => break,
                Some(_) => end += 1,
                None => return None,
            }
        }
        let cell = || Cow::Owned(text[start..end].replace("\"\"", "\""));
        match cells {
            CSV_ID => id = Some(cell()),
            CSV_OCCURRED_AT => occurred_at = Some(cell()),
            _ => {}
        }
        cells += 1;
        match bytes.get(end + 1) {
            None => break,
            Some(b',') => at = end + 2,
            Some(_) => return None,
        }
    }
    (cells == CSV_CELLS).then_some(())?;
    Some((id?, occurred_at?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV_ROW: &str = r#""attr_2","C","usr_1","click","pending","counted","","","1.2.3.4","Agent ""x"", y","","2026-03-20T10:00:00Z","","2026-03-20T10:00:01Z","","""#;

    #[test]
    fn csv_rows_give_their_id_and_instant() {
        let (id, at) = csv_keys(CSV_ROW.as_bytes()).unwrap();
        assert_eq!(
            (id.as_ref(), at.as_ref()),
            ("attr_2", "2026-03-20T10:00:00Z")
        );
        assert!(csv_keys(b"\"a\",\"b\"").is_none());
        assert!(csv_keys(b"attr_2,x").is_none());
        assert!(csv_keys(&CSV_ROW.as_bytes()[..40]).is_none());
    }

    #[test]
    fn rows_are_counted_across_chunks_and_checked_in_order() {
        let header = "\"id\",\"code\"\r\n";
        let second = CSV_ROW
            .replace("attr_2", "attr_1")
            .replace("10:00:00Z", "09:00:00Z");
        let body = format!("{header}{CSV_ROW}\r\n{second}\r\n");
        for split in [1, 7, 30, body.len() - 1] {
            let mut rows = Rows::new(Format::Csv, "attr_2");
            rows.feed(&body.as_bytes()[..split]);
            rows.feed(&body.as_bytes()[split..]);
            rows.finish();
            assert_eq!((rows.rows, rows.wrong), (2, 0), "{:?}", rows.first_wrong);
        }
        // Out of order, or cut inside a row.
        let mut rows = Rows::new(Format::Csv, "attr_1");
        rows.feed(format!("{header}{second}\r\n{CSV_ROW}\r\n{CSV_ROW}").as_bytes());
        rows.finish();
        assert_eq!((rows.rows, rows.wrong), (2, 2), "{:?}", rows.first_wrong);

        let ndjson = "{\"id\":\"attr_2\",\"occurred_at\":\"2026-03-20T10:00:00Z\",\"x\":[1]}\n\
                      {\"id\":\"attr_1\",\"occurred_at\":\"2026-03-20T10:00:00Z\"}\n";
        let mut rows = Rows::new(Format::Ndjson, "attr_2");
        rows.feed(ndjson.as_bytes());
        rows.finish();
        assert_eq!((rows.rows, rows.wrong), (2, 0), "{:?}", rows.first_wrong);
        let mut rows = Rows::new(Format::Ndjson, "attr_2");
        rows.feed(b"{\"id\":1}\n");
        assert_eq!((rows.rows, rows.wrong), (1, 1));
    }

    #[test]
    fn rss_is_read_from_proc() {
        let kib = vm_rss_kib(std::process::id()).unwrap();
        assert!(kib > 100, "{kib}");
        assert_eq!(mib(1536), "1.5");
    }
}
