"""Which job a volunteer gets, and how shard slots are spread."""

from __future__ import annotations

from essaim.coordinator.scheduler import (
    GIB,
    Candidate,
    JobNeeds,
    assign_slots,
    pick_job,
    unfit_reason,
    waiting_reason,
)
from essaim.protocol.recipe import example_recipe_text, load_recipe
from essaim.protocol.types import SHARD_SLOTS, Hardware, Job, JobStatus

CPU_16G = Hardware(ram_bytes=16 * GIB, cpu_cores=8)
GPU_8G = Hardware(ram_bytes=32 * GIB, accelerator="cuda", gpu_count=1, gpu_vram_bytes=8 * GIB)


def _job(
    job_id: str, *, priority: int = 0, status: JobStatus = JobStatus.QUEUED, created: float = 0.0
) -> Job:
    return Job(id=job_id, name=job_id, status=status, recipe_yaml="", priority=priority, created_at=created)


def test_fit() -> None:
    assert unfit_reason(CPU_16G, JobNeeds(min_ram_gb=8)) is None
    assert "RAM" in unfit_reason(CPU_16G, JobNeeds(min_ram_gb=32))
    assert unfit_reason(CPU_16G, JobNeeds(gpu="required")) == "needs a GPU"
    assert unfit_reason(GPU_8G, JobNeeds(gpu="required", min_vram_gb=8)) is None
    assert "GPU memory" in unfit_reason(GPU_8G, JobNeeds(gpu="required", min_vram_gb=12))
    assert unfit_reason(GPU_8G, JobNeeds(gpu="none")) is None  # a GPU machine may run CPU jobs
    assert unfit_reason(Hardware(), JobNeeds(min_ram_gb=2)) is not None  # unknown RAM does not fit


def test_needs_come_from_the_recipe() -> None:
    needs = JobNeeds.of(load_recipe(example_recipe_text()))
    assert needs == JobNeeds(min_ram_gb=8, gpu="optional", min_vram_gb=0)


def test_pick_by_priority_then_running_then_age() -> None:
    easy = JobNeeds(min_ram_gb=1)
    cands = [
        Candidate(_job("old", created=1), easy),
        Candidate(_job("new", created=2), easy),
        Candidate(_job("gpu", priority=9), JobNeeds(gpu="required")),
    ]
    assert pick_job(cands, CPU_16G).id == "old"
    assert pick_job(cands, GPU_8G).id == "gpu"
    cands.append(Candidate(_job("running", status=JobStatus.RUNNING, created=5), easy))
    assert pick_job(cands, CPU_16G).id == "running"
    cands.append(Candidate(_job("urgent", priority=3, created=9), easy))
    assert pick_job(cands, CPU_16G).id == "urgent"
    done = [Candidate(_job("done", status=JobStatus.COMPLETED), easy)]
    assert pick_job(done, CPU_16G) is None
    assert pick_job([Candidate(_job("big"), JobNeeds(min_ram_gb=64))], CPU_16G) is None


def test_slots_partition_the_shards_among_volunteers() -> None:
    members = ["c", "a", "b"]
    all_slots = [assign_slots(v, members) for v in sorted(members)]
    flat = sorted(s for slots in all_slots for s in slots)
    assert flat == list(range(SHARD_SLOTS))
    assert assign_slots("a", members) == assign_slots("a", list(reversed(members)))
    assert assign_slots("solo", []) == list(range(SHARD_SLOTS))
    many = [f"v{i:03d}" for i in range(100)]
    assert all(len(assign_slots(v, many)) == 1 for v in many)


def test_a_shipped_models_weight_is_a_need() -> None:
    """A 135M-parameter model shipped in float32 needs ~2 GB of RAM on the CPU whatever the recipe
    declares; in bfloat16 files the same count of parameters; a full fine-tune 4 copies; a GPU
    machine holds the weights in RAM only as stored. A hub model is not weighed."""
    from essaim.coordinator.scheduler import RUNTIME_GIB, ModelSize

    lora = load_recipe(example_recipe_text().replace("min_ram_gb: 8", "min_ram_gb: 1"))
    assert lora.hardware.min_ram_gb == 1 and "/" in lora.model.name_or_path  # a hub id
    assert ModelSize.of(lora, [("data/train.jsonl", 10**9)], None) is None  # a hub model ships no weights
    shipped = lora.model_copy(update={"model": lora.model.model_copy(update={"name_or_path": "model"})})
    files = [("model/model.safetensors", 538_060_000), ("model/config.json", 800), ("data/train.jsonl", 10**9)]
    size = ModelSize.of(shipped, files, {"torch_dtype": "float32"})
    assert size == ModelSize(parameters=134_515_000, stored_bytes=538_060_000, full=False)
    assert ModelSize.of(shipped, files, {"torch_dtype": "bfloat16"}).parameters == 269_030_000
    needs = JobNeeds.of(shipped, size)
    small = Hardware(ram_bytes=int(1.5 * GIB), cpu_cores=2)
    reason = unfit_reason(small, needs)
    assert reason is not None and reason.startswith("needs 2.0 GB of RAM (its model: about 135M parameters")
    assert needs.ram_gb(CPU_16G) == 538_060_000 / GIB + RUNTIME_GIB
    assert unfit_reason(Hardware(ram_bytes=3 * GIB, cpu_cores=2), needs) is None
    full = JobNeeds.of(shipped, ModelSize(parameters=134_515_000, stored_bytes=538_060_000, full=True))
    assert full.ram_gb(CPU_16G) == 4 * 538_060_000 / GIB + RUNTIME_GIB
    assert full.ram_gb(GPU_8G) == 538_060_000 / GIB + RUNTIME_GIB
    assert JobNeeds.of(shipped.model_copy(update={"hardware": shipped.hardware.model_copy(
        update={"min_ram_gb": 16})}), size).ram_gb(CPU_16G) == 16  # the recipe may ask for more


def test_a_queued_job_says_why_it_has_no_volunteer() -> None:
    easy, gpu = JobNeeds(min_ram_gb=1), JobNeeds(gpu="required")
    queued = Candidate(_job("queued0", created=5), easy)
    running = Candidate(_job("running", status=JobStatus.RUNNING, created=1), easy)
    urgent = Candidate(_job("urgent00", priority=4, created=9), easy)
    assert waiting_reason("queued0", [queued], []) == "waiting for volunteers: none is online"
    # none of the online machines fits: the first one's reason, as a volunteer reads it
    why = waiting_reason("gpujob", [Candidate(_job("gpujob"), gpu)], [(CPU_16G, ""), (CPU_16G, "")])
    assert why == "none of the 2 volunteer(s) online can run it: it needs a GPU"
    # told to a researcher: what the job needs, never what a volunteer's machine has
    big = Candidate(_job("big"), JobNeeds(min_ram_gb=64))
    assert waiting_reason("big", [big], [(CPU_16G, "")]) == "none of the 1 volunteer(s) online can run it: it needs 64.0 GB of RAM"
    vram = Candidate(_job("vram"), JobNeeds(gpu="required", min_vram_gb=12))
    assert waiting_reason("vram", [vram], [(GPU_8G, "")]).endswith("it needs 12 GB of GPU memory")
    # machines alike are counted, each kind weighed once
    crowd = [(CPU_16G, ""), (GPU_8G, "running"), (CPU_16G, ""), (GPU_8G, "")]
    assert waiting_reason("queued0", [queued, running], crowd) == (
        "the 3 free volunteer(s) that can run it go to job running (running) first: "
        "at the same priority a running job comes first")
    assert waiting_reason("queued0", [queued], crowd).startswith("3 free volunteer(s) online can take it")
    # a free machine that fits takes it when it asks for work
    assert waiting_reason("queued0", [queued], [(CPU_16G, "")]).startswith("1 free volunteer(s) online can take it")
    # a free machine goes to a job ranked ahead of it: which one, and why
    why = waiting_reason("queued0", [queued, urgent], [(CPU_16G, "")])
    assert "go to job urgent00 (urgent00) first: its priority is higher (4 against 0)" in why
    why = waiting_reason("queued0", [queued, running], [(CPU_16G, "")])
    assert why.endswith("at the same priority a running job comes first")
    # every machine that could run it is on another job
    why = waiting_reason("queued0", [queued, running], [(CPU_16G, "running"), (GPU_8G, "running")])
    assert why == "the 2 volunteer(s) online that can run it are on other jobs until those end"
    assert waiting_reason("gone", [queued], [(CPU_16G, "")]) == ""
