"""The tray icon (pystray + Pillow): the state at a glance, and every control one click away.

    Tray(supervisor, paths=paths, stop=stop).run()      # main thread; the supervisor runs on another

The icon shows the state (training, waiting, paused, error; :mod:`essaim.client.icons`) and its
tooltip the reason. Menu: Pause / Resume (the default action: a left click where the desktop has
no menus, as on plain X11 trays), Pause for 1 hour, Finish and stop, Intensity, Only when idle, My
contribution, Settings (a control for every rule, and the settings file), Open dashboard, Open
logs, Quit. Every action goes through :meth:`Supervisor.command`, as ``essaim pause`` does, and
settings are written to the config file, so they persist.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pystray
from essaim.client.config import Paths
from essaim.client.icons import icon_image, state_of
from essaim.client.supervisor import Supervisor
from essaim.client.worker import round_note

logger = logging.getLogger(__name__)
Item = pystray.MenuItem
SEP = pystray.Menu.SEPARATOR
EXIT_GRACE = 3.0
COUNTER_REFRESH_SECONDS = 5.0
"""A status that differs from the one shown only in its figures (the idle time counting up) is shown
at most this often: refreshed every second, the tooltip took the tray app from 0.23 to 0.42 % of a core."""
_NO_DIGITS = str.maketrans("", "", "0123456789")
SCHEDULES = {
    "Any time": dict.fromkeys(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), "all"),
    "Nights and weekends": {
        **dict.fromkeys(("mon", "tue", "wed", "thu", "fri"), "18:00-08:00"),
        "sat": "all",
        "sun": "all",
    },
    "Nights only (22:00-07:00)": dict.fromkeys(
        ("mon", "tue", "wed", "thu", "fri", "sat", "sun"), "22:00-07:00"
    ),
}
CHOICES: list[tuple[str, str, list[tuple[str, Any]]]] = [
    ("Start after idle for", "policy.idle_minutes", [(f"{m} min", float(m)) for m in (1, 3, 5, 10, 30)]),
    ("CPU cores", "policy.cpu_max_cores", [("All", 0), ("1", 1), ("2", 2), ("4", 4), ("8", 8)]),
    ("CPU time", "policy.cpu_max_percent", [(f"{p}%", p) for p in (25, 50, 75, 100)]),
    (
        "Pause when other programs use",
        "policy.other_cpu_pause_percent",
        [("Never", 0), *((f"> {p}% CPU", p) for p in (25, 50, 75))],
    ),
    (
        "Pause above CPU temperature",
        "policy.cpu_temp_high_c",
        [("Never", 0.0), *((f"{t} °C", float(t)) for t in (70, 80, 85, 95))],
    ),
    (
        "Keep free memory",
        "policy.min_free_ram_mb",
        [("No minimum", 0), ("512 MB", 512), ("1 GB", 1024), ("2 GB", 2048), ("4 GB", 4096)],
    ),
    ("GPU memory", "policy.gpu_max_vram_mb", [("No cap", 0), ("2 GB", 2048), ("4 GB", 4096), ("8 GB", 8192)]),
    ("Trainer RAM", "policy.max_ram_mb", [("No cap", 0), ("2 GB", 2048), ("4 GB", 4096), ("8 GB", 8192)]),
    ("Battery", "policy.battery_min_percent", [(f"Only above {p}%", p) for p in (20, 50, 80)]),
    (
        "Daily network limit",
        "limits.daily_mb",
        [("None", 0), ("500 MB", 500), ("1 GB", 1024), ("5 GB", 5120)],
    ),
    (
        "Upload speed",
        "limits.upload_kbps",
        [("No cap", 0), ("100 KB/s", 100), ("500 KB/s", 500), ("2 MB/s", 2048)],
    ),
    (
        "Download speed",
        "limits.download_kbps",
        [("No cap", 0), ("500 KB/s", 500), ("2 MB/s", 2048), ("10 MB/s", 10240)],
    ),
]
TOGGLES = [
    ("Train on battery", "policy.train_on_battery"),
    ("Use the GPU", "policy.use_gpu"),
    ("Pause while another program uses the GPU", "policy.pause_on_other_gpu"),
    ("On a machine without a user session, count it as idle", "policy.headless_counts_as_idle"),
]


def open_path(target: str | Path) -> None:
    """Open a URL, a folder or a file with the desktop's default application."""
    text = str(target)
    if text.startswith(("http://", "https://")):
        webbrowser.open(text)
    elif sys.platform == "win32":
        os.startfile(text)  # type: ignore[attr-defined]
    else:
        opener = "open" if sys.platform == "darwin" else "xdg-open"
        try:
            subprocess.Popen([opener, text], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            logger.warning("cannot open %s with %s: %s", text, opener, exc)


def _fix_xorg_backend(icon: pystray.Icon) -> None:
    """Two fixes to pystray's plain-X11 backend (used where there is no AppIndicator), on its private
    attributes, doing nothing on other backends or another pystray layout:

    - it never asks for button presses, so a click does nothing (pystray issue #151): select them, so a
      left click runs the default item (Pause/Resume);
    - it asks the tray host to dock the icon again on every new image, and a host such as trayer can
      drop an icon docked twice: dock only while it is not docked.
    """
    window, display = getattr(icon, "_window", None), getattr(icon, "_display", None)
    dock = getattr(icon, "_dock_window", None)
    if type(icon).__module__ != "pystray._xorg" or window is None or display is None or dock is None:
        return
    try:
        from Xlib import X

        window.change_attributes(event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask)
        display.flush()
    except Exception as exc:
        logger.debug("cannot enable clicks on the X11 tray icon: %s", exc)

    def dock_once() -> None:
        if getattr(icon, "_systray_manager", None) is None:  # reset by pystray when the tray host goes
            dock()

    icon._dock_window = dock_once


class _XorgWaker:
    """Wakes pystray's X11 loop from a connection of its own.

    pystray runs an update asked from another thread by sending itself an X message, but python-xlib
    leaves that message in its buffer while the loop's thread sleeps reading the socket, so the update
    (and the thread asking for it) waits for the next X event, which may never come. Any event sent
    to the icon's window from a second connection wakes the loop, which then sends what it holds.
    """

    def __init__(self, window_id: int) -> None:
        from Xlib import display

        self._display = display.Display()
        self._window = self._display.create_resource_object("window", window_id)
        self._atom = self._display.intern_atom("_ESSAIM_WAKE")
        self._lock = threading.Lock()

    @classmethod
    def for_icon(cls, icon: pystray.Icon) -> _XorgWaker | None:
        window = getattr(icon, "_window", None)
        if type(icon).__module__ != "pystray._xorg" or window is None:
            return None
        try:
            return cls(window.id)
        except Exception as exc:
            logger.debug("no X11 waker: %s", exc)
            return None

    def wake(self) -> None:
        from Xlib import X
        from Xlib.protocol import event

        message = event.ClientMessage(window=self._window, client_type=self._atom, data=(32, [0, 0, 0, 0, 0]))
        try:
            with self._lock:
                self._window.send_event(message, event_mask=X.NoEventMask)
                self._display.flush()
        except Exception as exc:  # the icon's window is gone: nothing left to wake
            logger.debug("tray wake failed: %s", exc)


def _digitless(text: str) -> str:
    return text.translate(_NO_DIGITS)


class Tray:
    def __init__(
        self,
        supervisor: Supervisor,
        *,
        paths: Paths,
        stop: threading.Event,
        opener: Callable[[str | Path], None] = open_path,
        force_exit: bool = False,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.force_exit = force_exit
        self.on_exit = on_exit
        self._running = False
        self.paths = paths
        self.stop = stop
        self.opener = opener
        self._shown, self._shown_at = "", 0.0
        self._thread: threading.Thread | None = None
        self._latest: dict[str, Any] = {}
        self._dirty = threading.Event()
        self._ready = threading.Event()  # set once the icon is shown: pystray drops earlier updates
        self._actions: queue.Queue[dict[str, Any]] = queue.Queue()
        self.icon = pystray.Icon("essaim", icon_image("waiting"), "essaim: starting", menu=self._menu())
        _fix_xorg_backend(self.icon)  # before its loop runs: X calls from other threads can hang it
        self._waker = _XorgWaker.for_icon(self.icon)
        supervisor.add_listener(self._on_status)
        # pystray's loop and the supervisor's never wait on each other: the icon is refreshed and the
        # menu's actions are run on threads of their own
        threading.Thread(target=self._refresh_loop, name="tray-refresh", daemon=True).start()
        threading.Thread(target=self._action_loop, name="tray-actions", daemon=True).start()

    # ---- life ----

    def run(self) -> None:
        """Show the icon and run the supervisor until Quit (or SIGTERM/SIGINT)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.quit())
        self._thread = threading.Thread(target=self.supervisor.run, args=(self.stop,), name="supervisor")
        self._thread.start()
        self._running = True
        try:
            self.icon.run(setup=self._setup)
        finally:
            self._running = False
            self.stop.set()
            self.supervisor.wake()
            self._thread.join(60)

    def _setup(self, icon: pystray.Icon) -> None:
        icon.visible = True
        self._ready.set()
        self._dirty.set()

    def quit(self, *_: Any) -> None:
        """Stop the app: the supervisor (it stops the trainer), then the icon. Safe from a signal handler."""
        if self.stop.is_set():
            return
        self.stop.set()
        self.supervisor.wake()
        threading.Thread(target=self._stop_icon, name="tray-stop", daemon=True).start()

    def _stop_icon(self) -> None:
        if self._thread is not None:
            self._thread.join(60)  # the trainer is stopped and the counters saved first
        self._call(self.icon.stop)
        time.sleep(EXIT_GRACE)
        if self.force_exit and self._running:
            # pystray's X11 loop can miss its stop message when a signal lands while it reads from
            # the X server; everything is already stopped and saved, so leave without it
            logger.warning("the tray loop did not stop within %.0fs; exiting", EXIT_GRACE)
            if self.on_exit is not None:
                self.on_exit()
            os._exit(0)

    def _on_status(self, status: dict[str, Any]) -> None:
        """Supervisor thread: note the status; the refresh thread shows it."""
        self._latest = status
        self._dirty.set()

    def _refresh_loop(self) -> None:
        while not self._ready.wait(1.0):
            if self.stop.is_set():
                return
        while not self.stop.is_set():
            if self._dirty.wait(1.0):
                self._dirty.clear()
                try:
                    self._show(self._latest)
                except Exception:
                    logger.debug("tray refresh failed", exc_info=True)

    def _action_loop(self) -> None:
        while not self.stop.is_set():
            try:
                request = self._actions.get(timeout=1.0)
            except queue.Empty:
                continue
            reply = self.supervisor.command(request, timeout=30)
            if not reply.get("ok"):
                logger.warning("tray action %s failed: %s", request.get("cmd"), reply.get("error"))

    def _show(self, status: dict[str, Any]) -> None:
        state = state_of(status.get("state", ""))
        key = f"{state}|{status.get('reason')}|{round_note(status)}"
        if key == self._shown:
            return
        now = time.monotonic()
        if _digitless(key) == _digitless(self._shown) and now - self._shown_at < COUNTER_REFRESH_SECONDS:
            return  # only a counter moved ("idle 0:41 of 3:00"): the supervisor's next status retries
        note = round_note(status)
        title = f"essaim: {status.get('reason', state)}"[: 126 - len(note)] + (f"\n{note}" if note else "")
        if state != self._shown.split("|", 1)[0]:
            image = icon_image(state)
            self._call(lambda: setattr(self.icon, "icon", image))
        self._call(lambda: setattr(self.icon, "title", title))
        self._shown, self._shown_at = key, now
        if not getattr(self.icon, "HAS_MENU", True):  # plain X11 shows no menu: no call, no wake-up
            return
        try:
            self._call(self.icon.update_menu)
        except Exception:  # not every backend can update a menu before it is shown
            logger.debug("menu update failed", exc_info=True)

    def _call(self, fn: Callable[[], Any], timeout: float = 5.0) -> None:
        """Run ``fn`` (a pystray call from outside its loop), waking the X11 loop until it is done."""
        if self._waker is None:
            fn()
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            except Exception as exc:  # the X server went away, or the icon was stopped meanwhile
                logger.debug("tray update failed: %s", exc)
            finally:
                done.set()

        threading.Thread(target=run, name="tray-call", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            if time.monotonic() > deadline:
                logger.warning("the tray icon did not take an update within %.0fs", timeout)
                return
            self._waker.wake()
        self._waker.wake()  # the loop may still hold the update's own requests (a new title): send them

    # ---- state for the menu ----

    def _status(self) -> dict[str, Any]:
        return self.supervisor.status()

    def _paused(self) -> bool:
        return self._status().get("manual") in ("paused", "finish")

    def _setting(self, key: str) -> Any:
        return self.supervisor.settings[key]

    def do(self, request: dict[str, Any]) -> None:
        """Queue a command for the supervisor (in order; the menu never waits for it)."""
        self._actions.put(request)

    def set(self, key: str, value: Any) -> None:
        self.do({"cmd": "config_set", "key": key, "value": value})

    def dashboard_url(self) -> str:
        url = self._setting("volunteer.dashboard_url")
        if url:
            return url
        from essaim.protocol.tls import resolve

        try:
            endpoint = resolve(self._setting("coordinator.address") or "127.0.0.1:50051")
        except Exception:  # a malformed address: the status line says so; the dashboard guess is moot
            return "http://127.0.0.1:8080"
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        return f"{'https' if endpoint.tls else 'http'}://{host}:8080"

    # ---- the menu ----

    def _menu(self) -> pystray.Menu:
        return pystray.Menu(
            Item(lambda _: self._status().get("reason", "starting"), None, enabled=False),
            SEP,
            Item(
                "Pause",
                lambda: self.do({"cmd": "pause"}),
                default=lambda _: not self._paused(),
                visible=lambda _: not self._paused(),
            ),
            Item(
                "Resume",
                lambda: self.do({"cmd": "resume"}),
                default=lambda _: self._paused(),
                visible=lambda _: self._paused(),
            ),
            Item("Pause for 1 hour", lambda: self.do({"cmd": "pause", "seconds": 3600})),
            Item("Finish and stop", lambda: self.do({"cmd": "finish"})),
            SEP,
            Item(
                "Intensity",
                pystray.Menu(
                    *(
                        self._radio(name.capitalize(), "policy.intensity", name)
                        for name in ("light", "medium", "full")
                    )
                ),
            ),
            Item(
                "Only when idle",
                lambda: self.set("policy.only_when_idle", not self._setting("policy.only_when_idle")),
                checked=lambda _: bool(self._setting("policy.only_when_idle")),
            ),
            Item("My contribution", pystray.Menu(lambda: self._contribution_items())),
            Item("Settings", self._settings_menu()),
            SEP,
            Item("Open dashboard", lambda: self.opener(self.dashboard_url())),
            Item("Open logs", lambda: self.opener(self.paths.log_dir)),
            Item("Quit", self.quit),
        )

    def _radio(self, text: str, key: str, value: Any) -> pystray.MenuItem:
        return Item(
            text, lambda: self.set(key, value), checked=lambda _: self._setting(key) == value, radio=True
        )

    def _contribution_items(self) -> list[pystray.MenuItem]:
        st = self._status()
        c = st.get("contribution") or {}
        progress = st.get("progress") or {}
        lines = [
            f"Samples: {c.get('samples', 0):,}",
            f"Compute: {c.get('compute_seconds', 0) / 3600:.2f} hours",
            f"Jobs: {len(c.get('jobs', []))}",
            "Rank: on the dashboard's leaderboard",
        ]
        if progress:
            lines.append(
                f"Now: epoch {progress.get('epoch', 0)}, {progress.get('samples_per_second', 0):.1f} samples/s"
            )
        return [Item(line, None, enabled=False) for line in lines]

    def _settings_menu(self) -> pystray.Menu:
        items: list[pystray.MenuItem] = []
        for title, key, options in CHOICES:
            items.append(
                Item(title, pystray.Menu(*(self._radio(text, key, value) for text, value in options)))
            )
        for title, key in TOGGLES:
            items.append(Item(title, self._toggle(key), checked=lambda _, k=key: bool(self._setting(k))))
        items.append(
            Item(
                "Schedule",
                pystray.Menu(
                    *(
                        Item(
                            name,
                            self._schedule(days),
                            checked=lambda _, d=days: self._schedule_is(d),
                            radio=True,
                        )
                        for name, days in SCHEDULES.items()
                    )
                ),
            )
        )
        items.append(SEP)
        items.append(Item("Edit the settings file…", lambda: self.opener(self.paths.config_file)))
        return pystray.Menu(*items)

    def _toggle(self, key: str) -> Callable[[], None]:
        return lambda: self.set(key, not self._setting(key))

    def _schedule(self, days: dict[str, str]) -> Callable[[], None]:
        def apply() -> None:
            for day, hours in days.items():
                self.set(f"schedule.{day}", hours)

        return apply

    def _schedule_is(self, days: dict[str, str]) -> bool:
        return all(self._setting(f"schedule.{d}") == h for d, h in days.items())
