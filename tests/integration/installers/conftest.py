"""Fixtures for the installer tests: built distributions, a throw-away HOME, and one installed essaim.

``built_dists`` runs ``python -m build`` once per session. ``wheelhouse`` gathers the wheels essaim
needs (its dependencies and ``torch==2.13.0``, which pip takes from this machine's local wheels)
once per machine into ``~/.cache/essaim-tests``, with the versions of the development environment,
so that the installs themselves run with ``--no-index`` and need no network. ``installed_home``
runs installers/linux/install.sh once per session in a temporary HOME (in /dev/shm when there is
room: PyTorch's files are written and deleted there in seconds); test_linux_install.py shares it and
runs its steps in order (install, second run, switch to headless, uninstall).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from installer_harness import Dists, InstalledHome


def _load_harness() -> ModuleType:
    """installer_harness.py beside this file, importable by name (the suite imports in importlib mode)."""
    if "installer_harness" not in sys.modules:
        spec = importlib.util.spec_from_file_location("installer_harness", Path(__file__).with_name("installer_harness.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["installer_harness"] = module
        spec.loader.exec_module(module)
    return sys.modules["installer_harness"]


h = _load_harness()
REAL_HOME, REPO, TORCH_SPEC = h.REAL_HOME, h.REPO, h.TORCH_SPEC


def _wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(zf.read(name).decode())
    return sorted(metadata.get_all("Requires-Dist") or [])


def _pip_wheel(args: list[str], target: Path, constraints: Path | None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", str(target)]
    if constraints is not None:
        cmd += ["--constraint", str(constraints)]
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="session")
def kit() -> ModuleType:
    """The installer tests' helpers: installer_harness.py."""
    return h


@pytest.fixture(scope="session")
def built_dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The wheel and sdist of this checkout, built once per session with ``python -m build``."""
    try:
        import build  # noqa: F401
    except ImportError:  # it is in the dev extras; a bare environment gets it here
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "build>=1.2"], check=True, timeout=300)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return h.Dists(wheel=wheels[0], sdist=sdists[0])


@pytest.fixture(scope="session")
def wheelhouse(built_dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every wheel an install needs but essaim's own, filled once per machine."""
    requirements = _wheel_requirements(built_dists.wheel)
    key_text = "\n".join([*requirements, TORCH_SPEC, sys.version, sys.platform])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    root = Path(os.environ.get("ESSAIM_TEST_WHEELHOUSE") or REAL_HOME / ".cache/essaim-tests") / f"wheelhouse-{key}"
    if (root / ".complete").exists():
        return root
    for old in root.parent.glob("wheelhouse-*"):  # for an older set of requirements
        if (old / ".complete").exists():
            shutil.rmtree(old, ignore_errors=True)
    partial = root.with_name(f"{root.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    # the development environment's versions: a resolution pip has already done, and tested
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    constraints = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    constraints.write_text("".join(f"{line}\n" for line in frozen.splitlines() if not line.startswith("essaim==")))
    args = [f"{built_dists.wheel}[tray]", TORCH_SPEC]
    proc = _pip_wheel(args, partial, constraints)
    if proc.returncode != 0:  # the development environment may lag behind pyproject.toml
        shutil.rmtree(partial, ignore_errors=True)
        proc = _pip_wheel(args, partial, None)
    assert proc.returncode == 0, f"could not gather essaim's dependencies:\n{proc.stderr[-4000:]}"
    for own in partial.glob("essaim-*.whl"):
        own.unlink()
    (partial / ".complete").touch()
    try:
        partial.rename(root)
    except OSError:  # another session filled it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return root


@pytest.fixture(scope="session")
def installed_home(
    built_dists: Dists, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InstalledHome]:
    """essaim installed (tray mode, with a coordinator) in a temporary HOME, once per session."""
    base = h.fast_tmp_root()
    if base is None:
        base = tmp_path_factory.getbasetemp()
    else:
        h.remove_stale_homes(base)
    home = Path(tempfile.mkdtemp(prefix=f"essaim-home-{os.getpid()}-", dir=base))
    try:
        h.seed_unrelated_files(home)
        env = h.installer_env(home)
        before = h.snapshot(home)
        state = h.InstalledHome(home, env, built_dists.wheel, wheelhouse, before, subprocess.CompletedProcess([], 0))
        state.first_run = state.install("--tray")
        assert state.first_run.returncode == 0, state.first_run.stdout[-4000:] + state.first_run.stderr[-4000:]
        subprocess.run(
            [str(state.venv / "bin/python"), "-c", "import torch, essaim.main"],
            env=env, capture_output=True, timeout=600, check=True,
        )
        yield state
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME but for a few files of the user's own, which no installer may touch."""
    home = tmp_path / "home"
    home.mkdir()
    h.seed_unrelated_files(home)
    return home
