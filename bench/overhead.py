"""What essaim's swarm machinery costs one trainer: samples/s against a plain PyTorch loop that steps alike.

Each essaim variant is compared with a plain loop on the same model, data, micro-batch and optimizer
step schedule, so that the ratio is the cost of essaim's wrapper and nothing else:

- ``plain``: a plain PyTorch loop (forward, backward, clip, AdamW step every micro-batch), the
  recipe's optimizer; the baseline of ``local``;
- ``plain-accum``: the same loop accumulating the clipped gradients of every micro-batch and
  stepping AdamW once per ``--target`` samples, as gradient averaging does; the baseline of ``sync``;
- ``sync``: essaim's trainer loop (:class:`essaim.swarm.peer.TrainingPeer`) with hivemind on
  (its own DHT, :func:`essaim.swarm.optimizer.build_optimizer` in synchronous gradient-averaging
  mode, signed progress records), alone in its swarm: one optimizer step per swarm epoch;
- ``local``: the same in local-update (DiLoCo) mode: the inner AdamW steps every micro-batch, and
  an outer step (alone: a no-op round) ends each swarm epoch.

``NAME-pair`` (``--variants local-pair,plain-pair``...) runs two processes of a variant side by
side, each on half of the shards: for ``sync-pair`` and ``local-pair`` the two are one swarm and
average with each other every epoch, against two plain loops sharing the cores the same way.

Each run builds everything first (not timed); the processes of a run are then told to start
together, train ``--warmup`` seconds, and count the samples of the next ``--seconds`` seconds.
Variants alternate over ``--rounds`` rounds and the median counts. The swarm's epoch (``--target``
samples) is kept short so that every window holds several epoch boundaries, where essaim does its
extra work (optimizer step or outer step, progress records). It also records the CPU time of the
run's whole process tree (hivemind's DHT, averagers and libp2p daemon included) per 1,000 samples,
since those helpers may run on other cores, and the optimizer steps per 1,000 samples (the check
that each pair steps alike). Target: essaim's samples/s >= 0.95 x its baseline's.

    .venv/bin/python bench/overhead.py                        # "small" model (~4M parameters), 3 rounds
    .venv/bin/python bench/overhead.py --size demo --seconds 30
    .venv/bin/python bench/overhead.py --variants plain,local,plain-pair,local-pair
    .venv/bin/python bench/overhead.py --profile local --rounds 1   # cProfile of the essaim runs (no results written)

Writes ``bench/results/overhead.json`` and ``.md`` (``overhead-<size>`` when ``--size`` is not small).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BASES = ("plain", "plain-accum", "sync", "local")
# each variant against the plain loop that steps its optimizer on the same schedule
BASELINE = {"plain": "plain", "plain-accum": "plain-accum", "sync": "plain-accum", "local": "plain"}
VARIANTS = (*BASES, *(f"{b}-pair" for b in BASES))
DEFAULT_VARIANTS = BASES
SIZES = {  # DemoConfig overrides
    "demo": {},
    "small": {"hidden_size": 256, "layers": 4, "heads": 8, "intermediate_size": 1024},
}


def split_variant(variant: str) -> tuple[str, int]:
    """``local-pair`` -> (``local``, 2 processes); ``local`` -> (``local``, 1)."""
    base = variant.removesuffix("-pair")
    return base, 2 if base != variant else 1


def baseline_of(variant: str) -> str:
    """The plain variant ``variant`` is measured against: same step schedule, same process count."""
    base, processes = split_variant(variant)
    return BASELINE[base] + ("-pair" if processes == 2 else "")


# ---- one run, in its own process ----


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


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


Mark = tuple[float, int, float, int, int]  # (perf_counter, samples, tree CPU s, optimizer steps, epochs)


def _wait_go() -> float:
    """Tell the driver this process is built, and wait for the wall time to start at."""
    _say(event="ready")
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        os._exit(3)
    return float(line[1])


def run_plain(recipe: Any, loaded: Any, dataset: Any, shards: list[int], warmup: float, seconds: float, *,
              accumulate: bool, processes: int = 1) -> dict[str, Any]:
    """Forward, backward and clip every micro-batch; step AdamW every micro-batch, or (``accumulate``)
    on the mean of the clipped gradients once per ``target_batch_size / processes`` samples, as
    often as each of that many peers of one swarm steps in sync mode."""
    import torch
    from essaim.swarm.data import iterate_batches
    from essaim.swarm.optimizer import torch_optimizer_factory

    model = loaded.model
    model.train()
    params = [p for _, p in loaded.trainable_parameters()]
    optimizer = torch_optimizer_factory(recipe.optimizer)(params)
    clip = recipe.optimizer.max_grad_norm
    target = recipe.training.target_batch_size / processes
    sums = [torch.zeros_like(p) for p in params] if accumulate else []
    t0 = _wait_go()
    mark: Mark | None = None
    samples = data_pass = steps = epochs = 0
    held = micro = 0  # samples and micro-batches accumulated since the last step
    while True:
        for batch in iterate_batches(dataset, shards, batch_size=recipe.training.batch_size,
                                     seed=recipe.training.seed, epoch=data_pass):
            loss = model(**batch).loss
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            n = int(batch["input_ids"].shape[0])
            if not accumulate:
                optimizer.step()
                steps += 1
            else:
                with torch.no_grad():
                    for total, p in zip(sums, params, strict=True):
                        if p.grad is not None:
                            total.add_(p.grad)
                held, micro = held + n, micro + 1
                if held >= target:
                    with torch.no_grad():
                        for total, p in zip(sums, params, strict=True):
                            if p.grad is not None:
                                p.grad.copy_(total).div_(micro)
                            total.zero_()
                    optimizer.step()
                    held = micro = 0
                    steps += 1
                    epochs += 1
            optimizer.zero_grad(set_to_none=not accumulate)  # accumulating: the buffers stay allocated
            samples += n
            now = time.time()
            if mark is None and now >= t0 + warmup:
                mark = (time.perf_counter(), samples, _tree_cpu(), steps, epochs)
            elif mark is not None and now >= t0 + warmup + seconds:
                return _result(mark, (time.perf_counter(), samples, _tree_cpu(), steps, epochs))
        data_pass += 1


def run_essaim(recipe: Any, loaded: Any, dataset: Any, shards: list[int], warmup: float, seconds: float, *,
               key_path: Path, job_id: str, index: int, processes: int) -> dict[str, Any]:
    from essaim.swarm.dht import shutdown_dht, start_dht, visible_maddrs
    from essaim.swarm.identity import load_or_create_private_key
    from essaim.swarm.optimizer import build_optimizer
    from essaim.swarm.peer import TrainingPeer
    from essaim.swarm.records import progress_validators

    key = load_or_create_private_key(key_path)
    initial: list[str] = []
    if index > 0:  # the second of a pair joins the first's swarm
        initial = json.loads(sys.stdin.readline())["initial_peers"]
    dht = start_dht(initial_peers=initial, identity_path=None, authorizer=None, client_mode=False,
                    record_validators=progress_validators(job_id), private_key=key)
    if index == 0 and processes > 1:
        _say(event="dht", maddrs=visible_maddrs(dht))
    optimizer = None
    try:
        optimizer = build_optimizer(loaded, recipe, dht=dht, run_id=job_id, private_key=key)
        peer = TrainingPeer(job_id=job_id, recipe=recipe, loaded=loaded, dataset=dataset, shard_ids=shards,
                            optimizer=optimizer, dht=dht, volunteer_id=f"bench-{index}", join_swarm=False)
        local = recipe.training.averaging == "local"
        counts = {"calls": 0, "epochs": 0}
        original_step = optimizer.step

        def counted_step(batch_size: int) -> Any:
            result = original_step(batch_size)
            counts["calls"] += 1
            counts["epochs"] += int(result.new_epoch)
            return result

        optimizer.step = counted_step  # type: ignore[method-assign]
        marks: list[Mark] = []

        def mark() -> None:
            # local mode steps its inner optimizer on every call; sync mode once per epoch
            steps = counts["calls"] if local else counts["epochs"]
            marks.append((time.perf_counter(), peer.counters.samples, _tree_cpu(), steps, counts["epochs"]))

        t0 = _wait_go()

        def clock() -> None:
            time.sleep(max(0.0, t0 + warmup - time.time()))
            mark()
            time.sleep(max(0.0, t0 + warmup + seconds - time.time()))
            mark()
            peer.stop(timeout=0)

        threading.Thread(target=clock, daemon=True).start()
        peer.run()
        return {**_result(marks[0], marks[1]), "peers_at_end": optimizer.num_peers}
    finally:
        if optimizer is not None:
            optimizer.shutdown()
        shutdown_dht(dht)


def _result(start: Mark, end: Mark) -> dict[str, Any]:
    elapsed, samples, cpu = end[0] - start[0], end[1] - start[1], end[2] - start[2]
    steps, epochs = end[3] - start[3], end[4] - start[4]
    return {"seconds": round(elapsed, 3), "samples": samples, "samples_per_second": samples / elapsed,
            "cpu_s_per_1k_samples": 1000 * cpu / max(samples, 1), "optimizer_steps": steps,
            "optimizer_steps_per_1k_samples": round(1000 * steps / max(samples, 1), 3), "epochs": epochs}


def worker(args: argparse.Namespace) -> int:
    import torch
    from essaim.protocol.types import shards_for_slots
    from essaim.swarm.data import build_train_dataset
    from essaim.swarm.model import load_model

    torch.set_num_threads(args.threads)
    base = args.worker
    with tempfile.TemporaryDirectory(prefix="essaim-overhead-") as tmp:
        recipe, files = _job(Path(tmp), args.size, base, args.target)
        loaded = load_model(recipe, files=files, device="cpu", seed=recipe.training.seed)
        dataset = build_train_dataset(recipe, loaded.tokenizer, files=files)
        shards = [s for s in shards_for_slots([], dataset.num_shards) if s % args.processes == args.index]
        if base.startswith("plain"):
            result = run_plain(recipe, loaded, dataset, shards, args.warmup, args.seconds,
                               accumulate=base == "plain-accum", processes=args.processes)
        else:
            def run() -> dict[str, Any]:
                return run_essaim(recipe, loaded, dataset, shards, args.warmup, args.seconds,
                                  key_path=Path(tmp) / "key.pem", job_id=args.job_id, index=args.index,
                                  processes=args.processes)

            if args.profile:
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                profiler.enable()
                result = run()
                profiler.disable()
                stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
                stats.print_stats(40)
            else:
                result = run()
        params = sum(p.numel() for _, p in loaded.trainable_parameters())
    _say(event="result", variant=base, process=args.index, parameters=params,
         target_batch_size=recipe.training.target_batch_size, batch_size=recipe.training.batch_size, **result)
    os._exit(0)  # hivemind's helper processes leave with this one


# ---- the driver ----


class _Worker:
    """One worker process; its JSON lines are read as they come."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=env, start_new_session=True)

    def expect(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                item = json.loads(line)
                if item.get("event") == event:
                    return item
        self._log.flush()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"worker exited ({self.proc.wait()}) before {event!r}:\n{tail}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


def run_variant(variant: str, args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    """Run ``variant``'s processes together; one result per process."""
    base, processes = split_variant(variant)
    job_id = f"overhead-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    workers: list[_Worker] = []

    def kill_all() -> None:  # a worker that hangs: its stdout closes, and expect() reports it
        for w in workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(w.proc.pid, signal.SIGKILL)

    timer = threading.Timer(args.warmup + args.seconds + 300, kill_all)
    timer.start()
    try:
        for index in range(processes):
            cmd = [sys.executable, __file__, "--worker", base, "--index", str(index), "--processes",
                   str(processes), "--job-id", job_id, "--size", args.size, "--threads", str(args.threads),
                   "--warmup", str(args.warmup), "--seconds", str(args.seconds), "--target", str(args.target)]
            if args.profile == base:
                cmd += ["--profile", base]
            workers.append(_Worker(cmd, env, logs / f"{variant}-{index}.log"))
        if processes > 1 and not base.startswith("plain"):
            maddrs = workers[0].expect("dht")["maddrs"]
            for w in workers[1:]:
                w.send(json.dumps({"initial_peers": maddrs}))
        for w in workers:
            w.expect("ready")
        t0 = time.time() + 0.5
        for w in workers:
            w.send(f"go {t0}")
        results = [{**w.expect("result"), "variant": variant} for w in workers]
    finally:
        timer.cancel()
        for w in workers:
            w.close()
        if args.profile == base:
            for w in workers:
                sys.stderr.write(w.log_path.read_text(errors="replace")[-20000:])
    return results


def run_rate(results: list[dict[str, Any]]) -> float:
    """Samples/s per process of one run (the mean over its processes)."""
    return statistics.mean(r["samples_per_second"] for r in results)


def summarize(runs: list[list[dict[str, Any]]], variants: list[str]) -> dict[str, Any]:
    """Per variant: the median over its runs of the samples/s per process, and its ratio to the
    median of its baseline (the plain loop with the same step schedule and process count)."""
    by = {v: [r for r in runs if r[0]["variant"] == v] for v in variants}
    medians = {v: statistics.median(run_rate(r) for r in items) for v, items in by.items() if items}
    cpu = {v: statistics.median(x["cpu_s_per_1k_samples"] for run in items for x in run)
           for v, items in by.items() if items}
    out: dict[str, Any] = {}
    for variant, items in by.items():
        if not items:
            continue
        baseline = baseline_of(variant)
        everything = [x for run in items for x in run]
        out[variant] = {
            "baseline": baseline,
            "samples_per_second_median": round(medians[variant], 2),
            "samples_per_second_runs": [round(run_rate(r), 2) for r in items],
            "ratio_to_baseline": round(medians[variant] / medians[baseline], 4) if baseline in medians else None,
            "cpu_s_per_1k_samples_median": round(cpu[variant], 3),
            # what other work on the machine disturbs least: CPU seconds per sample against the baseline's
            "cpu_per_sample_over_baseline": round(cpu[variant] / cpu[baseline], 4) if baseline in cpu else None,
            "optimizer_steps_per_1k_samples_median": round(
                statistics.median(x["optimizer_steps_per_1k_samples"] for x in everything), 3),
            "epochs_per_process_per_run": [round(statistics.mean(x["epochs"] for x in run), 1) for run in items],
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"# overhead: one essaim trainer against a plain PyTorch loop ({report['size']} model)",
        "",
        f"{report['parameters']:,} trained parameters, micro-batch {report['batch_size']}, target batch "
        f"{report['target_batch_size']}, {report['threads']} thread(s) per process, {report['rounds']} alternating "
        f"rounds of {report['seconds']:.0f} s (after {report['warmup']:.0f} s warm-up); {report['machine']}.",
        "",
        "| variant | baseline | samples/s per process (median) | runs | ratio to baseline | CPU s / 1k samples "
        "| CPU per sample ÷ baseline | optimizer steps / 1k samples | epochs per process per run |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for variant in report["variants"]:
        v = s[variant]
        ratio = "n/a" if v["ratio_to_baseline"] is None else f"{v['ratio_to_baseline']:.3f}"
        cpu = "n/a" if v["cpu_per_sample_over_baseline"] is None else f"{v['cpu_per_sample_over_baseline']:.3f}"
        lines.append(
            f"| {variant} | {v['baseline']} | {v['samples_per_second_median']:.1f} | "
            f"{', '.join(f'{x:.1f}' for x in v['samples_per_second_runs'])} | {ratio} | "
            f"{v['cpu_s_per_1k_samples_median']:.2f} | {cpu} | {v['optimizer_steps_per_1k_samples_median']:.2f} | "
            f"{', '.join(map(str, v['epochs_per_process_per_run']))} |"
        )
    lines += ["", f"Target: ratio >= {report['target_ratio']}. Each variant is compared with the plain loop that "
              "steps its optimizer on the same schedule (every micro-batch: plain; once per target batch: "
              "plain-accum) with the same number of processes. *CPU s / 1k samples*: the whole process tree's "
              "(hivemind's DHT, averagers and libp2p daemon included); its ratio to the baseline's is the figure "
              "other work on a shared machine disturbs least. Load average during the runs: "
              f"{report['load_average']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}; each one's baseline is added")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target", type=int, default=400,
                        help="samples per swarm epoch (0: the demo recipe's 4,800, which on the small model puts "
                             "no epoch boundary, hence no optimizer step in sync mode, in a 40 s window)")
    parser.add_argument("--profile", choices=("sync", "local"), default=None,
                        help="print a cProfile of one essaim variant's runs")
    parser.add_argument("--worker", choices=BASES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--job-id", default="overhead", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in wanted:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}: use {', '.join(VARIANTS)}")
    variants = [v for v in VARIANTS if v in wanted or any(baseline_of(w) == v for w in wanted)]

    runs: list[list[dict[str, Any]]] = []
    loads = []
    with tempfile.TemporaryDirectory(prefix="essaim-overhead-logs-") as logs:
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else list(reversed(variants))
            for variant in order:
                result = run_variant(variant, args, Path(logs))
                loads.append(os.getloadavg()[0])
                runs.append(result)
                print(f"round {round_ + 1} {variant}: {run_rate(result):.1f} samples/s per process",
                      file=sys.stderr)
    first = runs[0][0]
    report = {
        "benchmark": "overhead", "size": args.size, "parameters": first["parameters"],
        "batch_size": first["batch_size"], "target_batch_size": first["target_batch_size"],
        "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup, "seconds": args.seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average": f"{min(loads):.1f}-{max(loads):.1f}", "target_ratio": 0.95, "variants": variants,
        "summary": summarize(runs, variants), "runs": runs,
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
