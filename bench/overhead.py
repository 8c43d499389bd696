"""What essaim's swarm machinery costs one trainer: samples/s of a swarm of one against a plain PyTorch loop.

Three variants train the same model on the same data with the same micro-batch, each in a fresh
process, one after the other, repeated (alternating) and summarized by the median:

- ``plain``: a plain PyTorch loop (forward, backward, clip, AdamW step), the recipe's optimizer;
- ``sync``: essaim's trainer loop (:class:`essaim.swarm.peer.TrainingPeer`) with hivemind on
  (its own DHT, :func:`essaim.swarm.optimizer.build_optimizer` in synchronous gradient-averaging
  mode, signed progress records), alone in its swarm;
- ``local``: the same in local-update (DiLoCo) mode.

Each run builds everything first (not timed), trains ``--warmup`` seconds, then counts the samples
of the next ``--seconds`` seconds. The swarm's epoch (``--target`` samples) is kept short so that
every window holds several epoch boundaries, where essaim does its extra work (optimizer step or
outer step, progress records); the plain loop has none. It also records the CPU time of the run's whole process tree
(hivemind's DHT, averagers and libp2p daemon included) per 1,000 samples, since those helpers may
run on other cores. Target: essaim's samples/s >= 0.95 x the plain loop's.

    .venv/bin/python bench/overhead.py                        # "small" model (~3M parameters), 3 rounds
    .venv/bin/python bench/overhead.py --size demo --seconds 30
    .venv/bin/python bench/overhead.py --profile local --rounds 1   # cProfile of the essaim runs (no results written)

Writes ``bench/results/overhead.json`` and ``.md`` (``overhead-<size>`` when ``--size`` is not small).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("plain", "sync", "local")
SIZES = {  # DemoConfig overrides
    "demo": {},
    "small": {"hidden_size": 256, "layers": 4, "heads": 8, "intermediate_size": 1024},
}


# ---- one run, in its own process ----

def _job(root: Path, size: str, mode: str, target: int | None) -> tuple[Any, dict[str, Path]]:
    import yaml
    from essaim.protocol.recipe import load_recipe
    from essaim.swarm.cache import collect_job_files
    from essaim.swarm.demo_task import DemoConfig, make_demo_job

    path = make_demo_job(root, train_lines=20000, config=DemoConfig(**SIZES[size]))
    data = yaml.safe_load(path.read_text())
    data["training"]["averaging"] = "local" if mode == "local" else "sync"
    data["training"]["epochs"] = 1_000_000  # never "completed" within a run
    if target:
        data["training"]["target_batch_size"] = target
    recipe = load_recipe(yaml.safe_dump(data), source="overhead bench")
    return recipe, collect_job_files(recipe, root)


def _tree_cpu() -> float:
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def run_plain(recipe: Any, loaded: Any, dataset: Any, shards: list[int], warmup: float, seconds: float) -> dict[str, Any]:
    import torch
    from essaim.swarm.data import iterate_batches
    from essaim.swarm.optimizer import torch_optimizer_factory

    model = loaded.model
    model.train()
    params = [p for _, p in loaded.trainable_parameters()]
    optimizer = torch_optimizer_factory(recipe.optimizer)(params)
    clip = recipe.optimizer.max_grad_norm
    started = time.perf_counter()
    mark: tuple[float, int, float] | None = None
    samples, data_pass = 0, 0
    while True:
        for batch in iterate_batches(dataset, shards, batch_size=recipe.training.batch_size,
                                     seed=recipe.training.seed, epoch=data_pass):
            loss = model(**batch).loss
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            samples += int(batch["input_ids"].shape[0])
            now = time.perf_counter()
            if mark is None and now - started >= warmup:
                mark = (now, samples, _tree_cpu())
            elif mark is not None and now - mark[0] >= seconds:
                return _result(mark, (now, samples, _tree_cpu()), epochs=0)
        data_pass += 1


def run_essaim(recipe: Any, loaded: Any, dataset: Any, shards: list[int], warmup: float, seconds: float,
               key_path: Path) -> dict[str, Any]:
    from essaim.swarm.dht import shutdown_dht, start_dht
    from essaim.swarm.identity import load_or_create_private_key
    from essaim.swarm.optimizer import build_optimizer
    from essaim.swarm.peer import TrainingPeer
    from essaim.swarm.records import progress_validators

    job_id = f"bench-{os.getpid()}"
    key = load_or_create_private_key(key_path)
    dht = start_dht(initial_peers=[], identity_path=None, authorizer=None, client_mode=False,
                    record_validators=progress_validators(job_id), private_key=key)
    optimizer = None
    try:
        optimizer = build_optimizer(loaded, recipe, dht=dht, run_id=job_id, private_key=key)
        peer = TrainingPeer(job_id=job_id, recipe=recipe, loaded=loaded, dataset=dataset, shard_ids=shards,
                            optimizer=optimizer, dht=dht, volunteer_id="bench")
        marks: list[tuple[float, int, float]] = []

        def clock() -> None:
            time.sleep(warmup)
            marks.append((time.perf_counter(), peer.counters.samples, _tree_cpu()))
            time.sleep(seconds)
            marks.append((time.perf_counter(), peer.counters.samples, _tree_cpu()))
            peer.stop(timeout=0)

        threading.Thread(target=clock, daemon=True).start()
        peer.run()
        return _result(marks[0], marks[1], epochs=optimizer.local_epoch)
    finally:
        if optimizer is not None:
            optimizer.shutdown()
        shutdown_dht(dht)


def _result(start: tuple[float, int, float], end: tuple[float, int, float], *, epochs: int) -> dict[str, Any]:
    elapsed, samples, cpu = end[0] - start[0], end[1] - start[1], end[2] - start[2]
    return {"seconds": round(elapsed, 3), "samples": samples, "samples_per_second": samples / elapsed,
            "cpu_s_per_1k_samples": 1000 * cpu / max(samples, 1), "epochs": epochs}


def worker(args: argparse.Namespace) -> int:
    import torch
    from essaim.protocol.types import shards_for_slots
    from essaim.swarm.data import build_train_dataset
    from essaim.swarm.model import load_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="essaim-overhead-") as tmp:
        recipe, files = _job(Path(tmp), args.size, args.worker, args.target)
        loaded = load_model(recipe, files=files, device="cpu", seed=recipe.training.seed)
        dataset = build_train_dataset(recipe, loaded.tokenizer, files=files)
        shards = shards_for_slots([], dataset.num_shards)
        if args.worker == "plain":
            result = run_plain(recipe, loaded, dataset, shards, args.warmup, args.seconds)
        elif args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            result = run_essaim(recipe, loaded, dataset, shards, args.warmup, args.seconds, Path(tmp) / "key.pem")
            profiler.disable()
            stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
            stats.print_stats(40)
        else:
            result = run_essaim(recipe, loaded, dataset, shards, args.warmup, args.seconds, Path(tmp) / "key.pem")
        params = sum(p.numel() for _, p in loaded.trainable_parameters())
    print(json.dumps({"variant": args.worker, "parameters": params, "target_batch_size":
                      recipe.training.target_batch_size, "batch_size": recipe.training.batch_size, **result}),
          flush=True)
    os._exit(0)  # hivemind's helper processes leave with this one


# ---- the driver ----

def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", variant, "--size", args.size, "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    if args.target:
        cmd += ["--target", str(args.target)]
    if args.profile == variant:
        cmd += ["--profile", variant]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=args.warmup + args.seconds + 300)
    if args.profile == variant:
        sys.stderr.write(done.stderr[-20000:])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    plain = statistics.median(r["samples_per_second"] for r in by["plain"])
    out: dict[str, Any] = {}
    for variant, items in by.items():
        median = statistics.median(r["samples_per_second"] for r in items)
        out[variant] = {
            "samples_per_second_median": round(median, 2),
            "samples_per_second_runs": [round(r["samples_per_second"], 2) for r in items],
            "ratio_to_plain": round(median / plain, 4),
            "cpu_s_per_1k_samples_median": round(statistics.median(r["cpu_s_per_1k_samples"] for r in items), 3),
            "epochs_per_run": [r["epochs"] for r in items],
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"# overhead: one essaim trainer against a plain PyTorch loop ({report['size']} model)",
        "",
        f"{report['parameters']:,} trained parameters, micro-batch {report['batch_size']}, target batch "
        f"{report['target_batch_size']}, {report['threads']} thread(s), {report['rounds']} alternating rounds of "
        f"{report['seconds']:.0f} s (after {report['warmup']:.0f} s warm-up); {report['machine']}.",
        "",
        "| variant | samples/s (median) | runs | ratio to plain | CPU s / 1k samples | epochs per run |",
        "|---|---:|---|---:|---:|---|",
    ]
    for variant in VARIANTS:
        v = s[variant]
        lines.append(
            f"| {variant} | {v['samples_per_second_median']:.1f} | "
            f"{', '.join(f'{x:.1f}' for x in v['samples_per_second_runs'])} | {v['ratio_to_plain']:.3f} | "
            f"{v['cpu_s_per_1k_samples_median']:.2f} | {', '.join(map(str, v['epochs_per_run']))} |"
        )
    lines += ["", f"Target: ratio >= {report['target_ratio']}. Load average during the runs: "
              f"{report['load_average']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target", type=int, default=400,
                        help="samples per swarm epoch (0: the demo recipe's 4,800, which on the small model puts "
                             "no epoch boundary, hence no optimizer step in sync mode, in a 40 s window)")
    parser.add_argument("--profile", choices=VARIANTS, default=None, help="print a cProfile of one variant's runs")
    parser.add_argument("--worker", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    runs: list[dict[str, Any]] = []
    loads = []
    for round_ in range(args.rounds):
        order = VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS))
        for variant in order:
            result = run_variant(variant, args)
            loads.append(os.getloadavg()[0])
            runs.append(result)
            print(f"round {round_ + 1} {variant}: {result['samples_per_second']:.1f} samples/s", file=sys.stderr)
    first = runs[0]
    report = {
        "benchmark": "overhead", "size": args.size, "parameters": first["parameters"],
        "batch_size": first["batch_size"], "target_batch_size": first["target_batch_size"],
        "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup, "seconds": args.seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average": f"{min(loads):.1f}-{max(loads):.1f}", "target_ratio": 0.95,
        "summary": summarize(runs), "runs": runs,
    }
    if args.profile:  # profiled runs are slower: their figures are not results
        print(markdown(report))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "overhead" if args.size == "small" else f"overhead-{args.size}"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
