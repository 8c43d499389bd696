"""What the volunteer app costs while no trainer runs: resident memory and CPU over a minute.

    python bench/client_footprint.py [--seconds 60] [--out bench/results]

Runs the real app in four set-ups, with no trainer running: headless under an X server (it reads
the user's idle time every second), headless connected to a real coordinator (first run: it makes
its identity key and registers, which loads ``cryptography``), the same app started again (the
everyday case: registered already, heartbeats only), and the tray (pystray) in Xvfb with trayer
as the tray host. For each it samples the app process once a second after a 5 s warm-up: peak
and final RSS, USS, and CPU time over the window as a share of one core. Targets: <= 60 MB RSS, <= 0.5% of one core. Writes
``client_footprint.json`` and ``client_footprint.md``. Needs Debian's xvfb and trayer.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RSS_TARGET_MB, CPU_TARGET = 60.0, 0.5


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def measure(pid: int, seconds: float) -> dict[str, float]:
    proc = psutil.Process(pid)
    time.sleep(5.0)  # warm-up: imports done, first ticks past
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    rss = []
    while time.monotonic() - t0 < seconds:
        rss.append(proc.memory_info().rss)
        time.sleep(1.0)
    cpu1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
    uss = proc.memory_full_info().uss
    threads = proc.num_threads()
    return {
        "seconds": round(t1 - t0, 1),
        "rss_peak_mb": round(max(rss) / 2**20, 1),
        "rss_end_mb": round(rss[-1] / 2**20, 1),
        "uss_mb": round(uss / 2**20, 1),
        "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "threads": threads,
    }


@contextlib.contextmanager
def trayer(display: str):
    proc = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--width", "10"],
        env={**os.environ, "DISPLAY": display},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    h = load("client_harness", ROOT / "tests" / "integration" / "client" / "client_harness.py")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, h.xvfb() as display:
        base = Path(tmp)

        def run(name: str, *flags: str, headless: bool = True, root: str = "") -> None:
            print(f"{name} ...", flush=True)
            app = h.start_app(
                base / (root or name.replace(" ", "-")),
                *flags,
                display=display,
                headless=headless,
                trainer=False,
            )
            try:
                st = app.status()
                assert st["trainer_pid"] is None
                figures = measure(app.proc.pid, args.seconds)
                link = app.status().get("coordinator")
                results[name] = {
                    **figures,
                    "state": st["state"],
                    "reason": st["reason"],
                    "coordinator_connected": link["connected"] if link else None,
                }
            finally:
                app.stop()

        run("headless, X11 idle polling")
        coordinator = load("tests_conftest", ROOT / "tests" / "conftest.py")
        coord = coordinator.start_coordinator(base / "coordinator")
        try:
            flags = ("--coordinator", coord.grpc_address)
            run("headless, connected to a coordinator (first run: registers)", *flags, root="connected")
            run("headless, connected, started again (registered)", *flags, root="connected")
        finally:
            coord.stop()
        if shutil.which("trayer"):
            with trayer(display):
                run("tray (pystray, Xvfb + trayer)", headless=False)
    report = {
        "bench": "client_footprint",
        "what": "the volunteer app with no trainer running",
        "targets": {"rss_mb": RSS_TARGET_MB, "cpu_percent_of_one_core": CPU_TARGET},
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "os": platform.platform(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "client_footprint.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# volunteer app footprint, no trainer running",
        "",
        f"{psutil.cpu_count()} CPUs, Python {platform.python_version()}; {args.seconds:.0f} s after a 5 s warm-up; "
        f"targets <= {RSS_TARGET_MB:.0f} MB RSS, <= {CPU_TARGET}% of one core",
        "",
        "| set-up | RSS peak (MB) | USS (MB) | CPU (% of one core) | threads | meets targets |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ok = r["rss_peak_mb"] <= RSS_TARGET_MB and r["cpu_percent_of_one_core"] <= CPU_TARGET
        lines.append(
            f"| {name} | {r['rss_peak_mb']} | {r['uss_mb']} | {r['cpu_percent_of_one_core']} | {r['threads']} | "
            f"{'yes' if ok else 'no'} |"
        )
    (args.out / "client_footprint.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
