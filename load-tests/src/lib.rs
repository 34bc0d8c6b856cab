//! Test support for the pipeline's integration and load tests, and what the benchmark
//! drivers share:
//!
//! - [`services`]: launchers for the real services the tests start for themselves (see
//!   `scripts/install-test-services.sh`, which installs them), so no test depends on a server
//!   someone left running; chdb runs of SQL on a current ClickHouse engine.
//! - [`http`]: a small blocking HTTP client (hyper on a runtime thread of its own).
//! - [`bench`]: the benchmark drivers' shared flags, child processes, CPU accounting, HTTP
//!   helpers and report recording.

pub mod bench;
pub mod http;
pub mod services;
