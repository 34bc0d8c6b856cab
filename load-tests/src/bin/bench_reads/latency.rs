//! The latency measurement: requests to the API over HTTP/1.1 keep-alive connections,
//! closed loop (each connection sends its next request when the previous one is answered),
//! every answer checked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header};
use referral_load_tests::bench::{CpuWindow, Service, connect, pid_text, quantile, runtime};
use referral_load_tests::services::ClickHouseServer;
use referral_schemas::Timestamp;

use crate::Result;
use crate::data::{Dataset, Rng};
use crate::endpoints::{self, Endpoint, Target, When, wrong};
use crate::options::Options;
use crate::report::ms;

/// Each endpoint in turn: `--requests` on `--connections` after `--warm-up`, with the CPU
/// of ClickHouse, the API and this process; then `--unloaded-requests` on one connection.
/// Per endpoint: (endpoint, the loaded phase, the one-connection phase).
pub fn measure_all(
    options: &Options,
    data: &Dataset,
    api_port: u16,
    api: &mut Service,
    clickhouse: &ClickHouseServer,
    rng: &mut Rng,
) -> Result<Vec<(Endpoint, Phase, Option<Phase>)>> {
    let mut results = Vec::new();
    for endpoint in Endpoint::ALL {
        let targets = endpoints::targets(endpoint, data, options, rng)?;
        let cpu = CpuWindow::start(&[
            ("ClickHouse", pid_text(clickhouse.pid())),
            ("referral-api", pid_text(api.pid())),
            ("bench client", "self".to_owned()),
        ]);
        let mut phase = runtime()?.block_on(measure(
            api_port,
            targets,
            options.connections,
            options.warm_up,
        ))?;
        phase.cpu = cpu.finish();
        eprintln!("{}: {}", endpoint.label(), phase.summary());
        let unloaded = if options.unloaded_requests > 0 {
            let single = Options {
                warm_up: 0,
                requests: options.unloaded_requests,
                ..options.clone()
            };
            let phase = runtime()?.block_on(measure(
                api_port,
                endpoints::targets(endpoint, data, &single, rng)?,
                1,
                0,
            ))?;
            eprintln!("  one connection: {}", phase.summary());
            Some(phase)
        } else {
            None
        };
        results.push((endpoint, phase, unloaded));
        api.check_alive()?;
    }
    Ok(results)
}

#[derive(Debug, Default)]
pub struct Phase {
    /// Latencies of the timed requests, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Timed requests answered per second (first timed send to last timed answer).
    pub per_second: f64,
    pub errors: u64,
    pub wrong: u64,
    pub first_wrong: Option<String>,
    pub cpu: Vec<(&'static str, f64)>,
}

impl Phase {
    pub fn sorted(&self) -> Vec<u64> {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        sorted
    }

    pub fn p99(&self) -> Option<Duration> {
        quantile(&self.sorted(), 0.99).map(Duration::from_micros)
    }

    pub fn summary(&self) -> String {
        let sorted = self.sorted();
        format!(
            "p50 {} / p99 {} / max {} ms, {:.0} req/s, {} wrong, {} errors",
            ms(quantile(&sorted, 0.5)),
            ms(quantile(&sorted, 0.99)),
            ms(sorted.last().copied()),
            self.per_second,
            self.wrong,
            self.errors
        )
    }
}

struct Shared {
    phase: Phase,
    first_sent: Option<Instant>,
    last_answer: Option<Instant>,
}

/// Closed loop: each connection sends its next request when the previous one is answered.
async fn measure(
    port: u16,
    targets: Vec<Target>,
    connections: usize,
    warm_up: usize,
) -> Result<Phase> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let targets = Arc::new(targets);
    let next = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Mutex::new(Shared {
        phase: Phase::default(),
        first_sent: None,
        last_answer: None,
    }));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (targets, next, shared) = (targets.clone(), next.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = None;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(index) else {
                    break;
                };
                if sender.is_none() {
                    match connect::<Empty<Bytes>>(address).await {
                        Ok(fresh) => sender = Some(fresh),
                        Err(error) => return Err(error),
                    }
                }
                let Some(connection) = sender.as_mut() else {
                    break;
                };
                let request = Request::get(target.path.as_str())
                    .header(header::HOST, "127.0.0.1")
                    .body(Empty::<Bytes>::new())
                    .map_err(|error| error.to_string())?;
                let sent_at = Timestamp::now();
                let sent = Instant::now();
                let answer = async {
                    connection.ready().await?;
                    let response = connection.send_request(request).await?;
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, body))
                }
                .await;
                let answered = Instant::now();
                let when = When {
                    sent: sent_at,
                    answered: Timestamp::now(),
                };
                let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
                let timed = index >= warm_up;
                match answer {
                    Ok((status, body)) => {
                        if timed {
                            shared.phase.latencies_us.push(
                                u64::try_from(answered.duration_since(sent).as_micros())
                                    .unwrap_or(u64::MAX),
                            );
                            let first = *shared.first_sent.get_or_insert(sent);
                            shared.first_sent = Some(first.min(sent));
                            shared.last_answer = Some(answered);
                        }
                        if let Some(why) = wrong(&target.check, status, &body, when) {
                            shared.phase.wrong += 1;
                            shared.phase.first_wrong.get_or_insert(why);
                        }
                    }
                    Err(error) => {
                        shared.phase.errors += 1;
                        shared.phase.first_wrong.get_or_insert(error.to_string());
                        sender = None;
                    }
                }
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|error| format!("a load task failed: {error}"))??;
    }
    let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
    if let (Some(first), Some(last)) = (shared.first_sent, shared.last_answer) {
        let seconds = last.duration_since(first).as_secs_f64().max(1e-9);
        shared.phase.per_second = shared.phase.latencies_us.len() as f64 / seconds;
    }
    Ok(std::mem::take(&mut shared.phase))
}
