#!/usr/bin/env bash
# An independent API fuzzer against what the service serves: schemathesis (PyPI, pinned
# below) reads GET /api/v1/openapi.json and runs every check in every phase (the document's
# examples, coverage, fuzzing, and the stateful phase that follows the document's links from
# a code to a click to its confirmation and deletion), with an admin token, against both
# modes: referral-api alone (embedded log and SQLite), and the Kafka + ClickHouse pipeline.
# Each run starts the pipeline itself (`referral-load serve`), which also fails the run when
# a service logged an ERROR line. 0 failures or the script fails.
#
# scripts/schemathesis/hooks.py makes schema-valid requests also satisfy the rules no OpenAPI
# document can state (a click needs a live code; instants relative to now; from <= to;
# (page - 1) x limit <= 100,000; byte lengths); every check stays on.
#
#   scripts/test-api-fuzz.sh [--install-only] [embedded|kafka ...]
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION="4.32.5"
VENV="${REFERRAL_TEST_VENV:-$HOME/.cache/referral-attribution/venv}"

if [ ! -x "${VENV}/bin/schemathesis" ] || \
   [ "$("${VENV}/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version ${SCHEMATHESIS_VERSION}" ]; then
  echo "schemathesis ${SCHEMATHESIS_VERSION}: installing into ${VENV}"
  [ -x "${VENV}/bin/python" ] || python3 -m venv "${VENV}"
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==${SCHEMATHESIS_VERSION}"
else
  echo "schemathesis ${SCHEMATHESIS_VERSION}: already installed in ${VENV}"
fi
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
topologies=("$@")
[ ${#topologies[@]} -gt 0 ] || topologies=(embedded kafka)

for topology in "${topologies[@]}"; do
  # Examples per operation: the Kafka pipeline answers commands through the aggregator,
  # several times slower per case.
  case "${topology}" in
    kafka) examples="${REFERRAL_FUZZ_EXAMPLES:-50}" ;;
    *) examples="${REFERRAL_FUZZ_EXAMPLES:-100}" ;;
  esac
  echo "== schemathesis against the ${topology} pipeline (${examples} examples per operation)"
  ./target/debug/referral-load serve --topology "${topology}" -- \
    env PYTHONPATH=scripts/schemathesis SCHEMATHESIS_HOOKS=hooks \
    sh -c 'exec "$0" --config-file scripts/schemathesis/schemathesis.toml run \
      "$REFERRAL_API_URL/api/v1/openapi.json" --url "$REFERRAL_API_URL" \
      -H "Authorization: Bearer $REFERRAL_API_TOKEN" --checks all \
      --max-examples "$1" --generation-deterministic --workers 1 --no-color' \
    "${VENV}/bin/schemathesis" "${examples}"
done
