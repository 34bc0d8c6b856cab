#!/usr/bin/env bash
# The whole test suite, exactly as a new user and CI run it: formatting, lints, then every
# test of the workspace (unit, in-process contract tests, and the real binary under SIGKILL).
# It installs what the tests need first; today that is only the Rust toolchain's own
# components. Later parts of the pipeline add their services here (broker, ClickHouse).
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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
