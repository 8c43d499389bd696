"""What a hostile researcher sends a real coordinator is refused, at once and by name: a YAML alias
bomb, duplicate keys, numbers no job needs, a model or dataset that names the coordinator's own disk,
a NUL in a file's path, a priority it may not set, an upload past its quota or its declared size."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import psutil
import pytest
from essaim.protocol import serde
from essaim.protocol.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from essaim.protocol.types import FileChunk, JobFile

pytestmark = pytest.mark.timeout(120)

QUOTA = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def coord(module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("hostile")
    (root / "models" / "shared").mkdir(parents=True)
    coord = module_launcher(root / "data", "--allow-model-dir", str(root / "models"), "--max-researcher-priority", "5",
                            env={"ESSAIM_COORDINATOR_UPLOAD_QUOTA_BYTES": str(QUOTA)})
    coord.models = root / "models"
    return coord


@pytest.fixture(scope="module")
def researcher(coord: Any, kit: Any) -> str:
    return kit.create_token(coord.data_dir, "researcher", "eve")


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"name: *a{levels}", "model: {name_or_path: gpt2}", "dataset: {hub_name: w}", ""])


def test_an_alias_bomb_is_refused_in_under_a_second_with_no_memory_growth(coord: Any, researcher: str) -> None:
    server = psutil.Process(coord.proc.pid)
    before = server.memory_info().rss
    with coord.client(researcher) as client:
        started = time.monotonic()
        with pytest.raises(InvalidArgument, match="aliases") as info:
            client.submit_job(_bomb())
        took = time.monotonic() - started
    assert took < 1.0, took
    assert server.memory_info().rss - before < 20 * 1024**2, (before, server.memory_info().rss)
    assert len(str(info.value)) < 1000


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("name: twice\n", "the key 'name' is given twice"),
        ("adapter: {alpha: .inf}\n", "adapter.alpha"),
        ("training: {target_batch_size: 64, batch_size: 4, epochs: 3, seed: 1000000000000000000000000}\n",
         "training.seed"),
        ("optimizer: {warmup_epochs: 1000000000000000000000}\n", "optimizer.warmup_epochs"),
    ],
)
def test_a_recipe_beyond_its_bounds_is_refused(coord: Any, researcher: str, kit: Any, change: str,
                                               needle: str) -> None:
    recipe = kit.hub_recipe("bounded").replace("training: {target_batch_size: 64, batch_size: 4, epochs: 3}\n", "")
    with coord.client(researcher) as client, pytest.raises(InvalidArgument, match=re.escape(needle)):
        client.submit_job(recipe + change)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("model: {name_or_path: /etc}", "model.name_or_path"),
        ("model: {name_or_path: gpt2, tokenizer: ../../data}", "model.tokenizer"),
        ("model: {name_or_path: ~/models/x}", "model.name_or_path"),
    ],
)
def test_a_model_named_by_a_path_on_the_coordinators_disk_is_refused(coord: Any, researcher: str, kit: Any,
                                                                    line: str, field: str) -> None:
    recipe = kit.hub_recipe("local-path").replace("model: {name_or_path: org/tiny-model}", line)
    with coord.client(researcher) as client, pytest.raises(InvalidArgument, match=re.escape(field) + ".*path on the coord"):
        client.submit_job(recipe)


def test_a_dataset_named_by_a_path_is_refused_but_the_admins_directories_are_allowed(coord: Any, researcher: str,
                                                                                    kit: Any) -> None:
    recipe = kit.hub_recipe("local-data").replace("dataset: {hub_name: org/tiny-data}",
                                                  f"dataset: {{hub_name: {coord.data_dir}}}")
    with coord.client(researcher) as client:
        with pytest.raises(InvalidArgument, match=r"dataset\.hub_name"):
            client.submit_job(recipe)
        allowed = kit.hub_recipe("allowed-path").replace("org/tiny-model", str(coord.models / "shared"))
        assert client.submit_job(allowed).name == "allowed-path"


def test_a_nul_in_a_files_path_is_refused(coord: Any, researcher: str, kit: Any) -> None:
    listed = JobFile(path="data/a\x00.txt", sha256="0" * 64, size=1)
    with coord.client(researcher) as client, pytest.raises(InvalidArgument, match="not a relative path"):
        client.submit_job(kit.hub_recipe("nul"), files=[listed])


def test_only_admins_set_priority_and_researchers_ask_within_the_cap(coord: Any, researcher: str, kit: Any) -> None:
    with coord.client(researcher) as client:
        assert client.submit_job(kit.hub_recipe("asks-5"), priority=5).priority == 5
        with pytest.raises(PermissionDenied, match="at most 5"):
            client.submit_job(kit.hub_recipe("asks-6"), priority=6)
        with pytest.raises(InvalidArgument, match="between -1000 and 1000"):
            client.submit_job(kit.hub_recipe("asks-max"), priority=2147483647)
        job = client.submit_job(kit.hub_recipe("later"))
        with pytest.raises(PermissionDenied):
            client.set_job_priority(job.id, 9)
    with coord.client(coord.admin_token) as admin:
        assert admin.set_job_priority(job.id, 900).priority == 900
        with pytest.raises(InvalidArgument, match="between"):
            admin.set_job_priority(job.id, 5000)


def _upload(client: Any, data: bytes, *, declared: int | None = None, chunk: int = 1024 * 1024) -> Any:
    sha = hashlib.sha256(data).hexdigest()
    size = len(data) if declared is None else declared

    def chunks() -> Any:
        for offset in range(0, max(len(data), 1), chunk):
            part = data[offset:offset + chunk]
            yield serde.file_chunk_to_proto(
                FileChunk(path="blob.bin", offset=offset, data=part, size=size, sha256=sha,
                          last=offset + len(part) >= len(data)), header=offset == 0)

    try:
        return client._stub.UploadFile(chunks(), timeout=30, metadata=client.metadata)
    except Exception as err:
        raise client.translate(err) from None


def test_an_upload_that_sends_more_than_it_declared_is_cut_off(coord: Any, kit: Any) -> None:
    token = kit.create_token(coord.data_dir, "researcher", "mallet")
    with coord.client(token) as client, pytest.raises(InvalidArgument, match="more than the 10 bytes"):
        _upload(client, b"x" * (2 * 1024 * 1024), declared=10)


def test_uploads_past_a_researchers_quota_are_refused(coord: Any, kit: Any) -> None:
    token = kit.create_token(coord.data_dir, "researcher", "hoarder")
    with coord.client(token) as client:
        _upload(client, b"a" * (2 * 1024 * 1024))
        with pytest.raises(ResourceExhausted, match="quota"):
            _upload(client, b"b" * (2 * 1024 * 1024))
    with coord.client(coord.admin_token) as admin:  # admins have none
        _upload(admin, b"c" * (2 * 1024 * 1024))
