"""installers/linux/install.sh and uninstall.sh for real, in a temporary HOME, from a wheel of this
checkout: the environment works, the menu and autostart entries validate, a second run changes
nothing, --headless registers a valid systemd user unit, and uninstall leaves HOME as it was.

The tests share one install (``installed_home``) and run in this file's order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from installer_harness import InstalledHome

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _wheel_version(installed: InstalledHome) -> str:
    return installed.wheel.name.split("-")[1]


def test_install_makes_a_working_environment(installed_home: InstalledHome) -> None:
    out = installed_home.first_run.stdout
    assert "PyTorch build: the CPU" in out
    python = installed_home.venv / "bin/python"
    probe = subprocess.run(
        [str(python), "-c", "import essaim, torch; print(essaim.__version__, torch.__version__)"],
        capture_output=True, text=True, timeout=120, check=True, env=installed_home.env,
    )
    essaim_version, torch_version = probe.stdout.split()
    assert essaim_version == _wheel_version(installed_home)
    assert torch_version.startswith("2.13.0")
    launcher = installed_home.home / ".local/bin/essaim"
    assert launcher.is_symlink() and os.readlink(launcher) == str(installed_home.venv / "bin/essaim")
    version = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, timeout=120, env=installed_home.env
    )
    assert version.returncode == 0, version.stderr
    assert _wheel_version(installed_home) in version.stdout
    assert f"installed {version.stdout.strip()}" in out


def test_menu_and_autostart_entries_validate(installed_home: InstalledHome, kit: ModuleType) -> None:
    home = installed_home.home
    menu = home / ".local/share/applications/essaim.desktop"
    autostart = home / ".config/autostart/essaim.desktop"
    for entry in (menu, autostart):
        text = entry.read_text()
        assert f"Exec={installed_home.venv}/bin/essaim\n" in text
        assert "Icon=essaim\n" in text
    assert "X-GNOME-Autostart-enabled=true" in autostart.read_text()
    icons = home / ".local/share/icons/hicolor"
    assert (icons / "scalable/apps/essaim.svg").read_bytes() == (kit.INSTALLERS / "assets/essaim.svg").read_bytes()
    assert (icons / "256x256/apps/essaim.png").read_bytes() == (kit.INSTALLERS / "assets/essaim.png").read_bytes()
    validator = shutil.which("desktop-file-validate")
    if validator is None:
        pytest.skip("desktop-file-validate not installed (Debian package desktop-file-utils)")
    for entry in (menu, autostart):
        proc = subprocess.run([validator, str(entry)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_coordinator_is_written_to_the_config(installed_home: InstalledHome, kit: ModuleType) -> None:
    config = tomllib.loads((installed_home.config_dir / "config.toml").read_text())
    assert config == {"coordinator": {"address": kit.COORDINATOR}}


def test_second_run_changes_nothing(installed_home: InstalledHome, kit: ModuleType) -> None:
    before = installed_home.snapshot()
    proc = installed_home.install("--tray")
    assert proc.returncode == 0, proc.stderr
    assert "already installed: keeping it" in proc.stdout
    assert "essaim is up to date" in proc.stdout
    assert "wrote" not in proc.stdout
    assert kit.diff(before, installed_home.snapshot()) == []


def test_headless_registers_a_valid_systemd_user_unit(installed_home: InstalledHome, tmp_path: Path) -> None:
    proc = installed_home.install("--headless")
    assert proc.returncode == 0, proc.stderr
    home = installed_home.home
    unit = home / ".config/systemd/user/essaim.service"
    assert f"ExecStart={installed_home.venv}/bin/essaim run --headless\n" in unit.read_text()
    assert not (home / ".config/autostart/essaim.desktop").exists()  # the tray's entry went away
    assert (home / ".local/share/applications/essaim.desktop").exists()
    assert "systemctl --user enable --now essaim.service" in proc.stdout  # no user manager here
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**installed_home.env, "XDG_RUNTIME_DIR": str(runtime)}
    check = subprocess.run(
        [analyze, "--user", "verify", str(unit)], capture_output=True, text=True, timeout=120, env=env
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_uninstall_keeps_data_when_asked_then_leaves_home_as_it_was(
    installed_home: InstalledHome, kit: ModuleType
) -> None:
    home, data, config = installed_home.home, installed_home.data_dir, installed_home.config_dir
    # what the app itself would have made by now
    (data / "identity").mkdir()
    (data / "identity/key.pem").write_text("secret\n")
    (home / ".cache/essaim").mkdir(parents=True, exist_ok=True)
    (home / ".cache/essaim/shard.bin").write_bytes(b"\0" * 16)
    (home / ".local/state/essaim").mkdir(parents=True, exist_ok=True)  # its log: ~/.local/state too
    (home / ".local/state/essaim/essaim.log").write_text("started\n")

    kept = installed_home.uninstall("--keep-data")
    assert kept.returncode == 0, kept.stderr
    assert not installed_home.venv.exists()
    for path in (
        ".local/bin/essaim", ".local/share/applications/essaim.desktop", ".config/systemd/user/essaim.service",
        ".local/share/icons/hicolor/scalable/apps/essaim.svg", ".local/share/essaim/uninstall.sh",
    ):
        assert not (home / path).exists(), path
    assert (data / "identity/key.pem").read_text() == "secret\n"
    assert (home / ".cache/essaim/shard.bin").exists()
    assert tomllib.loads((config / "config.toml").read_text())["coordinator"]["address"] == kit.COORDINATOR

    gone = installed_home.uninstall()
    assert gone.returncode == 0, gone.stderr
    assert kit.diff(installed_home.before, installed_home.snapshot()) == []
