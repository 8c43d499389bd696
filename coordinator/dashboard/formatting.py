"""How the dashboard shows numbers, times, hardware and names to people.

Pure functions, used as Jinja filters by :mod:`.pages` and by :mod:`.queries` for the few
display strings the JSON API also carries (a volunteer's display name, a hardware summary, how it
takes part in a job's swarm).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import cache
from typing import Any

from essaim.protocol.types import Hardware
from markupsafe import Markup

GIB = 1024**3


def display_name(name: str, volunteer_id: str) -> str:
    """A volunteer's pseudonym, or a stable stand-in when it registered without one."""
    return name.strip() or f"volunteer-{volunteer_id[:8]}"


def hardware_summary(hw: Hardware) -> str:
    """One line such as ``CUDA · NVIDIA A100 (80 GB) · 32 cores · 256 GB RAM``."""
    parts: list[str] = []
    if hw.has_gpu:
        gpu = hw.gpu_name or "GPU"
        if hw.gpu_count > 1:
            gpu = f"{hw.gpu_count} x {gpu}"
        if hw.gpu_vram_bytes:
            gpu += f" ({hw.gpu_vram_bytes / GIB:.0f} GB)"
        parts += [hw.accelerator.upper(), gpu]
    else:
        parts.append("CPU")
    if hw.cpu_cores:
        parts.append(f"{hw.cpu_cores} cores")
    if hw.ram_bytes:
        parts.append(f"{hw.ram_bytes / GIB:.0f} GB RAM")
    if hw.os:
        parts.append(f"{hw.os}/{hw.arch}" if hw.arch else hw.os)
    return " · ".join(parts)


def number(value: float | int | None, digits: int = 0) -> str:
    """``12,345`` / ``3.14``; an em dash for nothing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:,.{digits}f}"


def compact(value: float | int | None) -> str:
    """``1.2k``, ``3.4M``: short numbers for tiles."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    v = float(value)
    for bound, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= bound:
            scaled = v / bound
            return f"{scaled:.0f}{suffix}" if abs(scaled) >= 100 else f"{scaled:.1f}{suffix}"
    return f"{v:.0f}" if v == int(v) else f"{v:.2f}"


def rate(value: float | None) -> str:
    """Samples per second, with precision that fits the size."""
    if not value or not math.isfinite(value) or value <= 0:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def metric(value: float | None) -> str:
    """A loss or eval value: four significant digits."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.4g}"


def duration(seconds: float | None) -> str:
    """``2 d 3 h``, ``4 h 12 min``, ``35 s``; an em dash for unknown or zero."""
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return "—"
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f} s"
    s = round(seconds)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def hours(seconds: float | None) -> str:
    """Compute time as hours with one decimal (the leaderboard's unit)."""
    if not seconds:
        return "0.0"
    return f"{seconds / 3600:,.1f}" if seconds >= 360 else f"{seconds / 3600:,.2f}"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def iso(ts: float | None) -> str:
    """Unix seconds as ISO 8601 UTC, for ``<time datetime=...>``; empty for 0."""
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def when(ts: float | None) -> str:
    """Unix seconds as ``2025-01-31 14:05 UTC``; an em dash for 0."""
    if not ts:
        return "—"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def short_hash(value: str, n: int = 12) -> str:
    return value[:n] if value else ""


REACHABILITY_TEXT = {"public": "public", "upnp": "public (router port mapping)",
                     "nat": "NAT-ed (via the coordinator's peer)"}


def reachability_text(reachability: str) -> str:
    """``public`` (a full peer), ``public (router port mapping)`` (a full peer through a port its
    router mapped: UPnP, NAT-PMP), ``NAT-ed (via the coordinator's peer)`` or ``unknown``."""
    return REACHABILITY_TEXT.get(reachability, "unknown")


def last_round_text(epoch: int | None, averaged: bool) -> str:
    """``averaged in epoch 4``, ``not in the last round (epoch 4)``, or ``no round yet``."""
    if epoch is None:
        return "no round yet"
    return f"averaged in epoch {epoch}" if averaged else f"not in the last round (epoch {epoch})"


def label(value: str) -> str:
    """``awaiting_approval`` -> ``awaiting approval``."""
    return value.replace("_", " ")


@cache
def _markdown_parser() -> Any:
    from markdown_it import MarkdownIt  # only the pages that show a document need it

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"])

    def link_open(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return str(renderer.renderToken(tokens, idx, options, env))

    md.add_render_rule("link_open", link_open)
    return md


def markdown(text: str | None) -> Markup:
    """A Markdown document (a model card: its recipe's words are a researcher's, its pseudonyms
    volunteers') as HTML a page can show: raw HTML in it is shown as text, not parsed; links and
    images only with a safe scheme (markdown-it's own check: no ``javascript:``, ``vbscript:``,
    ``file:``, nor ``data:`` but for images); links ``rel="nofollow noopener noreferrer"``; a
    table column's alignment as a class (``align-right``), not an inline style the pages'
    Content-Security-Policy refuses."""
    md = _markdown_parser()
    tokens = md.parse(text or "")
    for token in tokens:
        if token.type in ("th_open", "td_open") and token.attrGet("style"):
            align = str(token.attrGet("style")).removeprefix("text-align:").strip()
            token.attrs.pop("style", None)
            if align in ("left", "center", "right"):
                token.attrSet("class", f"align-{align}")
    return Markup(md.renderer.render(tokens, md.options, {}))


FILTERS = {
    "number": number,
    "compact": compact,
    "rate": rate,
    "metric": metric,
    "duration": duration,
    "hours": hours,
    "size": size,
    "iso": iso,
    "when": when,
    "short_hash": short_hash,
    "label": label,
    "markdown": markdown,
}
