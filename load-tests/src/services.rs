//! Real services started per test, each in its own temp dir on free loopback ports, so tests
//! run in parallel, leave nothing behind, and never depend on a server someone left running:
//!
//! - [`ClickHouseServer`]: Debian's `clickhouse-server` 18.16 (the only server installable
//!   here), with a generated config.
//! - [`TansuBroker`]: `tansu broker` 0.6.0, a Kafka-protocol broker, memory storage.
//! - [`chdb_run`]: runs SQL on a current ClickHouse engine (chdb-core, in-process in Python),
//!   to check that SQL that passes on 18.16 is valid and behaves the same on current servers.
//!
//! `scripts/install-test-services.sh` installs all three. Start failures panic with the
//! service's log tail: this is test support, and a clear panic is the useful failure.
//! ClickHouse is spoken to over HTTP with [`crate::http`] (hyper's client), URL parameters
//! are encoded with `form_urlencoded`, and chdb's input and output are JSON (`serde_json`).

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tempfile::TempDir;

use crate::http;

/// How long a service may take to become ready before `start`/`restart` panic.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP request to ClickHouse may take (a hung server fails the test, it does
/// not hang it).
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one `/ping` may take while a server starts (it is retried until START_TIMEOUT).
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `stop_gracefully` waits after SIGTERM before it falls back to SIGKILL.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a service's logs shown in a start-failure panic.
const LOG_TAIL_LINES: usize = 40;

/// Kills a child process on drop (SIGKILL, then reaps it), so a failed assertion or a panic
/// leaves no server running (a leaked server would also hold the test harness's pipes and
/// the temp dir open).
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// The OS process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.0
    }

    /// The exit status if the process has already ended (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// SIGKILL (a crash, as far as the service can tell) and wait for it to end.
    pub fn kill(self) {
        // Drop does exactly that.
    }

    /// SIGTERM, wait up to `timeout` for a clean exit, then SIGKILL. Returns the exit status
    /// when the process ended by itself within `timeout`.
    pub fn terminate(mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        // std cannot send SIGTERM; procps' kill(1) is on every Debian system.
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if sent {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Some(status) = self.exited() {
                    return Some(status);
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago (the OS picks it; another process may still
/// take it before the service binds it, which is rare enough for tests).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `count` distinct free loopback ports: all are held at once while picking, so the OS
/// cannot hand out the same one twice.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|error| panic!("cannot bind a free loopback port: {error}"))
        })
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .unwrap_or_else(|error| panic!("cannot read a bound port: {error}"))
                .port()
        })
        .collect()
}

/// Resident set size of a process in bytes (Linux, from `/proc/PID/status`), for tests and
/// load tests that report memory.
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The last `lines` lines of each of `files` that exists, each under its name.
fn log_tail(files: &[PathBuf], lines: usize) -> String {
    let mut out = String::new();
    for file in files {
        let Ok(bytes) = fs::read(file) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        let _ = writeln!(out, "--- {} (last {} lines)", file.display(), tail.len());
        for line in tail {
            let _ = writeln!(out, "{line}");
        }
    }
    if out.is_empty() {
        out.push_str("(no log files written)\n");
    }
    out
}

/// A file that a child's stdout or stderr is appended to (kept across restarts).
fn append_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()))
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|error| panic!("cannot create a temp dir for {prefix}: {error}"))
}

/// The first of `candidates` that is an executable on PATH or an existing path.
fn find_program(env_override: &str, candidates: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env_override) {
        return PathBuf::from(path);
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    for candidate in candidates {
        let candidate = Path::new(candidate);
        if candidate.is_absolute() {
            if candidate.is_file() {
                return candidate.to_path_buf();
            }
        } else if let Some(found) = path_dirs
            .iter()
            .map(|dir| dir.join(candidate))
            .find(|path| path.is_file())
        {
            return found;
        }
    }
    PathBuf::from(candidates[0])
}

/// Debian's ClickHouse 18.16.1 server, started as a child process with a config generated
/// into its own temp dir: loopback HTTP and native TCP on free ports (no other listener:
/// interserver, HTTPS, MySQL etc. are left out of the config, which 18.16 takes as "off"),
/// data, tmp, user_files, format_schemas and logs under the temp dir, a passwordless
/// `default` user, server time zone UTC.
///
/// Measured on the 2-core CI machine: ready (`/ping` answers) 0.1-0.3 s after spawn, a
/// restart on existing data as fast, a SIGTERM shutdown ~1 s; 70-80 MiB RSS with a few
/// small tables. So start one per test freely.
///
/// 18.16 is from 2018: see `/work/shared/notes/test-infrastructure.md` for what it lacks.
/// Use [`chdb_run`] to check the same SQL on a current engine.
///
/// Dropping it kills the server (SIGKILL) and removes its data.
#[derive(Debug)]
pub struct ClickHouseServer {
    process: Option<ChildGuard>,
    dir: TempDir,
    http_port: u16,
    tcp_port: u16,
    /// Also serving HTTPS here, with the test certificate of `fixtures/tls/`.
    https_port: Option<u16>,
    /// A replica's settings (interserver port, ZooKeeper, macros, the cluster), if one.
    replica_config: String,
    binary: PathBuf,
}

/// The test CA (fixtures/tls/ca.pem) that signed the certificate [`ClickHouseServer::start_tls`]
/// serves (for `localhost` and 127.0.0.1; both valid until 2126, keys for tests only).
pub fn test_tls_ca_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls/ca.pem")
}

impl ClickHouseServer {
    /// Writes the config and starts the server; blocks until `/ping` answers `Ok.`.
    ///
    /// The binary is `$REFERRAL_CLICKHOUSE_SERVER` if set, else `clickhouse-server` on PATH,
    /// else `/usr/sbin/clickhouse-server` (where Debian puts it; not on a normal user's PATH).
    ///
    /// # Panics
    /// When the server is not installed, exits, or is not ready within 30 s (with its log
    /// tail in the message).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start), also serving HTTPS (see [`https_url`](Self::https_url)).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let dir = temp_dir("clickhouse-");
        let ports = free_ports(3);
        let mut server = Self {
            process: None,
            http_port: ports[0],
            tcp_port: ports[1],
            https_port: tls.then_some(ports[2]),
            replica_config: String::new(),
            binary: find_program(
                "REFERRAL_CLICKHOUSE_SERVER",
                &["clickhouse-server", "/usr/sbin/clickhouse-server"],
            ),
            dir,
        };
        server.write_config();
        server.launch();
        server
    }

    /// `http://127.0.0.1:PORT`, for HTTP clients (the `clickhouse` crate among them).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `https://localhost:PORT` when started with [`start_tls`](Self::start_tls).
    pub fn https_url(&self) -> Option<String> {
        self.https_port
            .map(|port| format!("https://localhost:{port}"))
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native-protocol port (for `clickhouse-client --port`).
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The temp dir with `config.xml`, `users.xml`, `data/` and `log/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::id)
    }

    /// The server's resident memory in bytes while it runs.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.pid().and_then(process_rss_bytes)
    }

    /// Kills the server (SIGKILL: a crash, as far as it can tell) and waits for it to end.
    /// Data is kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM and wait (up to 30 s, then SIGKILL): a clean shutdown.
    pub fn stop_gracefully(&mut self) {
        if let Some(process) = self.process.take() {
            process.terminate(GRACEFUL_TIMEOUT);
        }
    }

    /// Stops the server if it runs and starts it again on the same ports and data; blocks
    /// until `/ping` answers again.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Runs `sql` over HTTP and returns the response body (the default format is
    /// TabSeparated; append `FORMAT JSONEachRow` etc. for others).
    ///
    /// # Panics
    /// When the server answers with an error or cannot be reached (message included).
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|error| panic!("ClickHouse query failed: {sql}\n{error}"))
    }

    /// Runs `sql` over HTTP: `Ok(body)` on HTTP 200, else `Err` with the status and the
    /// server's message (tests of what 18.16 rejects want the error).
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        self.try_query_with(sql, &[])
    }

    /// [`try_query`](Self::try_query) with settings passed as URL parameters (over HTTP,
    /// `SET` does not outlive its request).
    ///
    /// `wait_end_of_query=1` is always sent so the server buffers the result and an error
    /// during the query is a non-200 status, not a 200 whose body ends with the error.
    pub fn try_query_with(&self, sql: &str, settings: &[(&str, &str)]) -> Result<String, String> {
        let url = format!("{}/?{}", self.http_url(), query_parameters(settings));
        match http::post(
            &url,
            sql.to_owned(),
            "text/plain; charset=utf-8",
            QUERY_TIMEOUT,
        ) {
            Ok(http::Response { status: 200, body }) => Ok(body),
            Ok(http::Response { status, body }) => {
                Err(format!("HTTP {status}: {}", body.trim_end()))
            }
            Err(error) => Err(format!("request to {} failed: {error}", self.http_url())),
        }
    }

    /// The last `lines` lines of the server's logs (its log file, error log, stdout/stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.dir.path().join("log");
        log_tail(
            &[
                log.join("stderr.log"),
                log.join("clickhouse-server.err.log"),
                log.join("clickhouse-server.log"),
            ],
            lines,
        )
    }

    /// The HTTPS listener's settings, or nothing.
    fn https_config(&self) -> String {
        let Some(port) = self.https_port else {
            return String::new();
        };
        let fixture = |name: &str| {
            xml_escape(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fixtures/tls")
                    .join(name)
                    .display()
                    .to_string(),
            )
        };
        format!(
            "\n    <https_port>{port}</https_port>\n    <openSSL><server>\
             <certificateFile>{}</certificateFile><privateKeyFile>{}</privateKeyFile>\
             <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>\
             <disableProtocols>sslv2,sslv3</disableProtocols></server></openSSL>",
            fixture("server.crt"),
            fixture("server.key")
        )
    }

    fn write_config(&self) {
        let root = self.dir.path();
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            fs::create_dir_all(root.join(sub))
                .unwrap_or_else(|error| panic!("cannot create {}: {error}", root.display()));
        }
        let path = |sub: &str| xml_escape(&format!("{}/", root.join(sub).display()));
        let log = root.join("log");
        // 18.16 notes: `mark_cache_size` has no default (the server refuses to start
        // without it); every user needs a `quota` and the profile must exist; leaving a
        // port element out means that listener is off.
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{log_file}</log>
        <errorlog>{err_file}</errorlog>
        <size>50M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>{https}{replica}
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>134217728</uncompressed_cache_size>
    <mark_cache_size>134217728</mark_cache_size>
    <path>{data}</path>
    <tmp_path>{tmp}</tmp_path>
    <user_files_path>{user_files}</user_files_path>
    <format_schema_path>{format_schemas}</format_schema_path>
    <users_config>{users}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"#,
            log_file = xml_escape(&log.join("clickhouse-server.log").display().to_string()),
            err_file = xml_escape(&log.join("clickhouse-server.err.log").display().to_string()),
            http_port = self.http_port,
            tcp_port = self.tcp_port,
            https = self.https_config(),
            replica = self.replica_config,
            data = path("data"),
            tmp = path("tmp"),
            user_files = path("user_files"),
            format_schemas = path("format_schemas"),
            users = xml_escape(&root.join("users.xml").display().to_string()),
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default></default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#;
        for (name, text) in [("config.xml", config.as_str()), ("users.xml", users)] {
            let file = root.join(name);
            fs::write(&file, text)
                .unwrap_or_else(|error| panic!("cannot write {}: {error}", file.display()));
        }
    }

    fn launch(&mut self) {
        let root = self.dir.path();
        let stderr = append_log(&root.join("log").join("stderr.log"));
        let stdout = stderr
            .try_clone()
            .unwrap_or_else(|error| panic!("cannot duplicate a log file handle: {error}"));
        let child = Command::new(&self.binary)
            .arg(format!(
                "--config-file={}",
                root.join("config.xml").display()
            ))
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {} ({error}): run scripts/install-test-services.sh, which installs \
                     Debian's clickhouse-server",
                    self.binary.display()
                )
            });
        let mut process = ChildGuard::new(child);
        let started = Instant::now();
        loop {
            if let Some(status) = process.exited() {
                panic!(
                    "clickhouse-server exited during start-up ({status})\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            let ping = http::get(&format!("{}/ping", self.http_url()), PING_TIMEOUT);
            if matches!(&ping, Ok(http::Response { status: 200, body }) if body.trim_end() == "Ok.")
            {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                drop(process);
                panic!(
                    "clickhouse-server did not answer /ping on port {} within {:?}\n{}",
                    self.http_port,
                    START_TIMEOUT,
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(process);
    }
}

/// Debian's ZooKeeper 3.8, standalone, on a free port in its own temp dir (the class path
/// the package's `environment` names; ready in a few seconds). Dropping it kills it.
#[derive(Debug)]
pub struct ZooKeeper {
    _process: ChildGuard,
    _dir: TempDir,
    port: u16,
}

impl ZooKeeper {
    /// # Panics
    /// When Java or the package is missing, or it does not serve within 30 s.
    pub fn start() -> Self {
        let dir = temp_dir("zookeeper-");
        let port = free_port();
        let config = dir.path().join("zoo.cfg");
        fs::write(
            &config,
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=srvr\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", config.display()));
        let log = append_log(&dir.path().join("zookeeper.log"));
        let child = Command::new("java")
            .args([
                "-cp",
                "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar",
                "-Xmx256m",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .unwrap_or_else(|error| panic!("log handle: {error}")),
            )
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run java ({error}): run scripts/install-test-services.sh (zookeeper)"
                )
            });
        let mut process = ChildGuard::new(child);
        let started = Instant::now();
        loop {
            if let Some(status) = process.exited() {
                panic!(
                    "zookeeper exited during start-up ({status})\n{}",
                    log_tail(&[dir.path().join("zookeeper.log")], LOG_TAIL_LINES)
                );
            }
            if Self::serving(port) {
                break;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "zookeeper did not answer on port {port}\n{}",
                log_tail(&[dir.path().join("zookeeper.log")], LOG_TAIL_LINES)
            );
            thread::sleep(Duration::from_millis(100));
        }
        Self {
            _process: process,
            _dir: dir,
            port,
        }
    }

    /// Whether it serves sessions: `srvr` names its mode only then (`ruok` answers as soon
    /// as the process runs, and ClickHouse 18.16 crashes on a session refused at start).
    fn serving(port: u16) -> bool {
        use std::io::Read;
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(PING_TIMEOUT));
        let mut answer = String::new();
        stream.write_all(b"srvr").is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.contains("Mode: standalone")
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// ClickHouse 18.16 replicas of one shard, with a ZooKeeper, in the cluster
/// [`CLUSTER`](Self::CLUSTER) (`remote_servers`), each with the macros `{shard}` and
/// `{replica}`: what `--clickhouse-cluster` needs. Each replica is a [`ClickHouseServer`]
/// (stop, restart, query as with one server).
#[derive(Debug)]
pub struct ClickHouseReplicas {
    pub replicas: Vec<ClickHouseServer>,
    _zookeeper: ZooKeeper,
}

impl ClickHouseReplicas {
    pub const CLUSTER: &'static str = "referral_cluster";

    pub fn start(count: usize) -> Self {
        let zookeeper = ZooKeeper::start();
        let ports: Vec<Vec<u16>> = (0..count).map(|_| free_ports(3)).collect();
        let mut shard = String::from("<shard><internal_replication>true</internal_replication>");
        for replica_ports in &ports {
            let _ = write!(
                shard,
                "<replica><host>127.0.0.1</host><port>{}</port></replica>",
                replica_ports[1]
            );
        }
        shard.push_str("</shard>");
        let replicas = ports
            .iter()
            .enumerate()
            .map(|(index, replica_ports)| {
                let mut server = ClickHouseServer {
                    process: None,
                    http_port: replica_ports[0],
                    tcp_port: replica_ports[1],
                    https_port: None,
                    replica_config: format!(
                        "\n    <interserver_http_port>{interserver}</interserver_http_port>\
                         \n    <interserver_http_host>127.0.0.1</interserver_http_host>\
                         \n    <zookeeper><node><host>127.0.0.1</host><port>{zk}</port></node>\
                         <session_timeout_ms>3000</session_timeout_ms></zookeeper>\
                         \n    <macros><shard>01</shard><replica>replica{index}</replica></macros>\
                         \n    <remote_servers><{cluster}>{shard}</{cluster}></remote_servers>\
                         \n    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>",
                        interserver = replica_ports[2],
                        zk = zookeeper.port(),
                        cluster = Self::CLUSTER,
                    ),
                    binary: find_program(
                        "REFERRAL_CLICKHOUSE_SERVER",
                        &["clickhouse-server", "/usr/sbin/clickhouse-server"],
                    ),
                    dir: temp_dir("clickhouse-replica-"),
                };
                server.write_config();
                server.launch();
                server
            })
            .collect();
        Self {
            replicas,
            _zookeeper: zookeeper,
        }
    }
}

/// `tansu broker` 0.6.0 (an Apache-Kafka-compatible broker) with the memory storage engine,
/// listening and advertising `127.0.0.1:PORT` on a free port, in its own temp working dir.
///
/// Ready in milliseconds. The memory engine loses every topic and offset when the broker
/// stops: a [`restart`](Self::restart) is a broker that came back empty (on the same port),
/// which clients must survive. (tansu's SQLite engine keeps data across restarts but panics
/// on idempotent producers that outlive a restart; see `ingest/tests/kafka.rs`.)
///
/// rdkafka consumers should set `session.timeout.ms=6000` and `heartbeat.interval.ms=500`
/// against it, or a group join takes ~23 s. Dropping it kills the broker.
#[derive(Debug)]
pub struct TansuBroker {
    process: Option<ChildGuard>,
    dir: TempDir,
    port: u16,
    binary: PathBuf,
    /// `memory://tansu/` or `sqlite://tansu.db` (relative to `dir`).
    storage: &'static str,
}

impl TansuBroker {
    /// Starts the broker; blocks until its port accepts connections.
    ///
    /// The binary is `$REFERRAL_TANSU` if set, else `tansu` on PATH.
    ///
    /// # Panics
    /// When tansu is not installed, exits, or does not listen within 30 s (with its log tail).
    pub fn start() -> Self {
        Self::start_with_storage("memory://tansu/")
    }

    /// A broker on tansu's SQLite engine: topics and offsets survive a
    /// [`restart`](Self::restart), as on a real Kafka cluster (slower than memory).
    pub fn start_durable() -> Self {
        Self::start_with_storage("sqlite://tansu.db")
    }

    fn start_with_storage(storage: &'static str) -> Self {
        let mut broker = Self {
            process: None,
            dir: temp_dir("tansu-"),
            port: free_port(),
            binary: find_program("REFERRAL_TANSU", &["tansu"]),
            storage,
        };
        broker.launch();
        broker
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `tcp://127.0.0.1:PORT`, for tansu's own CLI (`tansu topic create --broker`).
    pub fn url(&self) -> String {
        format!("tcp://{}", self.address())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::id)
    }

    /// Kills the broker (SIGKILL) and waits for it to end; its memory storage is lost.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// Stops the broker if it runs and starts it again on the same port (empty with the
    /// memory engine, with its data with SQLite); blocks until the port accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The last `lines` lines of the broker's output (`RUST_LOG=warn`).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&[self.dir.path().join("tansu.log")], lines)
    }

    fn launch(&mut self) {
        let url = self.url();
        let log = append_log(&self.dir.path().join("tansu.log"));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|error| panic!("cannot duplicate a log file handle: {error}"));
        let child = Command::new(&self.binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                self.storage,
            ])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {} ({error}): run scripts/install-test-services.sh, which installs \
                     tansu 0.6.0",
                    self.binary.display()
                )
            });
        let mut process = ChildGuard::new(child);
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let started = Instant::now();
        loop {
            if let Some(status) = process.exited() {
                panic!(
                    "tansu exited during start-up ({status})\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                drop(process);
                panic!(
                    "tansu did not listen on {address} within {START_TIMEOUT:?}\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(process);
    }
}

/// The virtualenv with chdb-core: `$REFERRAL_TEST_VENV`, else
/// `$HOME/.cache/referral-attribution/venv` (as in `scripts/install-test-services.sh`).
pub fn chdb_venv() -> PathBuf {
    if let Some(venv) = std::env::var_os("REFERRAL_TEST_VENV") {
        return PathBuf::from(venv);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache/referral-attribution/venv")
}

/// `scripts/chdb_run.py` in this workspace.
pub fn chdb_run_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/chdb_run.py")
}

/// Runs `statements` in order in one fresh chdb session (a current ClickHouse engine, so
/// tables persist from one statement to the next) and returns, per statement, `Ok` with its
/// rows as a JSON array text (`[{"col": value, ...}, ...]`, `[]` for DDL and INSERT) or
/// `Err` with the engine's message. A failing statement does not stop the ones after it.
///
/// Takes ~0.5 s per call (Python and the engine start each time): batch statements.
///
/// # Panics
/// When the venv's python or the script cannot run, or its output is not what
/// `scripts/chdb_run.py` prints.
pub fn chdb_run<S: AsRef<str>>(statements: &[S]) -> Vec<Result<String, String>> {
    let input = chdb_input(statements);
    let python = chdb_venv().join("bin/python");
    let script = chdb_run_script();
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}): run scripts/install-test-services.sh, which makes the \
                 chdb-core venv (or set REFERRAL_TEST_VENV)",
                python.display()
            )
        });
    let mut stdin = child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("the chdb runner has no stdin"));
    // Written from another thread so a large input cannot deadlock against a full stdout.
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("the chdb runner failed: {error}"));
    let written = writer
        .join()
        .unwrap_or_else(|_| panic!("the chdb runner's input writer panicked"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || written.is_err() {
        panic!(
            "{} {} failed ({}; input written: {written:?})\nstderr:\n{stderr}",
            python.display(),
            script.display(),
            output.status
        );
    }
    let results = parse_chdb_output(&stdout).unwrap_or_else(|error| {
        panic!("unexpected output from chdb_run.py ({error}):\n{stdout}\nstderr:\n{stderr}")
    });
    assert_eq!(
        results.len(),
        statements.len(),
        "chdb_run.py returned {} results for {} statements:\n{stdout}",
        results.len(),
        statements.len()
    );
    results
}

/// `chdb_run.py`'s input: `{"statements": [{"sql": "..."}, ...]}`.
fn chdb_input<S: AsRef<str>>(statements: &[S]) -> String {
    let statements: Vec<serde_json::Value> = statements
        .iter()
        .map(|statement| serde_json::json!({ "sql": statement.as_ref() }))
        .collect();
    serde_json::json!({ "statements": statements }).to_string()
}

/// One entry of `chdb_run.py`'s output.
#[derive(Deserialize)]
struct ChdbResult {
    ok: bool,
    /// The rows, as the JSON text the runner printed.
    rows: Option<Box<RawValue>>,
    error: Option<String>,
}

/// `chdb_run.py`'s output, a JSON array of `{"ok": true, "rows": [...]}` /
/// `{"ok": false, "error": "..."}`, as results (rows kept as their JSON text).
fn parse_chdb_output(text: &str) -> Result<Vec<Result<String, String>>, String> {
    let results: Vec<ChdbResult> = serde_json::from_str(text).map_err(|error| error.to_string())?;
    Ok(results
        .into_iter()
        .map(|result| {
            if result.ok {
                Ok(result
                    .rows
                    .map_or_else(|| "[]".to_owned(), |rows| rows.get().to_owned()))
            } else {
                Err(result.error.unwrap_or_default())
            }
        })
        .collect())
}

/// ClickHouse's URL parameters: `wait_end_of_query=1`, then `settings`, form-encoded.
fn query_parameters(settings: &[(&str, &str)]) -> String {
    let mut parameters = form_urlencoded::Serializer::new(String::new());
    parameters.append_pair("wait_end_of_query", "1");
    for (name, value) in settings {
        parameters.append_pair(name, value);
    }
    parameters.finish()
}

fn xml_escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_runner_output() {
        let text = "[\n{\"ok\": true, \"rows\": []},\n\
                    {\"ok\": true, \"rows\": [{\"k\": \"a,]}\", \"v\": [1, 2.5e3, null]}]},\n\
                    {\"ok\": false, \"error\": \"Code: 62. \\\"x\\\" \\\\ \\u00e9 \\ud83d\\ude00\\n\"},\n\
                    {\"ok\": true, \"rows\": [], \"output\": \"3\\n\"}\n]\n";
        let results = parse_chdb_output(text).unwrap();
        assert_eq!(
            results,
            vec![
                Ok("[]".to_owned()),
                Ok("[{\"k\": \"a,]}\", \"v\": [1, 2.5e3, null]}]".to_owned()),
                Err("Code: 62. \"x\" \\ é 😀\n".to_owned()),
                Ok("[]".to_owned()),
            ]
        );
        assert_eq!(parse_chdb_output("[]\n").unwrap(), vec![]);
        assert!(parse_chdb_output("[{\"ok\": true}").is_err());
        assert!(parse_chdb_output("[{\"rows\": []}]").is_err());
        assert!(parse_chdb_output("[] trailing").is_err());
    }

    #[test]
    fn builds_the_runner_input_and_the_query_parameters() {
        let input = chdb_input(&["SELECT 'a\"b\\c\nd\u{1}é'", "SELECT 2"]);
        let parsed: serde_json::Value = serde_json::from_str(&input).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"statements": [
                {"sql": "SELECT 'a\"b\\c\nd\u{1}é'"},
                {"sql": "SELECT 2"},
            ]})
        );
        assert_eq!(chdb_input::<&str>(&[]), "{\"statements\":[]}");
        assert_eq!(query_parameters(&[]), "wait_end_of_query=1");
        assert_eq!(
            query_parameters(&[("database", "referral"), ("x y", "a b&c=d/é+%")]),
            "wait_end_of_query=1&database=referral&x+y=a+b%26c%3Dd%2F%C3%A9%2B%25"
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(8);
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }
}
