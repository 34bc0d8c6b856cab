#!/usr/bin/env bash
# Edge benchmark: in one run, on this machine, a minimal hyper server (the physical
# baseline) and referral-ingest on the embedded log and on Kafka (tansu), each driven by
# wrk with the same click POST, 64 connections, one wrk thread. Prints a Markdown table of
# req/s, the ratio to the baseline, and p50/p99 latency; with --record, also writes it to
# docs/BENCHMARKS.md.
#
#   ./scripts/bench-edge.sh [--record] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

record=false
if [ "${1:-}" = "--record" ]; then record=true; shift; fi
seconds="${1:-10}"
connections=64

command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
./scripts/install-test-services.sh >/dev/null
cargo build --release --quiet -p referral-ingest -p referral-api --bins --examples

work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/click.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"code":"BENCH-1"}'
wrk.headers["Content-Type"] = "application/json"
LUA

wait_port() { for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# Runs wrk against $1 and prints "req/s p50_ms p99_ms non2xx".
measure() {
  wrk -t1 -c"$connections" -d2s -s "$work/click.lua" "$1" > /dev/null # warm-up
  wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$work/click.lua" "$1" > "$work/wrk.out"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /Non-2xx/ { bad = $NF }
    END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, bad + 0 }' "$work/wrk.out"
}

export RUST_LOG=warn REFERRAL_RATE_LIMIT_PER_IP=0 REFERRAL_RATE_LIMIT_PER_CODE=0 REFERRAL_RATE_LIMIT_GLOBAL=0

# 1. The baseline.
./target/release/examples/baseline_server 127.0.0.1:18190 & pids+=($!)
wait_port 18190
baseline=$(measure http://127.0.0.1:18190/api/v1/referral-attributions)
kill -9 "${pids[-1]}"

# 2. The edge on the embedded log and store (a code created through the API first).
mkdir -p "$work/data"
REFERRAL_DATA_DIR="$work/data" REFERRAL_LISTEN=127.0.0.1:18191 ./target/release/referral-api 2>/dev/null & api=$!
wait_port 18191
curl -sf -X PUT http://127.0.0.1:18191/api/v1/referral-codes/BENCH-1 -H 'content-type: application/json' -d '{"mentor_id":"usr_bench"}' > /dev/null
kill -TERM "$api"; wait "$api" || true
declare -A embedded
for sync in full normal; do
  REFERRAL_SQLITE_SYNCHRONOUS=$sync REFERRAL_DATA_DIR="$work/data" REFERRAL_LISTEN=127.0.0.1:18192 ./target/release/referral-ingest & pids+=($!)
  wait_port 18192
  embedded[$sync]=$(measure http://127.0.0.1:18192/api/v1/referral-attributions)
  kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

# 3. The edge on Kafka (tansu, memory engine, 3 partitions).
(cd "$work" && exec tansu broker --listener-url tcp://127.0.0.1:19192 --advertised-listener-url tcp://127.0.0.1:19192 --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1) & pids+=($!)
wait_port 19192
./target/release/examples/seed_codes 127.0.0.1:19192 referral-events referral-codes 3 BENCH-1=usr_bench > /dev/null
REFERRAL_KAFKA_BROKERS=127.0.0.1:19192 REFERRAL_LISTEN=127.0.0.1:18193 ./target/release/referral-ingest & pids+=($!)
wait_port 18193
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18193/readyz > /dev/null && break; sleep 0.1; done
kafka=$(measure http://127.0.0.1:18193/api/v1/referral-attributions)

row() { # name, "rps p50 p99 bad"
  read -r rps p50 p99 bad <<< "$2"
  read -r base _ <<< "$baseline"
  awk -v n="$1" -v r="$rps" -v b="$base" -v p50="$p50" -v p99="$p99" -v bad="$bad" \
    'BEGIN { printf "| %s | %d | %.2f | %.2f | %.2f | %d |\n", n, r, r / b, p50, p99, bad }'
}

report="$work/report.md"
{
  echo "### Edge: click POST throughput ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo
  echo "\`./scripts/bench-edge.sh --record ${seconds}\`: wrk -t1 -c${connections} -d${seconds}s, the same click POST for every server, client and server on this machine, rate limits off."
  echo
  echo "| server | req/s | ratio to baseline | p50 ms | p99 ms | non-2xx |"
  echo "|---|---|---|---|---|---|"
  row "minimal hyper server (baseline)" "$baseline"
  row "referral-ingest, embedded log, SQLite synchronous=full" "${embedded[full]}"
  row "referral-ingest, embedded log, SQLite synchronous=normal" "${embedded[normal]}"
  row "referral-ingest, Kafka (tansu, memory engine, acks=all, idempotent)" "$kafka"
} > "$report"
cat "$report"

if $record; then
  python3 - "$report" <<'PY'
import re, sys
report = open(sys.argv[1]).read().strip()
path = "docs/BENCHMARKS.md"
try:
    doc = open(path).read()
except FileNotFoundError:
    doc = "# Benchmarks\n\nNumbers move from run to run on a shared 2-core machine: compare ratios measured in the same run, not absolute figures across runs.\n\n"
begin, end = "<!-- edge:begin -->", "<!-- edge:end -->"
block = f"{begin}\n{report}\n{end}"
if begin in doc:
    doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
else:
    doc += "\n" + block + "\n"
open(path, "w").write(doc)
PY
  echo "recorded in docs/BENCHMARKS.md"
fi
