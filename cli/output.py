"""How the ``essaim`` command line talks to people and to scripts.

Human output goes through rich (tables, progress bars) by default; ``--json`` prints stable JSON
(dataclasses become objects, enums their values, bytes hex) for scripts. Errors are printed the
same way by every command: ``error: <message>`` on stderr, never a traceback. Used by every
command module of the CLI (:mod:`essaim.job`, :mod:`essaim.admin`, :mod:`essaim.main`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from essaim.protocol.types import Hardware
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

console = Console(highlight=False, emoji=False)
"""Standard output: tables, results, JSON."""

err_console = Console(stderr=True, highlight=False, emoji=False)
"""Standard error: errors, notices and progress bars, so stdout stays clean for scripts."""

PIPE_WIDTH = 400
"""Width tables may take when stdout is not a terminal (no truncated cells in pipes and logs)."""


# ---- JSON -------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses -> dicts (field order), enums -> their values,
    bytes -> hex, paths -> strings, non-finite floats -> null."""
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def print_json(value: Any, *, indent: int | None = 2) -> None:
    """Print ``value`` as JSON on stdout, unstyled and unwrapped."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=indent, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# ---- messages ---------------------------------------------------------------------------------


def print_error(error: BaseException | str) -> None:
    """``error: <message>`` on stderr; multi-line messages (a recipe's problems) keep their lines."""
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)


def notice(message: str) -> None:
    """A human remark on stderr (what was done, what to do next); never parsed by scripts."""
    err_console.print(message, soft_wrap=True)


def plain(line: str) -> None:
    """One unstyled line on stdout (an id a script captures)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def table(*columns: str, title: str | None = None) -> Table:
    """A table in the CLI's house style; columns whose name ends with ``ID`` never truncate."""
    out = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for name in columns:
        out.add_column(name, overflow="fold" if name.endswith("ID") else "ellipsis")
    return out


def print_table(rows: Table) -> None:
    """Print a table on stdout; ids keep their full width so they can be copied, other columns shrink
    to fit a terminal. Piped into another program, the table keeps every cell whole."""
    for column in rows.columns:
        if str(column.header).endswith("ID"):
            column.min_width = max((len(str(cell)) for cell in column.cells), default=0) or None
    if console.is_terminal:
        console.print(rows)
    else:
        Console(file=sys.stdout, width=max(console.width, PIPE_WIDTH), highlight=False, emoji=False).print(rows)


# ---- formatting -------------------------------------------------------------------------------


def ago(timestamp: float, *, now: float | None = None) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``; ``never`` for 0."""
    if not timestamp:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    return f"{duration(seconds, zero='0s')} ago"


def duration(seconds: float, *, zero: str = "-") -> str:
    """A short human duration: ``45s``, ``3m 10s``, ``1h 02m``, ``2d 04h``."""
    if not math.isfinite(seconds) or seconds <= 0:
        return zero
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def human_bytes(size: float) -> str:
    """``512 B``, ``1.5 KiB``, ``16.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def number(value: float, *, digits: int = 3) -> str:
    """A metric for a table cell: ``-`` when unset (0 or not finite)."""
    if not value or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def hardware_summary(hw: Hardware) -> str:
    """``8 cores, 16.0 GiB, cuda RTX 3090 24.0 GiB`` (only what is known)."""
    parts = []
    if hw.cpu_cores:
        parts.append(f"{hw.cpu_cores} cores")
    if hw.ram_bytes:
        parts.append(human_bytes(hw.ram_bytes))
    if hw.has_gpu:
        gpu = f"{hw.gpu_count}x " if hw.gpu_count > 1 else ""
        gpu += " ".join(p for p in (hw.accelerator, hw.gpu_name) if p)
        if hw.gpu_vram_bytes:
            gpu += f" {human_bytes(hw.gpu_vram_bytes)}"
        parts.append(gpu)
    elif hw.os or hw.arch:
        parts.append("cpu only")
    return ", ".join(parts) or "-"


# ---- progress ---------------------------------------------------------------------------------

TransferCallback = Callable[..., None]


class _Transfers:
    """Turns a client's progress callbacks into rich progress bars, one per file.

    The client calls ``progress(label, done_bytes, total_bytes)``; ``(done, total)`` works too.
    """

    def __init__(self, progress: Progress, default_name: str) -> None:
        self._progress = progress
        self._default = default_name
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, *args: Any) -> None:
        name = self._default
        numbers = list(args)
        if numbers and isinstance(numbers[0], str | Path):
            name = str(numbers.pop(0)) or self._default
        done = int(numbers[0]) if numbers else 0
        total = int(numbers[1]) if len(numbers) > 1 and numbers[1] is not None else None
        task = self._tasks.get(name)
        if task is None:
            task = self._tasks[name] = self._progress.add_task(escape(name), total=total)
        self._progress.update(task, completed=done, total=total)


@contextmanager
def transfer_progress(description: str) -> Iterator[TransferCallback]:
    """A progress callback for uploads and downloads, drawn on stderr while the block runs.

    Where stderr is not a terminal nothing is drawn (scripts and logs stay clean).
    """
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    with progress:
        yield _Transfers(progress, description)
