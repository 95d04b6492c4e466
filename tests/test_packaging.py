"""The package as a user installs it: one version, dev tools out of the extras, and the wheel
and the editable install of a clean copy of the checkout shipping the lab extension that a
fresh JupyterLab lists as enabled and OK and serves (the README's "Into an existing Jupyter")."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import warnings
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import agentrt_jupyter

from .machine import free_port, require

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_JSON = ROOT / "labextension" / "package.json"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTENSION = "agentrt-jupyter"
SHARED = f"share/jupyter/labextensions/{EXTENSION}"


def package_json_version() -> str:
    return str(json.loads(PACKAGE_JSON.read_text())["version"])


def test_the_python_version_is_the_one_in_package_json() -> None:
    assert agentrt_jupyter.__version__ == package_json_version()
    assert metadata.version("agentrt-jupyter") == package_json_version()
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "labextension/package.json"


def test_the_local_extra_asks_for_the_llama_cpp_python_that_setup_compiles() -> None:
    (compiled,) = re.findall(
        r'"llama-cpp-python==([^"]+)"', (ROOT / "scripts/setup.sh").read_text()
    )
    (required,) = PYPROJECT["project"]["optional-dependencies"]["local"]
    assert required == f"llama-cpp-python>={compiled}"


def test_extras_carry_no_dev_tools_and_no_exact_pins() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == {
        "notebook",
        "local",
        "local-server",
        "mcp",
        "openai",
        "anthropic",
        "postgres",
    }
    requirements = [r for reqs in extras.values() for r in reqs]
    assert not [r for r in requirements if "==" in r]
    dev_tools = {"pytest", "ruff", "mypy", "hypothesis", "jupyterlab", "playwright"}
    assert not [r for r in requirements if re.split(r"[<>=!~\[ ]", r)[0] in dev_tools]
    assert {"test", "lint", "dev"} <= set(PYPROJECT["dependency-groups"])


def clean_copy(destination: Path) -> Path:
    """The checkout as a fresh clone of it has it (tracked and new files, nothing ignored:
    no node_modules, no built extension), uncommitted edits included."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def run(*command: str | Path, env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def listed_extension(venv: Path, env: dict[str, str]) -> str:
    """`jupyter labextension list` in `venv`: our extension's line, colours removed."""
    out = run(venv / "bin" / "jupyter", "labextension", "list", env=env)
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines() if EXTENSION in line]
    assert len(lines) == 1, out
    return lines[0].strip()


def lab_serves(venv: Path, env: dict[str, str], asset: str) -> None:
    """JupyterLab started from `venv` names `asset` (static/remoteEntry.*.js) in its page
    and serves it."""
    port, token = free_port(), secrets.token_hex(16)
    lab = subprocess.Popen(
        [
            venv / "bin" / "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
            f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=venv.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert lab.poll() is None, f"jupyter lab exited with {lab.returncode}"
            try:
                with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=30) as page:
                    html = page.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # polling a starting server: nothing to wait on
        assert asset in html
        url = f"{base}/lab/extensions/{EXTENSION}/{asset}?token={token}"
        with urllib.request.urlopen(url, timeout=30) as served:
            assert served.status == 200 and served.read()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()


def jupyterlab_pin() -> str:
    (pin,) = [r for r in PYPROJECT["dependency-groups"]["test"] if r.startswith("jupyterlab")]
    return str(pin)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_clean_copy_installs_the_lab_extension_from_its_wheel_and_editable(
    tmp_path: Path,
) -> None:
    require(shutil.which("npm") is not None, "Node.js (npm) is needed to build the lab extension")
    require((ROOT / ".git").exists(), "not a git checkout")
    version = package_json_version()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    source = clean_copy(tmp_path / "clone")

    # `pip wheel .` from the clean copy builds the extension (npm) into the wheel.
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, ".", cwd=source, env=env)
    (wheel,) = dist.glob("agentrt_jupyter-*.whl")
    data = f"agentrt_jupyter-{version}.data/data/{SHARED}"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = json.loads(archive.read(f"{data}/package.json"))
    assert {f"{data}/static/style.js", f"{data}/install.json"} <= names
    (entry,) = [n for n in names if re.fullmatch(rf"{data}/static/remoteEntry\.\w+\.js", n)]
    assert (shipped["name"], shipped["version"]) == (EXTENSION, version)

    # A fresh venv with JupyterLab: the wheel's extension is enabled and OK.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, env=env)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", wheel, jupyterlab_pin(), env=env)
    line = listed_extension(venv, env)
    assert re.fullmatch(
        rf"{EXTENSION} v{re.escape(version)} enabled OK \(python, {EXTENSION}\)", line
    )
    lab_serves(venv, env, entry.removeprefix(f"{data}/"))

    # The README's development install, with no extension built yet (a fresh clone's state).
    shutil.rmtree(source / "agentrt_jupyter" / "labextension")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", ".", cwd=source, env=env)
    assert (source / "agentrt_jupyter" / "labextension" / "static" / "style.js").is_file()
    run(
        venv / "bin" / "jupyter", "labextension", "develop", "--overwrite", ".", cwd=source, env=env
    )
    line = listed_extension(venv, env)
    assert re.fullmatch(rf"{EXTENSION} v{re.escape(version)} enabled OK", line)
    linked = venv / SHARED
    assert linked.is_symlink()
    assert linked.resolve() == (source / "agentrt_jupyter" / "labextension").resolve()


def test_a_warning_from_the_package_fails_the_test() -> None:
    with pytest.raises(DeprecationWarning, match="probe"):
        warnings.warn_explicit(
            "probe", DeprecationWarning, "runtime.py", 1, module="agentrt_jupyter.runtime"
        )
