"""`essaim job ...`: init, validate, and what the remote commands print (JSON shapes, follow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from essaim.main import app
from essaim.protocol.errors import Unavailable
from essaim.protocol.recipe import example_recipe_text, load_recipe
from essaim.protocol.types import FileKind, JobStatus
from typer.testing import CliRunner

AUTH = ["--token", "t", "--coordinator", "127.0.0.1:9"]


def _valid_recipe(tmp_path: Path) -> Path:
    data = yaml.safe_load(example_recipe_text())
    data["dataset"]["files"] = ["train.txt"]
    data.pop("eval", None)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "train.txt").write_text("hello\n")
    return path


# ---- init / validate ----


def test_init_prints_the_example_and_it_validates(runner: CliRunner) -> None:
    result = runner.invoke(app, ["job", "init"])
    assert result.exit_code == 0
    assert result.stdout == example_recipe_text()
    load_recipe(result.stdout)


def test_init_writes_a_file_and_refuses_to_overwrite(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "recipe.yaml"
    assert runner.invoke(app, ["job", "init", "--output", str(out)]).exit_code == 0
    assert out.read_text() == example_recipe_text()
    again = runner.invoke(app, ["job", "init", "-o", str(out)])
    assert again.exit_code == 2
    assert "--force" in again.stderr
    assert runner.invoke(app, ["job", "init", "-o", str(out), "--force"]).exit_code == 0
    # its fields are valid; the data files it names must be there too, as `submit` uploads them
    missing = runner.invoke(app, ["job", "validate", str(out)])
    assert missing.exit_code == 2, missing.output
    assert "(2 problem(s))" in missing.stderr and "the recipe names 'data/train.jsonl' but" in missing.stderr
    shown = runner.invoke(app, ["job", "validate", str(out), "--json"])
    assert json.loads(shown.stdout)["problems"][1].startswith("the recipe names 'data/eval.jsonl' but")
    for name in ("train.jsonl", "eval.jsonl"):
        (out.parent / "data").mkdir(exist_ok=True)
        (out.parent / "data" / name).write_text('{"text": "hello"}\n')
    assert runner.invoke(app, ["job", "validate", str(out)]).exit_code == 0


def test_validate_ok(runner: CliRunner, tmp_path: Path) -> None:
    path = _valid_recipe(tmp_path)
    result = runner.invoke(app, ["job", "validate", str(path)])
    assert result.exit_code == 0
    assert result.stdout.startswith("ok: ")
    shown = runner.invoke(app, ["job", "validate", str(path), "--json"])
    assert json.loads(shown.stdout) == {
        "valid": True,
        "file": str(path),
        "name": "tinyllama-alpaca-lora",
        "files": ["train.txt"],
    }


def test_validate_names_each_problem(runner: CliRunner, tmp_path: Path) -> None:
    data = yaml.safe_load(example_recipe_text())
    data["training"]["epochs"] = 0
    data["adapter"]["rank"] = 8
    data["optimizer"]["lr"] = "fast"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))

    result = runner.invoke(app, ["job", "validate", str(path)])
    assert result.exit_code == 2
    err = result.stderr
    assert err.startswith(f"error: {path} is not valid (3 problem(s))")
    assert "training.epochs: got 0; expected" in err
    assert "adapter.rank: unknown field" in err
    assert "optimizer.lr: got 'fast'; expected" in err
    assert "Traceback" not in result.output

    shown = runner.invoke(app, ["job", "validate", str(path), "--json"])
    assert shown.exit_code == 2
    body = json.loads(shown.stdout)
    assert body["valid"] is False and body["file"] == str(path)
    assert len(body["problems"]) == 3
    assert any(p.startswith("training.epochs: got 0") for p in body["problems"])


def test_validate_missing_file_and_bad_yaml(runner: CliRunner, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["job", "validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr
    garbled = tmp_path / "garbled.yaml"
    garbled.write_text("name: [unclosed\n")
    result = runner.invoke(app, ["job", "validate", str(garbled)])
    assert result.exit_code == 2
    assert "not valid YAML at line" in result.stderr


# ---- remote commands against a fake client ----


def test_submit_prints_the_id_last(runner: CliRunner, fake_client, tmp_path: Path) -> None:
    path = _valid_recipe(tmp_path)
    result = runner.invoke(app, ["job", "submit", str(path), "--priority", "3", *AUTH])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "job-1"
    assert "follow it with" in result.stderr
    name, args, kwargs = fake_client.instances[-1].calls[-1]
    assert (name, args[0], kwargs["priority"]) == ("submit_recipe_file", path, 3)


def test_submit_refuses_a_bad_recipe_before_connecting(runner: CliRunner, fake_client, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nname: x\n")
    result = runner.invoke(app, ["job", "submit", str(path), *AUTH])
    assert result.exit_code == 2
    assert "model: missing" in result.stderr
    assert fake_client.instances == []


def test_job_json_shape(runner: CliRunner, fake_client, tmp_path: Path) -> None:
    result = runner.invoke(app, ["job", "submit", str(_valid_recipe(tmp_path)), "--json", *AUTH])
    job = json.loads(result.stdout)
    assert set(job) == {
        "id", "name", "status", "recipe_yaml", "owner", "priority", "status_reason",
        "created_at", "updated_at", "metrics", "has_artifact", "files",
    }  # fmt: skip
    assert job["status"] == "queued"
    assert set(job["metrics"]) >= {"epoch", "target_epochs", "loss", "samples_per_second", "live_peers"}
    assert job["files"] == [{"path": "data/train.jsonl", "sha256": "ab" * 32, "size": 2048}]

    listed = json.loads(runner.invoke(app, ["job", "list", "--json", *AUTH]).stdout)
    assert isinstance(listed, list) and listed[0]["id"] == "job-1"
    status = json.loads(runner.invoke(app, ["job", "status", "job-1", "--json", *AUTH]).stdout)
    assert status["name"] == "tiny-lora"


def test_list_table_and_status_filter(runner: CliRunner, fake_client) -> None:
    result = runner.invoke(app, ["job", "list", "--status", "running", "-s", "queued", *AUTH])
    assert result.exit_code == 0
    assert "job-1" in result.stdout and "tiny-lora" in result.stdout
    _, args, _ = fake_client.instances[-1].calls[-1]
    assert args[0] == [JobStatus.RUNNING, JobStatus.QUEUED]


def test_status_table(runner: CliRunner, fake_client) -> None:
    result = runner.invoke(app, ["job", "status", "job-1", *AUTH])
    assert result.exit_code == 0
    for text in ("job-1", "tiny-lora", "queued", "alice", "0/4"):
        assert text in result.stdout


def test_unknown_job_exits_3(runner: CliRunner, fake_client) -> None:
    result = runner.invoke(app, ["job", "status", "nope", *AUTH])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: no job nope")


def test_cancel_approve_priority(runner: CliRunner, fake_client) -> None:
    cancelled = runner.invoke(app, ["job", "cancel", "job-1", "--reason", "wrong data", "--json", *AUTH])
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    approved = runner.invoke(app, ["job", "approve", "job-1", *AUTH])
    assert approved.exit_code == 0 and approved.stdout.strip() == "job-1"
    assert "approved" in approved.stderr
    rejected = runner.invoke(app, ["job", "approve", "job-1", "--reject", "--reason", "no", "--json", *AUTH])
    assert json.loads(rejected.stdout)["status"] == "rejected"
    prio = runner.invoke(app, ["job", "priority", "job-1", "7", "--json", *AUTH])
    assert json.loads(prio.stdout)["priority"] == 7
    negative = runner.invoke(app, ["job", "priority", "job-1", "--json", *AUTH, "--", "-2"])
    assert json.loads(negative.stdout)["priority"] == -2


@pytest.mark.parametrize(
    ("final", "code"),
    [(JobStatus.COMPLETED, 0), (JobStatus.FAILED, 1), (JobStatus.CANCELLED, 1), (JobStatus.REJECTED, 1)],
)
def test_follow_until_final(runner: CliRunner, fake_client, job_factory, final: JobStatus, code: int) -> None:
    def script(client) -> None:  # type: ignore[no-untyped-def]
        client.job_states = [
            job_factory(status=JobStatus.QUEUED),
            job_factory(status=JobStatus.RUNNING, epoch=1, loss=2.5, samples_per_second=40.0, live_peers=2),
            job_factory(status=JobStatus.RUNNING, epoch=3, loss=1.9, eval_metric_name="loss", eval_metric=2.0),
            job_factory(status=final, epoch=4 if final == JobStatus.COMPLETED else 3, loss=1.7),
        ]

    original_init = fake_client.__init__

    def init(self, *a, **kw):  # type: ignore[no-untyped-def]
        original_init(self, *a, **kw)
        script(self)

    fake_client.__init__ = init
    try:
        result = runner.invoke(app, ["job", "status", "job-1", "--follow", "--interval", "0.1", *AUTH])
        assert result.exit_code == code, result.output
        out = result.stdout
        assert "running: epoch 1/4 · loss 2.5 · 40.0 samples/s · 2 peers averaged" in out
        assert "eval loss 2" in out
        assert f"job job-1 {final.value}" in out
        polls = [c for c in fake_client.instances[-1].calls if c[0] == "get_job"]
        assert len(polls) == 4

        json_run = runner.invoke(app, ["job", "status", "job-1", "-f", "--json", "--interval", "0.1", *AUTH])
        assert json_run.exit_code == code
        states = [json.loads(line)["status"] for line in json_run.stdout.splitlines()]
        assert states == ["queued", "running", "running", final.value]
    finally:
        fake_client.__init__ = original_init


def test_follow_rides_out_a_coordinator_outage(runner: CliRunner, fake_client, job_factory) -> None:
    original_init = fake_client.__init__

    def init(self, *a, **kw):  # type: ignore[no-untyped-def]
        original_init(self, *a, **kw)
        self.job_states = [
            job_factory(status=JobStatus.RUNNING, epoch=1),
            Unavailable("cannot reach the coordinator at 127.0.0.1:9: restarting"),
            job_factory(status=JobStatus.COMPLETED, epoch=4),
        ]

    fake_client.__init__ = init
    try:
        result = runner.invoke(app, ["job", "status", "job-1", "--follow", *AUTH])
    finally:
        fake_client.__init__ = original_init
    assert result.exit_code == 0, result.output
    assert "still trying" in result.stderr and "reachable again" in result.stderr
    assert "job job-1 completed" in result.stdout


def _follow_for_half_a_second(runner: CliRunner, fake_client, monkeypatch: pytest.MonkeyPatch,
                              state: object) -> object:
    """``job status -f --timeout 0.5`` polling every 0.1 s a coordinator that answers ``state``
    (a job, or an error it raises) every time; the polls' sleeps move a fake clock on."""
    clock = [1000.0]
    monkeypatch.setattr("essaim.job.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("essaim.job.time.sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    original_init = fake_client.__init__

    def init(self, *a, **kw):  # type: ignore[no-untyped-def]
        original_init(self, *a, **kw)
        self.job_states = [state] * 1000

    monkeypatch.setattr(fake_client, "__init__", init)
    return runner.invoke(app, ["job", "status", "job-1", "-f", "--interval", "0.1", "--timeout", "0.5", *AUTH])


def test_follow_stops_at_its_timeout(runner: CliRunner, fake_client, job_factory,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    result = _follow_for_half_a_second(runner, fake_client, monkeypatch, job_factory(status=JobStatus.RUNNING, epoch=1))
    assert result.exit_code == 1, result.output
    assert len([c for c in fake_client.instances[-1].calls if c[0] == "get_job"]) in (5, 6, 7)
    assert "stopped following after 0.5 s; job job-1 is running and goes on" in result.stderr


def test_follow_gives_up_on_an_unreachable_coordinator(runner: CliRunner, fake_client,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    result = _follow_for_half_a_second(runner, fake_client, monkeypatch,
                                       Unavailable("cannot reach the coordinator at 127.0.0.1:9"))
    assert result.exit_code == 5, result.output
    assert "still trying for 0.5 s" in result.stderr and "gave up after" in result.stderr


def test_download(runner: CliRunner, fake_client, job_factory, tmp_path: Path) -> None:
    fake_client_done = job_factory(status=JobStatus.COMPLETED)
    fake_client_done.has_artifact = True
    out = tmp_path / "result"

    original_init = fake_client.__init__

    def init(self, *a, **kw):  # type: ignore[no-untyped-def]
        original_init(self, *a, **kw)
        self.job_states = [fake_client_done]

    fake_client.__init__ = init
    try:
        result = runner.invoke(app, ["job", "download", "job-1", "--output", str(out), "--json", *AUTH])
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert body["artifact_dir"] == str(out / "artifact")
        assert body["provenance"] == str((out / "provenance.json").resolve())
        assert json.loads((out / "provenance.json").read_text()) == {"job": "job-1"}
        assert sorted(body["artifact_files"]) == sorted(
            str((out / "artifact" / n).resolve()) for n in ("adapter_config.json", "adapter_model.safetensors")
        )
        downloads = [c[1] for c in fake_client.instances[-1].calls if c[0] == "download"]
        assert downloads == [("job-1", FileKind.ARTIFACT, out)]  # one tree: artifact/ and provenance.json
        # a second download never mixes into the first without --force, which replaces it whole
        (out / "artifact" / "stale.bin").write_bytes(b"from an earlier download")
        again = runner.invoke(app, ["job", "download", "job-1", "-o", str(out), *AUTH])
        assert again.exit_code == 2 and "already holds a download" in again.stderr and "--force" in again.stderr
        human = runner.invoke(app, ["job", "download", "job-1", "-o", str(out), "--force", *AUTH])
        assert human.exit_code == 0, human.output
        assert human.stdout.strip() == str(out)
        assert "downloaded 2 artifact files" in human.stderr
        assert not (out / "artifact" / "stale.bin").exists()
        older = runner.invoke(app, ["job", "download", "job-1", "-o", str(out), "--force", "--base", *AUTH])
        assert older.exit_code == 0 and "does not describe its base model" in older.stderr, older.output
        # a provenance naming base files the job does not hold, or a base folder outside DIR/base: refused,
        # nothing fetched and the adapter left as it was
        for base in ({"source": "shipped", "name": "m", "path": "model",
                      "files": [{"file": "model/w.bin", "sha256": "ab" * 32}]},
                     {"source": "shipped", "name": "m", "path": "../../elsewhere", "files": []}):
            fake_client.provenance = {"job": "job-1", "base": base}
            hostile = runner.invoke(app, ["job", "download", "job-1", "-o", str(out), "--force", "--base", *AUTH])
            assert hostile.exit_code != 0 and "cannot be trusted" in hostile.stderr, hostile.output
            assert (out / "artifact" / "adapter_config.json").read_bytes() == b"x" * 100
            assert not (out / "base").exists()
    finally:
        fake_client.__init__ = original_init
        fake_client.provenance = None


def test_download_before_the_artifact_exists(runner: CliRunner, fake_client, tmp_path: Path) -> None:
    result = runner.invoke(app, ["job", "download", "job-1", "-o", str(tmp_path / "x"), *AUTH])
    assert result.exit_code == 2
    assert "no artifact yet" in result.stderr
    assert not (tmp_path / "x").exists()
