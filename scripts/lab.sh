#!/usr/bin/env bash
# `make lab`: set up from nothing, link the lab extension into .venv and open JupyterLab on
# the quickstart. Works from a fresh clone and as root (containers, CI). Extra arguments go
# to `jupyter lab` (scripts/check_lab.py passes --no-browser, a port and a token).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh notebook,local,mcp,openai,anthropic
# JupyterLab >= 4.6 runs `jupyter-builder` from PATH: the venv's scripts must come first.
export PATH="$PWD/.venv/bin:$PATH"
# setup.sh's editable install built the extension (where Node.js is): link it into .venv.
if [ -f agentrt_jupyter/labextension/package.json ]; then
  printf '\n\033[1m==> linking the lab extension into .venv\033[0m\n'
  jupyter labextension develop --overwrite .
fi
as_root=()
if [ "$(id -u)" = 0 ]; then
  as_root=(--allow-root)
fi
printf '\n\033[1m==> JupyterLab on notebooks/quickstart.ipynb\033[0m\n'
exec jupyter lab "${as_root[@]}" "$@" notebooks/quickstart.ipynb
