"""The root of the `essaim` command: version, help, optional groups, errors and exit codes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from essaim.main import app, build_app, optional_module
from essaim.protocol.version import PROTOCOL_VERSION, __version__
from typer.testing import CliRunner

ESSAIM = Path(sys.executable).with_name("essaim")


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"essaim {__version__} (protocol {PROTOCOL_VERSION})"


def test_no_arguments_starts_the_tray_or_prints_help(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    client_cli = optional_module("essaim.client.cli")
    if client_cli is None or not hasattr(client_cli, "start_tray"):
        result = runner.invoke(app, [])
        assert result.exit_code == 0
        assert "job" in result.stdout and "coordinator" in result.stdout
        return
    started: list[bool] = []
    monkeypatch.setattr(client_cli, "start_tray", lambda: started.append(True))
    assert runner.invoke(app, []).exit_code == 0
    assert started == [True]


def test_command_tree(runner: CliRunner) -> None:
    jobs = runner.invoke(app, ["job", "--help"])
    for name in ("init", "validate", "submit", "list", "status", "cancel", "approve", "priority", "download"):
        assert name in jobs.stdout
    coordinator = runner.invoke(app, ["coordinator", "--help"])
    for name in ("volunteers", "ban"):
        assert name in coordinator.stdout


def test_usage_error_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["job", "status"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["job", "list", "--status", "sleeping"])
    assert result.exit_code == 2


def test_bad_log_level_is_a_usage_error(runner: CliRunner) -> None:
    assert runner.invoke(app, ["--log-level", "LOUD", "job", "init"]).exit_code == 2
    assert runner.invoke(app, ["--log-level", "debug", "job", "init"]).exit_code == 0


def test_log_level_defaults(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    assert runner.invoke(app, ["job", "init"]).exit_code == 0
    assert root.level == logging.WARNING
    assert runner.invoke(app, ["coordinator", "serve", "--help"]).exit_code == 0
    assert root.level == logging.INFO
    assert runner.invoke(app, ["--log-level", "error", "coordinator", "serve", "--help"]).exit_code == 0
    assert root.level == logging.ERROR
    monkeypatch.setenv("ESSAIM_LOG_LEVEL", "DEBUG")
    assert runner.invoke(app, ["job", "init"]).exit_code == 0
    assert root.level == logging.DEBUG


def test_optional_module_absent_is_none_but_broken_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "essaim_fixture_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "broken.py").write_text("import essaim_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert optional_module("essaim_fixture_pkg.not_written_yet") is None
    assert optional_module("essaim_fixture_pkg_absent.cli") is None
    with pytest.raises(ModuleNotFoundError, match="essaim_no_such_dependency"):
        optional_module("essaim_fixture_pkg.broken")
    build_app()  # the real tree builds with whatever groups exist now


def test_missing_token_exits_4_and_says_how(runner: CliRunner) -> None:
    result = runner.invoke(app, ["job", "list", "--coordinator", "127.0.0.1:9"])
    assert result.exit_code == 4
    assert result.stderr.startswith("error: no token")
    assert "--token" in result.stderr and "ESSAIM_TOKEN" in result.stderr
    assert "Traceback" not in result.output


def test_bad_address_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["job", "list", "--coordinator", "host:notaport", "--token", "t"])
    assert result.exit_code == 2
    assert "bad port" in result.stderr


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_unreachable_coordinator_exits_5_without_traceback(tmp_path: Path) -> None:
    """The real console script: connection refused -> `error: cannot reach ...`, exit 5."""
    env = {
        **os.environ,
        "ESSAIM_CONFIG": str(tmp_path / "none.toml"),
        "ESSAIM_TOKEN": "some-token",
        "ESSAIM_TIMEOUT": "2",
        "ESSAIM_RETRIES": "0",
    }
    env.pop("ESSAIM_COORDINATOR", None)
    port = _unused_port()
    proc = subprocess.run(
        [str(ESSAIM), "job", "status", "abc", "--coordinator", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.startswith("error: cannot reach the coordinator")
    assert f"127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.timeout(60)
def test_python_dash_m_essaim() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "essaim", "--version"], capture_output=True, text=True, timeout=50
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("essaim ")


def test_error_printing_has_no_traceback_and_keeps_problem_lines(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """
            version: 1
            name: ok-name
            model: {name_or_path: gpt2}
            dataset: {files: [a.txt], sequence_lenght: 64}
            """
        )
    )
    result = runner.invoke(app, ["job", "submit", str(bad), "--token", "t", "-c", "127.0.0.1:9"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: ")
    assert any("dataset.sequence_lenght: unknown field" in line for line in lines[1:])
    assert "Traceback" not in result.output
