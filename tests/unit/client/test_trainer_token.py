"""The app hands its trainer the volunteer's token in the environment, never on the command line
(which any user of the machine reads with ps), and the trainer keeps it from its own children."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from essaim.client.trainer_handle import TOKEN_ENV, TrainerHandle

PROBE = """
import json, os, sys
json.dump({"argv": sys.argv, "token": os.environ.get("ESSAIM_TRAINER_TOKEN")}, open("seen.json", "w"))  # cwd: the work dir
"""


def test_the_token_travels_in_the_environment_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "essaim_inherited-from-the-app")  # never leaks to a trainer without one
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    handle = TrainerHandle(command=[sys.executable, str(probe)], assignment_file=tmp_path / "job.json",
                           work_dir=tmp_path, coordinator="127.0.0.1:1", token="essaim_secret", low_priority=False)
    handle.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "seen.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["token"] == "essaim_secret"
    assert not any("essaim_secret" in a for a in seen["argv"]) and "--token" not in seen["argv"]
    handle.stop(timeout=5)

    (tmp_path / "seen.json").unlink()
    bare = TrainerHandle(command=[sys.executable, str(probe)], assignment_file=tmp_path / "job.json",
                         work_dir=tmp_path, low_priority=False)
    bare.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "seen.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads((tmp_path / "seen.json").read_text())["token"] is None
    bare.stop(timeout=5)
