//! The open-loop click POSTs of the freshness phase: request i is due at start + i / rate,
//! sent on keep-alive connection i % connections; probe clicks are reported to the probes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use referral_load_tests::bench::connect;

use crate::options::Options;
use crate::probes::{Probes, lock};

const CLICK_PATH: &str = "/api/v1/referral-attributions";
/// Load-phase codes (each its own mentor) besides the probe codes.
pub const LOAD_CODES: u64 = 100;

/// One open-loop load: request i is due at start + i / rate, sent on connection
/// i % connections.
pub struct Load {
    address: SocketAddr,
    rate: u64,
    total: u64,
    connections: usize,
    probe_every: u64,
    probe_mentors: u64,
    load_codes: Vec<String>,
    probe_codes: Vec<String>,
    /// The visitor of request 0: loads of one run number their visitors apart.
    first_visitor: u64,
}

/// A browser's agent: clicks without one are bots, which totals do not count.
pub const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// Click `index` on `code`, from a visitor of its own (an address per index) with a
/// browser's agent: counted, never a duplicate or a bot, so the totals show every click.
fn click_body(code: &str, index: u64) -> Bytes {
    let ip = visitor_ip(index);
    Bytes::from(format!(
        "{{\"code\":\"{code}\",\"ip_address\":\"{ip}\",\"user_agent\":\"{BROWSER}\"}}"
    ))
}

/// The address of visitor `index`: distinct for 16,777,216 visitors, so that none of their
/// clicks is a repeat visit.
pub fn visitor_ip(index: u64) -> String {
    format!(
        "10.{}.{}.{}",
        (index >> 16) & 255,
        (index >> 8) & 255,
        index & 255
    )
}

impl Load {
    pub fn new(
        options: &Options,
        address: SocketAddr,
        duration: Duration,
        first_visitor: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            address,
            rate: options.rate,
            total: (options.rate as f64 * duration.as_secs_f64()) as u64,
            connections: options.connections,
            probe_every: options.probe_every,
            probe_mentors: options.probe_mentors,
            load_codes: (0..LOAD_CODES).map(|n| format!("BENCH-{n}")).collect(),
            probe_codes: (0..options.probe_mentors)
                .map(|m| format!("PROBE-{m}"))
                .collect(),
            first_visitor,
        })
    }

    fn due(&self, index: u64) -> Duration {
        Duration::from_nanos(
            u64::try_from(u128::from(index) * 1_000_000_000 / u128::from(self.rate))
                .unwrap_or(u64::MAX),
        )
    }
}

#[derive(Debug, Default)]
pub struct LoadStats {
    pub sent: u64,
    pub created: u64,
    pub other_status: BTreeMap<u16, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Send -> response, microseconds.
    pub latency_us: Vec<u32>,
    /// Due -> sent (how far the generator fell behind its schedule), microseconds.
    pub lateness_us: Vec<u32>,
    pub elapsed: Duration,
}

impl LoadStats {
    fn merge(&mut self, other: Self) {
        self.sent += other.sent;
        self.created += other.created;
        for (status, count) in other.other_status {
            *self.other_status.entry(status).or_default() += count;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency_us.extend(other.latency_us);
        self.lateness_us.extend(other.lateness_us);
    }

    pub fn non_created(&self) -> u64 {
        self.other_status.values().sum()
    }

    pub fn failures(&self) -> String {
        let mut out = format!(
            "{} sent, {} answered 201, other statuses {:?}, {} connection errors",
            self.sent, self.created, self.other_status, self.errors
        );
        if let Some(error) = &self.first_error {
            let _ = write!(out, " (first: {error})");
        }
        out
    }
}

pub async fn drive(load: Arc<Load>, probes: Arc<Mutex<Probes>>) -> LoadStats {
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let tasks: Vec<_> = (0..load.connections)
        .map(|index| tokio::spawn(drive_connection(index, load.clone(), probes.clone(), start)))
        .collect();
    let mut stats = LoadStats::default();
    for task in tasks {
        match task.await {
            Ok(part) => stats.merge(part),
            Err(error) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

async fn drive_connection(
    index: usize,
    load: Arc<Load>,
    probes: Arc<Mutex<Probes>>,
    start: tokio::time::Instant,
) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let step = load.connections as u64;
    let mut request_index = index as u64;
    while request_index < load.total {
        let i = request_index;
        request_index += step;
        let due = start + load.due(i);
        tokio::time::sleep_until(due).await;
        if sender.is_none() {
            match connect(load.address).await {
                Ok(fresh) => sender = Some(fresh),
                Err(error) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert(error);
                    continue;
                }
            }
        }
        let Some(connection) = sender.as_mut() else {
            continue;
        };
        let probe = i
            .is_multiple_of(load.probe_every)
            .then(|| usize::try_from((i / load.probe_every) % load.probe_mentors).unwrap_or(0));
        let code = match probe {
            Some(mentor) => &load.probe_codes[mentor],
            None => &load.load_codes[(i % load.load_codes.len() as u64) as usize],
        };
        let body = click_body(code, load.first_visitor + i);
        let request = Request::builder()
            .method(Method::POST)
            .uri(CLICK_PATH)
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(error.to_string());
                continue;
            }
        };
        let sent = tokio::time::Instant::now();
        stats.sent += 1;
        stats
            .lateness_us
            .push(micros(sent.saturating_duration_since(due)));
        let answer = async {
            connection.ready().await?;
            let response = connection.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let answered = Instant::now();
        match answer {
            Ok(status) => {
                stats.latency_us.push(micros(sent.elapsed()));
                if status == StatusCode::CREATED {
                    stats.created += 1;
                    if let Some(mentor) = probe {
                        lock(&probes).acknowledged(mentor, answered);
                    }
                } else {
                    *stats.other_status.entry(status.as_u16()).or_default() += 1;
                }
            }
            Err(error) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(error.to_string());
                sender = None;
            }
        }
    }
    stats
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}
