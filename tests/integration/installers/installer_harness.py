"""Helpers of the installer tests (loaded by conftest.py; tests reach them through the ``kit`` fixture).

Paths of the checkout, the environment an installer runs in (a throw-away HOME with its XDG
folders), a snapshot of a folder tree to compare before and after, and ``InstalledHome``, the
state of one essaim installed by installers/linux/install.sh.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
INSTALLERS = REPO / "installers"
TORCH_SPEC = "torch==2.13.0"
COORDINATOR = "coordinator.example.org:50051"
REAL_HOME = Path(os.environ.get("HOME") or Path.home())

Snapshot = dict[str, tuple[object, ...]]


def base_python() -> Path:
    """The interpreter this test environment was made from (not the virtual environment's own)."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def installer_env(home: Path, *, path_first: tuple[Path, ...] = (), xdg: bool = True) -> dict[str, str]:
    """The environment of an installer run: HOME and every XDG folder under ``home`` (none with
    ``xdg=False``, as on a Mac, where essaim's folders are under ~/Library).

    No display and no user bus (systemctl --user cannot reach the real session), and the Python
    this suite runs on comes first on PATH, ahead of the development environment's.
    """
    dropped = {"DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith(("XDG_", "ESSAIM_"))}
    env["HOME"] = str(home)
    if xdg:
        env.update(
            XDG_DATA_HOME=str(home / ".local/share"),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_STATE_HOME=str(home / ".local/state"),
        )
    # tools that keep their state under HOME (pip asks rustc for its version) keep the real one
    for var, folder in (("RUSTUP_HOME", ".rustup"), ("CARGO_HOME", ".cargo"), ("PYENV_ROOT", ".pyenv")):
        if var not in env and (REAL_HOME / folder).is_dir():
            env[var] = str(REAL_HOME / folder)
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != venv_bin]
    env["PATH"] = os.pathsep.join([*map(str, path_first), str(base_python().parent), *path])
    return env


def run_script(script: Path, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def snapshot(root: Path, *, hash_under: tuple[Path, ...] = ()) -> Snapshot:
    """Every path under ``root``: its kind, mode, and size and modification time (files), or target
    (links). Files outside ``hash_under`` folders, or all when it is empty, also get a SHA-256."""
    result: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            stat = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                result[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                result[rel] = ("dir", stat.st_mode)
            else:
                digest = ""
                if not hash_under or not any(path.is_relative_to(h) for h in hash_under):
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                result[rel] = ("file", stat.st_mode, stat.st_size, stat.st_mtime_ns, digest)
    return result


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    lines = [f"- {k}" for k in sorted(before.keys() - after.keys())]
    lines += [f"+ {k}" for k in sorted(after.keys() - before.keys())]
    lines += [f"~ {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return lines

def write_tool(folder: Path, name: str, text: str) -> None:
    """An executable script ``folder/name`` (a fake nvidia-smi, python...)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    (folder / name).chmod(0o755)


def source_and_run(script: Path, code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs bash ``code`` after sourcing an installer as a library (ESSAIM_INSTALLER_LIB=1: its main
    does not run), so that tests can call its functions or stub some before calling main."""
    return subprocess.run(
        ["bash", "-c", f'ESSAIM_INSTALLER_LIB=1; source "$0"\n{code}', str(script)],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


# The heavy steps of an install (Python, PyTorch, essaim), stubbed so that the rest of main runs in a
# second: a fake environment whose essaim only prints a version. ESSAIM_TEST_PYTHON is a real Python
# for the steps that need one (the config.toml edit).
STUBS = textwrap.dedent("""
    find_python() { PYTHON=$ESSAIM_TEST_PYTHON; }
    ensure_venv() {
      ensure_dir "$VENV/bin"
      if [[ ! -e "$VENV/bin/essaim" ]]; then printf '#!/bin/sh\\necho essaim 0.0\\n' >"$VENV/bin/essaim"; chmod 755 "$VENV/bin/essaim"; fi
    }
    install_torch() { :; }
    install_essaim() { :; }
    verify_essaim() { :; }
""")
MAC_STUBS = STUBS + textwrap.dedent("""
    uname() { if [[ "${1:-}" == -m ]]; then echo arm64; else echo Darwin; fi; }
    detect_device() { DEVICE=mps; DEVICE_LABEL=MPS; TORCH_SPEC=torch; TORCH_INDEX=none; EXTRAS=tray; }
""")


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path


@dataclass
class InstalledHome:
    """A temporary HOME with essaim installed by installers/linux/install.sh."""

    home: Path
    env: dict[str, str]
    wheel: Path
    wheelhouse: Path
    before: Snapshot  # HOME before the first install
    first_run: subprocess.CompletedProcess[str]
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.home / ".local/share/essaim"

    @property
    def venv(self) -> Path:
        return self.data_dir / "venv"

    @property
    def config_dir(self) -> Path:
        return self.home / ".config/essaim"

    def install_args(self, *extra: str) -> list[str]:
        # --no-compile halves the install's time; installed_home then compiles what the installer's own
        # checks import, as a normal install (which compiles everything) would have it
        pip_args = f"--no-index --find-links {self.wheelhouse} --no-cache-dir --no-compile"
        return [
            "--wheel", str(self.wheel), "--torch-spec", TORCH_SPEC, "--torch-index", "none",
            "--pip-args", pip_args, "--coordinator", COORDINATOR, "--no-start", *extra,
        ]

    def install(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_script(INSTALLERS / "linux/install.sh", *self.install_args(*extra), env=self.env, timeout=900)

    def uninstall(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_script(INSTALLERS / "linux/uninstall.sh", *args, env=self.env, timeout=300)

    def snapshot(self) -> Snapshot:
        return snapshot(self.home, hash_under=(self.venv,))


def fast_tmp_root() -> Path | None:
    """A RAM-backed folder (/dev/shm) with room for an installed essaim (about 1.5 GB), if any:
    writing and deleting PyTorch's many files there takes seconds, not minutes."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 * 2**30:
        return shm
    return None


def remove_stale_homes(base: Path) -> None:
    """Deletes the homes (essaim-home-PID-*) of test sessions that died before cleaning up: in
    /dev/shm they would hold their memory until the machine restarts."""
    for home in base.glob("essaim-home-*-*"):
        pid = home.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(home, ignore_errors=True)


def seed_unrelated_files(home: Path) -> None:
    """Files a real HOME has, which no install or uninstall may touch."""
    (home / ".config/other").mkdir(parents=True)
    (home / ".config/other/settings.ini").write_text("[other]\nkeep = yes\n")
    (home / ".local/bin").mkdir(parents=True)
    (home / ".local/bin/other-tool").write_text("#!/bin/sh\necho other\n")
    (home / ".local/bin/other-tool").chmod(0o755)
    (home / ".bashrc").write_text("# a user's own file\n")
    (home / ".cache").mkdir()
