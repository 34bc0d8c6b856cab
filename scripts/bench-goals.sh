#!/usr/bin/env bash
# Issue 19's goals, each figure written into docs/BENCHMARKS.md (with --record) by the
# command that measures it, next to the profile of what it measured (about 15 minutes after
# the build, every service started fresh on this machine):
#  1. ./scripts/bench-edge.sh --only kafka: goals 1 and 2 (the Kafka edge's CPU per click and
#     req/s against a minimal hyper server's) and the edge's memory at 1,024 connections
#     (goal 7), with the edge's profile at 256 connections;
#  2. ./scripts/bench-aggregator.sh: goal 4 (rows/s into ClickHouse, with ClickHouse's and
#     the aggregator's profile) and goal 5 (freshness at 5,000 clicks/s);
#  3. referral-load goals: goals 3 (end to end, realistic mix, verified), 6 (confirm/delete
#     latency), 7 (every binary's peak RSS) and 8 (the verifier's time), with every
#     process's profile.
# Needs perf (Debian's linux-perf) for the profiles; without it the figures are still
# measured and each profile says it is missing.
#
#   ./scripts/bench-goals.sh [--record]
set -euo pipefail
cd "$(dirname "$0")/.."

record=""
case "${1:-}" in
  --record) record=--record ;;
  "") ;;
  *) echo "usage: $0 [--record]" >&2; exit 2 ;;
esac
command -v perf > /dev/null || echo "perf not found: the reports will say their profiles are missing (apt-get install linux-perf)" >&2
./scripts/install-test-services.sh >/dev/null
cargo build --release --quiet --workspace --bins --examples
./scripts/bench-edge.sh --only kafka $record
./scripts/bench-aggregator.sh $record
./target/release/referral-load goals $record
