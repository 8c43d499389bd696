"""The final artifact: a PEFT adapter (or full model) that loads back, its model card and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from essaim.protocol.recipe import Recipe
from essaim.swarm.artifact import Provenance, data_files, write_artifact
from essaim.swarm.cache import job_files
from essaim.swarm.errors import ArtifactError
from essaim.swarm.model import load_model

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _provenance(recipe: Recipe, base_model: str) -> Provenance:
    return Provenance(
        job_id="job-42",
        base_model=base_model,
        recipe=recipe.model_dump(mode="json"),
        dataset=[{"file": "data/train.txt", "sha256": "ab" * 32}],
        epochs=12,
        eval={"metric": "exact_match", "before": 0.0, "after": 0.81,
              "curve": [{"epoch": 5, "value": 0.3}, {"epoch": 12, "value": 0.81}]},
        contributors=[{"volunteer": "alice", "samples": 1200, "compute_seconds": 61.5},
                      {"volunteer": "bob", "samples": 900, "compute_seconds": 48.0}],
        ledger_final_hash="cd" * 32,
        started_at=1_700_000_000.0,
        finished_at=1_700_000_300.0,
    )


def _logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer("12+7=19")["input_ids"]])
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_lora_artifact_loads_with_peft_and_gives_the_same_logits(
    demo_recipe: Recipe, demo_files: dict[str, Path], demo_job_dir: Path, tmp_path: Path, recipe_with
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = recipe_with(demo_recipe, adapter=LORA)
    loaded = load_model(recipe, files=demo_files, device="cpu")
    with torch.no_grad():  # LoRA B starts at zero: move it so the adapter matters
        for name, p in loaded.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p)) if "lora_B" in name else None
    expected = _logits(loaded.model, loaded.tokenizer)
    provenance = _provenance(recipe, base_model="org/tiny-adder")

    artifact = write_artifact(tmp_path / "out", loaded, provenance)
    assert artifact == tmp_path / "out" / "artifact"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "provenance.json",
            "tokenizer.json"} <= {p.name for p in artifact.iterdir()}
    assert json.loads((artifact / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-adder"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["artifact", "provenance.json"]

    base = AutoModelForCausalLM.from_pretrained(demo_job_dir / "model")
    reloaded = PeftModel.from_pretrained(base, artifact)
    assert torch.allclose(_logits(reloaded, loaded.tokenizer), expected, atol=1e-5)
    with reloaded.disable_adapter():
        assert not torch.allclose(_logits(reloaded, loaded.tokenizer), expected, atol=1e-4)

    back = Provenance.from_json((tmp_path / "out" / "provenance.json").read_text())
    assert back == provenance
    assert (artifact / "provenance.json").read_text() == (tmp_path / "out" / "provenance.json").read_text()
    card = (artifact / "README.md").read_text()
    for needle in ("org/tiny-adder", "ab" * 32, "cd" * 32, "alice", "bob", "exact_match", "0.81",
                   "PeftModel.from_pretrained", "job-42"):
        assert needle in card, needle


def test_a_full_artifact_replaces_the_previous_one(demo_recipe: Recipe, demo_files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    out = tmp_path / "out"
    write_artifact(out, loaded, _provenance(demo_recipe, base_model="model"))
    with torch.no_grad():
        for _, p in loaded.trainable_parameters():
            p.mul_(1.5)
    expected = _logits(loaded.model, loaded.tokenizer)
    artifact = write_artifact(out, loaded, _provenance(demo_recipe, base_model="model"))
    assert sorted(p.name for p in out.iterdir()) == ["artifact", "provenance.json"]
    model = AutoModelForCausalLM.from_pretrained(artifact)
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    assert torch.allclose(_logits(model, tokenizer), expected, atol=1e-5)
    assert "AutoModelForCausalLM.from_pretrained" in (artifact / "README.md").read_text()


def test_provenance_lists_every_data_file_with_its_hash(demo_recipe: Recipe, demo_files: dict[str, Path]) -> None:
    entries = data_files(demo_recipe, job_files(demo_files))
    assert [e.file for e in entries] == ["data/train.txt", "data/eval.jsonl"]
    assert all(len(e.sha256) == 64 for e in entries)
    with pytest.raises(ArtifactError, match="no sha256 known"):
        data_files(demo_recipe, [])


def test_provenance_names_the_base_model_and_pins_its_files(
    demo_recipe: Recipe, demo_files: dict[str, Path], demo_job_dir: Path, recipe_with, tmp_path: Path
) -> None:
    """A shipped base is named by the recipe's model.origin (else the hub id its config was saved
    from, else its folder) and pinned by the sha256 of each file; a folder on the coordinator is
    hashed; a hub model is its id and revision. The model card says so and claims no hub id it lacks."""
    from essaim.swarm.artifact import base_model_record, hash_tree, model_card

    files = {f.path: (f.sha256, demo_files[f.path]) for f in job_files(demo_files)}
    on_disk = {f"model/{d.file}": d.sha256 for d in hash_tree(demo_job_dir / "model")}
    assert on_disk and all(k.startswith("model/") for k in on_disk)

    shipped = base_model_record(demo_recipe, files)
    assert (shipped.source, shipped.name, shipped.path) == ("shipped", "model", "model")
    assert {f.file: f.sha256 for f in shipped.files} == on_disk
    card = model_card(_provenance(demo_recipe, shipped.name).model_copy(update={"base": shipped}), adapter="lora")
    assert "base_model:" not in card.split("---")[1]  # "model" is no hub id
    assert "essaim job download job-42 --base" in card and next(iter(on_disk.values())) in card

    declared = recipe_with(demo_recipe, model={"origin": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    named = base_model_record(declared, files)
    assert (named.name, named.origin, named.source) == ("HuggingFaceTB/SmolLM2-135M-Instruct",) * 2 + ("shipped",)
    card = model_card(_provenance(declared, named.name).model_copy(update={"base": named}), adapter="lora")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "The researcher says" in card

    folder = recipe_with(demo_recipe, model={"name_or_path": str(demo_job_dir / "model")})
    local = base_model_record(folder, {}, local_dirs=[demo_job_dir])
    assert (local.source, local.name) == ("local", "model")
    assert {f"model/{f.file}": f.sha256 for f in local.files} == on_disk

    hub = base_model_record(recipe_with(demo_recipe, model={"name_or_path": "org/tiny", "revision": "v2"}), {})
    assert (hub.source, hub.name, hub.revision, hub.files) == ("hub", "org/tiny", "v2", [])

    loaded = load_model(recipe_with(demo_recipe, adapter=LORA), files=demo_files, device="cpu")
    provenance = _provenance(declared, named.name).model_copy(update={"base": named})
    artifact = write_artifact(tmp_path / "out", loaded, provenance)
    # the adapter names its base as the recipe does (download --base points it at the downloaded copy)
    assert json.loads((artifact / "adapter_config.json").read_text())["base_model_name_or_path"] == "model"
    assert Provenance.from_json((artifact / "provenance.json").read_text()).base == named


def test_sample_continuations_are_generated_and_shown_in_fences_they_cannot_close(
    demo_recipe: Recipe, demo_files: dict[str, Path]
) -> None:
    """The model's text (or a researcher's prompt) goes into the model card inside a fence longer
    than any run of backticks in it: no sample can end the block and write Markdown of its own."""
    from essaim.swarm.artifact import Sample, model_card
    from essaim.swarm.evaluate import generate_samples

    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    texts = generate_samples(loaded, ["12+7=", "40+25="], max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) and len(t) <= 16 for t in texts)
    assert generate_samples(loaded, ["12+7="], max_new_tokens=4) == texts[:1]  # greedy: the same each time
    hostile = "````\n# Injected heading\n[click](javascript:alert(1))"
    provenance = _provenance(demo_recipe, "org/x").model_copy(update={"samples": [
        Sample(prompt="12+7=", before=texts[0], after="19"), Sample(prompt=hostile, before=None, after=hostile)]})
    card = model_card(provenance, adapter="lora")
    assert "## Samples" in card and "`````text\n" + hostile + "\n`````" in card
    assert "\n# Injected heading" in card.split("`````text\n", 1)[1]  # only inside the fence


def test_training_logs_go_into_the_artifact_and_its_card(demo_recipe: Recipe, demo_files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    logs = {"training_log.csv": "time,epoch\n2026-01-01T00:00:00Z,0\n", "rounds.csv": "time,epoch\n"}
    artifact = write_artifact(tmp_path / "out", loaded, _provenance(demo_recipe, base_model="model"), logs)
    assert {name: (artifact / name).read_text() for name in logs} == logs
    assert "## Training log" in (artifact / "README.md").read_text()
    assert "`rounds.csv`, `training_log.csv`" in (artifact / "README.md").read_text()
    for bad in ("../escape.csv", "README.md", "provenance.json"):
        with pytest.raises(ValueError, match="not a log file"):
            write_artifact(tmp_path / "bad", loaded, _provenance(demo_recipe, base_model="model"), {bad: "x"})
    assert not (tmp_path / "escape.csv").exists()
