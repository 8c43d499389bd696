"""How long the user has left the keyboard and mouse alone, on each desktop.

    source = detect_idle_source()          # picks what works here, once
    source.idle_seconds()                  # 12.5; None where there is no user session (a server)
    source.name                            # "x11", "logind", "macos", "windows" or "none"

- X11: the MIT-SCREEN-SAVER extension (python-xlib), one round trip to the X server per call;
- Linux without X (Wayland, console): logind's IdleHint / IdleSinceHintMonotonic of the user's
  graphical session, through ``loginctl`` (GNOME and KDE set it after their own idle delay);
- macOS: IOKit's HIDIdleTime through ``ioreg``; Windows: ``GetLastInputInfo`` through ctypes.

A source that fails after it worked answers 0 (user active) rather than None, so a broken
display never makes the app think nobody is there. Used by the supervisor every tick.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Protocol

logger = logging.getLogger(__name__)
_TIMEOUT = 2.0


class IdleSource(Protocol):
    name: str

    def idle_seconds(self) -> float | None: ...

    def close(self) -> None: ...


class NoSession:
    """No user session: a headless server. The policy decides whether that counts as idle."""

    name = "none"

    def idle_seconds(self) -> float | None:
        return None

    def close(self) -> None:
        pass


class X11Idle:
    """XScreenSaverQueryInfo on ``display`` (default: $DISPLAY). Reconnects after an error."""

    name = "x11"

    def __init__(self, display: str | None = None) -> None:
        from Xlib import display as xdisplay  # python-xlib: only where X11 is used

        self._open = lambda: xdisplay.Display(display)
        self._display = self._open()
        if not self._display.has_extension("MIT-SCREEN-SAVER"):
            self._display.close()
            raise RuntimeError("the X server has no MIT-SCREEN-SAVER extension")
        self._root = self._display.screen().root
        self._failed_at = 0.0

    def idle_seconds(self) -> float | None:
        try:
            if self._display is None:
                if time.monotonic() - self._failed_at < 5.0:
                    return 0.0
                self._display = self._open()
                self._root = self._display.screen().root
            return self._root.screensaver_query_info().idle / 1000.0
        except Exception as exc:  # a lost X connection raises many Xlib error types
            if self._display is not None:
                logger.warning("cannot read the X11 idle time (%s); treating the user as active", exc)
            self.close()
            self._failed_at = time.monotonic()
            return 0.0

    def close(self) -> None:
        if self._display is not None:
            with contextlib.suppress(Exception):
                self._display.close()
        self._display = None


class LogindIdle:
    """The IdleHint of the user's active graphical logind session, read with ``loginctl``."""

    name = "logind"

    def __init__(self, session: str) -> None:
        self.session = session

    @classmethod
    def find(cls) -> LogindIdle | None:
        if not shutil.which("loginctl"):
            return None
        uid = str(os.getuid())
        try:
            out = _run(["loginctl", "list-sessions", "--no-legend"])
        except (OSError, subprocess.SubprocessError):
            return None
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1] == uid:
                props = _props(fields[0])
                if props.get("Type") in ("x11", "wayland", "mir") and props.get("Remote") != "yes":
                    return cls(fields[0])
        return None

    def idle_seconds(self) -> float | None:
        try:
            props = _props(self.session)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("cannot read logind's idle hint (%s); treating the user as active", exc)
            return 0.0
        if props.get("IdleHint") != "yes":
            return 0.0
        since = int(props.get("IdleSinceHintMonotonic", "0") or 0)
        if since <= 0:
            return 0.0
        return max(time.clock_gettime(time.CLOCK_MONOTONIC) - since / 1e6, 0.0)

    def close(self) -> None:
        pass


class MacIdle:
    name = "macos"
    _pattern = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')

    def idle_seconds(self) -> float | None:
        try:
            out = _run(["ioreg", "-c", "IOHIDSystem", "-d", "4"])
        except (OSError, subprocess.SubprocessError):
            return 0.0
        match = self._pattern.search(out)
        return int(match.group(1)) / 1e9 if match else 0.0

    def close(self) -> None:
        pass


class WindowsIdle:
    name = "windows"

    def idle_seconds(self) -> float | None:
        import ctypes

        class LastInputInfo(ctypes.Structure):
            _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint)]

        info = LastInputInfo()
        info.cbSize = ctypes.sizeof(info)
        user32 = ctypes.windll.user32  # type: ignore[attr-defined]
        if not user32.GetLastInputInfo(ctypes.byref(info)):
            return 0.0
        now = ctypes.windll.kernel32.GetTickCount() & 0xFFFFFFFF  # type: ignore[attr-defined]
        return ((now - info.dwTime) & 0xFFFFFFFF) / 1000.0

    def close(self) -> None:
        pass


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT, check=True).stdout


def _props(session: str) -> dict[str, str]:
    out = _run(
        [
            "loginctl",
            "show-session",
            session,
            "-p",
            "Type",
            "-p",
            "Remote",
            "-p",
            "IdleHint",
            "-p",
            "IdleSinceHintMonotonic",
        ]
    )
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def detect_idle_source(display: str | None = None) -> IdleSource:
    """The best idle source here; :class:`NoSession` when no user session can be found."""
    if sys.platform == "win32":
        return WindowsIdle()
    if sys.platform == "darwin":
        return MacIdle()
    display = display if display is not None else os.environ.get("DISPLAY")
    if display:
        try:
            return X11Idle(display)
        except ImportError:
            logger.warning(
                "python-xlib is not installed, cannot read X11 idle time: pip install 'essaim[tray]'"
            )
        except Exception as exc:
            logger.warning("cannot use the X display %s for idle time (%s)", display, exc)
    logind = LogindIdle.find()
    if logind is not None:
        return logind
    if display or os.environ.get("WAYLAND_DISPLAY"):
        logger.warning(
            "a desktop session is running but its idle time cannot be read; treating the user as active"
        )
        return _AlwaysActive()
    return NoSession()


class _AlwaysActive:
    """A desktop whose idle time cannot be read: never assume the user has gone."""

    name = "unknown"

    def idle_seconds(self) -> float | None:
        return 0.0

    def close(self) -> None:
        pass
