"""``python -m build`` makes a wheel and an sdist that carry the generated protocol stubs and the
icons, which the installers and the tray need at run time."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from essaim.client.icons import STATES

if TYPE_CHECKING:
    from installer_harness import Dists


def _wheel_names(dists: Dists) -> set[str]:
    with zipfile.ZipFile(dists.wheel) as zf:
        return set(zf.namelist())


def _sdist_names(dists: Dists) -> set[str]:
    with tarfile.open(dists.sdist) as tf:
        return {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}


def _files(folder: Path, *patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in folder.glob(pattern) if p.is_file())


def test_protocol_stubs_are_in_the_wheel_and_the_sdist(built_dists: Dists, kit: ModuleType) -> None:
    stubs = _files(kit.REPO / "protocol/v1", "*.py", "*.pyi")
    assert {p.name for p in stubs} >= {"coordinator_pb2.py", "coordinator_pb2.pyi", "coordinator_pb2_grpc.py"}
    wheel, sdist = _wheel_names(built_dists), _sdist_names(built_dists)
    missing = [f"essaim/protocol/v1/{p.name}" for p in stubs if f"essaim/protocol/v1/{p.name}" not in wheel]
    missing += [f"sdist: protocol/v1/{p.name}" for p in stubs if f"protocol/v1/{p.name}" not in sdist]
    assert not missing, f"not packaged: {missing}"
    assert "essaim/protocol/proto/essaim/protocol/v1/coordinator.proto" in wheel


def test_tray_icons_are_in_the_wheel_and_the_sdist(built_dists: Dists, kit: ModuleType) -> None:
    assets = kit.REPO / "client/assets"
    icons = _files(assets, "*.png", "*.svg", "*.ico", "*.icns")
    # the tray shows one picture per state and a lone install.sh takes training.png for the menu
    assert {p.name for p in icons} >= {f"{state}.png" for state in STATES}, f"missing from {assets}"
    wheel, sdist = _wheel_names(built_dists), _sdist_names(built_dists)
    missing = [f"essaim/client/assets/{p.name}" for p in icons if f"essaim/client/assets/{p.name}" not in wheel]
    missing += [f"sdist: client/assets/{p.name}" for p in icons if f"client/assets/{p.name}" not in sdist]
    assert not missing, f"not packaged: {missing}"


def test_wheel_declares_the_essaim_command(built_dists: Dists) -> None:
    with zipfile.ZipFile(built_dists.wheel) as zf:
        entry_points = next(zf.read(n).decode() for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "essaim = essaim.main:main" in entry_points
