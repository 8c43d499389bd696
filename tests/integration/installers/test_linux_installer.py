"""installers/linux/install.sh without installing PyTorch: the --dry-run plan (the PyTorch build for
each GPU a fake nvidia-smi or rocminfo reports, tray or service), argument and missing-Python errors,
the config.toml edit, the quoting of odd paths in desktop entries and units, and a lone install.sh
(downloaded without its folder) that takes its icon from the installed package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

# --- Linux: the plan, errors, generated files ------------------------------------------------------

NVIDIA_SMI = """#!/bin/sh
case "$1" in
  -L) echo 'GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-0)' ;;
  --query-gpu=name) echo 'NVIDIA GeForce RTX 4090' ;;
  *) echo '| NVIDIA-SMI 570.86   Driver Version: 570.86   CUDA Version: {cuda}   |' ;;
esac
"""
ROCMINFO = "#!/bin/sh\necho '  Name:                    gfx1100'\n"
ABSENT = "#!/bin/sh\nexit 9\n"


@pytest.mark.parametrize(
    ("nvidia", "rocm", "label", "index"),
    [
        (NVIDIA_SMI.format(cuda="12.8"), ABSENT, "NVIDIA CUDA (cu128, NVIDIA GeForce RTX 4090)", "cu128"),
        (NVIDIA_SMI.format(cuda="13.0"), ABSENT, "NVIDIA CUDA (cu130, NVIDIA GeForce RTX 4090)", "cu130"),
        (NVIDIA_SMI.format(cuda="12.2"), ABSENT, "the CPU", "cpu"),
        (ABSENT, ROCMINFO, "AMD ROCm (rocm6.4", "rocm6.4"),
        (ABSENT, ABSENT, "the CPU (no NVIDIA or AMD GPU found)", "cpu"),
    ],
    ids=["cuda-12.8", "cuda-13.0", "old-driver", "rocm", "cpu"],
)
def test_dry_run_picks_the_pytorch_build_for_the_hardware(
    kit: ModuleType, home: Path, tmp_path: Path, nvidia: str, rocm: str, label: str, index: str
) -> None:
    if index == "cpu" and rocm == ABSENT and Path("/opt/rocm").is_dir() and Path("/dev/kfd").exists():
        pytest.skip("this machine has ROCm: the installer rightly picks it")
    kit.write_tool(tmp_path / "bin", "nvidia-smi", nvidia)
    kit.write_tool(tmp_path / "bin", "rocminfo", rocm)
    before = kit.snapshot(home)
    env = kit.installer_env(home, path_first=(tmp_path / "bin",))
    proc = kit.run_script(kit.INSTALLERS / "linux/install.sh", "--dry-run", "--coordinator", "h.example:1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"PyTorch build: {label}" in proc.stdout
    assert f"--index-url https://download.pytorch.org/whl/{index} torch --no-cache-dir" in proc.stdout
    assert ("essaim\\[tray\\,gpu\\]" in proc.stdout) == index.startswith("cu")
    if "12.2" in nvidia:
        assert "update the driver" in proc.stderr
    for planned in (".config/systemd/user/essaim.service", ".local/share/applications/essaim.desktop", ".local/bin/essaim"):
        assert str(home / planned) in proc.stdout
    assert kit.diff(before, kit.snapshot(home)) == [], "a dry run changed files"


@pytest.mark.parametrize(("display", "planned", "not_planned"), [
    ({"DISPLAY": ":0"}, ".config/autostart/essaim.desktop", ".config/systemd/user/essaim.service"),
    ({"WAYLAND_DISPLAY": "wayland-0"}, ".config/autostart/essaim.desktop", ".config/systemd/user/essaim.service"),
    ({}, ".config/systemd/user/essaim.service", ".config/autostart/essaim.desktop"),
])
def test_autostart_is_the_tray_with_a_display_and_the_service_without(
    kit: ModuleType, home: Path, display: dict[str, str], planned: str, not_planned: str
) -> None:
    env = {**kit.installer_env(home), **display}
    proc = kit.run_script(kit.INSTALLERS / "linux/install.sh", "--dry-run", "--no-start", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"would write {home / planned}" in proc.stdout
    assert str(home / not_planned) not in proc.stdout


@pytest.mark.parametrize("via", ["flags", "environment"])
def test_torch_requirement_and_pip_options_can_be_overridden(kit: ModuleType, home: Path, via: str) -> None:
    env = kit.installer_env(home)
    args = ["--dry-run", "--headless", "--device", "cuda"]
    if via == "flags":
        args += ["--torch-spec", "torch==2.13.0", "--torch-index", "none", "--pip-args", "--no-index --find-links /w"]
    else:
        env.update(ESSAIM_TORCH_SPEC="torch==2.13.0", ESSAIM_TORCH_INDEX_URL="none", ESSAIM_PIP_ARGS="--no-index --find-links /w")
    proc = kit.run_script(kit.INSTALLERS / "linux/install.sh", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "-m pip install --disable-pip-version-check torch==2.13.0 --no-index --find-links /w\n" in proc.stdout
    assert "--index-url" not in proc.stdout
    assert str(home / ".config/systemd/user/essaim.service") in proc.stdout
    assert "autostart" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--coordinator", "no-port"], "--coordinator wants HOST:PORT"),
        (["--coordinator", "host:99999"], "--coordinator wants HOST:PORT"),
        (["--coordinator", "bad host:1"], "--coordinator wants HOST:PORT"),
        (["--wheel", "/nowhere/essaim.whl"], "is not a wheel file"),
        (["--wheel"], "--wheel needs a value"),
        (["--frobnicate"], "unknown option: --frobnicate"),
        (["--device", "tpu"], "--device must be auto, cuda, rocm or cpu"),
    ],
)
def test_bad_arguments_are_refused_clearly(kit: ModuleType, home: Path, args: list[str], message: str) -> None:
    before = kit.snapshot(home)
    proc = kit.run_script(kit.INSTALLERS / "linux/install.sh", *args, env=kit.installer_env(home))
    assert proc.returncode == 1
    assert message in proc.stderr
    assert kit.diff(before, kit.snapshot(home)) == []


FAKE_PYTHON = """#!/bin/sh
case "$2" in
  *ensurepip*) exit {venv} ;;
  *sys.exit*) exit {old} ;;
  *) echo {version} ;;
esac
"""


@pytest.mark.parametrize(
    ("version", "old", "venv", "message"),
    [
        ("3.9", 1, 0, "essaim needs Python 3.11 or newer, and found only"),
        ("3.12", 0, 1, "cannot make virtual environments (its venv/ensurepip module is missing)"),
    ],
)
def test_a_missing_python_is_explained(
    kit: ModuleType, home: Path, tmp_path: Path, version: str, old: int, venv: int, message: str
) -> None:
    # a PATH with the usual tools and one unfit python3
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("uname", "dirname", "sed", "grep", "cat", "head", "mkdir", "mktemp", "rm", "ps", "id", "sort"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    kit.write_tool(bin_dir, "python3", FAKE_PYTHON.format(version=version, old=old, venv=venv))
    env = {**kit.installer_env(home), "PATH": str(bin_dir)}
    proc = subprocess.run(
        ["/bin/bash", str(kit.INSTALLERS / "linux/install.sh"), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "--python" in proc.stderr  # and how to point it at another Python


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", '[coordinator]\naddress = "h.example:1"\n'),
        (
            "# my settings\n[policy]\nidle_minutes = 5  # short\n",
            '# my settings\n[policy]\nidle_minutes = 5  # short\n\n[coordinator]\naddress = "h.example:1"\n',
        ),
        (
            '[coordinator]\naddress = "old.example:2"\ntoken_file = "t"\n\n[tray]\naddress = "not this one"\n',
            '[coordinator]\naddress = "h.example:1"\ntoken_file = "t"\n\n[tray]\naddress = "not this one"\n',
        ),
        (
            '[coordinator] # where to connect\ntoken_file = "t"',
            '[coordinator] # where to connect\naddress = "h.example:1"\ntoken_file = "t"\n',
        ),
    ],
    ids=["new", "other-tables", "replace", "add-to-table"],
)
def test_coordinator_edit_keeps_the_rest_of_config_toml(
    kit: ModuleType, tmp_path: Path, before: str, after: str
) -> None:
    config = tmp_path / "config.toml"
    if before:
        config.write_text(before)
    env = {**kit.installer_env(tmp_path), "PYTHON": str(kit.base_python())}
    code = f'write_coordinator_address "{config}" h.example:1'
    first = kit.source_and_run(kit.INSTALLERS / "linux/install.sh", code, env)
    assert (first.returncode, first.stdout.strip()) == (0, "changed"), first.stderr
    assert config.read_text() == after
    if not before:
        assert config.stat().st_mode & 0o777 == 0o600
    stamp = config.stat().st_mtime_ns
    second = kit.source_and_run(kit.INSTALLERS / "linux/install.sh", code, env)
    assert (second.returncode, second.stdout.strip()) == (0, "unchanged")
    assert config.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("before", "message"),
    [("[coordinator\n", "is not valid TOML"), ('coordinator.address = "x:1"\n', "by hand")],
)
def test_coordinator_edit_refuses_what_it_cannot_edit(kit: ModuleType, tmp_path: Path, before: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(before)
    env = {**kit.installer_env(tmp_path), "PYTHON": str(kit.base_python())}
    proc = kit.source_and_run(kit.INSTALLERS / "linux/install.sh", f'write_coordinator_address "{config}" h.example:1', env)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert config.read_text() == before


def _desktop_exec_args(value: str) -> list[str]:
    """Parses a desktop entry's Exec value (string escapes, then Exec's own quoting)."""
    value = re.sub(r"\\(.)", lambda m: {"s": " ", "n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), value)
    args, current, quoted, i = [], "", False, 0
    while i < len(value):
        ch = value[i]
        if quoted and ch == "\\":
            current += value[i + 1]
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == " " and not quoted:
            args.append(current)
            current = ""
        elif ch == "%":
            current += "%"
            i += 1
        else:
            current += ch
        i += 1
    return [*args, current]


ODD_PATH = 'My Files/50% "sure" $HOME `x` \\back/essaim'


def test_desktop_entry_quotes_odd_paths(kit: ModuleType, tmp_path: Path) -> None:
    essaim = str(tmp_path / ODD_PATH)
    env = kit.installer_env(tmp_path)
    proc = subprocess.run(
        ["bash", "-c", 'ESSAIM_INSTALLER_LIB=1; source "$0"; render_desktop_entry "$(desktop_exec_arg "$1")" 1',
         str(kit.INSTALLERS / "linux/install.sh"), essaim],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    exec_line = next(line for line in proc.stdout.splitlines() if line.startswith("Exec="))
    assert _desktop_exec_args(exec_line.removeprefix("Exec=")) == [essaim]
    validator = shutil.which("desktop-file-validate")
    if validator is None:
        pytest.skip("desktop-file-validate not installed (Debian package desktop-file-utils)")
    entry = tmp_path / "essaim.desktop"
    entry.write_text(proc.stdout)
    check = subprocess.run([validator, str(entry)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


def test_systemd_unit_quotes_odd_paths(kit: ModuleType, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    essaim = tmp_path / "My Files/50% $HOME/essaim"  # systemd runs no program whose path has quotes or backslashes
    essaim.parent.mkdir(parents=True)
    kit.write_tool(essaim.parent, essaim.name, "#!/bin/sh\n")
    env = kit.installer_env(tmp_path)
    proc = subprocess.run(
        ["bash", "-c", 'ESSAIM_INSTALLER_LIB=1; source "$0"; render_unit "$1"',
         str(kit.INSTALLERS / "linux/install.sh"), str(essaim)],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    unit = tmp_path / "essaim.service"
    unit.write_text(proc.stdout)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    check = subprocess.run(
        [analyze, "--user", "verify", str(unit)],
        env={**env, "XDG_RUNTIME_DIR": str(runtime)}, capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_lone_install_script_takes_the_icon_from_the_package(kit: ModuleType, tmp_path: Path) -> None:
    """install.sh downloaded alone (no assets folder beside it) uses the installed package's icon."""
    lone = tmp_path / "download/install.sh"
    lone.parent.mkdir()
    shutil.copy(kit.INSTALLERS / "linux/install.sh", lone)
    home = tmp_path / "home"
    home.mkdir()
    env = {**kit.installer_env(home), "ESSAIM_TEST_PYTHON": str(kit.base_python())}
    # the stubbed environment's python is this suite's, where essaim (with its client assets) is installed
    stubs = kit.STUBS + textwrap.dedent(f"""
        ensure_venv() {{
          ensure_dir "$VENV/bin"
          printf '#!/bin/sh\\nexec {sys.executable} "$@"\\n' >"$VENV/bin/python"
          chmod 755 "$VENV/bin/python"
        }}
    """)
    proc = subprocess.run(
        ["bash", "-c", f'ESSAIM_INSTALLER_LIB=1; source "$0"\n{stubs}\nmain --tray --no-start', str(lone)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    icons = sorted(p.relative_to(home) for p in (home / ".local/share/icons").rglob("*.png"))
    packaged = Path(essaim_client_assets()) / "training.png"
    # the tray's icon ships in the package (client/assets, package data of essaim.client in
    # pyproject.toml); without it a lone install.sh gives the menu entry no icon
    assert packaged.exists(), f"the installed essaim.client carries no {packaged}"
    assert icons == [Path(".local/share/icons/hicolor/64x64/apps/essaim.png")]
    assert (home / icons[0]).read_bytes() == packaged.read_bytes()
    assert not (home / ".local/share/essaim/uninstall.sh").exists()  # nothing beside it to copy
    assert "uninstall.sh from where you got this installer" in proc.stdout


def essaim_client_assets() -> str:
    import importlib.util

    spec = importlib.util.find_spec("essaim.client")
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(next(iter(spec.submodule_search_locations)), "assets")
