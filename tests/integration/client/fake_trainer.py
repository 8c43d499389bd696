"""A stand-in for ``python -m essaim.client.trainer`` that speaks the same JSON lines and burns CPU.

The app's tests and benches use it to check the app's behaviour (yielding, restarts, throttling)
without torch; the real trainer is tested with the swarm. Knobs, from the environment:

    FAKE_TRAINER_CRASH_AFTER=2.5      exit with code 3 (after an "error" event) this long after start
    FAKE_TRAINER_CRASH_ONCE_FILE=p    crash only if file p does not exist yet (it is created)
    FAKE_TRAINER_COMPLETE_AFTER=1.0   say the job completed ("stopped", reason "completed") and exit 0 then
    FAKE_TRAINER_IGNORE_PAUSE=1       never confirm a pause (the app must suspend the process)
    FAKE_TRAINER_BYTES_PER_SECOND=n   report n bytes sent per second of training (traffic accounting)
    FAKE_TRAINER_PROGRESS_SECONDS=1   how often progress events are written

It appends its argv and every command it receives to ``<work dir>/fake_trainer.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--assignment", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--coordinator", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--cache-dir", default="")
    args = parser.parse_args()
    journal = open(os.path.join(args.work_dir, "fake_trainer.jsonl"), "a", buffering=1)  # noqa: SIM115
    journal.write(json.dumps({"argv": sys.argv[1:], "pid": os.getpid(),
                              "token": os.environ.get("ESSAIM_TRAINER_TOKEN", "")}) + "\n")
    with open(args.assignment) as f:
        data = json.load(f)
        job_id = data.get("job_id") or (data.get("job") or {}).get("id", "job")

    out_lock = threading.Lock()

    def emit(event: str, **fields: object) -> None:
        with out_lock:
            sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
            sys.stdout.flush()

    paused = threading.Event()
    done = threading.Event()
    finish = threading.Event()
    duty = [1.0]
    ignore_pause = os.environ.get("FAKE_TRAINER_IGNORE_PAUSE") == "1"

    def read_commands() -> None:
        for line in sys.stdin:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            journal.write(json.dumps(msg) + "\n")
            cmd = msg.get("cmd")
            if cmd == "pause" and not ignore_pause:
                paused.set()
                emit("paused")
            elif cmd == "resume":
                paused.clear()
                emit("resumed")
            elif cmd == "throttle":
                duty[0] = float(msg.get("duty_cycle", 1.0))
            elif cmd == "finish":
                finish.set()
            elif cmd == "stop":
                done.set()
                return
        done.set()  # stdin closed: the app is gone

    threading.Thread(target=read_commands, daemon=True).start()
    crash_after = float(os.environ.get("FAKE_TRAINER_CRASH_AFTER", "0") or 0)
    crash_file = os.environ.get("FAKE_TRAINER_CRASH_ONCE_FILE", "")
    if crash_after and crash_file:
        if os.path.exists(crash_file):
            crash_after = 0
        else:
            open(crash_file, "w").close()
    complete_after = float(os.environ.get("FAKE_TRAINER_COMPLETE_AFTER", "0") or 0)
    bytes_rate = int(os.environ.get("FAKE_TRAINER_BYTES_PER_SECOND", "0") or 0)
    every = float(os.environ.get("FAKE_TRAINER_PROGRESS_SECONDS", "1") or 1)
    emit("started", job_id=job_id, pid=os.getpid())
    start = last = time.monotonic()
    samples, compute = 0, 0.0
    while not done.is_set():
        now = time.monotonic()
        if crash_after and now - start > crash_after:
            emit("error", message="simulated crash")
            return 3
        if complete_after and now - start > complete_after:
            emit("stopped", reason="completed", samples=samples, compute_seconds=compute)
            return 0
        if paused.is_set():
            time.sleep(0.02)
            continue
        burn_until = now + 0.02 * duty[0]
        x = 0
        while time.monotonic() < burn_until:
            x += 1
        compute += 0.02 * duty[0]
        samples += 1
        if duty[0] < 1.0:
            time.sleep(0.02 * (1 - duty[0]))
        if now - last >= every:
            last = now
            emit(
                "progress",
                epoch=samples // 500,
                samples=samples,
                loss=1.0 / (1 + samples),
                samples_per_second=samples / max(now - start, 1e-3),
                compute_seconds=compute,
                peers=1,
                bytes_sent=int(bytes_rate * compute),
                bytes_received=0,
            )
        if finish.is_set():
            emit("epoch", epoch=samples // 500 + 1)
            break
    emit("stopped", reason="finished" if finish.is_set() else "stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
