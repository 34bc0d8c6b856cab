//! Test support for the pipeline's integration and load tests: launchers for the real
//! services the tests start for themselves (see `scripts/install-test-services.sh`, which
//! installs them), so no test depends on a server someone left running.

pub mod bench;
pub mod services;
