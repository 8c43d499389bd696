"""How fast the demo job learns: held-out exact-match accuracy against training time and steps.

Two measurements on the job ``essaim demo`` trains (:mod:`essaim.swarm.demo_task`), both in one
process, without networking, with the swarm's own model, data and evaluate code:

- ``single``: a plain PyTorch loop (AdamW at the recipe's lr, the recipe's micro-batch), evaluated
  every ``--every`` seconds of training time (eval time excluded): accuracy against seconds;
- ``local``: ``--peers`` simulated peers in local-update mode, each taking ``--inner`` AdamW steps on
  its own shards (the coordinator's shard slots) from the shared anchor, then the averaged
  pseudo-gradient moves the anchor with SGD at ``--outer-lr`` / Nesterov ``--momentum`` (``1.0``
  / ``0`` is plain parameter averaging): accuracy of the anchor against steps per peer, for each
  ``--outer`` setting given.

It tells whether the demo's recipe (model size, lr, epochs, target batch size) reaches a clearly
higher accuracy within the demo's time budget: the real demo runs several trainers on 2 cores with
hivemind averaging, so each peer takes its steps at about 2/3 of the single-process rate.

    .venv/bin/python bench/demo_learning.py                       # single, 90 s
    .venv/bin/python bench/demo_learning.py --modes local --outer 1.0:0 --outer 0.7:0.9

Writes ``bench/results/demo_learning.json`` and ``.md``. Threads: 1 (``--threads``), as each trainer
of the demo gets about one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from essaim.protocol.recipe import Recipe, load_recipe_file
from essaim.protocol.types import shards_for_slots, slots_for
from essaim.swarm.cache import collect_job_files
from essaim.swarm.data import EvalSet, PackedDataset, build_train_dataset, iterate_batches, load_eval_set
from essaim.swarm.demo_task import DemoConfig, make_demo_job
from essaim.swarm.evaluate import evaluate
from essaim.swarm.model import LoadedModel, load_model

RESULTS = Path(__file__).resolve().parent / "results"


class Job:
    def __init__(self, root: Path, train_lines: int, seed: int) -> None:
        started = time.perf_counter()
        self.recipe: Recipe = load_recipe_file(make_demo_job(root, train_lines=train_lines, seed=seed))
        self.generate_seconds = time.perf_counter() - started
        self.files = collect_job_files(self.recipe, root)

    def model(self) -> LoadedModel:
        return load_model(self.recipe, files=self.files, device="cpu")

    def data(self, loaded: LoadedModel) -> tuple[PackedDataset, EvalSet]:
        data = build_train_dataset(self.recipe, loaded.tokenizer, files=self.files)
        eval_set = load_eval_set(self.recipe, loaded.tokenizer, files=self.files)
        assert eval_set is not None
        return data, eval_set

    def accuracy(self, loaded: LoadedModel, eval_set: EvalSet) -> float:
        assert self.recipe.eval is not None
        return evaluate(loaded, eval_set, self.recipe.eval).value


def _step(loaded: LoadedModel, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    params = [p for _, p in loaded.trainable_parameters()]
    loss = loaded.model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach().item()


def _optimizer(job: Job, loaded: LoadedModel) -> torch.optim.Optimizer:
    spec = job.recipe.optimizer
    return torch.optim.AdamW([p for _, p in loaded.trainable_parameters()], lr=spec.lr, betas=spec.betas,
                             weight_decay=spec.weight_decay)


def run_single(job: Job, budget: float, every: float) -> dict[str, Any]:
    loaded = job.model()
    data, eval_set = job.data(loaded)
    optimizer = _optimizer(job, loaded)
    curve = [{"seconds": 0.0, "steps": 0, "accuracy": job.accuracy(loaded, eval_set)}]
    print(f"single: t=0s acc={curve[0]['accuracy']:.3f}", flush=True)
    trained, steps, epoch, next_eval, losses = 0.0, 0, 0, every, []
    while trained < budget:
        for batch in iterate_batches(data, range(data.num_shards), batch_size=job.recipe.training.batch_size,
                                     seed=job.recipe.training.seed, epoch=epoch):
            started = time.perf_counter()
            losses.append(_step(loaded, optimizer, batch))
            trained += time.perf_counter() - started
            steps += 1
            if trained >= next_eval or trained >= budget:
                acc = job.accuracy(loaded, eval_set)
                loss = sum(losses[-50:]) / len(losses[-50:])
                curve.append({"seconds": round(trained, 1), "steps": steps, "loss": round(loss, 4), "accuracy": acc})
                print(f"single: t={trained:.0f}s steps={steps} loss={loss:.3f} acc={acc:.3f}", flush=True)
                next_eval += every
            if trained >= budget:
                break
        epoch += 1
    return {"mode": "single", "seconds_per_step": trained / max(steps, 1), "curve": curve}


def run_local(job: Job, peers: int, inner: int, rounds: int, outer_lr: float, momentum: float) -> dict[str, Any]:
    workers = [job.model() for _ in range(peers)]
    data, eval_set = job.data(workers[0])
    optimizers = [_optimizer(job, w) for w in workers]
    anchor = [torch.nn.Parameter(p.detach().clone()) for _, p in workers[0].trainable_parameters()]
    outer = torch.optim.SGD(anchor, lr=outer_lr, momentum=momentum, nesterov=momentum > 0)
    shards = [shards_for_slots(slots_for(i, peers), data.num_shards) for i in range(peers)]
    streams = [_batches(data, shards[i], job.recipe.training.batch_size, seed=i) for i in range(peers)]

    def load_anchor(loaded: LoadedModel) -> None:
        with torch.no_grad():
            for (_, p), a in zip(loaded.trainable_parameters(), anchor, strict=True):
                p.copy_(a)

    load_anchor(workers[0])
    curve = [{"steps_per_peer": 0, "accuracy": job.accuracy(workers[0], eval_set)}]
    compute = 0.0
    for round_ in range(1, rounds + 1):
        deltas = []
        for i, loaded in enumerate(workers):
            load_anchor(loaded)
            started = time.perf_counter()
            for _ in range(inner):
                loss = _step(loaded, optimizers[i], next(streams[i]))
            compute += time.perf_counter() - started
            deltas.append([a.detach() - p.detach() for a, (_, p) in zip(anchor, loaded.trainable_parameters(),
                                                                          strict=True)])
        for j, a in enumerate(anchor):
            a.grad = sum(d[j] for d in deltas) / peers
        outer.step()
        outer.zero_grad()
        load_anchor(workers[0])
        acc = job.accuracy(workers[0], eval_set)
        curve.append({"steps_per_peer": round_ * inner, "loss": round(loss, 4), "accuracy": acc})
        print(f"local {outer_lr}/{momentum}: round {round_} steps/peer={round_ * inner} acc={acc:.3f}", flush=True)
    return {"mode": "local", "peers": peers, "inner_steps": inner, "outer_lr": outer_lr, "momentum": momentum,
            "seconds_per_step": compute / (rounds * inner * peers), "curve": curve}


def _batches(data: PackedDataset, shards: list[int], batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from iterate_batches(data, shards, batch_size=batch_size, seed=seed, epoch=epoch)
        epoch += 1


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Demo job: held-out exact-match accuracy while training", "",
             f"{report['machine']}; torch threads {report['threads']}; demo config {report['config']}", ""]
    for run in report["runs"]:
        if run["mode"] == "single":
            lines += [f"## One process, plain loop ({run['seconds_per_step'] * 1000:.0f} ms/step)", "",
                      "| training s | steps | accuracy |", "|---|---|---|"]
            lines += [f"| {c['seconds']} | {c['steps']} | {c['accuracy']:.3f} |" for c in run["curve"]]
        else:
            lines += [f"## {run['peers']} simulated peers, {run['inner_steps']} local steps per round, "
                      f"outer SGD lr {run['outer_lr']} momentum {run['momentum']}", "",
                      "| steps per peer | accuracy |", "|---|---|"]
            lines += [f"| {c['steps_per_peer']} | {c['accuracy']:.3f} |" for c in run["curve"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="single", help="comma-separated: single, local")
    parser.add_argument("--budget", type=float, default=90.0, help="single: seconds of training")
    parser.add_argument("--every", type=float, default=10.0, help="single: eval every this many training seconds")
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--inner", type=int, default=100, help="local: steps per peer per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--outer", action="append", help="local: OUTER_LR:MOMENTUM (repeatable; default 1.0:0)")
    parser.add_argument("--train-lines", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
                              "threads": args.threads, "config": DemoConfig().__dict__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        job = Job(Path(tmp), args.train_lines, args.seed)
        report["generate_seconds"] = round(job.generate_seconds, 2)
        for mode in args.modes.split(","):
            if mode == "single":
                report["runs"].append(run_single(job, args.budget, args.every))
            elif mode == "local":
                for setting in args.outer or ["1.0:0"]:
                    lr, momentum = (float(x) for x in setting.split(":"))
                    report["runs"].append(run_local(job, args.peers, args.inner, args.rounds, lr, momentum))
            else:
                parser.error(f"unknown mode {mode!r}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_learning.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "demo_learning.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
