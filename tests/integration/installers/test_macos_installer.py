"""installers/macos/install.sh on Linux: the --dry-run plan, the hardware checks (Apple silicon,
Rosetta, Intel), the LaunchAgent and app plists, the app's launcher, and a whole install / second
run / uninstall cycle of the Linux and macOS scripts with the heavy steps stubbed out."""

from __future__ import annotations

import os
import plistlib
import subprocess
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

# --- macOS: the plan and the generated plists -------------------------------------------------------


def test_macos_dry_run_plans_a_launch_agent_and_an_app(kit: ModuleType, home: Path) -> None:
    before = kit.snapshot(home)
    proc = kit.run_script(
        kit.INSTALLERS / "macos/install.sh", "--dry-run", "--device", "mps", "--coordinator", "h.example:1",
        env=kit.installer_env(home, xdg=False),
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "PyTorch build: the Apple silicon GPU (MPS)" in out
    assert "-m pip install --disable-pip-version-check torch --no-cache-dir\n" in out  # PyPI's wheel has MPS
    support = home / "Library/Application Support/essaim"
    assert f"would write {home}/Library/LaunchAgents/org.essaim.essaim.plist" in out
    assert f"would write {home}/Applications/essaim.app/Contents/Info.plist" in out
    assert f"essaim.icns to {home}/Applications/essaim.app/Contents/Resources/essaim.icns" in out
    assert f'would set [coordinator] address = "h.example:1" in {support}/config.toml' in out
    assert kit.diff(before, kit.snapshot(home)) == []
    real = kit.run_script(kit.INSTALLERS / "macos/install.sh", env=kit.installer_env(home, xdg=False))
    assert real.returncode == 1 and "this installer is for macOS" in real.stderr


@pytest.mark.parametrize(
    ("machine", "arm64", "python_machine", "expect"),
    [
        ("arm64", "1", "arm64", "PyTorch build: the Apple silicon GPU (MPS)"),
        ("arm64", "1", "x86_64", "PyTorch needs an arm64 Python"),
        ("x86_64", "1", "x86_64", "runs under Rosetta"),
        ("x86_64", "0", "x86_64", "no builds for Intel Macs"),
    ],
)
def test_macos_hardware_detection(
    kit: ModuleType, tmp_path: Path, machine: str, arm64: str, python_machine: str, expect: str
) -> None:
    kit.write_tool(tmp_path, "python", f"#!/bin/sh\necho {python_machine}\n")
    code = textwrap.dedent(f"""
        uname() {{ if [[ "${{1:-}}" == -m ]]; then echo {machine}; else echo Darwin; fi; }}
        sysctl() {{ echo {arm64}; }}
        PYTHON={tmp_path}/python
        detect_device
        echo "device=$DEVICE index=$TORCH_INDEX"
    """)
    proc = kit.source_and_run(kit.INSTALLERS / "macos/install.sh", code, kit.installer_env(tmp_path, xdg=False))
    assert expect in proc.stdout + proc.stderr
    if proc.returncode == 0:
        assert "device=mps index=none" in proc.stdout


def test_macos_plists_parse(kit: ModuleType, tmp_path: Path) -> None:
    home = tmp_path / "Jo & Co <home>"
    home.mkdir()
    env = kit.installer_env(home, xdg=False)
    code = (
        'macos_paths; render_agent_plist "$VENV/bin/essaim" tray; printf "\\0"; '
        'render_agent_plist "$VENV/bin/essaim" headless; printf "\\0"; render_app_plist'
    )
    proc = kit.source_and_run(kit.INSTALLERS / "macos/install.sh", code, env)
    assert proc.returncode == 0, proc.stderr
    tray, headless, app = (plistlib.loads(part.encode()) for part in proc.stdout.split("\0"))
    essaim = f"{home}/Library/Application Support/essaim/venv/bin/essaim"
    assert tray["Label"] == headless["Label"] == "org.essaim.essaim"
    assert tray["ProgramArguments"] == [essaim]
    assert headless["ProgramArguments"] == [essaim, "run", "--headless"]
    assert tray["RunAtLoad"] is True and tray["KeepAlive"] == {"SuccessfulExit": False}
    assert tray["LimitLoadToSessionType"] == "Aqua" and "LimitLoadToSessionType" not in headless
    assert tray["StandardErrorPath"] == f"{home}/Library/Logs/essaim/launchd.log"
    assert app["CFBundleExecutable"] == "essaim" and app["CFBundleIconFile"] == "essaim"
    assert app["LSUIElement"] is True


def test_macos_app_launcher_passes_its_arguments(kit: ModuleType, tmp_path: Path) -> None:
    essaim = tmp_path / "it's here" / "essaim"
    essaim.parent.mkdir()
    kit.write_tool(essaim.parent, "essaim", '#!/bin/sh\nprintf "[%s]" "$@"\n')
    proc = kit.source_and_run(kit.INSTALLERS / "macos/install.sh", f'render_app_launcher "{essaim}"', kit.installer_env(tmp_path, xdg=False))
    kit.write_tool(tmp_path, "launcher", proc.stdout)
    run = subprocess.run([str(tmp_path / "launcher"), "a b", "c"], capture_output=True, text=True, timeout=30)
    assert run.stdout == "[a b][c]"


# --- whole cycles with the heavy steps stubbed: install, again, switch, uninstall --------------------

@pytest.mark.parametrize("system", ["linux", "macos"])
def test_stubbed_cycle_is_idempotent_and_uninstalls_cleanly(kit: ModuleType, tmp_path: Path, system: str) -> None:
    home = tmp_path / "Jo Doe"  # a space in every path
    home.mkdir()
    kit.seed_unrelated_files(home)
    env = {**kit.installer_env(home, xdg=system == "linux"), "ESSAIM_TEST_PYTHON": str(kit.base_python())}
    script = kit.INSTALLERS / system / "install.sh"
    stubs = kit.STUBS if system == "linux" else kit.MAC_STUBS
    before = kit.snapshot(home)

    def install(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["bash", "-c", f'ESSAIM_INSTALLER_LIB=1; source "$0"\n{stubs}\nmain "$@"', str(script), *args],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    install("--tray", "--no-start", "--coordinator", "h.example:1")
    first = kit.snapshot(home)
    again = install("--tray", "--no-start", "--coordinator", "h.example:1")
    assert "wrote" not in again.stdout
    assert kit.diff(first, kit.snapshot(home)) == []
    if system == "linux":
        data = home / ".local/share/essaim"
        assert (home / ".config/autostart/essaim.desktop").exists()
        install("--headless", "--no-start", "--coordinator", "h.example:1")
        assert not (home / ".config/autostart/essaim.desktop").exists()
        assert (home / ".config/systemd/user/essaim.service").exists()
    else:
        data = home / "Library/Application Support/essaim"
        agent = plistlib.loads((home / "Library/LaunchAgents/org.essaim.essaim.plist").read_bytes())
        assert agent["ProgramArguments"] == [f"{data}/venv/bin/essaim"]
        icns = home / "Applications/essaim.app/Contents/Resources/essaim.icns"
        assert icns.read_bytes() == (kit.INSTALLERS / "assets/essaim.icns").read_bytes()
        assert os.access(home / "Applications/essaim.app/Contents/MacOS/essaim", os.X_OK)
    assert (data / "config.toml").exists() or (home / ".config/essaim/config.toml").exists()
    (data / "identity.pem").write_text("secret\n")

    uninstaller = kit.INSTALLERS / system / "uninstall.sh"
    kept = kit.run_script(uninstaller, "--keep-data", env=env)
    assert kept.returncode == 0, kept.stderr
    assert (data / "identity.pem").exists() and not (data / "venv").exists()
    assert not (home / ".local/bin/essaim").exists()
    gone = kit.run_script(uninstaller, env=env)
    assert gone.returncode == 0, gone.stderr
    assert kit.diff(before, kit.snapshot(home)) == []
