"""Output helpers and the admin commands' tables and JSON."""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from essaim.main import app
from essaim.output import ago, duration, hardware_summary, human_bytes, number, to_jsonable
from essaim.protocol.types import Hardware
from typer.testing import CliRunner

AUTH = ["--token", "t", "--coordinator", "127.0.0.1:9"]


class Color(enum.StrEnum):
    RED = "red"


@dataclass(slots=True)
class Inner:
    key: bytes = b"\x00\xff"
    color: Color = Color.RED


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    items: tuple[Inner, ...] = (Inner(),)
    where: Path = Path("/tmp/x")
    ratio: float = math.nan
    mapping: dict[str, Color] = field(default_factory=lambda: {"a": Color.RED})


def test_to_jsonable() -> None:
    data = to_jsonable(Outer())
    assert data == {
        "inner": {"key": "00ff", "color": "red"},
        "items": [{"key": "00ff", "color": "red"}],
        "where": "/tmp/x",
        "ratio": None,
        "mapping": {"a": "red"},
    }
    json.dumps(data, allow_nan=False)


def test_formatting() -> None:
    assert duration(0) == "-"
    assert duration(45) == "45s"
    assert duration(190) == "3m 10s"
    assert duration(3720) == "1h 02m"
    assert duration(2 * 86400 + 4 * 3600) == "2d 04h"
    assert ago(0) == "never"
    assert ago(100.0, now=112.0) == "12s ago"
    assert human_bytes(512) == "512 B"
    assert human_bytes(16 * 2**30) == "16.0 GiB"
    assert number(0) == "-" and number(12.5) == "12.5" and number(12345.0) == "12,345"
    cpu = Hardware(os="linux", cpu_cores=8, ram_bytes=16 * 2**30)
    assert hardware_summary(cpu) == "8 cores, 16.0 GiB, cpu only"
    gpu = Hardware(cpu_cores=4, accelerator="cuda", gpu_name="RTX 3090", gpu_vram_bytes=24 * 2**30, gpu_count=1)
    assert hardware_summary(gpu) == "4 cores, cuda RTX 3090 24.0 GiB"
    assert hardware_summary(Hardware()) == "-"


def test_volunteers_table_and_json(runner: CliRunner, fake_client, volunteer_factory) -> None:
    result = runner.invoke(app, ["coordinator", "volunteers", *AUTH])
    assert result.exit_code == 0, result.output
    for text in ("busy-bee", "vol-1", "online", "training", "8 cores", "12.5", "0.1.0"):
        assert text in result.stdout
    assert "1 volunteer, 1 online" in result.stderr

    shown = runner.invoke(app, ["coordinator", "volunteers", "--online", "--json", *AUTH])
    body = json.loads(shown.stdout)
    assert body[0]["id"] == "vol-1"
    assert body[0]["status"] == "online"
    assert body[0]["public_key"] == "0102ff"
    assert body[0]["hardware"]["cpu_cores"] == 8
    _, _, kwargs = fake_client.instances[-1].calls[-1]
    assert kwargs["online_only"] is True


def test_volunteer_names_are_not_markup(runner: CliRunner, fake_client, volunteer_factory) -> None:
    original_init = fake_client.__init__

    def init(self, *a, **kw):  # type: ignore[no-untyped-def]
        original_init(self, *a, **kw)
        self.volunteers = [volunteer_factory(name="[red]evil[/red] :b:", reason="[bold]x")]

    fake_client.__init__ = init
    try:
        result = runner.invoke(app, ["coordinator", "volunteers", *AUTH])
    finally:
        fake_client.__init__ = original_init
    assert "[red]evil[/red] :b:" in result.stdout


def test_ban(runner: CliRunner, fake_client) -> None:
    result = runner.invoke(app, ["coordinator", "ban", "vol-1", "--reason", "spam", *AUTH])
    assert result.exit_code == 0
    assert result.stdout.strip() == "vol-1"
    assert "banned volunteer busy-bee" in result.stderr
    assert fake_client.instances[-1].calls[-1] == ("ban_volunteer", ("vol-1", "spam"), {})
    undone = runner.invoke(app, ["coordinator", "ban", "vol-1", "--undo", *AUTH])
    assert undone.exit_code == 0 and fake_client.instances[-1].calls[-1] == ("ban_volunteer", ("vol-1", ""), {"undo": True})
    shown = runner.invoke(app, ["coordinator", "ban", "vol-1", "--json", *AUTH])
    assert json.loads(shown.stdout)["status"] == "banned"
