"""The app process stays light: its modules never import torch, transformers or hivemind, nor, while
no job has come, the libraries only the command line needs (typer, click, rich, pydantic), grpcio,
asyncio, importlib.metadata, or cryptography (which registering imports, once per coordinator).
(The trainer's pipe protocol, pydantic models, is imported when the first job starts.)"""

from __future__ import annotations

import os
import subprocess
import sys

HEAVY = ("torch", "transformers", "hivemind", "peft", "datasets")
NOT_AT_START = (
    *("grpc", "typer", "click", "rich", "pydantic", "pydantic_core", "yaml"),
    *("asyncio", "importlib.metadata", "cryptography"),
)
APP_MODULES = (
    "essaim.client.entry",
    "essaim.client.supervisor",
    "essaim.client.tray",
    "essaim.protocol.lite_client",
)


def _imported_by(modules: tuple[str, ...], watched: tuple[str, ...]) -> str:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(','.join(m for m in {watched!r} if m in sys.modules))\n"
    )
    env = dict(os.environ)
    if not env.get("DISPLAY"):
        env["PYSTRAY_BACKEND"] = "dummy"  # pystray picks its backend on import; xorg needs a display
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=env
    )
    return out.stdout.strip()


def test_app_modules_do_not_import_heavy_libraries():
    modules = (*APP_MODULES, "essaim.client.cli", "essaim.client.trainer_protocol")
    assert _imported_by(modules, HEAVY) == ""


def test_app_modules_leave_out_what_only_the_cli_or_registering_needs():
    assert _imported_by(APP_MODULES, NOT_AT_START) == ""
