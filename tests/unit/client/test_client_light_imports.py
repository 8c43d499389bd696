"""The app process stays light: its modules never import torch, transformers or hivemind."""

from __future__ import annotations

import os
import subprocess
import sys

HEAVY = ("torch", "transformers", "hivemind", "peft", "datasets")


def test_app_modules_do_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "import essaim.client.supervisor, essaim.client.cli, essaim.client.tray, essaim.client.trainer_protocol\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = dict(os.environ)
    if not env.get("DISPLAY"):
        env["PYSTRAY_BACKEND"] = "dummy"  # pystray picks its backend on import; xorg needs a display
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=env
    )
    assert out.stdout.strip() == "", f"the app imported: {out.stdout.strip()}"
