#!/usr/bin/env bash
# Aggregator benchmark (issue 4), in one run on this machine, every service started fresh by
# the benchmark itself (tansu 0.6.0 with the memory engine, ClickHouse 18.16):
#  1. throughput: 1,000,000 clicks produced to the topic first, then `referral-aggregator
#     run` started; rows/s from its first stored checkpoint until the checkpoints reach the
#     log end (and from its start), exactness checked (attributions and totals = N); then the
#     same phase at other REFERRAL_BATCH_MAX_ROWS values for comparison;
#  2. freshness: `referral-ingest` on Kafka driven at 5,000 click POSTs/s (open loop, 30 s)
#     with the aggregator at its default batch flags; p50/p99 of POST 201 -> click visible in
#     the totals, over probe clicks; then the same phase with REFERRAL_BATCH_MAX_WAIT=100ms.
# Prints Markdown tables; with --record, also writes them to docs/BENCHMARKS.md (between
# <!-- aggregator:begin --> and <!-- aggregator:end -->). About 3 minutes after the build.
# Other options go to the benchmark binary (`--help` lists them), e.g. --clicks N, --rate N,
# --seconds N, --only throughput|freshness, --sweep-rows none, --sweep-wait none.
#
#   ./scripts/bench-aggregator.sh [--record] [OPTIONS...]
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-services.sh >/dev/null
cargo build --release --quiet -p referral-aggregator -p referral-ingest -p referral-load-tests --bins --examples
exec ./target/release/bench_aggregator "$@"
