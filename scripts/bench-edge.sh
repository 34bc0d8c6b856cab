#!/usr/bin/env bash
# Edge benchmark (issue 13), in one run on this machine, every server started here:
#  1. Burst, per connection count (64 and 256): in each of --rounds rounds, a minimal hyper
#     server (the physical baseline) and then the embedded `referral-api` (no Kafka: the
#     embedded log and the SQLite store), each driven by wrk with the same click POST for
#     SECONDS. The ratio is taken within each round, and the median round is reported. For
#     the embedded API: CPU per request, the apply lag at the end (the store applies the log
#     after the 201) and how long the store then took to catch up. Each embedded run starts
#     on a fresh data directory, warmed up for 2 s and caught up before it is measured.
#     Before parts 1 and 2, the machine's fsync latency (a 9 KB write + fdatasync) is stated:
#     the ratio depends on it as well as on the CPU.
#  2. Sustained: the embedded API at fixed click rates for --sustain-seconds (60) each (wrk
#     with a per-connection delay), the lag sampled every second: the highest rate at which
#     the lag stays bounded (the store keeps up).
#  3. The Kafka edge (`referral-ingest`, tansu with its memory engine) at 64, 256 and 1,024
#     connections, with its CPU per accepted click next to the baseline's CPU per request
#     at the same connection count, and its peak RSS; once with the default worker threads
#     and once with `--worker-threads 1` (issue 19's goals). Recorded in its own block
#     (<!-- kafka-edge:begin -->).
#  4. Verdicts (issue 14): the embedded `referral-api` with click verdicts against the same
#     binary built from the commit before them ($VERDICTS_BASELINE_REV, in a git worktree
#     sharing this target directory), alternating in each of --rounds rounds at 256
#     connections, with clicks as pixels send them: a browser's User-Agent and 50,000
#     distinct client addresses in turn (so the writer decides bots, looks visitors up and
#     grows its dedup window). The embedded process holds the edge and the writer, so the
#     ratio includes the writer's verdict work. Not in the default run (the baseline build
#     takes a few minutes); `--only verdicts`.
# Prints Markdown; with --record, also writes it to docs/BENCHMARKS.md (between
# <!-- edge:begin --> and <!-- edge:end -->, the verdicts between <!-- verdicts:begin -->
# and <!-- verdicts:end -->). About 8 minutes with the defaults.
#
#   ./scripts/bench-edge.sh [--record] [--rounds N] [--seconds S] [--sustain-seconds S]
#                           [--rates "10000 20000 30000 40000"]
#                           [--only burst|sustain|edge|kafka|verdicts]
set -euo pipefail
cd "$(dirname "$0")/.."

record=false
rounds=3
seconds=10
sustain_seconds=60
rates="10000 20000 30000 40000"
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --record) record=true ;;
    --rounds) rounds="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --sustain-seconds) sustain_seconds="$2"; shift ;;
    --rates) rates="$2"; shift ;;
    --only) only="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# --only edge: the embedded runs (burst and sustained), the block --record rewrites whole.
want() { [ -z "$only" ] || [ "$only" = "$1" ] || { [ "$only" = edge ] && [ "$1" != kafka ] && [ "$1" != verdicts ]; }; }
case "$only" in
  ""|burst|sustain|edge|kafka|verdicts) ;;
  *) echo "unknown --only $only (burst, sustain, edge, kafka or verdicts)" >&2; exit 2 ;;
esac
if $record && { [ "$only" = burst ] || [ "$only" = sustain ]; }; then
  # The edge block holds both tables: recording one would drop the other.
  echo "--record needs both embedded parts: use --only edge (or no --only)" >&2; exit 2
fi
# The last commit before click verdicts (issue 14): the "without" side of the verdicts run.
VERDICTS_BASELINE_REV="${VERDICTS_BASELINE_REV:-5902c34}"

command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
./scripts/install-test-services.sh >/dev/null
cargo build --release --quiet -p referral-ingest -p referral-api --bins --examples
ulimit -n 65536 2>/dev/null || true

work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/click.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"code":"BENCH-1"}'
wrk.headers["Content-Type"] = "application/json"
LUA

export RUST_LOG=error REFERRAL_RATE_LIMIT_PER_IP=0 REFERRAL_RATE_LIMIT_PER_CODE=0 REFERRAL_RATE_LIMIT_GLOBAL=0
# One wrk process stands in for many clients: no per-client connection cap (as no rate limits).
export REFERRAL_MAX_CONNECTIONS_PER_CLIENT=0
hz=$(getconf CLK_TCK)
api=18191
base_port=18190

wait_port() { for _ in $(seq 1 400); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1==k {print $2}'; }

# wrk against $2 with $1 connections for $3 seconds ($4: an extra Lua script), measuring the
# CPU of process $5; prints "rps p50_ms p99_ms non2xx cpu_us_per_request".
measure() {
  local conns=$1 url=$2 secs=$3 script=$4 pid=$5 t0 t1
  t0=$(cpu_ticks "$pid")
  wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$script" "$url" > "$work/wrk.out"
  t1=$(cpu_ticks "$pid")
  awk -v t="$((t1 - t0))" -v hz="$hz" '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps = $2 }
    /requests in/ { n = $1 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /Non-2xx/ { bad = $NF }
    END { printf "%.0f %.2f %.2f %d %.1f\n", rps, p50, p99, bad + 0, (n > 0 ? t / hz * 1000000 / n : 0) }' "$work/wrk.out"
}

start_baseline() {
  ./target/release/examples/baseline_server "127.0.0.1:$base_port" & pids+=($!)
  wait_port "$base_port"
}

# Starts the embedded API (binary $1, default the current one) on a fresh data directory
# with one code; sets $api_pid.
start_api() {
  local binary="${1:-./target/release/referral-api}"
  rm -rf "$work/data"
  REFERRAL_DATA_DIR="$work/data" REFERRAL_LISTEN="127.0.0.1:$api" "$binary" 2>"$work/api.log" & api_pid=$!; pids+=($api_pid)
  wait_port "$api"
  curl -sf -X PUT "http://127.0.0.1:$api/api/v1/referral-codes/BENCH-1" -H 'content-type: application/json' -d '{"mentor_id":"usr_bench"}' > /dev/null
}

# Seconds until the embedded store has applied everything (lag 0).
catch_up() {
  local started now
  started=$(date +%s.%N)
  while [ "$(metric "$api" referral_apply_lag_events)" != "0" ]; do sleep 0.05; done
  now=$(date +%s.%N)
  echo "$now - $started" | bc
}

# Writes report file $2 into docs/BENCHMARKS.md between <!-- $1:begin --> and <!-- $1:end -->,
# naming the options ($3) that recorded it.
record_block() {
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
name, source, options = sys.argv[1:4]
report = open(source).read().strip()
report += f"\n\nRecorded by `./scripts/bench-edge.sh {options}`."
path = "docs/BENCHMARKS.md"
doc = open(path).read()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
block = f"{begin}\n{report}\n{end}"
if begin in doc:
    doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
else:
    doc += "\n" + block + "\n"
open(path, "w").write(doc)
PY
  echo "recorded in docs/BENCHMARKS.md"
}

# Profiles the edge ($2, workers $1) under wrk at 256 connections for 6 s; appends its top
# threads and functions (perf, 499 Hz, self time) to $work/profiles.md.
profile_edge() {
  local workers=$1 pid=$2 label
  label="one per CPU (default)"; [ "$workers" = default ] || label="$workers"
  [ -f "$work/profiles.md" ] || echo "Profile of the edge at 256 connections (\`perf record -F 499 -p <referral-ingest> -- sleep 5\` under \`wrk -t1 -c256 -d6s\`; \`perf report --no-children --sort comm|sym\`, share of the edge's samples):" > "$work/profiles.md"
  if ! command -v perf > /dev/null; then echo "* workers $label: no profile (perf is not installed)" >> "$work/profiles.md"; return 0; fi
  wrk -t1 -c256 -d6s -s "$work/click.lua" "http://127.0.0.1:18193/api/v1/referral-attributions" > /dev/null & local wrk_pid=$!
  sleep 0.5
  if ! perf record -q -F 499 -p "$pid" -o "$work/perf.data" -- sleep 5 > /dev/null 2>&1; then
    wait "$wrk_pid" || true
    echo "* workers $label: no profile (perf record failed: see perf_event_paranoid)" >> "$work/profiles.md"
    return 0
  fi
  wait "$wrk_pid" || true
  { printf '* workers %s: threads ' "$label"
    perf report -i "$work/perf.data" --stdio --no-children -q --sort comm 2>/dev/null | awk 'NF >= 2 && n < 4 { pct = $1; $1 = ""; sub(/^ +/, ""); printf "%s%s %s", (n++ ? ", " : ""), $0, pct }' || true
    printf '; functions '
    perf report -i "$work/perf.data" --stdio --no-children -q --sort sym 2>/dev/null | awk 'NF >= 3 && n < 8 { k = ($2 == "[k]") ? " [k]" : ""; $2 = ""; pct = $1; $1 = ""; sub(/^ +/, ""); gsub(/\|/, "/"); printf "%s%s%s %s", (n++ ? ", " : ""), $0, k, pct }' || true
    echo; } >> "$work/profiles.md"
  rm -f "$work/perf.data"
}

report="$work/report.md"
: > "$report"
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "### Edge: click POST throughput ($(date -u +%Y-%m-%d), $machine)" >> "$report"
echo >> "$report"

# The machine's durable-append latency, on the file system of the embedded log: the 201
# waits for one such fsync, whose wall time does not scale with the CPU that the baseline
# measures, so the ratio moves between machines (docs/BENCHMARKS.md, "Edge throughput").
fsync_probe() {
  python3 - "$work" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC)
os.posix_fallocate(fd, 0, 64 << 20)
os.fsync(fd)
record, offset, took = b"x" * 9000, 0, []
for _ in range(2000):
    started = time.perf_counter()
    os.pwrite(fd, record, offset)
    os.fdatasync(fd)
    took.append(time.perf_counter() - started)
    offset += len(record)
os.close(fd)
os.unlink(path)
took.sort()
print(f"{sum(took) / len(took) * 1e6:.0f} µs mean, {took[len(took) // 2] * 1e6:.0f} p50, {took[len(took) * 99 // 100] * 1e6:.0f} p99")
PY
}
if want burst || want sustain; then
  fsync_figures=$(fsync_probe) || { echo "the fsync probe failed" >&2; exit 1; }
  echo "The log's durable append on this machine (a 9 KB \`pwrite\` + \`fdatasync\` into a preallocated file, 2,000 times, on the data directory's file system): $fsync_figures." >> "$report"
  echo >> "$report"
fi

if want burst; then
  echo "burst: $rounds rounds at 64 and 256 connections, ${seconds}s each" >&2
  : > "$work/burst.tsv"
  for conns in 64 256; do
    for round in $(seq 1 "$rounds"); do
      start_baseline; bpid=${pids[-1]}
      wrk -t1 -c"$conns" -d2s -s "$work/click.lua" "http://127.0.0.1:$base_port/" > /dev/null
      read -r brps bp50 bp99 bbad bcpu <<< "$(measure "$conns" "http://127.0.0.1:$base_port/api/v1/referral-attributions" "$seconds" "$work/click.lua" "$bpid")"
      kill -9 "$bpid"; wait "$bpid" 2>/dev/null || true
      start_api
      wrk -t1 -c"$conns" -d2s -s "$work/click.lua" "http://127.0.0.1:$api/api/v1/referral-attributions" > /dev/null
      catch_up > /dev/null
      read -r arps ap50 ap99 abad acpu <<< "$(measure "$conns" "http://127.0.0.1:$api/api/v1/referral-attributions" "$seconds" "$work/click.lua" "$api_pid")"
      lag=$(metric "$api" referral_apply_lag_events)
      took=$(catch_up)
      kill -TERM "$api_pid"; wait "$api_pid" 2>/dev/null || true
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$conns" "$round" "$brps" "$bcpu" "$arps" "$ap50" "$ap99" "$abad" "$acpu" "$lag" "$took" "$bp99" >> "$work/burst.tsv"
      echo "  c=$conns round $round: baseline $brps req/s, embedded $arps req/s, lag $lag, caught up in ${took}s" >&2
    done
  done
  python3 - "$work/burst.tsv" "$seconds" "$rounds" >> "$report" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
seconds, rounds = sys.argv[2], sys.argv[3]
print(f"**Burst** (`wrk -t1 -cN -d{seconds}s`, the same click POST for both servers; {rounds} rounds per connection count, "
      "each round the baseline then the embedded `referral-api` on a fresh data directory, warmed up and caught up first; "
      "the round with the median ratio is shown, every round below it). CPU is the server process's, per request.")
print()
print("| connections | baseline req/s | embedded req/s | **ratio** | p50 / p99 ms | non-2xx | CPU µs/request (baseline, embedded) | apply lag at the end | store caught up after |")
print("|---|---|---|---|---|---|---|---|---|")
for conns in sorted({row[0] for row in rows}, key=int):
    group = [row for row in rows if row[0] == conns]
    ratios = sorted(((float(r[4]) / float(r[2]), r) for r in group), key=lambda pair: pair[0])
    ratio, r = ratios[len(ratios) // 2]
    print(f"| {conns} | {int(float(r[2])):,} | {int(float(r[4])):,} | **{ratio:.2f}** | {r[5]} / {r[6]} | {r[7]} | {r[3]}, {r[8]} | {int(r[9]):,} events | {float(r[10]):.1f} s |")
print()
print("Every round (ratio embedded / baseline): " + "; ".join(
    f"{r[0]} conns: " + ", ".join(f"{float(x[4]) / float(x[2]):.2f}" for x in rows if x[0] == r[0])
    for r in {row[0]: row for row in rows}.values()))
print()
PY
fi

if want sustain; then
  echo "sustain: ${sustain_seconds}s at each of: $rates clicks/s" >&2
  : > "$work/sustain.tsv"
  for rate in $rates; do
    # Open loop by a per-connection pause: 10 ms between a connection's requests.
    conns=$(( rate / 100 ))
    cat > "$work/paced.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"code":"BENCH-1"}'
wrk.headers["Content-Type"] = "application/json"
function delay() return 10 end
LUA
    start_api
    ( for s in $(seq 1 "$sustain_seconds"); do sleep 1; echo "$s $(metric "$api" referral_apply_lag_events)"; done > "$work/lag.txt" ) &
    sampler=$!
    read -r srps sp50 sp99 sbad scpu <<< "$(measure "$conns" "http://127.0.0.1:$api/api/v1/referral-attributions" "$sustain_seconds" "$work/paced.lua" "$api_pid")"
    wait "$sampler" 2>/dev/null || true
    took=$(catch_up)
    kill -TERM "$api_pid"; wait "$api_pid" 2>/dev/null || true
    python3 - "$work/lag.txt" "$rate" "$srps" "$sp99" "$sbad" "$took" >> "$work/sustain.tsv" <<'PY'
import sys
lags = [int(line.split()[1]) for line in open(sys.argv[1]) if len(line.split()) == 2 and line.split()[1].isdigit()]
rate, rps, p99, bad, took = sys.argv[2:]
half = lags[len(lags) // 2:] or [0]
bounded = max(half) <= max(float(rps), 1.0) and int(bad) == 0
print("\t".join([rate, rps, p99, bad, str(max(lags or [0])), str(lags[-1] if lags else 0), took, "yes" if bounded else "no"]))
PY
    tail -1 "$work/sustain.tsv" | awk -F'\t' '{print "  rate " $1 ": " $2 " req/s, max lag " $5 ", bounded " $8}' >&2
  done
  python3 - "$work/sustain.tsv" "$sustain_seconds" >> "$report" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
print(f"**Sustained** (the embedded `referral-api`, {sys.argv[2]} s per rate; wrk with one request per connection every 10 ms, so "
      "connections = rate / 100; the lag sampled every second). Bounded: over the second half of the run the lag never "
      "exceeded one second of clicks, and nothing was refused.")
print()
print("| target clicks/s | served req/s | p99 ms | non-2xx | max lag | lag at the end | caught up after | lag bounded |")
print("|---|---|---|---|---|---|---|---|")
best = None
for rate, rps, p99, bad, most, last, took, bounded in rows:
    print(f"| {int(rate):,} | {int(float(rps)):,} | {p99} | {bad} | {int(most):,} | {int(last):,} | {float(took):.1f} s | {bounded} |")
    if bounded == "yes":
        best = max(best or 0, int(float(rps)))
print()
print(f"Highest rate with the lag bounded: **{best:,} clicks/s**." if best else "The lag grew at every rate tried.")
print()
PY
fi

if want kafka; then
  echo "kafka: the edge on tansu at 64, 256, 1024 connections" >&2
  (cd "$work" && exec tansu broker --listener-url tcp://127.0.0.1:19192 --advertised-listener-url tcp://127.0.0.1:19192 --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1) & pids+=($!)
  wait_port 19192
  ./target/release/examples/seed_codes 127.0.0.1:19192 referral-events referral-codes 3 BENCH-1=usr_bench > /dev/null
  : > "$work/kafka.tsv"
  # The edge as deployed by default (a worker thread per CPU), then with one worker (the
  # Kafka client's threads take the rest; --worker-threads).
  for workers in default 1; do
    threads=(); [ "$workers" = default ] || threads=(REFERRAL_WORKER_THREADS="$workers")
    env "${threads[@]}" REFERRAL_KAFKA_BROKERS=127.0.0.1:19192 REFERRAL_LISTEN=127.0.0.1:18193 ./target/release/referral-ingest 2>"$work/ingest.log" & ingest_pid=$!; pids+=($ingest_pid)
    wait_port 18193
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18193/readyz > /dev/null && break; sleep 0.1; done
    for conns in 64 256 1024; do
      start_baseline; bpid=${pids[-1]}
      wrk -t1 -c"$conns" -d2s -s "$work/click.lua" "http://127.0.0.1:$base_port/" > /dev/null
      read -r brps _ bp99 _ bcpu <<< "$(measure "$conns" "http://127.0.0.1:$base_port/api/v1/referral-attributions" "$seconds" "$work/click.lua" "$bpid")"
      kill -9 "$bpid"; wait "$bpid" 2>/dev/null || true
      wrk -t1 -c"$conns" -d2s -s "$work/click.lua" "http://127.0.0.1:18193/api/v1/referral-attributions" > /dev/null
      read -r krps kp50 kp99 kbad kcpu <<< "$(measure "$conns" "http://127.0.0.1:18193/api/v1/referral-attributions" "$seconds" "$work/click.lua" "$ingest_pid")"
      # Peak RSS so far (the connection counts only grow).
      rss=$(awk '/VmHWM/ {print $2}' "/proc/$ingest_pid/status")
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$workers" "$conns" "$brps" "$bcpu" "$krps" "$kp50" "$kp99" "$kbad" "$kcpu" "$rss" >> "$work/kafka.tsv"
      echo "  workers=$workers c=$conns: baseline $brps, kafka edge $krps req/s" >&2
    done
    # Where the edge's CPU goes at 256 connections (the goals' load): threads and functions.
    profile_edge "$workers" "$ingest_pid"
    kill "$ingest_pid"; wait "$ingest_pid" 2>/dev/null || true
  done
  kafka_report="$work/kafka.md"
  echo "### Kafka edge: click POST throughput, CPU and memory ($(date -u +%Y-%m-%d), $machine)" > "$kafka_report"
  echo >> "$kafka_report"
  python3 - "$work/kafka.tsv" "$seconds" "$work/profiles.md" >> "$kafka_report" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
print(f"**Kafka edge** (`referral-ingest` on tansu 0.6.0, memory engine, `acks=all`, idempotent; `wrk -t1 -cN -d{sys.argv[2]}s`, "
      "the baseline measured right before at the same connection count). CPU per accepted click is the edge process's "
      "CPU time over the run divided by the requests served (broker not included).")
print()
print("| edge workers | connections | baseline req/s | Kafka edge req/s | ratio | p50 / p99 ms | non-2xx | CPU µs per request: baseline | CPU µs per accepted click: edge | edge / baseline | edge peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for workers, conns, brps, bcpu, krps, kp50, kp99, kbad, kcpu, rss in rows:
    workers = "one per CPU (default)" if workers == "default" else workers
    print(f"| {workers} | {conns} | {int(float(brps)):,} | {int(float(krps)):,} | {float(krps)/float(brps):.2f} | {kp50} / {kp99} | {kbad} | {bcpu} | {kcpu} | {float(kcpu)/float(bcpu):.1f}x | {int(rss) / 1024:.0f} MiB |")
print()
print("Goals (issue 19): edge CPU per click <= 2.0x the baseline's per request at 256 connections; edge req/s >= 0.5 of the "
      "baseline's at 256 and 1,024; edge peak RSS <= 64 MiB at 1,024 connections.")
print()
def status(ok): return "**met**" if ok else "not met"
for workers in ("default", "1"):
    by = {conns: row for row in rows if row[0] == workers for conns in [row[1]]}
    if not {"256", "1024"} <= by.keys():
        continue
    # As the table shows them (rounded), and with every answer a 2xx.
    cost = round(float(by["256"][8]) / float(by["256"][3]), 1)
    r256 = round(float(by["256"][4]) / float(by["256"][2]), 2)
    r1024 = round(float(by["1024"][4]) / float(by["1024"][2]), 2)
    clean = int(by["256"][7]) == 0 and int(by["1024"][7]) == 0
    rss = int(by["1024"][9]) / 1024
    label = "one worker per CPU (default)" if workers == "default" else "one worker"
    print(f"* {label}: goal 1 {cost:.1f}x ({status(cost <= 2.0 and clean)}); goal 2 {r256:.2f} at 256 and {r1024:.2f} at 1,024 "
          f"({status(r256 >= 0.5 and r1024 >= 0.5 and clean)}); memory {rss:.0f} MiB at 1,024 ({status(rss <= 64)}).")
print()
print(open(sys.argv[3]).read().strip())
PY
  cat "$kafka_report"
  if $record; then record_block kafka-edge "$kafka_report" "--only kafka --record"; fi
fi

if want verdicts && [ "$only" = "verdicts" ]; then
  root="$PWD"
  cp target/release/referral-api "$work/api-with-verdicts"
  echo "verdicts: building referral-api at $VERDICTS_BASELINE_REV (before verdicts)" >&2
  git worktree add --detach "$work/before-src" "$VERDICTS_BASELINE_REV" > /dev/null 2>&1
  (cd "$work/before-src" && CARGO_TARGET_DIR="$root/target" cargo build --release --quiet -p referral-api)
  cp target/release/referral-api "$work/api-before-verdicts"
  git worktree remove --force "$work/before-src"
  cargo build --release --quiet -p referral-api
  cat > "$work/visitors.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
local n = 0
request = function()
  n = n + 1
  local v = n % 50000
  local body = string.format('{"code":"BENCH-1","ip_address":"10.%d.%d.%d"}', math.floor(v / 65536) % 256, math.floor(v / 256) % 256, v % 256)
  return wrk.format(nil, nil, nil, body)
end
LUA
  url="http://127.0.0.1:$api/api/v1/referral-attributions"
  : > "$work/verdicts.tsv"
  for round in $(seq 1 "$rounds"); do
    for side in before after; do
      binary="$work/api-before-verdicts"; [ "$side" = after ] && binary="$work/api-with-verdicts"
      start_api "$binary"
      wrk -t1 -c256 -d2s -s "$work/visitors.lua" "$url" > /dev/null
      catch_up > /dev/null
      read -r rps p50 p99 bad cpu <<< "$(measure 256 "$url" "$seconds" "$work/visitors.lua" "$api_pid")"
      lag=$(metric "$api" referral_apply_lag_events)
      took=$(catch_up)
      kill -TERM "$api_pid"; wait "$api_pid" 2>/dev/null || true
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$round" "$side" "$rps" "$p50" "$p99" "$bad" "$cpu" "$lag" "$took" >> "$work/verdicts.tsv"
      echo "  round $round, $side verdicts: $rps req/s, lag $lag, caught up in ${took}s" >&2
    done
  done
  verdicts_report="$work/verdicts.md"
  python3 - "$work/verdicts.tsv" "$seconds" "$rounds" "$VERDICTS_BASELINE_REV" "$(git rev-parse --short HEAD)" "$machine" > "$verdicts_report" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
seconds, rounds, before_rev, head, machine = sys.argv[2:7]
print(f"### Edge with and without click verdicts ({__import__('datetime').date.today()}, {machine})")
print()
print(f"The embedded `referral-api` (edge and writer in one process) built at `{before_rev}` (before verdicts) and "
      f"with verdicts (working tree at `{head}`), alternating in each of {rounds} rounds; `wrk -t1 -c256 -d{seconds}s`, "
      "click POSTs with a browser's User-Agent from 50,000 client addresses in turn, each server on a fresh data "
      "directory, warmed up and caught up first. CPU is the process's (edge and writer), per request. During a burst "
      "the embedded writer defers to the edge (the log holds the clicks), so the verdicts' cost shows mostly in the "
      "writer's pace while it catches up afterwards (the lag at the end over the time to apply it).")
print()
print("| round | without: req/s | with: req/s | **ratio** | p99 ms (without, with) | CPU µs/request (without, with) | lag at the end (without, with) | caught up after (without, with) | writer events/s catching up (without, with) |")
print("|---|---|---|---|---|---|---|---|---|")
ratios = []
for round_ in sorted({row[0] for row in rows}, key=int):
    side = {row[1]: row for row in rows if row[0] == round_}
    b, a = side["before"], side["after"]
    ratio = float(a[2]) / float(b[2])
    ratios.append(ratio)
    pace = lambda r: int(r[7]) / max(float(r[8]), 0.001)
    print(f"| {round_} | {int(float(b[2])):,} | {int(float(a[2])):,} | **{ratio:.2f}** | {b[4]}, {a[4]} | {b[6]}, {a[6]} | {int(b[7]):,}, {int(a[7]):,} | {float(b[8]):.1f} s, {float(a[8]):.1f} s | {pace(b):,.0f}, {pace(a):,.0f} |")
print()
median = statistics.median(ratios)
print(f"Median ratio with / without: **{median:.2f}** (goal: at least 0.90, within 10%). "
      f"{'Holds.' if median >= 0.9 else 'Does not hold.'}")
PY
  cat "$verdicts_report"
  if $record; then record_block verdicts "$verdicts_report" "--only verdicts --record"; fi
  exit 0
fi

cat "$report"

# The Kafka edge has its own block (issue 19); the edge block holds the embedded runs.
if $record && { want burst || want sustain; }; then record_block edge "$report" "--record"; fi
