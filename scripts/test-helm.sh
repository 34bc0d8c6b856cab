#!/usr/bin/env bash
# Tests of the Helm chart (helm/referral-attribution), with no helm binary and no cluster:
# helm lint --strict, offline renders of every values file in helm/tests/values/, every
# manifest validated against the Kubernetes schemas, and the fields that matter asserted
# (helm/tests/test_chart.py).
#
# Uses the test virtualenv of scripts/install-test-services.sh,
# ${REFERRAL_TEST_VENV:-$HOME/.cache/referral-attribution/venv}, and installs these pinned
# PyPI packages into it when they are not there yet:
#  - helm-python-sdk: Helm v4's Go library (lint, render, values.schema.json) behind ctypes
#  - kubernetes-validate: Kubernetes OpenAPI schemas (1.25 to 1.37) and a validator
#  - PyYAML, pytest
# With --install-only it installs them and stops (install-test-services.sh calls that).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${REFERRAL_TEST_VENV:-$HOME/.cache/referral-attribution/venv}"
PACKAGES=(
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "PyYAML==6.0.3"
  "pytest==9.2.0"
)

installed() {
  [ -x "${VENV}/bin/python" ] && "${VENV}/bin/python" - "${PACKAGES[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    if version(name) != wanted:
        sys.exit(1)
import helm_python, kubernetes_validate, yaml, pytest  # noqa: E401,F401  importable too
PY
}

if installed; then
  echo "helm test packages: already installed in ${VENV}"
else
  echo "helm test packages: installing ${PACKAGES[*]} into ${VENV} (pip)"
  mkdir -p "$(dirname "${VENV}")"
  if [ ! -x "${VENV}/bin/python" ]; then
    python3 -m venv "${VENV}"
  fi
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
fi

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi

echo "== helm chart tests (helm/tests/test_chart.py)"
# Leaves nothing in the work tree: no .pytest_cache, no __pycache__.
PYTHONDONTWRITEBYTECODE=1 exec "${VENV}/bin/python" -m pytest -p no:cacheprovider -q helm/tests/test_chart.py
