#!/usr/bin/env bash
# The whole test suite, exactly as a new user and CI run it: formatting, lints, then every
# test of the workspace (unit, in-process contract tests, the real binaries under SIGKILL,
# and the edge against a real Kafka-protocol broker that the tests start themselves), the
# end-to-end smoke runs with their verifier (referral-load smoke, on Kafka + ClickHouse and
# on the embedded log and store), an independent API fuzzer (schemathesis, both modes), the
# Helm chart tests, and the image: the Dockerfile built with buildah on stand-in base images
# (no registry here) and its binaries run from the image's root filesystem (root needed).
# It installs what the tests need first: the toolchain's rustfmt and clippy, and the broker
# (scripts/install-test-services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: get Rust from https://rustup.rs, then run this again" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
      rustup component add "${component}"
    fi
  done
fi

./scripts/install-test-services.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== referral-load smoke"
# The whole pipeline started by the tool (Kafka + ClickHouse when installed, which the step
# above made sure of), load through an aggregator SIGKILL and restart, then the verifier.
cargo build --workspace --bins --locked
./target/debug/referral-load smoke
# The embedded mode is the same pipeline on a file log and SQLite: the same scenario with
# referral-api alone, SIGKILLed under load and restarted on its data directory.
./target/debug/referral-load smoke --topology embedded
echo "== schemathesis (every check, every phase) against both modes"
./scripts/test-api-fuzz.sh
echo "== helm chart"
./scripts/test-helm.sh
echo "== image (the Dockerfile built with buildah, its binaries run from the image)"
./scripts/test-image.sh
