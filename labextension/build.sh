#!/usr/bin/env bash
# Build the JupyterLab extension into agentrt_jupyter/labextension/ (what
# _jupyter_labextension_paths() points at). Idempotent: `npm ci` runs only when
# package-lock.json changed since the last install (never with --no-install, which is
# what `npm run build` passes); the build itself always runs.
# Needs Node >= 18 and a Python with jupyterlab: $PYTHON, else the active venv,
# else the repo's .venv, else python3.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$here"

if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ]; then
  python="$VIRTUAL_ENV/bin/python"
elif [ -x "$repo/.venv/bin/python" ]; then
  python="$repo/.venv/bin/python"
else
  python="python3"
fi
command -v node >/dev/null || { echo "build.sh: node not found (need Node >= 18)" >&2; exit 1; }
"$python" -c 'import jupyterlab' 2>/dev/null \
  || { echo "build.sh: $python has no jupyterlab (pip install jupyterlab)" >&2; exit 1; }
# jupyterlab >= 4.6 runs `jupyter-builder` from PATH: put that Python's scripts first.
PATH="$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH

lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp="node_modules/.agentrt-lock-sha256"
if [ "${1:-}" = "--no-install" ]; then
  echo "==> --no-install: using node_modules as it is"
elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_hash" ]; then
  echo "==> node_modules matches package-lock.json: skipping npm ci"
else
  echo "==> npm ci (from package-lock.json)"
  start=$SECONDS
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > "$stamp"
  echo "    npm ci took $((SECONDS - start)) s"
fi

echo "==> tsc"
start=$SECONDS
npx --no-install tsc --sourceMap
echo "    tsc took $((SECONDS - start)) s"

# --core-path: build against the installed JupyterLab's own package list (its staging/),
# not a @jupyterlab/core-meta looked up on the registry (the mirror may lack it).
staging="$("$python" -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')"
echo "==> jupyter labextension build -> agentrt_jupyter/labextension/"
start=$SECONDS
"$python" -m jupyterlab.labextensions build --core-path "$staging" . >build.log 2>&1 \
  || { cat build.log >&2; echo "build.sh: labextension build failed" >&2; exit 1; }
echo "    labextension build took $((SECONDS - start)) s (log: labextension/build.log)"

test -f "$repo/agentrt_jupyter/labextension/package.json"
echo "==> done: $(ls "$repo/agentrt_jupyter/labextension/static" | wc -l) files in agentrt_jupyter/labextension/static"
