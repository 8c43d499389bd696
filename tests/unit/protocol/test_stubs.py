"""The committed protocol stubs match what the .proto files generate today."""

from __future__ import annotations

from pathlib import Path

import pytest
from essaim.protocol import generate

grpc_tools = pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev extra) is not installed")


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in generate.generate(tmp_path)}
    committed = {p.name: p.read_text() for p in generate.STUBS_DIR.iterdir() if p.suffix in {".py", ".pyi"}}
    assert sorted(fresh) == sorted(committed), "stub files differ: run `python -m essaim.protocol.generate`"
    stale = [name for name, text in fresh.items() if committed[name] != text]
    assert not stale, f"stale stubs {stale}: run `python -m essaim.protocol.generate` and commit the result"


def test_stubs_import_and_expose_the_service() -> None:
    from essaim.protocol.v1 import coordinator_pb2, coordinator_pb2_grpc

    service = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]
    methods = set(service.methods_by_name)
    assert {
        "Register",
        "Heartbeat",
        "GetAssignment",
        "SubmitJob",
        "ListJobs",
        "GetJob",
        "CancelJob",
        "ApproveJob",
        "ListVolunteers",
        "BanVolunteer",
        "Download",
    } <= methods
    assert service.methods_by_name["Download"].server_streaming
    assert hasattr(coordinator_pb2_grpc, "CoordinatorServicer")
    assert coordinator_pb2.DESCRIPTOR.package == "essaim.v1"
