#!/usr/bin/env bash
# Install everything and run the checks: ruff, mypy, then the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh notebook,local,test
export AGENTRT_HOME="${AGENTRT_HOME:-$(mktemp -d)}"
printf '\n\033[1m==> ruff\033[0m\n'
.venv/bin/ruff check agentrt_jupyter tests bench scripts
.venv/bin/ruff format --check agentrt_jupyter tests bench scripts
printf '\n\033[1m==> mypy\033[0m\n'
.venv/bin/mypy
printf '\n\033[1m==> pytest\033[0m\n'
.venv/bin/python -m pytest "$@"
