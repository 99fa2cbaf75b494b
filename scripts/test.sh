#!/usr/bin/env bash
# Run the whole test suite in a virtualenv of its own (created on first use).
#   scripts/test.sh            all tests
#   scripts/test.sh -k serial  pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FIELDKIT_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
exec "$VENV/bin/python" -m pytest "$@"
