#!/usr/bin/env bash
# Set up from nothing and run notebooks/quickstart.ipynb headless on the embedded model
# (no API key needed), printing the agent's answers; the executed notebook is saved
# to notebooks/executed/quickstart.ipynb; then notebooks/batch.ipynb (a few rows).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh notebook,local,mcp,openai,anthropic
printf '\n\033[1m==> running notebooks/quickstart.ipynb\033[0m\n'
.venv/bin/python scripts/run_notebook.py notebooks/quickstart.ipynb \
  --output notebooks/executed/quickstart.ipynb
printf '\n\033[1m==> running notebooks/batch.ipynb (a few rows on the embedded model)\033[0m\n'
.venv/bin/python scripts/run_notebook.py notebooks/batch.ipynb \
  --output notebooks/executed/batch.ipynb
