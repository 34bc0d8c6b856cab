#!/usr/bin/env bash
# Installs the real services the tests start for themselves:
#  - tansu, an Apache-Kafka-compatible broker (crates.io), built with the storage engines
#    the tests use (memory via dynostore, SQLite via libsql). Reused when the pinned
#    version is already on PATH; a first build takes 10-20 minutes on 2 cores.
set -euo pipefail

TANSU_VERSION="0.6.0"

if command -v tansu >/dev/null 2>&1 && [ "$(tansu --version 2>/dev/null)" = "tansu ${TANSU_VERSION}" ]; then
  echo "tansu ${TANSU_VERSION}: already installed"
else
  echo "installing tansu ${TANSU_VERSION} (cargo install; this takes a while the first time)"
  cargo install tansu --version "${TANSU_VERSION}" --features dynostore,libsql --locked
fi
