"""Checks of the installer scripts as text: shellcheck, the blocks the shell scripts share (each is a
single file, so some code is repeated and must stay identical), the icons, and what can be checked of
the Windows scripts without PowerShell (PSScriptAnalyzer runs where pwsh is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
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


def _powershell_code(text: str) -> str:
    """The text with comments and string contents blanked, so that brackets can be counted."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("<#", i):
            i = text.index("#>", i) + 2
        elif text[i] == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith(("@'", '@"'), i) and text[i + 2 : i + 3] in ("\n", "\r"):
            end = re.compile(r"^" + re.escape(text[i + 1]) + "@", re.M).search(text, i + 2)
            assert end, "unterminated here-string"
            out.append("''")
            i = end.end()
        elif text[i] == "'":
            j = i + 1
            while True:
                j = text.index("'", j)
                if text[j + 1 : j + 2] == "'":
                    j += 2
                    continue
                break
            out.append("''")
            i = j + 1
        elif text[i] == '"':
            j = i + 1
            while text[j] != '"' or text[j - 1] == "`":
                j += 1
            out.append('""')
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
