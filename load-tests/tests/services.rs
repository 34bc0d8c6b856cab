//! The launchers against the real services: ClickHouse 18.16 keeps data across a crash and a
//! clean restart on the same ports; tansu accepts connections again after a restart on the
//! same port; chdb runs DDL, inserts and FINAL selects and reports errors per statement.

use std::net::TcpStream;
use std::time::Instant;

use referral_load_tests::services::{ClickHouseServer, TansuBroker, chdb_run, free_port};

#[test]
fn clickhouse_keeps_data_across_restarts() {
    let started = Instant::now();
    let mut server = ClickHouseServer::start();
    let start_time = started.elapsed();
    assert!(server.http_url().starts_with("http://127.0.0.1:"));
    assert_ne!(server.http_port(), server.tcp_port());
    assert!(server.query("SELECT version()").starts_with("18.16."));
    // 18.16 shows the zone configured as `UTC` as its alias `Etc/UTC`.
    assert!(server.query("SELECT timezone()").ends_with("UTC\n"));

    server.query(
        "CREATE TABLE clicks (code String, day Date, clicks UInt64) \
         ENGINE = SummingMergeTree ORDER BY (code, day)",
    );
    server.query(
        "INSERT INTO clicks VALUES ('a', '2024-01-01', 1), ('a', '2024-01-01', 2), \
         ('b', '2024-01-02', 5)",
    );
    server.query("INSERT INTO clicks VALUES ('a', '2024-01-01', 4)");
    let expected = "{\"code\":\"a\",\"day\":\"2024-01-01\",\"clicks\":\"7\"}\n\
                    {\"code\":\"b\",\"day\":\"2024-01-02\",\"clicks\":\"5\"}\n";
    let select = "SELECT code, day, clicks FROM clicks FINAL ORDER BY code FORMAT JSONEachRow";
    assert_eq!(server.query(select), expected);
    let rss = server.rss_bytes().unwrap_or(0);

    // A crash (SIGKILL), then the same ports and data.
    let (http_port, tcp_port) = (server.http_port(), server.tcp_port());
    let restarted = Instant::now();
    server.restart();
    let restart_time = restarted.elapsed();
    assert_eq!(
        (server.http_port(), server.tcp_port()),
        (http_port, tcp_port)
    );
    assert_eq!(server.query(select), expected);

    // A clean shutdown, then a start.
    let stopping = Instant::now();
    server.stop_gracefully();
    let stop_time = stopping.elapsed();
    assert!(server.try_query("SELECT 1").is_err());
    server.restart();
    assert_eq!(server.query("SELECT sum(clicks) FROM clicks"), "12\n");
    eprintln!(
        "clickhouse-server 18.16: ready in {start_time:?}, restart in {restart_time:?}, \
         SIGTERM stop in {stop_time:?}, RSS {} MiB after the inserts",
        rss / (1024 * 1024)
    );
}

#[test]
fn clickhouse_reports_errors_and_takes_settings() {
    let server = ClickHouseServer::start();
    let error = server.try_query("SELECT * FROM missing_table").unwrap_err();
    assert!(error.starts_with("HTTP 404"), "{error}");
    assert!(error.contains("doesn't exist"), "{error}");
    // Rejected by 18.16, which production's newer servers accept.
    assert!(server.try_query("SELECT toDateTime64(0, 3)").is_err());
    assert_eq!(
        server
            .try_query_with(
                "SELECT value FROM system.settings WHERE name = 'max_threads'",
                &[("max_threads", "3")]
            )
            .unwrap(),
        "3\n"
    );
    // Setting values are form-encoded (a space as `+`, reserved characters escaped).
    assert_eq!(
        server
            .try_query_with(
                "SELECT value FROM system.settings WHERE name = 'format_csv_delimiter'",
                &[("format_csv_delimiter", " ")]
            )
            .unwrap(),
        " \n"
    );
    assert_eq!(
        server
            .try_query_with(
                "SELECT value FROM system.settings WHERE name = 'format_csv_delimiter'",
                &[("format_csv_delimiter", "&")]
            )
            .unwrap(),
        "&\n"
    );
    // Non-ASCII and quotes make it through the HTTP client.
    assert_eq!(server.query("SELECT 'é \\' x'"), "é \\' x\n");
    assert!(server.log_tail(5).contains("clickhouse-server.log"));
}

#[test]
fn tansu_accepts_connections_across_restarts() {
    let mut broker = TansuBroker::start();
    assert_eq!(broker.address(), format!("127.0.0.1:{}", broker.port()));
    assert_eq!(broker.url(), format!("tcp://127.0.0.1:{}", broker.port()));
    TcpStream::connect(broker.address()).unwrap();

    broker.stop();
    assert!(TcpStream::connect(broker.address()).is_err());
    let port = broker.port();
    broker.restart();
    assert_eq!(broker.port(), port);
    TcpStream::connect(broker.address()).unwrap();
    assert!(broker.pid().is_some());
}

#[test]
fn chdb_runs_statements_in_one_session() {
    let results = chdb_run(&[
        "CREATE TABLE clicks (code String, day Date, clicks UInt64) \
         ENGINE = SummingMergeTree ORDER BY (code, day)",
        "INSERT INTO clicks VALUES ('a', '2024-01-01', 1), ('a', '2024-01-01', 2), \
         ('b', '2024-01-02', 5)",
        "INSERT INTO clicks VALUES ('a', '2024-01-01', 4)",
        "SELECT code, day, clicks FROM clicks FINAL ORDER BY code",
        "SELECT * FROM missing_table",
        "SELECT 'quote\" back\\\\slash\nnewline é' AS s, version() LIKE '2%' AS current",
    ]);
    assert_eq!(results.len(), 6);
    assert_eq!(
        results[..3],
        [Ok("[]".into()), Ok("[]".into()), Ok("[]".into())]
    );
    assert_eq!(
        results[3],
        Ok(
            "[{\"code\": \"a\", \"day\": \"2024-01-01\", \"clicks\": 7}, \
            {\"code\": \"b\", \"day\": \"2024-01-02\", \"clicks\": 5}]"
                .into()
        )
    );
    let error = results[4].clone().unwrap_err();
    assert!(error.contains("UNKNOWN_TABLE"), "{error}");
    assert_eq!(
        results[5],
        Ok("[{\"s\": \"quote\\\" back\\\\slash\\nnewline \\u00e9\", \"current\": 1}]".into())
    );
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}
