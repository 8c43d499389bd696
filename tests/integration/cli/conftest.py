"""The real `essaim` console script against real coordinators.

The coordinators come from the shared ``module_launcher`` fixture (tests/conftest.py: the real
server on ports 0 with a temp data dir, stopped after the module); :class:`Cli` runs `essaim` in a
subprocess with a clean environment pointed at one of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ESSAIM = str(Path(sys.executable).with_name("essaim"))


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment a fresh user has: no essaim settings, no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESSAIM_")}
    env["ESSAIM_CONFIG"] = str(tmp / "absent-config.toml")
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


@dataclass
class Cli:
    """One running coordinator (a tests/conftest.py CoordinatorProcess) and a way to run `essaim`."""

    coord: Any
    workdir: Path

    @property
    def address(self) -> str:
        return str(self.coord.grpc_address)

    @property
    def admin_token(self) -> str:
        return str(self.coord.admin_token)

    @property
    def data_dir(self) -> Path:
        return Path(self.coord.data_dir)

    def essaim(self, *args: str, token: str | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the real `essaim` console script against this coordinator."""
        extra = {"ESSAIM_COORDINATOR": self.address, "ESSAIM_TIMEOUT": "10", "ESSAIM_RETRIES": "1", **env}
        if token is not None:
            extra["ESSAIM_TOKEN"] = token
        return subprocess.run(
            [ESSAIM, *args],
            capture_output=True,
            text=True,
            env=clean_env(self.workdir, **extra),
            cwd=self.workdir,
            timeout=timeout,
        )

    def create_token(self, role: str, label: str = "") -> str:
        """A new bearer token, made with `essaim coordinator token create` on the live store."""
        args = ["coordinator", "token", "create", "--role", role, "--data-dir", str(self.data_dir)]
        proc = self.essaim(*args, *(["--label", label] if label else []))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]


def _cli(launcher: Any, tmp: Path, **env: str) -> Cli:
    workdir = tmp / "work"
    workdir.mkdir(parents=True)
    return Cli(launcher(tmp / "data", env=env), workdir)


@pytest.fixture(scope="module")
def coordinator(module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A coordinator with default settings (jobs are queued at once), where researchers may ask
    for a priority up to 3."""
    return _cli(module_launcher, tmp_path_factory.mktemp("cli-coordinator"), ESSAIM_COORDINATOR_MAX_RESEARCHER_PRIORITY="3")


@pytest.fixture(scope="module")
def approval_coordinator(module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A coordinator whose new jobs wait for an admin (ESSAIM_COORDINATOR_REQUIRE_APPROVAL=1)."""
    return _cli(module_launcher, tmp_path_factory.mktemp("cli-approval"), ESSAIM_COORDINATOR_REQUIRE_APPROVAL="1")


@pytest.fixture(scope="module")
def researcher_token(coordinator: Cli) -> str:
    return coordinator.create_token("researcher", "alice")


RECIPE = """\
version: 1
name: {name}
description: A tiny LoRA job submitted by the CLI tests.
model:
  name_or_path: sshleifer/tiny-gpt2
dataset:
  files: [data/train.txt]
  text_field: text
  sequence_length: 16
  shard_size: 4
adapter:
  type: lora
  r: 4
  alpha: 8
training:
  target_batch_size: 8
  batch_size: 2
  epochs: 2
eval:
  files: [data/eval.jsonl]
  metric: loss
hardware:
  min_ram_gb: 1
  gpu: none
"""


@pytest.fixture
def recipe_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Writes an example-style recipe and its small local data files; returns the recipe path."""

    def make(name: str = "tiny-cli-test") -> Path:
        folder = tmp_path / name
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "train.txt").write_text("".join(f"line {i} of the training text\n" for i in range(50)))
        (folder / "data" / "eval.jsonl").write_text('{"text": "held out"}\n{"text": "another"}\n')
        path = folder / "recipe.yaml"
        path.write_text(RECIPE.format(name=name))
        return path

    return make
