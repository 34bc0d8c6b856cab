#!/usr/bin/env bash
# Installs the real services the tests start for themselves (nothing is started here):
#  - tansu, an Apache-Kafka-compatible broker (crates.io), built with the storage engines
#    the tests use (memory via dynostore, SQLite via libsql). Reused when the pinned
#    version is already on PATH; a first build takes 10-20 minutes on 2 cores.
#  - ClickHouse server + client from Debian (bookworm ships 18.16.1, the only server
#    installable here). Its post-install does not start it; tests run their own copies.
#  - Chromium from Debian, headless, for the dashboard page's browser test.
#  - ZooKeeper from Debian (with a JRE), for the tests of ClickHouse with replicas.
#  - chdb-core (PyPI), a current ClickHouse engine in-process, in a virtualenv at
#    ${REFERRAL_TEST_VENV:-$HOME/.cache/referral-attribution/venv}; scripts/chdb_run.py runs
#    SQL on it to check that statements are valid on current ClickHouse too.
#  - the Helm chart tests' Python packages (helm-python-sdk, kubernetes-validate, PyYAML,
#    pytest) in the same virtualenv, pinned in scripts/test-helm.sh.
#  - schemathesis (PyPI), the API fuzzer, in the same virtualenv, pinned in
#    scripts/test-api-fuzz.sh.
# Idempotent: each step is skipped (one line says so) when its service is already there.
set -euo pipefail

TANSU_VERSION="0.6.0"
CHDB_CORE_VERSION="26.9.0"
VENV="${REFERRAL_TEST_VENV:-$HOME/.cache/referral-attribution/venv}"

if command -v tansu >/dev/null 2>&1 && [ "$(tansu --version 2>/dev/null)" = "tansu ${TANSU_VERSION}" ]; then
  echo "tansu ${TANSU_VERSION}: already installed"
else
  echo "tansu ${TANSU_VERSION}: installing (cargo install; this takes a while the first time)"
  cargo install tansu --version "${TANSU_VERSION}" --features dynostore,libsql --locked
fi

# Debian puts the server in /usr/sbin, which is not on a normal user's PATH.
if command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ]; then
  echo "clickhouse-server: already installed ($(dpkg-query -W -f='${Version}' clickhouse-server 2>/dev/null || echo 'version unknown'))"
else
  echo "clickhouse-server: installing from Debian (apt-get install clickhouse-server clickhouse-client)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  APT_LOG="$(mktemp)"
  if ! { ${SUDO} apt-get update -qq && \
         ${SUDO} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client; \
       } >"${APT_LOG}" 2>&1; then
    cat "${APT_LOG}" >&2
    rm -f "${APT_LOG}"
    echo "clickhouse-server: apt-get install failed (output above)" >&2
    exit 1
  fi
  rm -f "${APT_LOG}"
fi

# The dashboard's browser test (api/tests/dashboard.rs): Debian's headless Chromium (~40 s).
if command -v chromium >/dev/null 2>&1; then
  echo "chromium: already installed ($(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo 'version unknown'))"
else
  echo "chromium: installing from Debian (apt-get install chromium)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  APT_LOG="$(mktemp)"
  if ! { ${SUDO} apt-get update -qq && \
         ${SUDO} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
       } >"${APT_LOG}" 2>&1; then
    cat "${APT_LOG}" >&2
    rm -f "${APT_LOG}"
    echo "chromium: apt-get install failed (output above)" >&2
    exit 1
  fi
  rm -f "${APT_LOG}"
fi

# ClickHouse with replicas (pipeline/tests/clickhouse_replicas.rs): Debian's ZooKeeper 3.8,
# run by the tests from its jar (its service is not started).
if [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1; then
  echo "zookeeper: already installed ($(dpkg-query -W -f='${Version}' zookeeper 2>/dev/null || echo 'version unknown'))"
else
  echo "zookeeper: installing from Debian (apt-get install zookeeper)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  APT_LOG="$(mktemp)"
  if ! { ${SUDO} apt-get update -qq && \
         ${SUDO} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper; \
       } >"${APT_LOG}" 2>&1; then
    cat "${APT_LOG}" >&2
    rm -f "${APT_LOG}"
    echo "zookeeper: apt-get install failed (output above)" >&2
    exit 1
  fi
  rm -f "${APT_LOG}"
fi

if [ -x "${VENV}/bin/python" ] && "${VENV}/bin/python" -c 'import chdb' >/dev/null 2>&1; then
  echo "chdb-core: already installed in ${VENV}"
else
  echo "chdb-core ${CHDB_CORE_VERSION}: installing into ${VENV} (pip; a ~180 MB wheel)"
  mkdir -p "$(dirname "${VENV}")"
  python3 -m venv "${VENV}"
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "chdb-core==${CHDB_CORE_VERSION}"
fi

# Pinned and checked in scripts/test-helm.sh, which installs them when the pins are missing.
"$(dirname "$0")/test-helm.sh" --install-only
# schemathesis, pinned in scripts/test-api-fuzz.sh, in the same virtualenv.
"$(dirname "$0")/test-api-fuzz.sh" --install-only
