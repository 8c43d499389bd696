"""Checks of the installer scripts as text: shellcheck, the blocks the shell scripts share (each is a
single file, so some code is repeated and must stay identical), the icons, and what can be checked of
the Windows scripts without PowerShell (PSScriptAnalyzer runs where pwsh is installed), including
that the Windows tray yields by essaim's own idle and battery settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

# --- lint and structure ---------------------------------------------------------------------------


def test_shell_scripts_pass_shellcheck(kit: ModuleType) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (Debian package shellcheck)")
    scripts = sorted(kit.INSTALLERS.glob("*/*.sh"))
    assert len(scripts) == 4
    proc = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shared_blocks_are_identical_in_every_script(kit: ModuleType) -> None:
    block = re.compile(r"^# >>> shared: ([\w-]+).*?^# <<< shared: \1$", re.S | re.M)
    copies: dict[str, dict[str, str]] = {}
    for script in sorted(kit.INSTALLERS.glob("*/*.sh")):
        for match in block.finditer(script.read_text()):
            copies.setdefault(match.group(1), {})[str(script.relative_to(kit.INSTALLERS))] = match.group(0)
    assert set(copies) == {"common", "install-core", "uninstall-core", "linux-paths", "macos-paths"}
    assert len(copies["common"]) == 4
    for name, texts in copies.items():
        assert len(texts) >= 2, f"block {name} appears only in {list(texts)}"
        first = next(iter(texts.values()))
        different = [path for path, text in texts.items() if text != first]
        assert not different, f"block {name} differs in {different}: copy it from {next(iter(texts))}"


def test_assets_are_valid_icons(kit: ModuleType) -> None:
    import xml.etree.ElementTree as ET

    assets = kit.INSTALLERS / "assets"
    svg = ET.parse(assets / "essaim.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and svg.get("viewBox") == "0 0 256 256"
    png = (assets / "essaim.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == int.from_bytes(png[20:24], "big") == 256
    assert (assets / "essaim.ico").read_bytes()[:4] == b"\0\0\1\0"
    assert (assets / "essaim.icns").read_bytes()[:4] == b"icns"


# --- Windows: what can be checked without PowerShell ------------------------------------------------


def _powershell_code(text: str, *, keep_strings: bool = False) -> str:
    """The text with comments and string contents blanked, so that brackets can be counted (with
    ``keep_strings``, only the comments are taken out)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("<#", i):
            i = text.index("#>", i) + 2
        elif text[i] == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith(("@'", '@"'), i) and text[i + 2 : i + 3] in ("\n", "\r"):
            end = re.compile(r"^" + re.escape(text[i + 1]) + "@", re.M).search(text, i + 2)
            assert end, "unterminated here-string"
            out.append(text[i : end.end()] if keep_strings else "''")
            i = end.end()
        elif text[i] == "'":
            j = i + 1
            while True:
                j = text.index("'", j)
                if text[j + 1 : j + 2] == "'":
                    j += 2
                    continue
                break
            out.append(text[i : j + 1] if keep_strings else "''")
            i = j + 1
        elif text[i] == '"':
            j = i + 1
            while text[j] != '"' or text[j - 1] == "`":
                j += 1
            out.append(text[i : j + 1] if keep_strings else '""')
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("name", ["install.ps1", "uninstall.ps1", "essaim-tray.ps1"])
def test_powershell_scripts_have_balanced_brackets(kit: ModuleType, name: str) -> None:
    code = _powershell_code((kit.INSTALLERS / "windows" / name).read_text())
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for line_no, line in enumerate(code.splitlines(), 1):
        for ch in line:
            if ch in "([{":
                stack.append((ch, line_no))
            elif ch in pairs:
                assert stack and stack[-1][0] == pairs[ch], f"{name}:{line_no}: unmatched {ch}"
                stack.pop()
    assert not stack, f"{name}: unclosed {stack[-1]}"
    assert "Set-StrictMode" in code


def test_windows_installer_passes_only_options_the_linux_installer_knows(kit: ModuleType, tmp_path: Path) -> None:
    text = (kit.INSTALLERS / "windows/install.ps1").read_text()
    passed = set(re.findall(r"'(--[a-z][a-z-]+)'", text)) - {"--install", "--distribution", "--no-distribution",
                                                             "--list", "--quiet", "--exec", "--cd", "--status",
                                                             "--version"}
    assert {"--no-autostart", "--no-menu", "--no-start", "--wheel", "--coordinator", "--torch-spec", "--pip-args"} <= passed
    help_text = kit.run_script(kit.INSTALLERS / "linux/install.sh", "--help", env=kit.installer_env(tmp_path)).stdout
    unknown = sorted(option for option in passed if option not in help_text)
    assert not unknown, f"install.ps1 passes {unknown}, which linux/install.sh does not take"


def test_powershell_script_analyzer(kit: ModuleType) -> None:
    pwsh = shutil.which("pwsh")
    if pwsh is None:
        pytest.skip("PowerShell is not installed (no Debian, PyPI or npm package provides it): PSScriptAnalyzer not run")
    command = (
        "if (-not (Get-Module -ListAvailable PSScriptAnalyzer)) { exit 3 }; "
        f"$r = Invoke-ScriptAnalyzer -Path '{kit.INSTALLERS / 'windows'}' -Severity Warning,Error; $r | Format-List; "
        "exit $r.Count"
    )
    proc = subprocess.run([pwsh, "-NoProfile", "-Command", command], capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip("the PSScriptAnalyzer module is not installed")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- Windows tray: it yields by essaim's own settings ----------------------------------------------

TRAY_POLICY = {
    "policy.idle_minutes": "IdleSeconds",
    "policy.only_when_idle": "OnlyWhenIdle",
    "policy.train_on_battery": "TrainOnBattery",
    "policy.battery_min_percent": "BatteryMinPercent",
}
"""The settings the Windows tray applies in essaim's place (inside WSL essaim sees neither Windows'
input nor its battery), and the field of $script:Policy each becomes."""


def _tray_code(kit: ModuleType) -> str:
    return _powershell_code((kit.INSTALLERS / "windows/essaim-tray.ps1").read_text(), keep_strings=True)


def _function(code: str, name: str) -> str:
    """The body of PowerShell function ``name`` (its braces counted)."""
    match = re.search(r"^function " + re.escape(name) + r"\b[^{]*\{", code, re.M)
    assert match, f"essaim-tray.ps1 has no function {name}"
    depth, i = 1, match.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        i += 1
    return code[match.end() : i - 1]


def test_windows_tray_applies_essaims_idle_and_battery_settings(kit: ModuleType) -> None:
    from essaim.client.settings import SETTINGS

    code = _tray_code(kit)
    assert "idleMinutes" not in code and "Get-Setting 'idle" not in code, (
        "the tray has idle minutes of its own"
    )
    read = _function(code, "Read-Policy")
    assert "Invoke-Essaim @('config', 'show')" in read
    for key, field in TRAY_POLICY.items():
        assert key in SETTINGS
        assert re.search(rf"{field}\s*=.*\$values\['{re.escape(key)}'\]", read), (
            f"Read-Policy does not read {key}"
        )
    update = _function(code, "Update-Policy")
    assert "Read-Policy" in update and "Get-BatteryReason" in update
    assert "[EssaimUserIdle]::Seconds() -lt $script:Policy.IdleSeconds" in update
    assert "$script:Policy.OnlyWhenIdle" in update and "$onlyWhenIdle.Checked" not in update, (
        "the tray's 'Only when idle' is essaim's policy.only_when_idle, not a setting of its own"
    )
    assert "'config', 'set', 'policy.only_when_idle'" in code
    battery = _function(code, "Get-BatteryReason")
    assert "$script:Policy.TrainOnBattery" in battery and "-lt $script:Policy.BatteryMinPercent" in battery
    assert code.count("PowerLineStatus") == battery.count("PowerLineStatus"), (
        "a battery rule outside Get-BatteryReason"
    )
    assert "PowerLineStatus -eq" not in battery, (
        "only a known unplugged state is battery (Offline, not Unknown)"
    )


def test_windows_tray_reads_what_essaim_config_show_prints(kit: ModuleType, tmp_path: Path) -> None:
    """The tray's pattern for a line of `essaim config show`, on what this version of essaim prints."""
    pattern = re.search(r"^\$PolicyLine = '([^']+)'", _tray_code(kit), re.M)
    assert pattern, "essaim-tray.ps1 no longer sets $PolicyLine"
    config = tmp_path / "config.toml"
    config.write_text("[policy]\nidle_minutes = 7.5\nonly_when_idle = false\ntrain_on_battery = true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESSAIM_")}
    env.update(
        ESSAIM_CONFIG=str(config),
        ESSAIM_DATA_DIR=str(tmp_path / "data"),
        ESSAIM_RUNTIME_DIR=str(tmp_path / "run"),
        ESSAIM_POLICY_BATTERY_MIN_PERCENT="35",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "essaim.client.cli", "config", "show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    values = dict(
        m.groups() for line in (proc.stdout + proc.stderr).splitlines() if (m := re.match(pattern[1], line))
    )
    assert {key: values.get(key) for key in TRAY_POLICY} == {
        "policy.idle_minutes": "7.5",
        "policy.only_when_idle": "false",
        "policy.train_on_battery": "true",
        "policy.battery_min_percent": "35",
    }
