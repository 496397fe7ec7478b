"""launch.sh on a host whose python3 is older than 3.11 (stock Cloud TPU VM images: 3.10).

The test copies launch.sh into a checkout of its own (a pyproject with no dependencies, so
the install runs offline), puts a fake `python3` that reports 3.10 first on PATH, and runs
`./launch.sh run hello`: launch.sh must make the venv through uv with a Python 3.11 (here
the real one, found by uv on PATH; downloads are off) and run the module in it.
"""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAKE_PYTHON3 = """#!/bin/sh
# A stock TPU VM's python3, as far as launch.sh can tell: 3.10, no uv module, no pip.
case "$1" in
  --version|-V) echo "Python 3.10.12" ;;
  *) exit 1 ;;
esac
"""


def _checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    checkout = tmp_path / "meshlm"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "launch.sh", checkout)
    for script in ("multihost.sh", "supervise.sh"):
        shutil.copy(ROOT / "scripts" / script, checkout / "scripts")
    (checkout / "pyproject.toml").write_text(
        '[project]\nname = "meshlm-setup-check"\nversion = "0"\nrequires-python = ">=3.11"\ndependencies = []\n')
    (checkout / "hello.py").write_text("import sys\nprint('hello from', sys.version.split()[0], sys.prefix)\n")
    return checkout


def _tools(tmp_path: pathlib.Path) -> pathlib.Path:
    """A bin folder: the fake python3 first; uv and a real python3.11 for uv to find."""
    import uv

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    (bin_dir / "python3").chmod(0o755)
    (bin_dir / "uv").symlink_to(uv.find_uv_bin())
    real = pathlib.Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info < (3, 11) or not real.exists():
        pytest.skip(f"needs a Python 3.11+ outside the venv for uv to find; {real} is not one")
    (bin_dir / real.name).symlink_to(real)
    return bin_dir


def test_an_old_python3_gets_a_uv_managed_python_and_the_job_runs(tmp_path):
    checkout, bin_dir = _checkout(tmp_path), _tools(tmp_path)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path),
           "UV_PYTHON_DOWNLOADS": "never", "UV_OFFLINE": "1", "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
           "UV_NO_CONFIG": "1", "PYTHONPATH": ""}
    done = subprocess.run([str(checkout / "launch.sh"), "run", "hello"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    venv = checkout / ".venv"
    assert f"Python 3.10.12 is older than 3.11; creating {venv} with Python 3.11 through uv" in done.stdout
    assert "hello from 3.11." in done.stdout and str(venv) in done.stdout.splitlines()[-1]
    assert (venv / ".meshlm-stamp").is_file()

    again = subprocess.run([str(checkout / "launch.sh"), "run", "hello"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "creating" not in again.stdout and "installing" not in again.stdout


def test_an_explicit_old_python_is_refused_in_one_line(tmp_path):
    checkout, bin_dir = _checkout(tmp_path), _tools(tmp_path)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": str(bin_dir / "python3")}
    done = subprocess.run([str(checkout / "launch.sh"), "run", "hello"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"launch.sh: PYTHON={bin_dir / 'python3'} is Python 3.10.12; meshlm needs Python 3.11+ (or unset "
        "PYTHON: launch.sh then makes the venv with a uv-managed Python)"]
