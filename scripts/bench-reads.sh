#!/usr/bin/env bash
# Read benchmark (issue 5), in one run on this machine, every service started fresh by the
# benchmark itself (ClickHouse 18.16, tansu 0.6.0 with the memory engine):
#  1. `referral-aggregator migrate`, then 10,000,000 attributions generated (10,000 mentors,
#     Zipf-skewed; occurred_at over the last 400 days; 10% confirmed, 1% deleted) and written
#     with the production writer as a library (plan + sink), oldest first, so the rows, the
#     materialized totals and the sorted copies are what the aggregator stores; the load
#     rate is printed; background merges are awaited;
#  2. `referral-api` (release) in production mode (Kafka + ClickHouse, rate limits off);
#     p50/p99/max over HTTP/1.1 keep-alive (4 connections, closed loop, 2,000 timed requests
#     per endpoint, random targets, then 500 on one connection) of GET /:id, a mentor's list
#     page (top-100 and any mentor), mentor totals all_time and 30d, and the list's first
#     page; every answer checked against the generated data, totals also against direct
#     counts in ClickHouse; then the SQL of each endpoint timed directly (rows read).
# Prints Markdown tables; with --record, also writes them to docs/BENCHMARKS.md (between
# <!-- reads:begin --> and <!-- reads:end -->). About 6-10 minutes after the build at 10M
# (generation ~3 min, ~1.5 GB of temp disk); `--attributions 1000000` for a quick run.
# Other options go to the benchmark binary (`--help` lists them), e.g. --attributions N,
# --mentors N, --requests N, --connections N, --merge-wait SECONDS.
#
#   ./scripts/bench-reads.sh [--record] [OPTIONS...]
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-services.sh >/dev/null
cargo build --release --quiet -p referral-aggregator -p referral-api -p referral-load-tests --bins
exec ./target/release/bench_reads "$@"
