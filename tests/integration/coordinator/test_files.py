"""Upload, submit with files, and download back, with sha256 checks, against a real coordinator."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from essaim.protocol.errors import InvalidArgument, NotFound, PermissionDenied
from essaim.protocol.types import FileKind, JobStatus

pytestmark = pytest.mark.timeout(120)

RECIPE = """
version: 1
name: with-files
model: {name_or_path: models/tiny}
dataset: {files: [data/train.jsonl]}
eval: {files: [data/eval.jsonl]}
training: {target_batch_size: 8, batch_size: 2, epochs: 1}
hardware: {min_ram_gb: 1}
"""


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data/train.jsonl").write_bytes(b'{"text": "hello"}\n' * 100_000)  # ~1.8 MB: several chunks
    (root / "data/eval.jsonl").write_bytes(b'{"text": "bye"}\n')
    (root / "models/tiny/tokenizer").mkdir(parents=True)
    (root / "models/tiny/config.json").write_text('{"n_layer": 1}')
    (root / "models/tiny/tokenizer/vocab.txt").write_bytes(os.urandom(3000))
    (root / "recipe.yaml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def coord(module_launcher, tmp_path_factory):
    # no swarm services: this module is about files, and its model directory is not a real model
    return module_launcher(tmp_path_factory.mktemp("files"), "--no-swarm")


def test_upload_submit_download_round_trip(coord, project: Path, tmp_path: Path, kit) -> None:
    researcher = kit.create_token(coord.data_dir, "researcher", "dana")
    seen: list[str] = []
    with coord.client(researcher) as client:
        job = client.submit_recipe_file(
            project / "recipe.yaml", progress=lambda label, done, total: seen.append(label)
        )
        assert job.status == JobStatus.QUEUED
        assert {f.path for f in job.files} == {
            "data/train.jsonl",
            "data/eval.jsonl",
            "models/tiny/config.json",
            "models/tiny/tokenizer/vocab.txt",
        }
        assert "data/train.jsonl" in seen
        train = project / "data/train.jsonl"
        sha, size, present = client.upload_file(train)
        assert (
            present and size == train.stat().st_size and sha == hashlib.sha256(train.read_bytes()).hexdigest()
        )

        out = tmp_path / "all"
        written = client.download(job.id, FileKind.JOB_FILE, out)
        assert len(written) == 4
        expected = {k: v for k, v in _tree(project).items() if k != "recipe.yaml"}
        assert _tree(out) == expected
        one = client.download(job.id, FileKind.JOB_FILE, tmp_path / "one", path="data/eval.jsonl")
        assert one == [(tmp_path / "one").resolve() / "data/eval.jsonl"]
        with pytest.raises(NotFound, match="has no file 'data/missing'"):
            client.download(job.id, FileKind.JOB_FILE, tmp_path / "x", path="data/missing")
        with pytest.raises(NotFound, match="no artifact yet"):
            client.download(job.id, FileKind.ARTIFACT, tmp_path / "x")

    # a volunteer may fetch job files once the job runs, never artifacts
    with coord.client() as anon:
        reg = kit.Identity().register(anon, "fetcher")
    with coord.client(reg.token) as client:
        with pytest.raises(PermissionDenied, match="running jobs only"):
            client.download(job.id, FileKind.JOB_FILE, tmp_path / "v")
        got = client.get_assignment(reg.volunteer_id, kit.HARDWARE)
        assert got.job is not None and got.job.id == job.id, (got, coord.log())
        assert len(client.download(job.id, FileKind.JOB_FILE, tmp_path / "v")) == 4
        # a download cut short after its first MiB resumes from there, in a new call (a new trainer)
        train = next(f for f in job.files if f.path == "data/train.jsonl")
        part = tmp_path / "train.part"
        seen: list[int] = []

        def cut_after_the_first_chunk(name: str, done: int, total: int) -> None:
            seen.append(done)
            if len(seen) == 1:
                raise ConnectionAbortedError("the laptop went to sleep")

        with pytest.raises(ConnectionAbortedError):
            client.download_job_file(job.id, "data/train.jsonl", part, size=train.size,
                                     progress=cut_after_the_first_chunk)
        assert part.stat().st_size == seen[0] == 2**20
        assert client.download_job_file(job.id, "data/train.jsonl", part, size=train.size,
                                        progress=lambda n, done, total: seen.append(done)) == part
        assert seen[1] == train.size and len(seen) == 2  # one chunk more: the rest of the file only
        assert hashlib.sha256(part.read_bytes()).hexdigest() == train.sha256
        with pytest.raises(PermissionDenied):
            client.download(job.id, FileKind.ARTIFACT, tmp_path / "v")

    # the checkpoint keeper writes the artifact; researchers download it
    artifact = coord.data_dir / "artifacts" / job.id
    (artifact / "adapter").mkdir(parents=True)
    (artifact / "adapter/adapter_model.safetensors").write_bytes(os.urandom(2_500_000))
    (artifact / "provenance.json").write_text(json.dumps({"job": job.id}))
    with coord.client(researcher) as client:
        got = tmp_path / "artifact"
        assert len(client.download(job.id, FileKind.ARTIFACT, got)) == 2
        assert _tree(got) == _tree(artifact)
        prov = client.download(job.id, FileKind.PROVENANCE, tmp_path / "prov")
        assert json.loads(prov[0].read_text()) == {"job": job.id}


def test_upload_with_a_wrong_declared_sha_is_refused(shared_coordinator, tmp_path: Path, kit) -> None:
    from essaim.protocol import client as client_mod

    coord = shared_coordinator
    path = tmp_path / "f.txt"
    path.write_bytes(b"content")
    with coord.client(coord.admin_token) as client:
        real = client_mod.hash_file

        def lying_hash(p: Path) -> tuple[str, int]:
            return "0" * 64, real(p)[1]

        client_mod.hash_file = lying_hash
        try:
            with pytest.raises(InvalidArgument, match="does not match what the client declared"):
                client.upload_file(path)
        finally:
            client_mod.hash_file = real
        assert not (coord.data_dir / "blobs" / ("0" * 64)).exists()
        assert list((coord.data_dir / "blobs" / "tmp").iterdir()) == []
        assert client.upload_file(path)[2] is False


def test_a_shipped_models_weight_decides_who_may_train_it(module_launcher, tmp_path: Path, kit) -> None:
    """The recipe asks for 1 GB of RAM, but the model it ships weighs 40 MB in bfloat16: 20M
    parameters, 80 MB in float32 on a CPU, plus the trainer's runtime: a machine of 1.5 GB is not
    given the job (the reason says why), one of 2 GB is."""
    from essaim.coordinator.scheduler import GIB, ModelSize, unfit_reason
    from essaim.protocol.types import Hardware

    coord = module_launcher(tmp_path / "coordinator", "--no-swarm")  # this job alone in its queue
    root = tmp_path / "weighed"
    (root / "data").mkdir(parents=True)
    (root / "data/train.jsonl").write_bytes(b'{"text": "hello"}\n')
    (root / "data/eval.jsonl").write_bytes(b'{"text": "bye"}\n')
    (root / "models/tiny").mkdir(parents=True)
    (root / "models/tiny/config.json").write_text('{"torch_dtype": "bfloat16"}')
    (root / "models/tiny/model.safetensors").write_bytes(os.urandom(40 * 2**20))
    (root / "recipe.yaml").write_text(RECIPE.replace("name: with-files", "name: weighed"))
    researcher = kit.create_token(coord.data_dir, "researcher", "weigher")
    with coord.client(researcher) as client:
        job = client.submit_recipe_file(root / "recipe.yaml")
    small = Hardware(os="linux", arch="x86_64", cpu_cores=2, ram_bytes=int(1.5 * GIB))
    enough = Hardware(os="linux", arch="x86_64", cpu_cores=2, ram_bytes=2 * GIB)
    with coord.client() as anon:
        light, heavy = kit.Identity().register(anon, "light", small), kit.Identity().register(anon, "heavy", enough)
    with coord.client(light.token) as client:
        got = client.get_assignment(light.volunteer_id, small)
        assert got.job is None and got.no_job_reason.startswith(
            f"job {job.id[:8]} (weighed) needs 1.6 GB of RAM (its model: about 21M parameters"), got
    with coord.client(heavy.token) as client:
        got = client.get_assignment(heavy.volunteer_id, enough)
        assert got.job is not None and got.job.id == job.id, (got, coord.log())
    from essaim.coordinator.scheduler import JobNeeds
    from essaim.protocol.recipe import load_recipe

    recipe = load_recipe(job.recipe_yaml)
    size = ModelSize.of(recipe, [(f.path, f.size) for f in job.files], {"torch_dtype": "bfloat16"})
    assert size is not None and size.parameters == 20 * 2**20
    assert unfit_reason(small, JobNeeds.of(recipe, size)).startswith("needs 1.6 GB of RAM (its model: about 21M")
