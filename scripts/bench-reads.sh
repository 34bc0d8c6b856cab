#!/usr/bin/env bash
# Read benchmark (issues 5 and 15), in one run on this machine, every service started fresh
# by the benchmark itself (ClickHouse 18.16, tansu 0.6.0 with the memory engine):
#  1. `referral-aggregator migrate`, then 10,000,000 attributions generated (10,000 mentors,
#     Zipf-skewed; occurred_at over the last 400 days; 10% confirmed, 1% deleted) and written
#     with the production writer as a library (plan + sink), oldest first, so the rows, the
#     materialized totals and the sorted copies are what the aggregator stores; the load
#     rate is printed; background merges are awaited;
#  2. `referral-api` (release) in production mode (Kafka + ClickHouse, rate limits off);
#     p50/p99/max over HTTP/1.1 keep-alive (4 connections, closed loop, 2,000 timed requests
#     per endpoint, random targets, then 500 on one connection) of GET /:id, a mentor's list
#     page (top-100 and any mentor), mentor totals all_time and 30d, the list's first page,
#     and issue 15's reads: a 90-day daily series, a 48-hour hourly series (from/to), a
#     30-day daily series in Asia/Kolkata and the 30-day top 10; every answer checked
#     against the generated data (a series bucket by bucket, the top 10 row by row), totals
#     also against direct counts in ClickHouse; then the SQL of each endpoint timed
#     directly (rows read; the series excepted);
#  3. the export (issue 15; run after the latency, before the direct checks and the SQL):
#     GET /export?format=ndjson, then format=csv, of every live attribution (or the last
#     N days with --export-days N), streamed over one connection and counted row by row as
#     it arrives (each row checked, the count against the generated data): rows/s against
#     the goal of 200,000, and referral-api's RSS (VmRSS, sampled every 100 ms) before, at
#     its peak while streaming, and after.
# Prints Markdown tables; with --record, also writes them to docs/BENCHMARKS.md (between
# <!-- reads:begin --> and <!-- reads:end -->). About 6-10 minutes after the build at 10M
# (generation ~3 min, ~1.5 GB of temp disk), plus the exports (10M rows twice: under two
# minutes at the goal's rate, about 4.5 at the ~75,000 rows/s a 200,000-row run measured;
# --export-days 30 exports a 30-day window instead); `--attributions 1000000` for a quick
# run.
# Other options go to the benchmark binary (`--help` lists them), e.g. --attributions N,
# --mentors N, --requests N, --connections N, --merge-wait SECONDS, --export-days N.
#
#   ./scripts/bench-reads.sh [--record] [OPTIONS...]
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-services.sh >/dev/null
cargo build --release --quiet -p referral-aggregator -p referral-api -p referral-load-tests --bins
exec ./target/release/bench_reads "$@"
