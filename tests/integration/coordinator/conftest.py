"""Helpers for the coordinator's integration tests: volunteers with real keys, tokens, recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from essaim.client import keys
from essaim.protocol.types import Hardware, Registration

HARDWARE = Hardware(os="linux", arch="x86_64", cpu_cores=8, ram_bytes=16 * 1024**3)

HUB_RECIPE = """
version: 1
name: {name}
model: {{name_or_path: org/tiny-model}}
dataset: {{hub_name: org/tiny-data}}
training: {{target_batch_size: 64, batch_size: 4, epochs: 3}}
hardware: {{min_ram_gb: 1}}
"""


def hub_recipe(name: str = "tiny-job") -> str:
    return HUB_RECIPE.format(name=name)


class Identity:
    """A volunteer's key pair, as the app keeps it."""

    def __init__(self) -> None:
        self.key = keys.new_private_key()
        self.public_key = keys.public_key_der(self.key)

    def sign(self, data: bytes) -> bytes:
        return keys.sign(self.key, data)

    def register(self, client, name: str = "vol", hardware: Hardware = HARDWARE) -> Registration:
        return client.register_with_key(sign=self.sign, public_key=self.public_key, peer_id=f"Qm{name}",
                                        name=name, hardware=hardware)


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m essaim.coordinator ARGS``."""
    proc = subprocess.run(
        [sys.executable, "-m", "essaim.coordinator", *args], capture_output=True, text=True, timeout=60
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}: {proc.stdout}\n{proc.stderr}")
    return proc


def create_token(data_dir: Path, role: str, label: str = "") -> str:
    out = cli("token", "create", "--role", role, "--label", label, "--data-dir", str(data_dir)).stdout
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers above, for tests (test modules cannot import a conftest)."""
    return SimpleNamespace(
        HARDWARE=HARDWARE, Identity=Identity, hub_recipe=hub_recipe, cli=cli, create_token=create_token
    )
