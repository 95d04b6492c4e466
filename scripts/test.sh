#!/usr/bin/env bash
# Install everything and run the checks: `make lint` (ruff, ruff format, mypy, eslint), then
# the whole pytest suite (with the wheel-from-a-clean-copy check, tests/test_packaging.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh notebook,local,mcp,openai,anthropic,postgres,local-server
export AGENTRT_HOME="${AGENTRT_HOME:-$(mktemp -d)}"
make --no-print-directory lint
printf '\n\033[1m==> pytest\033[0m\n'
export AGENTRT_RELIABILITY_REPORT="${AGENTRT_RELIABILITY_REPORT:-$(mktemp)}"
.venv/bin/python -m pytest "$@"
printf '\n\033[1m==> reliability figures (README "Reliability")\033[0m\n'
.venv/bin/python scripts/reliability_figures.py "$AGENTRT_RELIABILITY_REPORT" || true

# `make lab` from this checkout: start it, wait until JupyterLab serves, stop it.
printf '\n\033[1m==> make lab serves\033[0m\n'
.venv/bin/python scripts/check_lab.py

# The older-kernel leg: the same kernel tests with the kernel on ipykernel 6.29.
printf '\n\033[1m==> kernel tests on ipykernel 6.29\033[0m\n'
if [ ! -x .venv-ipykernel6/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-ipykernel6
fi
.venv-ipykernel6/bin/python -m pip install --quiet --upgrade pip
# The lab extension is not needed there: no npm build for this install.
SKIP_JUPYTER_BUILDER=1 .venv-ipykernel6/bin/python -m pip install --quiet -e ".[notebook]" \
  "ipykernel==6.29.5"
AGENTRT_TEST_PYTHON=.venv-ipykernel6/bin/python .venv/bin/python -m pytest tests/test_kernel.py
