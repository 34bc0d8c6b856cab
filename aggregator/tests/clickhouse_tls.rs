//! ClickHouse over HTTPS (as ClickHouse Cloud serves it): `referral-aggregator migrate`
//! against ClickHouse 18.16's HTTPS listener with a certificate from a private test CA.
//! Trusted through `SSL_CERT_FILE` (how the built-in OpenSSL's certificate probe finds a
//! private CA), it migrates; without it, the certificate is refused: the connection is
//! verified, not merely encrypted.

use std::process::Command;

use referral_load_tests::services::{ClickHouseServer, test_tls_ca_file};

fn migrate(url: &str, ca: Option<&std::path::Path>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_referral-aggregator"));
    command
        .arg("migrate")
        .env("REFERRAL_CLICKHOUSE_URL", url)
        .env("REFERRAL_CLICKHOUSE_DATABASE", "referral_tls")
        .env("RUST_LOG", "warn")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    if let Some(ca) = ca {
        command.env("SSL_CERT_FILE", ca);
    }
    command.output().expect("the binary runs")
}

#[test]
fn migrate_over_https_verifies_the_server_certificate() {
    let clickhouse = ClickHouseServer::start_tls();
    let url = clickhouse.https_url().expect("started with TLS");

    let untrusted = migrate(&url, None);
    let refused = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success(), "an unknown CA must be refused");
    assert!(refused.contains("network error"), "{refused}");

    let trusted = migrate(&url, Some(&test_tls_ca_file()));
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let tables =
        clickhouse.query("SELECT count() FROM system.tables WHERE database = 'referral_tls'");
    assert!(tables.trim().parse::<u32>().unwrap() >= 5, "{tables}");
}
