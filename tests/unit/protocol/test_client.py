"""The client's pieces that need no coordinator: transfers, paths, retries, error translation."""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

import grpc
import pytest
from essaim.protocol import client as client_mod
from essaim.protocol.client import (
    CoordinatorClient,
    hash_file,
    local_files_of_recipe,
    receive_files,
    safe_relative_path,
    translate_rpc_error,
    upload_chunks,
)
from essaim.protocol.errors import EssaimError, InvalidArgument, NotFound, Unavailable
from essaim.protocol.lite_client import _STATUS_NAMES
from essaim.protocol.recipe import load_recipe, load_recipe_file
from essaim.protocol.retry import RetryPolicy
from essaim.protocol.types import FileChunk


def _chunks(name: str, data: bytes, *, chunk: int = 4, sha: str | None = None) -> list[FileChunk]:
    sha = sha or hashlib.sha256(data).hexdigest()
    out = []
    for offset in range(0, max(len(data), 1), chunk):
        piece = data[offset : offset + chunk]
        out.append(FileChunk(name, offset, piece, len(data), sha, offset + chunk >= len(data)))
    return out


def test_receive_files_writes_checked_files(tmp_path: Path) -> None:
    stream = _chunks("a/b.txt", b"hello world") + _chunks("empty", b"")
    written = receive_files(stream, tmp_path)
    assert written == [tmp_path.resolve() / "a/b.txt", tmp_path.resolve() / "empty"]
    assert (tmp_path / "a/b.txt").read_bytes() == b"hello world"
    assert (tmp_path / "empty").read_bytes() == b""


def test_receive_files_refuses_a_bad_sha_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(EssaimError, match="does not match its sha256"):
        receive_files(_chunks("x.bin", b"data", sha="0" * 64), tmp_path)
    assert list(tmp_path.rglob("*")) == []


def test_receive_files_cut_short_leaves_no_partial_file(tmp_path: Path) -> None:
    stream = _chunks("x.bin", b"0123456789")[:-1]
    with pytest.raises(EssaimError, match="cut short"):
        receive_files(stream, tmp_path)
    assert list(tmp_path.rglob("*.bin")) == [] and list(tmp_path.rglob("*.part")) == []


@pytest.mark.parametrize("bad", ["../evil", "/etc/passwd", "a/../../b", "", "C:/x"])
def test_paths_escaping_dest_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        safe_relative_path(bad)
    with pytest.raises(InvalidArgument):
        receive_files(_chunks(bad, b"x"), tmp_path / "dest")
    assert not (tmp_path / "evil").exists()


def test_upload_chunks_cover_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "CHUNK_BYTES", 3)
    path = tmp_path / "f"
    path.write_bytes(b"abcdefgh")
    sha, size = hash_file(path)
    seen = []
    chunks = list(upload_chunks(path, sha, size, progress=lambda label, done, total: seen.append(done)))
    assert b"".join(c.data for c in chunks) == b"abcdefgh"
    assert [c.last for c in chunks] == [False, False, True]
    assert chunks[0].HasField("header") and not chunks[1].HasField("header")
    assert seen == [3, 6, 8]
    path.write_bytes(b"")
    (only,) = upload_chunks(path, *hash_file(path))
    assert only.last and only.data == b""


RECIPE = """
name: t
model: {name_or_path: models/tiny, tokenizer: models/tiny}
dataset: {files: [data/train.txt]}
eval: {files: [data/eval.txt, data/train.txt]}
"""


def test_local_files_of_recipe(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.txt").write_text("a")
    (tmp_path / "data/eval.txt").write_text("b")
    (tmp_path / "models/tiny/sub").mkdir(parents=True)
    (tmp_path / "models/tiny/config.json").write_text("{}")
    (tmp_path / "models/tiny/sub/w.bin").write_text("w")
    (tmp_path / "models/tiny/.cache").mkdir()
    (tmp_path / "models/tiny/.cache/junk").write_text("j")
    (tmp_path / "r.yaml").write_text(RECIPE)
    files = local_files_of_recipe(load_recipe_file(tmp_path / "r.yaml"), tmp_path)
    assert [name for name, _ in files] == [
        "data/train.txt",
        "data/eval.txt",
        "models/tiny/config.json",
        "models/tiny/sub/w.bin",
    ]
    hub = load_recipe(RECIPE.replace("models/tiny", "org/hub-model"))
    assert [n for n, _ in local_files_of_recipe(hub, tmp_path)] == ["data/train.txt", "data/eval.txt"]
    (tmp_path / "data/eval.txt").unlink()
    with pytest.raises(InvalidArgument, match=r"data/eval\.txt"):
        local_files_of_recipe(hub, tmp_path)


class _FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_translate_rpc_error() -> None:
    err = translate_rpc_error(_FakeError(grpc.StatusCode.UNAVAILABLE, "connection refused"), "h:1")
    assert isinstance(err, Unavailable) and "cannot reach the coordinator at h:1" in str(err)
    assert isinstance(
        translate_rpc_error(_FakeError(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), "h:1"), Unavailable
    )
    nf = translate_rpc_error(_FakeError(grpc.StatusCode.NOT_FOUND, "no job"), "h:1")
    assert isinstance(nf, NotFound) and str(nf) == "no job" and nf.exit_code == 3


@pytest.mark.parametrize("code", list(grpc.StatusCode)[1:])
@pytest.mark.parametrize("details", ["why it failed", ""])
def test_status_codes_are_translated_for_both_clients(code: grpc.StatusCode, details: str) -> None:
    err = translate_rpc_error(_FakeError(code, details), "h:1")
    assert (
        isinstance(err, EssaimError)
        and str(err)
        and err.grpc_code_name in (code.name, "UNKNOWN", "UNAVAILABLE")
    )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert isinstance(err, Unavailable) and str(err).startswith("cannot reach the coordinator at h:1: ")
    elif details:
        assert str(err) == details
    assert _STATUS_NAMES[code.value[0]] == code.name  # the light client reads grpc-status numbers


def test_retry_policy_retries_only_given_errors() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Unavailable("down")
        return "ok"

    sleeps: list[float] = []
    policy = RetryPolicy(attempts=3, base=0.1, cap=0.15)
    assert policy.call(flaky, sleep=sleeps.append) == "ok"
    assert len(sleeps) == 2 and all(0 <= s <= 0.15 for s in sleeps)
    with pytest.raises(Unavailable):
        RetryPolicy(attempts=2).call(lambda: (_ for _ in ()).throw(Unavailable("x")), sleep=lambda _: None)
    count = []

    def not_found() -> None:
        count.append(1)
        raise NotFound("x")

    with pytest.raises(NotFound):
        RetryPolicy(attempts=5).call(not_found, sleep=lambda _: None)
    assert len(count) == 1


@pytest.mark.timeout(30)
def test_unreachable_coordinator_is_unavailable_naming_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    with (
        CoordinatorClient(address, token="t", timeout=2, retries=1) as client,
        pytest.raises(Unavailable, match=f"cannot reach the coordinator at {re.escape(address)}") as info,
    ):
        client.list_jobs()
    assert info.value.exit_code == 5
