"""essaim's swarm training with several peers: throughput against averaging off, traffic per epoch, round time.

Each configuration starts ``n`` peers, each in its own process (hivemind wants one averager per
process, created on its main thread), on one machine, that train the same job together:
:class:`essaim.swarm.peer.TrainingPeer` driving :func:`essaim.swarm.optimizer.build_optimizer` with
its own DHT (no coordinator, no swarm tokens: the DHT's authorizer is off), peer 0's DHT being the
others' initial peer. The job is ``essaim demo``'s generated Llama (``--size small``: 4 layers of
256, 4.2M parameters; ``--size demo``: 133k) with a short swarm epoch (``--target`` samples), LoRA
(r 8 on q_proj and v_proj) or full fine-tune, ``sync`` (gradient averaging) or ``local`` (DiLoCo
local updates, pseudo-gradient averaging, the round overlapped with the next epoch's training, as
recipes have it by default) or ``local-blocking`` (the same with ``training.overlap_averaging:
false``: training waits for each round) mode, fp16 compression as in the demo's recipe. All
peers are built first, then told to start together; they train ``--warmup-epochs`` swarm epochs
that are not measured, then ``--epochs`` that are. Peers start from the same weights (the job's
seeded init) and do not download state from each other (``join_swarm=False``).

Links:

- ``loopback``: every peer listens on 127.0.0.1; no bandwidth limit (the round time is then bound
  by CPU and latency, so no limit is given for it);
- ``limited``: one network namespace per peer (``essaim-b<i>``, address 10.77.0.<i+1>), each joined
  by a veth pair to a bridge in a namespace of its own (``essaim-bbr``), both ends of every veth
  shaped with ``tc tbf rate <--rate-mbit>mbit burst 32kbit latency 400ms`` so that each peer has
  that rate up and down. Needs root, ``ip`` and ``tc``; skipped with a note otherwise. The
  namespaces are removed at the end (also on Ctrl-C, and at the start if a killed run left them).
- ``nat``: volunteers behind home NATs, averaging through the coordinator's averaging peer. A lab of
  network namespaces (``tests/integration/nat/netlab.py``, names ``esbnl-<token>-<pid>-...``): a
  public host ``coordinator`` on a private "internet" bridge, and per peer i a home ``v<i>`` (the
  volunteer's namespace behind its own router, which masquerades its connections and drops every
  connection coming in), shaped by the router with ``tc tbf`` to ``--rate-mbit`` each way (burst
  10 ms of traffic, latency 100 ms). The volunteers run in client mode with the averaging peer's
  addresses as their initial peers. The averaging peer is one more process, in ``coordinator``: a
  full hivemind peer built with :func:`essaim.swarm.optimizer.build_auxiliary_optimizer` from the
  same recipe and driven by :class:`essaim.coordinator.averaging.AveragingLoop` (``assist()`` every
  0.1 s), in every round with weight 0; it reduces all the volunteers' tensors and applies the outer
  step itself. Its link is not shaped. Needs root, ``ip``, ``tc`` and ``iptables``.

Per configuration, over the measured epochs:

- *bytes sent per peer per epoch*, two counters: **TCP**, the sum of ``bytes_sent`` (payload,
  retransmissions included) over the TCP sockets of the peer's libp2p daemon (``p2pd``, the process
  that carries all of hivemind's traffic), read with ``ss -tinp`` at every epoch boundary and every
  3 s, on every link; **wire**, on the limited and nat links, the ``tx_bytes`` counter of the peer's
  veth (everything its namespace sent: Ethernet, IP and TCP headers and pure ACKs included, which weigh
  a lot when the messages are small). A socket opened and closed between two ``ss`` readings would
  be missed; libp2p keeps one connection per pair of peers open, so there are almost none (the
  wire counter misses nothing). The table also divides the TCP figure by ``2(n-1)/n * S`` (``S``
  on the nat link), what one all-reduce must send: the rest is the DHT, progress records and
  matchmaking, which hivemind runs as a tight loop of DHT lookups while a peer waits for its group
  (tens of kB/s per peer). The
  JSON also checks the app's own meter (``client/netlimit.py`` TrafficMeter: p2pd's
  ``/proc/PID/io`` read+write chars / 2) against the TCP payload both ways (``trafficmeter_over_tcp``).
- *averaging round time*: hivemind's averager is patched (class level, before its processes fork)
  to log when each of its all-reduce rounds starts and ends on each peer
  (``DecentralizedAverager._aggregate_with_group``: from the moment the peer joins the formed
  group's all-reduce to its averaged tensors). A round's time is the last peer's end minus the last
  peer's start: the transfer once every peer is in, without the wait for the last peer to reach
  the end of its epoch (kept apart as the straggler wait). It is compared with the all-reduce limit
  ``2(n-1)/n * S / B``: S is the bytes of the averaged tensors (the trainable parameters after
  compression, hivemind's own estimate), B the per-peer link rate (tc's rate counts Ethernet
  frames, and the uplink also carries the ACKs of what the peer receives, so even a perfect round
  takes 5-7% longer than the limit). Target: round <= 1.5 x limit.
  Rounds of a LoRA adapter are a few round trips of small messages: latency, not bandwidth, bounds
  them, and their limit is a few milliseconds.
- *throughput against averaging off* (the headline): right after each configuration, the same n
  peer processes run again in the same places with averaging off (``--no-baseline`` skips it):
  each alone in a swarm of its own (its own DHT and job id, no initial peer: hivemind skips the
  round of a peer that sees no other), on the same shards, with an epoch of its share of the
  samples (``--target`` / n, so that sync mode steps its optimizer as often per sample), no
  averaging peer on the nat link. The n processes share the cores as the swarm's did, so the CPU
  contention between peers is the same and only averaging differs (with the DHT traffic between
  peers it brings: a lone peer's DHT has nobody to talk to). Per peer: samples/s in the swarm over
  samples/s with averaging off, over the same measured epochs; also the epoch times, and the CPU
  seconds per sample of the peer's process tree (trainer, DHT, averagers, p2pd) against the same
  with averaging off, the figure the machine's other load disturbs least. Target >= 0.90 on every
  peer in local mode (INTELLECT-1 reported 83% compute utilisation across continents). This counts
  what averaging costs in every way: waiting for rounds, and the rounds' CPU (matchmaking,
  compression, the all-reduce, the outer step, p2pd) taken from training.
- *unblocked fraction*: per peer, the trainer's own compute counter (``TrainingPeer``: forward,
  backward and the optimizer's work on every micro-batch, but none of the step that ends an epoch,
  which starts the averaging round and, unless it is overlapped, waits for it) over the wall time
  between the same epoch boundaries: the share of the time the training loop was not blocked in
  the epoch-ending step. A peer slowed by rounds that compete with it for the cores still scores
  near 1.0 here, hence the throughput above. The epoch-ending step's time is split into before the
  peer's round (its group forming at the time hivemind scheduled, the other peers arriving), the
  round, and after it (the optimizer or outer step); the JSON has the split and the compute per
  epoch that an unblocked fraction of 0.90 would need. In overlapped local mode the step only
  waits when the previous epoch's round is still running.
- *LoRA / full*: bytes per epoch of the LoRA run over the full fine-tune's, for the ``--full``
  (peers:link) pairs, with the same ratio for the averaged tensors alone.

On the ``nat`` link, also:

- *rounds with all volunteers*: per volunteer, how many of its rounds that closed a measured
  epoch (its optimizer's :class:`essaim.swarm.rounds.RoundOutcome` list) held every other
  volunteer (the averaging peer's id not counted); the misses are listed with the outcome's
  error. Target: all of them.
- the all-reduce limit is ``2 * S / B``: the averaging peer is the only reducer (client-mode peers
  reduce nothing), so each volunteer sends its S bytes up and gets S back (up and down are shaped
  apart, so a round whose halves overlap can come close to ``S / B``). The TCP figure is divided by
  S, what a volunteer must send.
- *the averaging peer*: its p2pd's TCP bytes sent + received per round (one round per epoch; it
  receives n * S and sends n * S) and its process tree's CPU seconds per round (psutil: the
  process, its DHT and averager processes and p2pd), between its own epoch boundaries.

The epochs stop short of the 5th, where essaim also averages the whole training state
(``average_state_every=5``: parameters and optimizer statistics); ``--warmup-epochs 1 --epochs 4``
puts that round in the window (``state_rounds`` in the JSON).

    .venv/bin/python bench/swarm.py                                  # the default set, ~10 min on 2 cores
    .venv/bin/python bench/swarm.py --peers 2 --links loopback --modes local --epochs 2
    .venv/bin/python bench/swarm.py --links limited --rate-mbit 50 --full 2:limited,4:limited
    .venv/bin/python bench/swarm.py --peers 4 --links nat --modes local --full 4:nat --out swarm-nat

Writes ``bench/results/swarm.json`` and ``bench/results/swarm.md`` (``--out NAME``: ``NAME.json``
and ``NAME.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import queue
import re
import shlex
import shutil
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
SIZES = {  # DemoConfig overrides (as in bench/overhead.py)
    "demo": {},
    "small": {"hidden_size": 256, "layers": 4, "heads": 8, "intermediate_size": 1024},
}
LORA = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}  # the demo's LoRA: PEFT's q_proj, v_proj
NS_PREFIX = "essaim-b"
NS_BRIDGE = "essaim-bbr"
SUBNET = "10.77.0"
PEER_IFACE = "veth0"
TBF = "burst 32kbit latency 400ms"
LINKS = ("loopback", "limited", "nat")
NETLAB = Path(__file__).resolve().parents[1] / "tests" / "integration" / "nat" / "netlab.py"
NAT_FAMILY = "esb"  # the nat link's namespaces: esbnl-<token>-<pid>-coordinator, -v0, -v0-r, ...
LAB_IFACE = "eth0"  # a lab host's or home's interface
SAMPLE_EVERY_S = 3.0
TARGET_ROUND_RATIO = 1.5
TARGET_THROUGHPUT_LOCAL = 0.90  # samples/s of every peer against the same peers with averaging off


# ---- one peer, in its own process ----


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _log_rounds(path: Path, index: int) -> None:
    """Make every hivemind averager of this process (forked later) log its all-reduce rounds to ``path``."""
    from hivemind.averaging.averager import DecentralizedAverager

    original = DecentralizedAverager._aggregate_with_group

    async def timed(self: Any, group_info: Any, *args: Any, **kwargs: Any) -> Any:
        started, ok = time.time(), False
        try:
            result = await original(self, group_info, *args, **kwargs)
            ok = True
            return result
        finally:
            line = {
                "peer": index,
                "averager": type(self).__name__,
                "group": group_info.group_id.hex(),
                "size": len(group_info.peer_ids),
                "elements": int(self.total_size),
                "t0": started,
                "t1": time.time(),
                "ok": ok,
            }
            with open(path, "a") as f:  # one short line per round and peer, O_APPEND
                f.write(json.dumps(line) + "\n")

    DecentralizedAverager._aggregate_with_group = timed  # type: ignore[method-assign]


class Traffic:
    """Bytes this peer sent/received: its veth's counters (in a namespace) and its p2pd's TCP sockets;
    with ``cpu``, also the CPU seconds of this process and its children (DHT, averagers, p2pd)."""

    def __init__(self, p2pd_pid: int | None, iface: str | None, *, cpu: bool = False) -> None:
        self.p2pd_pid, self.iface, self.cpu = p2pd_pid, iface, cpu
        self.marks: dict[str, dict[str, Any]] = {}
        self.series: list[dict[str, Any]] = []
        self._sockets: dict[str, tuple[int, int]] = {}
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def mark(self, label: str) -> None:
        with self._lock:
            self._pending.append(label)
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while True:
            self._wake.wait(SAMPLE_EVERY_S)
            self._wake.clear()
            sample = self.sample()
            with self._lock:
                pending, self._pending = self._pending, []
            for label in pending:
                self.marks[label] = sample
            self.series.append(sample)
            if self._stop.is_set():
                return

    def sample(self) -> dict[str, Any]:
        import psutil

        out: dict[str, Any] = {"t": time.time()}
        if self.iface:
            base = Path("/sys/class/net") / self.iface / "statistics"
            with contextlib.suppress(OSError, ValueError):
                out["veth_tx"] = int((base / "tx_bytes").read_text())
                out["veth_rx"] = int((base / "rx_bytes").read_text())
        if self.p2pd_pid:
            with contextlib.suppress(Exception):  # psutil errors, or no /proc/PID/io here
                io = psutil.Process(self.p2pd_pid).io_counters()
                # what the app's TrafficMeter (client/netlimit.py) counts: p2pd relays every byte
                # between its TCP sockets and the trainer's unix socket, so read+write is twice the traffic
                out["p2pd_io"] = (io.read_chars + io.write_chars) // 2
            self._read_sockets()
            out["tcp_sent"] = sum(s for s, _ in self._sockets.values())
            out["tcp_received"] = sum(r for _, r in self._sockets.values())
        if self.cpu:
            out["cpu_s"] = _tree_cpu_seconds()
        return out

    def _read_sockets(self) -> None:
        try:
            text = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return
        owner = f"pid={self.p2pd_pid},"
        key = None
        for line in text.splitlines():
            if not line.startswith((" ", "\t")):
                fields = line.split()
                key = f"{fields[3]}>{fields[4]}" if owner in line and len(fields) > 4 else None
                continue
            if key is None:
                continue
            sent = re.search(r"\bbytes_sent:(\d+)", line)
            received = re.search(r"\bbytes_received:(\d+)", line)
            old = self._sockets.get(key, (0, 0))
            self._sockets[key] = (
                max(old[0], int(sent.group(1)) if sent else 0),
                max(old[1], int(received.group(1)) if received else 0),
            )
            key = None


def _tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return round(total, 3)


def _p2pd_pid(timeout: float = 20.0) -> int | None:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.name() == "p2pd":
                    return proc.pid
        time.sleep(0.2)
    return None


def _averaged_bytes(params: list[Any], compression: Any) -> int:
    """Bytes of the averaged tensors after ``compression`` (hivemind's own estimate, float32 buffers)."""
    from hivemind.compression import CompressionInfo

    total = 0.0
    for p in params:
        info = CompressionInfo.from_tensor(p.detach().float())
        total += p.numel() * 4 * compression.estimate_compression_ratio(info)
    return int(total)


def peer_main(args: argparse.Namespace) -> int:
    """One process of a configuration: a volunteer (role ``peer``: a full peer, or ``client``: a
    NAT-ed one, in client mode) or, on the nat link, the averaging peer (role ``averager``)."""
    import torch

    torch.set_num_threads(args.threads)
    index, n = args._peer, args.n
    _log_rounds(Path(args.rounds), index)
    if args._role == "averager":
        return averager_main(args)

    from essaim.protocol.recipe import load_recipe
    from essaim.swarm.cache import collect_job_files
    from essaim.swarm.data import build_train_dataset
    from essaim.swarm.dht import start_dht, visible_maddrs
    from essaim.swarm.identity import load_or_create_private_key
    from essaim.swarm.model import load_model
    from essaim.swarm.optimizer import build_optimizer, compression_for
    from essaim.swarm.peer import TrainingPeer
    from essaim.swarm.records import progress_validators

    recipe = load_recipe(Path(args.recipe).read_text(), source="swarm bench")
    files = collect_job_files(recipe, Path(args.job))
    key = load_or_create_private_key(Path(args.keys) / f"peer-{index}.pem")
    dht_kwargs: dict[str, Any] = dict(
        identity_path=None,
        authorizer=None,
        host_maddrs=[f"/ip4/{args.host}/tcp/0"],
        client_mode=args._role == "client",
        record_validators=progress_validators(args.job_id),
        private_key=key,
    )
    dht = None
    if (
        index == 0 and args._role == "peer"
    ):  # first, so that the others can be told where it is while they load
        dht = start_dht(initial_peers=[], **dht_kwargs)
        _say(event="dht", maddrs=visible_maddrs(dht))
    loaded = load_model(recipe, files=files, device="cpu", seed=recipe.training.seed)
    dataset = build_train_dataset(recipe, loaded.tokenizer, files=files)
    shards = [s for s in range(dataset.num_shards) if s % n == index] or list(range(dataset.num_shards))
    if dht is None:
        line = sys.stdin.readline()
        dht = start_dht(initial_peers=json.loads(line)["initial_peers"], **dht_kwargs)
    optimizer = build_optimizer(loaded, recipe, dht=dht, run_id=args.job_id, private_key=key)
    params = [p for _, p in loaded.trainable_parameters()]
    traffic = Traffic(_p2pd_pid(), args.iface or None, cpu=True)  # CPU s of its tree at every epoch end
    traffic.start()
    peer = TrainingPeer(
        job_id=args.job_id,
        recipe=recipe,
        loaded=loaded,
        dataset=dataset,
        shard_ids=shards,
        optimizer=optimizer,
        dht=dht,
        volunteer_id=f"bench-{index}",
        join_swarm=False,
    )
    marks: list[dict[str, Any]] = []
    reloads: list[float] = []
    original_step = optimizer.step

    def timed_step(batch_size: int) -> Any:
        entered = time.perf_counter()
        if marks and marks[-1]["compute"] is None:  # the trainer adds a batch's compute after its step
            marks[-1]["compute"] = peer.counters.compute_seconds
        result = original_step(batch_size)
        if not result.accepted:  # the peer found itself out of sync and loaded the swarm's state
            reloads.append(time.time())
        if result.new_epoch:
            done = time.perf_counter()
            wall = time.time()
            marks.append(
                {
                    "epoch": result.epoch,
                    "t": done,
                    "wall": wall,
                    "entered": wall - (done - entered),
                    "stall": done - entered,
                    "compute": None,
                    "samples": peer.counters.samples + batch_size,
                    "peers": optimizer.num_peers,
                }
            )
            traffic.mark(str(result.epoch))
        return result

    optimizer.step = timed_step  # type: ignore[method-assign]
    _say(event="ready", p2pd=traffic.p2pd_pid, peer_id=dht.peer_id.to_base58())
    if sys.stdin.readline().strip() != "go":
        os._exit(3)
    traffic.mark("start")
    started = time.perf_counter()
    reason = peer.run()
    if marks and marks[-1]["compute"] is None:
        marks[-1]["compute"] = peer.counters.compute_seconds
    time.sleep(0.2)
    traffic.close()
    for mark in marks:
        mark["t"] -= started
        mark.update({k: v for k, v in traffic.marks.get(str(mark["epoch"]), {}).items() if k != "t"})
    _say(
        event="done",
        reason=reason,
        marks=marks,
        start=traffic.marks.get("start", {}),
        series=traffic.series,
        reloads=reloads,
        trainable=sum(p.numel() for p in params),
        averaged_bytes=_averaged_bytes(params, compression_for(recipe.training.compression)),
        samples=peer.counters.samples,
        compute_seconds=peer.counters.compute_seconds,
        seconds=time.perf_counter() - started,
        peer_id=dht.peer_id.to_base58(),
        round_outcomes=_outcomes(optimizer.rounds),
    )
    sys.stdin.readline()  # "quit": the others may still need this peer in their last round
    with contextlib.suppress(Exception):
        optimizer.shutdown()
    os._exit(0)  # hivemind's helper processes (DHT, averagers, p2pd) leave with this one


def _outcomes(rounds: list[Any]) -> list[dict[str, Any]]:
    """A peer's RoundOutcomes, as JSON."""
    return [{"epoch": r.epoch, "peers": list(r.peers), "error": r.error, "at": r.at,
             "checks": {p: v["check"] for p, v in getattr(r, "verdicts", {}).items() if "check" in v}}
            for r in rounds]


def _owners_path(rounds: Path) -> Path:
    """Where the driver writes each volunteer's peer id -> index for the averaging peer's validator."""
    return rounds.with_name(rounds.name.replace("rounds-", "owners-")).with_suffix(".json")


def _bench_validator(loaded: Any, recipe: Any, files: Any, owners_path: Path, n: int) -> Any:
    """The job runner's validator of volunteers' updates (essaim.swarm.validation), each volunteer's
    shards being those it trains on here (``s % n == index``); which volunteer a peer id is, the
    driver writes to ``owners_path`` once every volunteer is ready."""
    from essaim.swarm.data import build_train_dataset
    from essaim.swarm.validation import Validator

    dataset = build_train_dataset(recipe, loaded.tokenizer, files=files)
    owners: dict[str, int] = {}

    def shards_of(peer_id: str) -> list[int] | None:
        if peer_id not in owners and owners_path.exists():
            owners.update({str(k): int(v) for k, v in json.loads(owners_path.read_text()).items()})
        index = owners.get(peer_id)
        if index is None:
            return None
        return [s for s in range(dataset.num_shards) if s % n == index] or list(range(dataset.num_shards))

    return Validator.for_job(loaded, dataset, shards_of)


def averager_main(args: argparse.Namespace) -> int:
    """The coordinator's averaging peer of the nat link: a full peer, first in the DHT, that takes
    part in every round with weight 0 (``AveragingLoop`` calling ``assist()``), as the job runner's."""
    from essaim.coordinator.averaging import AveragingLoop
    from essaim.protocol.recipe import load_recipe
    from essaim.swarm.cache import collect_job_files
    from essaim.swarm.dht import start_dht, visible_maddrs
    from essaim.swarm.identity import load_or_create_private_key
    from essaim.swarm.model import load_model
    from essaim.swarm.optimizer import build_auxiliary_optimizer
    from essaim.swarm.records import progress_validators

    recipe = load_recipe(Path(args.recipe).read_text(), source="swarm bench")
    files = collect_job_files(recipe, Path(args.job))
    key = load_or_create_private_key(Path(args.keys) / f"averager-{args._peer}.pem")
    dht = start_dht(
        initial_peers=[],
        identity_path=None,
        authorizer=None,
        host_maddrs=[f"/ip4/{args.host}/tcp/0"],
        client_mode=False,
        record_validators=progress_validators(args.job_id),
        private_key=key,
    )
    _say(event="dht", maddrs=visible_maddrs(dht))
    loaded = load_model(recipe, files=files, device="cpu", seed=recipe.training.seed)
    optimizer = build_auxiliary_optimizer(loaded, recipe, dht=dht, run_id=args.job_id, private_key=key)
    if args.validation and getattr(optimizer.hv.grad_averager, "validating", False):
        optimizer.hv.validator = _bench_validator(loaded, recipe, files, _owners_path(Path(args.rounds)), args.n)
    traffic = Traffic(_p2pd_pid(), args.iface or None, cpu=True)
    traffic.start()
    marks: list[dict[str, Any]] = []
    original_assist = optimizer.assist

    def timed_assist() -> bool:
        moved = original_assist()
        if moved:  # it moves on when the round that closes the epoch starts, as the volunteers do
            marks.append({"epoch": optimizer.local_epoch, "wall": time.time()})
            traffic.mark(str(optimizer.local_epoch))
        return moved

    optimizer.assist = timed_assist  # type: ignore[method-assign]
    loop = AveragingLoop(optimizer)
    _say(event="ready", p2pd=traffic.p2pd_pid, peer_id=dht.peer_id.to_base58())
    if sys.stdin.readline().strip() != "go":
        os._exit(3)
    traffic.mark("start")
    loop.start()
    sys.stdin.readline()  # "stop": every volunteer is done, its last round included
    loop.stop()
    time.sleep(0.2)
    traffic.close()
    for mark in marks:
        mark.update({k: v for k, v in traffic.marks.get(str(mark["epoch"]), {}).items() if k != "t"})
    _say(
        event="done",
        marks=marks,
        start=traffic.marks.get("start", {}),
        series=traffic.series,
        peer_id=dht.peer_id.to_base58(),
        round_outcomes=_outcomes(optimizer.rounds),
        last_error=loop.last_error,
    )
    sys.stdin.readline()  # "quit"
    with contextlib.suppress(Exception):
        optimizer.shutdown()
    os._exit(0)


# ---- the bandwidth-limited link ----


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def netns_unavailable() -> str | None:
    """Why the limited link cannot be built here, or None."""
    if os.geteuid() != 0:
        return "not root (network namespaces and tc need CAP_NET_ADMIN)"
    missing = [tool for tool in ("ip", "tc", "ss") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (install iproute2)"
    return None


def _our_namespaces() -> list[str]:
    done = _ip("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [name for name in names if name == NS_BRIDGE or re.fullmatch(rf"{NS_PREFIX}\d+", name)]


def teardown_netns() -> list[str]:
    """Delete this benchmark's namespaces (their veths and the bridge go with them); what was deleted."""
    gone = []
    for name in _our_namespaces():
        if _ip("ip", "netns", "del", name, check=False).returncode == 0:
            gone.append(name)
    return gone


def setup_netns(peers: int, rate_mbit: float) -> list[dict[str, str]]:
    """``peers`` namespaces on one bridge, each peer's link shaped to ``rate_mbit`` both ways."""
    leftovers = teardown_netns()
    if leftovers:
        print(f"removed namespaces left by an earlier run: {', '.join(leftovers)}", file=sys.stderr)
    rate = f"rate {rate_mbit:g}mbit {TBF}".split()
    _ip("ip", "netns", "add", NS_BRIDGE)
    _ip("ip", "-n", NS_BRIDGE, "link", "add", "br0", "type", "bridge")
    _ip("ip", "-n", NS_BRIDGE, "link", "set", "br0", "up")
    out = []
    for i in range(peers):
        ns, host = f"{NS_PREFIX}{i}", f"vh{i}"
        _ip("ip", "netns", "add", ns)
        _ip(
            "ip",
            "-n",
            NS_BRIDGE,
            "link",
            "add",
            host,
            "type",
            "veth",
            "peer",
            "name",
            PEER_IFACE,
            "netns",
            ns,
        )
        _ip("ip", "-n", NS_BRIDGE, "link", "set", host, "master", "br0")
        _ip("ip", "-n", NS_BRIDGE, "link", "set", host, "up")
        _ip("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", PEER_IFACE)
        _ip("ip", "-n", ns, "link", "set", PEER_IFACE, "up")
        _ip("ip", "-n", ns, "link", "set", "lo", "up")
        _ip("tc", "-n", NS_BRIDGE, "qdisc", "add", "dev", host, "root", "tbf", *rate)  # toward the peer
        _ip("tc", "-n", ns, "qdisc", "add", "dev", PEER_IFACE, "root", "tbf", *rate)  # from the peer
        out.append({"ns": ns, "host": f"{SUBNET}.{i + 1}", "iface": PEER_IFACE})
    return out


# ---- the nat link ----


def _load_netlab() -> Any:
    """tests/integration/nat/netlab.py, loaded by path (test folders are not packages)."""
    name = "essaim_bench_netlab"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, NETLAB)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec_module: its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def natlab_unavailable() -> str | None:
    """Why the nat link cannot be built here, or None."""
    if not NETLAB.exists():
        return f"{NETLAB} not found"
    if shutil.which("ss") is None:
        return "ss not found (install iproute2)"
    return _load_netlab().available()


def setup_natlab(peers: int, rate_mbit: float) -> tuple[Any, dict[str, Any]]:
    """A public ``coordinator`` host and ``peers`` NAT-ed homes shaped to ``rate_mbit`` each way;
    returns the lab (``close()`` removes it) and where each process of a configuration runs."""
    netlab = _load_netlab()
    leftovers = netlab.reap_leftovers(NAT_FAMILY)
    if leftovers:
        print(f"removed namespaces left by an earlier run: {', '.join(leftovers)}", file=sys.stderr)
    lab = netlab.NetLab(family=NAT_FAMILY)
    try:
        coordinator = lab.add_host("coordinator")
        homes = [lab.add_home(f"v{i}", uplink_mbit=rate_mbit) for i in range(peers)]
    except BaseException:
        lab.close()
        raise
    return lab, {
        "coordinator": {"ns": coordinator.name, "host": coordinator.address, "iface": LAB_IFACE},
        "homes": [
            {"ns": h.name, "host": h.address, "iface": LAB_IFACE, "public": h.public_address} for h in homes
        ],
    }


# ---- the driver ----


class PeerProcess:
    """One peer process of a configuration; its JSON lines are queued as they arrive."""

    def __init__(self, index: int, cmd: list[str], log: Path, env: dict[str, str], *, name: str = "") -> None:
        self.index, self.log_path = index, log
        self.name = name or f"peer {index}"
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.lines.put(json.loads(line))
        self.lines.put(None)

    def expect(self, event: str, deadline: float) -> dict[str, Any]:
        while True:
            try:
                item = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no {event!r} in time; {self.tail()}") from None
            if item is None:
                raise RuntimeError(f"{self.name} exited ({self.proc.poll()}) before {event!r}; {self.tail()}")
            if item.get("event") == event:
                return item

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def tail(self) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "stderr tail:\n" + text[-2000:]

    def close(self, grace: float = 5.0) -> None:
        """Let it leave (it got "quit"), then kill its whole process group (DHT, averagers, p2pd)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


def _peer_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    return env


MODES = ("sync", "local", "local-blocking")


def make_recipe(job_dir: Path, cfg: dict[str, Any], args: argparse.Namespace) -> Path:
    import yaml

    data = yaml.safe_load((job_dir / "recipe.yaml").read_text())
    data["adapter"] = dict(LORA) if cfg["adapter"] == "lora" else {"type": "full"}
    training = data["training"]
    training["averaging"] = "sync" if cfg["mode"] == "sync" else "local"
    if cfg["mode"] != "sync":
        training["overlap_averaging"] = cfg["mode"] == "local"
    training["epochs"] = args.warmup_epochs + args.epochs  # the peers stop ("completed") at the last one
    # with averaging off each peer is a swarm of its own: an epoch of its share of the samples, so
    # that it closes as many epochs (sync mode: optimizer steps) per sample as in the swarm
    training["target_batch_size"] = max(1, round(args.target / cfg["n"])) if cfg.get("solo") else args.target
    training["batch_size"] = args.batch
    if args.compression:
        training["compression"] = args.compression
    if args.aggregation:
        training["aggregation"] = args.aggregation
    path = job_dir / f"recipe-{cfg['tag']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _process_cmd(
    role: str,
    index: int,
    cfg: dict[str, Any],
    job_dir: Path,
    recipe: Path,
    work: Path,
    args: argparse.Namespace,
    where: dict[str, str] | None,
) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_peer",
        str(index),
        "--_role",
        role,
        "--n",
        str(cfg["n"]),
        "--job",
        str(job_dir),
        "--recipe",
        str(recipe),
        "--job-id",
        f"swarm-bench-{cfg['tag']}" + (f"-{index}" if cfg.get("solo") else ""),  # solo: a swarm each
        "--keys",
        str(work / "keys"),
        "--rounds",
        str(work / f"rounds-{cfg['tag']}.jsonl"),
        "--threads",
        str(args.threads),
        "--host",
        where["host"] if where else "127.0.0.1",
        "--iface",
        where["iface"] if where else "",
        *([] if args.validation else ["--no-validation"]),
    ]
    return ["ip", "netns", "exec", where["ns"], *cmd] if where else cmd


def run_config(
    cfg: dict[str, Any],
    job_dir: Path,
    work: Path,
    args: argparse.Namespace,
    net: dict[str, Any],
) -> dict[str, Any]:
    """Run one configuration; ``net`` holds where the limited (``limited``) and nat (``nat``) links'
    processes run, for the links that were built. With ``cfg["solo"]`` it is the configuration's
    baseline: the same processes in the same places, each alone in a swarm of its own."""
    n, tag, link = cfg["n"], cfg["tag"], cfg["link"]
    solo = bool(cfg.get("solo"))
    recipe = make_recipe(job_dir, cfg, args)
    rounds = work / f"rounds-{tag}.jsonl"
    (work / "keys").mkdir(exist_ok=True, mode=0o700)
    env = _peer_env(args.threads)
    peers: list[PeerProcess] = []
    averager: PeerProcess | None = None
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    loads = [os.getloadavg()[0]]
    try:
        if link == "nat" and not solo:  # the averaging peer first: the volunteers' initial peer
            cmd = _process_cmd("averager", n, cfg, job_dir, recipe, work, args, net["nat"]["coordinator"])
            averager = PeerProcess(n, cmd, work / f"averager-{tag}.log", env, name="the averaging peer")
        for i in range(n):
            where = (
                net["limited"][i] if link == "limited" else net["nat"]["homes"][i] if link == "nat" else None
            )
            role = "client" if link == "nat" and not solo else "peer"  # client mode needs a swarm to join
            cmd = _process_cmd(role, i, cfg, job_dir, recipe, work, args, where)
            peers.append(PeerProcess(i, cmd, work / f"peer-{tag}-{i}.log", env))
        if averager is not None:
            maddrs = averager.expect("dht", deadline)["maddrs"]
            joining = peers
        elif solo:  # each peer alone: no initial peer
            maddrs, joining = [], peers[1:]
        else:
            maddrs = peers[0].expect("dht", deadline)["maddrs"]
            joining = peers[1:]
        for peer in joining:
            peer.send(json.dumps({"initial_peers": maddrs}))
        everyone = ([averager] if averager else []) + peers
        ready = {p.index: p.expect("ready", deadline) for p in everyone}
        _owners_path(rounds).write_text(json.dumps({ready[p.index]["peer_id"]: p.index for p in peers}))
        setup_s = time.monotonic() - started
        for peer in everyone:
            peer.send("go")
        results = [peer.expect("done", deadline) for peer in peers]
        averaged = None
        if averager is not None:
            averager.send("stop")
            averaged = averager.expect("done", deadline)
        loads.append(os.getloadavg()[0])
    except RuntimeError as exc:
        return {**cfg, "error": str(exc)}
    finally:
        everyone = ([averager] if averager else []) + peers
        for peer in everyone:  # all done (or failed): now they may leave
            peer.send("quit")
        for peer in everyone:
            peer.close()
    rows = [json.loads(line) for line in rounds.read_text().splitlines()] if rounds.exists() else []
    row = analyze(cfg, results, rows, args, setup_s=setup_s, wall_s=time.monotonic() - started, loads=loads)
    if averaged is not None:
        row.update(analyze_nat(row, results, averaged, rows, args, averager_id=ready[n]["peer_id"]))
        row["targets"] = targets(row)
    return row


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def analyze(
    cfg: dict[str, Any],
    results: list[dict[str, Any]],
    rounds: list[dict[str, Any]],
    args: argparse.Namespace,
    *,
    setup_s: float,
    wall_s: float,
    loads: list[float],
) -> dict[str, Any]:
    n, first, last = cfg["n"], args.warmup_epochs, args.warmup_epochs + args.epochs
    per_peer: list[dict[str, Any]] = []
    for index, result in enumerate(results):
        marks = {m["epoch"]: m for m in result["marks"]}
        if first not in marks or last not in marks:
            per_peer.append(
                {"peer": index, "error": f"epochs seen {sorted(marks)}, reason {result['reason']}"}
            )
            continue
        a, b = marks[first], marks[last]
        item: dict[str, Any] = {
            "peer": index,
            "epochs": last - first,
            "seconds": round(b["t"] - a["t"], 3),
            "compute_seconds": round(b["compute"] - a["compute"], 3),
            "unblocked_fraction": round((b["compute"] - a["compute"]) / (b["t"] - a["t"]), 4),
            "samples": b["samples"] - a["samples"],
            # the process tree's (trainer, DHT, averagers, p2pd) CPU per sample: least disturbed by other load
            "cpu_s_per_1k_samples": round(1000 * (b["cpu_s"] - a["cpu_s"]) / (b["samples"] - a["samples"]), 2)
            if "cpu_s" in a and "cpu_s" in b and b["samples"] > a["samples"]
            else None,
            "stall_s": [round(marks[e]["stall"], 3) for e in range(first + 1, last + 1) if e in marks],
            "peers_seen": [marks[e]["peers"] for e in range(first + 1, last + 1) if e in marks],
            "state_reloads": len(result.get("reloads", [])),
            # [seconds since the start, TCP bytes sent, veth bytes sent] every few seconds and at epoch ends
            "traffic_series": [
                [round(x["t"] - result["start"].get("t", x["t"]), 2), x.get("tcp_sent"), x.get("veth_tx")]
                for x in result.get("series", [])
            ],
            "epoch_ends": [
                round(m["wall"] - result["start"].get("t", m["wall"]), 2) for m in result["marks"]
            ],
        }
        for key in ("veth_tx", "veth_rx", "tcp_sent", "tcp_received", "p2pd_io"):
            if key in a and key in b:
                item[f"{key}_per_epoch"] = round((b[key] - a[key]) / (last - first))
        per_peer.append(item)
    good = [p for p in per_peer if "error" not in p]
    trainable = results[0]["trainable"]
    s_bytes = results[0]["averaged_bytes"]
    tcp = [p["tcp_sent_per_epoch"] for p in good if "tcp_sent_per_epoch" in p]
    # the app's meter (p2pd's read+write chars / 2) against the TCP payload both ways
    meter = [
        p["p2pd_io_per_epoch"] / (p["tcp_sent_per_epoch"] + p["tcp_received_per_epoch"])
        for p in good
        if p.get("p2pd_io_per_epoch") and p.get("tcp_sent_per_epoch")
    ]
    wire = [p["veth_tx_per_epoch"] for p in good if "veth_tx_per_epoch" in p]

    # all-reduce rounds of the measured epochs: those that started after every peer reached epoch `first`
    window_start = max((m["wall"] for r in results for m in r["marks"] if m["epoch"] == first), default=0.0)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rounds:
        groups.setdefault(row["group"], []).append(row)
    measured: list[dict[str, Any]] = []
    for group, items in groups.items():
        if max(i["t1"] for i in items) < window_start:  # the round that ended a warm-up epoch
            continue
        t0s, t1s = [i["t0"] for i in items], [i["t1"] for i in items]
        measured.append(
            {
                "averager": items[0]["averager"],
                "group": group[:12],
                "size": items[0]["size"],
                "peers_logged": len(items),
                "ok": all(i["ok"] for i in items),
                "elements": items[0]["elements"],
                "start": min(t0s),
                "round_s": round(max(t1s) - max(t0s), 4),
                "straggler_wait_s": round(max(t0s) - min(t0s), 4),
            }
        )
    measured.sort(key=lambda r: r["start"])
    grad_rounds = [r for r in measured if r["averager"] != "TrainingStateAverager"]
    # where each epoch-ending step's time went: before this peer's round began (the group forming at
    # its scheduled time, or no group), the round itself, and after it (outer/optimizer step, bookkeeping)
    before, during, after = [], [], []
    for index, result in enumerate(results):
        own = [r for r in rounds if r["peer"] == index and r["averager"] != "TrainingStateAverager"]
        for mark in result["marks"]:
            if not first < mark["epoch"] <= last:
                continue
            inside = [r for r in own if mark["entered"] - 0.05 <= r["t0"] <= mark["wall"]]
            if inside:
                before.append(inside[0]["t0"] - mark["entered"])
                during.append(inside[0]["t1"] - inside[0]["t0"])
                after.append(mark["wall"] - inside[0]["t1"])
    times = [r["round_s"] for r in grad_rounds if r["ok"]]
    nat = cfg["link"] == "nat"
    bandwidth = args.rate_mbit * 1e6 / 8 if cfg["link"] in ("limited", "nat") else None
    # what a peer must send in one all-reduce: its share on open links, all of it to the one
    # reducer (the averaging peer) behind NATs
    must_send = s_bytes if nat else 2 * (n - 1) / n * s_bytes
    limit = (2 * s_bytes if nat else must_send) / bandwidth if bandwidth else None
    median = statistics.median(times) if times else None
    fractions = [p["unblocked_fraction"] for p in good]
    row = {
        **cfg,
        "trainable_parameters": trainable,
        "averaged_bytes": s_bytes,
        "allreduce_bytes_per_peer": round(must_send),
        # TCP payload of the peer's p2pd sockets (every link), and what left its veth (limited link)
        "tcp_sent_per_peer_per_epoch": round(statistics.mean(tcp)) if tcp else None,
        "tcp_sent_per_peer_per_epoch_max": max(tcp) if tcp else None,
        "wire_sent_per_peer_per_epoch": round(statistics.mean(wire)) if wire else None,
        "wire_sent_per_peer_per_epoch_max": max(wire) if wire else None,
        "tcp_sent_per_peer_per_second": round(
            statistics.mean(
                p["tcp_sent_per_epoch"] * p["epochs"] / p["seconds"]
                for p in good
                if "tcp_sent_per_epoch" in p
            )
        )
        if tcp
        else None,
        "trafficmeter_over_tcp": round(statistics.mean(meter), 3) if meter else None,
        "round_s_median": round(median, 4) if median is not None else None,
        "round_s_p90": round(p90, 4) if (p90 := _quantile(times, 0.9)) is not None else None,
        "rounds": len(grad_rounds),
        # the averaging peer is in every group of the nat link
        "rounds_partial_or_failed": sum(1 for r in grad_rounds if r["size"] < n + nat or not r["ok"]),
        "state_rounds": len(measured) - len(grad_rounds),
        "straggler_wait_s_median": round(statistics.median(r["straggler_wait_s"] for r in grad_rounds), 4)
        if grad_rounds
        else None,
        "limit_s": round(limit, 4) if limit else None,
        "round_over_limit": round(median / limit, 3) if limit and median is not None else None,
        "unblocked_fraction_min": min(fractions) if fractions else None,
        "unblocked_fraction_mean": round(statistics.mean(fractions), 4) if fractions else None,
        "stall_s_median": round(statistics.median(s for p in good for s in p["stall_s"]), 3)
        if any(p["stall_s"] for p in good)
        else None,
        "stall_breakdown_s_median": {
            "before_round": round(statistics.median(before), 3) if before else None,
            "round_own": round(statistics.median(during), 3) if during else None,
            "after_round": round(statistics.median(after), 3) if after else None,
        },
        "epoch_s_mean": round(statistics.mean(p["seconds"] / p["epochs"] for p in good), 3) if good else None,
        "compute_s_per_epoch": round(statistics.mean(p["compute_seconds"] / p["epochs"] for p in good), 3)
        if good
        else None,
        "samples_per_second": round(sum(p["samples"] / p["seconds"] for p in good), 2) if good else None,
        "setup_s": round(setup_s, 1),
        "wall_s": round(wall_s, 1),
        "load_average": [round(x, 2) for x in loads],
        "peers": per_peer,
        "round_log": measured,
    }
    if good:  # compute per epoch that would leave the loop unblocked 0.90 of the time, with the same time lost
        waste = max(p["seconds"] - p["compute_seconds"] for p in good) / (last - first)
        row["compute_s_per_epoch_for_0.90"] = round(9 * waste, 1)
    row["targets"] = targets(row)
    return row


def versus_solo(row: dict[str, Any], solo: dict[str, Any]) -> dict[str, Any]:
    """The headline: each peer's samples/s in the swarm over its samples/s with averaging off (the
    baseline ``solo``: the same process, shards and place, alone in a swarm of its own, measured over
    as many epochs of its share of the samples), and the epoch times of both."""
    if "error" in solo:
        return {"solo_error": solo["error"]}
    swarm_peers = {p["peer"]: p for p in row.get("peers", []) if "error" not in p}
    solo_peers = {p["peer"]: p for p in solo.get("peers", []) if "error" not in p}
    per_peer = []
    for index in sorted(swarm_peers.keys() & solo_peers.keys()):
        a, b = swarm_peers[index], solo_peers[index]
        rate, alone = a["samples"] / a["seconds"], b["samples"] / b["seconds"]
        cpu, solo_cpu = a.get("cpu_s_per_1k_samples"), b.get("cpu_s_per_1k_samples")
        per_peer.append(
            {
                "peer": index,
                "samples_per_second": round(rate, 3),
                "solo_samples_per_second": round(alone, 3),
                "throughput_vs_solo": round(rate / alone, 4),
                "epoch_s": round(a["seconds"] / a["epochs"], 3),
                "solo_epoch_s": round(b["seconds"] / b["epochs"], 3),
                "cpu_per_sample_vs_solo": round(cpu / solo_cpu, 4) if cpu and solo_cpu else None,
            }
        )
    if not per_peer:
        return {"solo_error": "no peer measured in both runs"}
    ratios = [p["throughput_vs_solo"] for p in per_peer]
    cpu_ratios = [p["cpu_per_sample_vs_solo"] for p in per_peer if p["cpu_per_sample_vs_solo"] is not None]
    return {
        "throughput_vs_solo_min": min(ratios),
        "throughput_vs_solo_mean": round(statistics.mean(ratios), 4),
        "samples_per_second_per_peer": round(statistics.mean(p["samples_per_second"] for p in per_peer), 3),
        "solo_samples_per_second_per_peer": round(
            statistics.mean(p["solo_samples_per_second"] for p in per_peer), 3
        ),
        "solo_epoch_s_mean": round(statistics.mean(p["solo_epoch_s"] for p in per_peer), 3),
        "cpu_per_sample_vs_solo_mean": round(statistics.mean(cpu_ratios), 4) if cpu_ratios else None,
        "solo_unblocked_fraction_min": solo.get("unblocked_fraction_min"),
        "solo_rounds": solo.get("rounds"),  # 0: averaging was off
        "solo_load_average": solo.get("load_average"),
        "versus_solo": per_peer,
    }


def _round_groups(outcomes: list[dict[str, Any]], logged: list[dict[str, Any]]) -> dict[int, str]:
    """Epoch -> id of the group whose all-reduce a process noted as that epoch's round: the last of
    its logged gradient rounds that had ended when the outcome was noted (just after the round)."""
    ends = sorted((r["t1"], r["group"]) for r in logged if r["averager"] != "TrainingStateAverager")
    out = {}
    for o in outcomes:
        if o["error"] or len(o["peers"]) < 2:
            continue
        before = [group for t1, group in ends if t1 <= o["at"] + 0.05]
        if before:
            out[o["epoch"]] = before[-1]
    return out


def analyze_nat(
    row: dict[str, Any],
    results: list[dict[str, Any]],
    averager: dict[str, Any],
    logged: list[dict[str, Any]],
    args: argparse.Namespace,
    *,
    averager_id: str,
) -> dict[str, Any]:
    """The nat link's own figures: rounds with all volunteers per volunteer (and those that ran an
    epoch late), the averaging peer's bytes and CPU seconds per round."""
    from essaim.swarm.rounds import RoundOutcome

    n, first, last = row["n"], args.warmup_epochs, args.warmup_epochs + args.epochs
    measured = range(first, last)  # the rounds that closed the measured epochs
    origin = min((r["start"]["t"] for r in results if "t" in r.get("start", {})), default=0.0)
    # the averaging peer holds one group per epoch: the epoch it gave each group is the reference
    group_epoch = {
        group: epoch
        for epoch, group in _round_groups(
            averager.get("round_outcomes", []), [r for r in logged if r["peer"] == n]
        ).items()
    }
    with_all, misses, late = [], [], []
    for index, result in enumerate(results):
        outcomes = {
            o["epoch"]: RoundOutcome(o["epoch"], tuple(o["peers"]), o["error"], o["at"])
            for o in result.get("round_outcomes", [])
        }
        groups = _round_groups(result.get("round_outcomes", []), [r for r in logged if r["peer"] == index])
        count = 0
        for epoch in measured:
            outcome = outcomes.get(epoch)
            volunteers = outcome.others(me=result["peer_id"], exclude=[averager_id]) if outcome else None
            if epoch in groups and group_epoch.get(groups[epoch], epoch) != epoch:
                # this volunteer missed its epoch's group and its update joined a later epoch's round
                late.append(
                    {"peer": index, "epoch": epoch, "averaging_peer_epoch": group_epoch[groups[epoch]]}
                )
            if outcome is not None and outcome.averaged and volunteers == n - 1:
                count += 1
                continue
            misses.append(
                {
                    "peer": index,
                    "epoch": epoch,
                    "other_volunteers": volunteers,
                    "with_averaging_peer": bool(outcome and averager_id in outcome.peers),
                    "error": outcome.error if outcome else "no outcome recorded for this epoch",
                }
            )
        with_all.append(count)
        if index < len(row["peers"]):
            row["peers"][index]["rounds_with_all_volunteers"] = count
            row["peers"][index]["late_rounds"] = sum(1 for x in late if x["peer"] == index)
            # every round this volunteer noted, seconds after the configuration's start
            row["peers"][index]["round_outcomes"] = [
                {
                    "epoch": o.epoch,
                    "other_volunteers": o.others(me=result["peer_id"], exclude=[averager_id]),
                    "with_averaging_peer": averager_id in o.peers,
                    "group": groups.get(o.epoch, "")[:12],
                    "error": o.error,
                    "at_s": round(o.at - origin, 2),
                }
                for o in outcomes.values()
            ]
    own = {o["epoch"]: o for o in averager.get("round_outcomes", [])}
    averager_rounds = [
        {
            "epoch": e,
            "volunteers": len([p for p in own[e]["peers"] if p != averager_id]),
            "error": own[e]["error"],
        }
        if e in own
        else {"epoch": e, "volunteers": None, "error": "no outcome recorded for this epoch"}
        for e in measured
    ]
    out: dict[str, Any] = {
        "limit_formula": "2*S/B (one reducer: each volunteer sends S up and gets S back)",
        "rounds_per_volunteer": len(measured),
        "rounds_with_all_volunteers": with_all,
        "round_misses": misses,
        "late_rounds": late,
        "averager_peer_id": averager_id,
        "averager_rounds": averager_rounds,
        # the averaging peer's validation checks of volunteers' updates in the measured epochs
        "validation_checks": sum(len(own[e].get("checks", {})) for e in measured if e in own),
        "validation_failed": sum(1 for e in measured if e in own for c in own[e].get("checks", {}).values()
                                 if not c["passed"] and not c.get("inconclusive")),
        "averager_expected_bytes_per_round": 2 * n * row["averaged_bytes"],
        "averager_link": "not shaped",
        # when the averaging peer moved to each epoch (a round began), seconds after the configuration's start
        "averager_epoch_starts_s": [
            [m["epoch"], round(m["wall"] - origin, 2)] for m in averager.get("marks", [])
        ],
        "time_origin": origin,
    }
    marks = {m["epoch"]: m for m in averager.get("marks", [])}
    if first in marks and last in marks:
        a, b = marks[first], marks[last]
        epochs = last - first
        per = {
            k: (b[k] - a[k]) / epochs
            for k in ("tcp_sent", "tcp_received", "veth_tx", "veth_rx", "cpu_s")
            if k in a and k in b
        }
        out.update(
            {
                "averager_seconds_per_round": round((b["wall"] - a["wall"]) / epochs, 2),
                "averager_tcp_sent_per_round": round(per["tcp_sent"]) if "tcp_sent" in per else None,
                "averager_tcp_received_per_round": round(per["tcp_received"])
                if "tcp_received" in per
                else None,
                "averager_tcp_bytes_per_round": round(per["tcp_sent"] + per["tcp_received"])
                if "tcp_sent" in per and "tcp_received" in per
                else None,
                "averager_wire_bytes_per_round": round(per["veth_tx"] + per["veth_rx"])
                if "veth_tx" in per and "veth_rx" in per
                else None,
                "averager_cpu_s_per_round": round(per["cpu_s"], 2) if "cpu_s" in per else None,
                # its CPU seconds per wall second: the share of one core it kept busy
                "averager_cpu_share": round(per["cpu_s"] * epochs / (b["wall"] - a["wall"]), 3)
                if "cpu_s" in per
                else None,
            }
        )
    else:
        out["averager_error"] = (
            f"epochs seen {sorted(marks)}; last error {averager.get('last_error') or 'none'}"
        )
    return out


def targets(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if row.get("round_over_limit") is not None:
        out["round_le_1.5x_limit"] = row["round_over_limit"] <= TARGET_ROUND_RATIO
    if row["mode"].startswith("local") and row.get("throughput_vs_solo_min") is not None:
        out["throughput_ge_0.90"] = row["throughput_vs_solo_min"] >= TARGET_THROUGHPUT_LOCAL
    if row.get("rounds_with_all_volunteers") is not None:  # and none of them an epoch late
        out["all_rounds_with_all_volunteers"] = (
            all(k == row["rounds_per_volunteer"] for k in row["rounds_with_all_volunteers"])
            and len(row["rounds_with_all_volunteers"]) == row["n"]
            and not row.get("late_rounds")
        )
    return out


def lora_full_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for full in rows:
        if full.get("adapter") != "full" or not full.get("tcp_sent_per_peer_per_epoch"):
            continue
        for lora in rows:
            same = all(lora.get(k) == full[k] for k in ("n", "link", "mode"))
            if not (same and lora.get("adapter") == "lora" and lora.get("tcp_sent_per_peer_per_epoch")):
                continue
            item = {
                "n": full["n"],
                "link": full["link"],
                "mode": full["mode"],
                "lora_tcp_bytes": lora["tcp_sent_per_peer_per_epoch"],
                "full_tcp_bytes": full["tcp_sent_per_peer_per_epoch"],
                "ratio": round(lora["tcp_sent_per_peer_per_epoch"] / full["tcp_sent_per_peer_per_epoch"], 4),
                "averaged_bytes_ratio": round(lora["averaged_bytes"] / full["averaged_bytes"], 4),
                "lora_epoch_s": lora["epoch_s_mean"],
                "full_epoch_s": full["epoch_s_mean"],
            }
            if lora.get("wire_sent_per_peer_per_epoch") and full.get("wire_sent_per_peer_per_epoch"):
                item["wire_ratio"] = round(
                    lora["wire_sent_per_peer_per_epoch"] / full["wire_sent_per_peer_per_epoch"], 4
                )
            out.append(item)
    return out


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.3f}" if value < 1e8 else f"{value / 1e6:.0f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("pass" if ok else "FAIL")


def markdown(report: dict[str, Any]) -> str:
    a = report["settings"]
    lines = [
        "# swarm: essaim's swarm training with several peers",
        "",
        f"{report['model']} model, micro-batch {a['batch']}, {a['target']} samples per swarm epoch, "
        f"{a['warmup_epochs']} warm-up + {a['epochs']} measured epochs per configuration, "
        f"{a['compression']} compression, {a.get('aggregation', 'mean')} aggregation, {a['threads']} torch "
        f"thread per peer; limited link: "
        f"{a['rate_mbit']:g} Mbit/s per peer each way (tc tbf on both veth ends); nat link: each peer "
        f"behind its own NAT router shaped to {a['rate_mbit']:g} Mbit/s each way, in client mode, averaging "
        f"through the averaging peer (public, not shaped). "
        f"Machine: {report['machine']}; load average {report['load_average']}; run took "
        f"{report['wall_s'] / 60:.1f} min.",
        "",
        "| n | link | mode | adapter | trainable params | S (MB) | sent/peer/epoch, TCP (MB) "
        "| sent/peer/epoch, wire (MB) | TCP ÷ all-reduce bytes | round median (s) | round p90 (s) | limit (s) "
        "| round / limit | throughput ÷ averaging off, min (mean) | samples/s per peer, swarm / off "
        "| CPU per sample ÷ averaging off | unblocked fraction min (mean) | stall/epoch (s) | epoch (s), swarm / off "
        "| targets |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        head = f"| {row['n']} | {row['link']} | {row['mode']} | {row['adapter']} |"
        if "error" in row:
            lines.append(f"{head} error: {row['error'].splitlines()[0][:160]} |" + " |" * 15)
            continue
        sent = row["tcp_sent_per_peer_per_epoch"]
        over = sent / row["allreduce_bytes_per_peer"] if sent else None
        verdicts = []
        t = row["targets"]
        if "round_le_1.5x_limit" in t:
            verdicts.append(f"round {_verdict(t['round_le_1.5x_limit'])}")
        if "throughput_ge_0.90" in t:
            verdicts.append(f"throughput {_verdict(t['throughput_ge_0.90'])}")
        if "all_rounds_with_all_volunteers" in t:
            verdicts.append(f"all volunteers {_verdict(t['all_rounds_with_all_volunteers'])}")
        partial = (
            f" ({row['rounds_partial_or_failed']} of {row['rounds']} partial)"
            if row["rounds_partial_or_failed"]
            else ""
        )
        lines.append(
            f"{head} {row['trainable_parameters']:,} | {_mb(row['averaged_bytes'])} | {_mb(sent)} | "
            f"{_mb(row['wire_sent_per_peer_per_epoch'])} | "
            f"{_num(over)} | {_num(row['round_s_median'], '.3f')}{partial} | {_num(row['round_s_p90'], '.3f')} | "
            f"{_num(row['limit_s'], '.3f')} | {_num(row['round_over_limit'])} | "
            f"{_num(row.get('throughput_vs_solo_min'), '.3f')} ({_num(row.get('throughput_vs_solo_mean'), '.3f')}) | "
            f"{_num(row.get('samples_per_second_per_peer'), '.1f')} / {_num(row.get('solo_samples_per_second_per_peer'), '.1f')} | "
            f"{_num(row.get('cpu_per_sample_vs_solo_mean'), '.3f')} | "
            f"{_num(row['unblocked_fraction_min'], '.3f')} ({_num(row['unblocked_fraction_mean'], '.3f')}) | "
            f"{_num(row['stall_s_median'])} | {_num(row['epoch_s_mean'], '.1f')} / "
            f"{_num(row.get('solo_epoch_s_mean'), '.1f')} | {', '.join(verdicts) or '-'} |"
        )
    lines += _nat_lines(report["rows"])
    if report["lora_full"]:
        lines += ["", "LoRA against full fine-tune, bytes sent per peer per epoch:", ""]
        for r in report["lora_full"]:
            wire = f"; on the wire {r['wire_ratio']:.4f}" if "wire_ratio" in r else ""
            lines.append(
                f"- n={r['n']}, {r['link']}, {r['mode']}: TCP {_mb(r['lora_tcp_bytes'])} MB / "
                f"{_mb(r['full_tcp_bytes'])} MB = **{r['ratio']:.4f}**{wire} (averaged tensors alone: "
                f"{r['averaged_bytes_ratio']:.4f}; epochs of {r['lora_epoch_s']:.1f} s and "
                f"{r['full_epoch_s']:.1f} s)"
            )
    lines += [
        "",
        "Targets: round time <= 1.5 x the all-reduce limit, 2(n-1)/n·S/B on the limited link, 2·S/B on the "
        "nat link (one reducer); on loopback B is not a link rate, so no limit; samples/s >= 0.90 x the same "
        "peers' with averaging off, on every peer in local mode (INTELLECT-1: 83% compute utilisation across "
        "continents); nat link: every round of every volunteer holds all the other volunteers, none of them "
        "late. Sync-mode figures are shown for comparison.",
        "",
    ]
    verdicts = report["verdicts"]
    text = (
        f"Round-time target met in {verdicts['round'][0]} of {verdicts['round'][1]} shaped-link "
        f"configurations; throughput target met in {verdicts['throughput'][0]} of "
        f"{verdicts['throughput'][1]} local-mode configurations measured against averaging off"
    )
    if verdicts.get("volunteers", [0, 0])[1]:
        text += (
            f"; all-volunteers target met in {verdicts['volunteers'][0]} of {verdicts['volunteers'][1]} "
            "nat-link configurations"
        )
    lines.append(text + ".")
    for row in report["rows"]:
        if row.get("targets", {}).get("throughput_ge_0.90") is False:
            b = row["stall_breakdown_s_median"]
            unblocked = row["unblocked_fraction_min"]
            if unblocked is not None and unblocked < TARGET_THROUGHPUT_LOCAL:
                why = (
                    f"unblocked {unblocked:.3f}: with the same time blocked per epoch it would need "
                    f"{row['compute_s_per_epoch_for_0.90']:.0f} s of compute per epoch (now "
                    f"{row['compute_s_per_epoch']:.1f} s) to be unblocked 0.90 of the time (epoch-ending step, "
                    f"median: {_num(b['before_round'])} s before the round, {_num(b['round_own'])} s in it, "
                    f"{_num(b['after_round'])} s after)"
                )
            else:
                why = (
                    f"unblocked {_num(unblocked, '.3f')}: the loss is not time blocked on rounds but slower "
                    "training, the rounds and their helpers (DHT, p2pd) taking CPU from it, or the machine's "
                    "other load changing between the two runs"
                )
            lines.append(f"- {row['tag']}: throughput {_num(row['throughput_vs_solo_min'], '.3f')} of averaging off; {why}.")
        if row.get("solo_error"):
            lines.append(f"- {row['tag']}: the run with averaging off failed: {row['solo_error'][:300]}")
    rates = [
        r["tcp_sent_per_peer_per_second"]
        for r in report["rows"]
        if r.get("adapter") == "lora" and r.get("tcp_sent_per_peer_per_second")
    ]
    if rates:
        lines += [
            "",
            f"Background traffic: in the LoRA runs, where the averaged tensors are small, each peer sent "
            f"{min(rates) / 1e3:.0f}-{max(rates) / 1e3:.0f} kB/s of TCP payload (DHT, progress records, "
            f"matchmaking), so their bytes per epoch grow with the epoch's length.",
        ]
    meters = [r["trafficmeter_over_tcp"] for r in report["rows"] if r.get("trafficmeter_over_tcp")]
    if meters:
        lines += [
            "",
            f"The app's traffic meter (`client/netlimit.py` TrafficMeter: p2pd's read+write chars / 2) "
            f"counted {min(meters):.2f}-{max(meters):.2f} x the TCP payload sent and received.",
        ]
    for note in report["notes"]:
        lines.append(f"\nNote: {note}")
    lines += [
        "",
        "Columns: *S*: bytes of the averaged tensors per round (trainable parameters after compression). "
        "*sent/peer/epoch*: mean over peers; *TCP*: payload sent by the peer's libp2p daemon (ss, every "
        "link); *wire*: what left the peer's interface, tx_bytes (limited and nat links: headers and ACKs included). "
        "*TCP ÷ all-reduce bytes*: the TCP figure over what one all-reduce must send per peer, 2(n-1)/n·S "
        "(S on the nat link, where the averaging peer reduces everything). *round*: one gradient (sync) or "
        "pseudo-gradient (local) all-reduce, from the last peer joining it to the last peer done. "
        "*stall/epoch*: median time a peer's training loop spent in the step that ends an epoch (the group "
        "forming, the last peer arriving, the round, the optimizer step). *throughput ÷ averaging off*: a peer's "
        "samples/s over the measured epochs against the same peer's in a run right after, with the same n "
        "processes in the same places each alone in a swarm of its own (epochs of its share of the samples, no "
        "round, no averaging peer): lowest peer (mean of peers). *CPU per sample ÷ averaging off*: the CPU seconds "
        "per sample of each peer's process tree (trainer, DHT, averagers, p2pd) against the same with averaging "
        "off, mean of peers: what averaging costs in CPU, the figure the machine's other load disturbs least. "
        "*unblocked fraction*: a peer's compute seconds "
        "over its wall seconds across the measured epochs, i.e. the share of time its training loop was not "
        "in the epoch-ending step, lowest peer (mean of peers); rounds that slow training by competing for "
        "the cores do not lower it. *epoch*: wall seconds per measured epoch, in the swarm / with averaging off.",
        "",
        f"Command: `{report['command']}`",
    ]
    return "\n".join(lines) + "\n"


def _nat_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The nat link's own table: rounds with all volunteers, and the averaging peer's load."""
    nat = [r for r in rows if r.get("link") == "nat" and "error" not in r]
    if not nat:
        return []
    lines = [
        "",
        "nat link: volunteers in client mode behind their routers, the averaging peer reducing for all of them:",
        "",
        "| n | mode | adapter | rounds with all volunteers, per volunteer | round median (s) | limit 2·S/B (s) "
        "| round / limit | averaging peer TCP sent+received/round (MB) | 2·n·S (MB) | averaging peer wire/round (MB) "
        "| averaging peer CPU s/round (share of a core) | validation checks (failed) | epoch (s) |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in nat:
        late = [sum(1 for x in row.get("late_rounds", []) if x["peer"] == i) for i in range(row["n"])]
        per = ", ".join(
            f"{k} ({late[i]} late)" if i < len(late) and late[i] else str(k)
            for i, k in enumerate(row.get("rounds_with_all_volunteers", []))
        )
        lines.append(
            f"| {row['n']} | {row['mode']} | {row['adapter']} | {per} of {row.get('rounds_per_volunteer')} | "
            f"{_num(row['round_s_median'], '.3f')} | {_num(row['limit_s'], '.3f')} | {_num(row['round_over_limit'])} | "
            f"{_mb(row.get('averager_tcp_bytes_per_round'))} | {_mb(row.get('averager_expected_bytes_per_round'))} | "
            f"{_mb(row.get('averager_wire_bytes_per_round'))} | {_num(row.get('averager_cpu_s_per_round'))} "
            f"({_num(row.get('averager_cpu_share'))}) | "
            f"{row.get('validation_checks', '')} ({row.get('validation_failed', '')}) | "
            f"{_num(row['epoch_s_mean'], '.1f')} |"
        )
    for row in nat:
        for miss in row.get("round_misses", []):
            lines.append(
                f"- {row['tag']}: volunteer {miss['peer']}, epoch {miss['epoch']}: "
                f"{miss['other_volunteers'] if miss['other_volunteers'] is not None else 'no'} other volunteer(s)"
                f"{', with the averaging peer' if miss['with_averaging_peer'] else ''}"
                f"{': ' + miss['error'] if miss['error'] else ''}"
            )
        for item in row.get("late_rounds", []):
            lines.append(
                f"- {row['tag']}: volunteer {item['peer']}'s round of epoch {item['epoch']} ran in the averaging "
                f"peer's group of epoch {item['averaging_peer_epoch']} (it missed its own epoch's group)"
            )
        if row.get("averager_error"):
            lines.append(f"- {row['tag']}: averaging peer: {row['averager_error']}")
    lines += [
        "",
        "The averaging peer's link is not shaped. *rounds with all volunteers*: rounds that closed a measured "
        "epoch and held every other volunteer (the averaging peer not counted), from each volunteer's "
        "RoundOutcomes; *late*: of those, rounds that ran in the group the averaging peer held for a later "
        "epoch (matched through the round log), so they averaged this volunteer's update with the others' "
        "next one. *averaging peer TCP*: its p2pd's payload sent + received between its own epoch "
        "boundaries, per round (one gradient round per epoch; DHT traffic included); *wire*: its interface's "
        "tx + rx bytes. *CPU s/round*: its process tree (Python, DHT and averager processes, p2pd); in brackets, "
        "CPU seconds per wall second.",
    ]
    return lines


def configurations(args: argparse.Namespace, links: list[str]) -> list[dict[str, Any]]:
    out = []
    for n in args.peers:
        for link in links:
            for mode in args.modes:
                out.append({"n": n, "link": link, "mode": mode, "adapter": "lora"})
    for item in args.full:
        n_text, _, link = item.partition(":")
        n = int(n_text)
        if link not in links:
            link = links[-1]  # limited unavailable or not asked for: the same peer count on the other link
        for mode in args.modes:
            cfg = {"n": n, "link": link, "mode": mode, "adapter": "full"}
            if cfg not in out:
                out.append(cfg)
    for cfg in out:
        cfg["tag"] = f"{cfg['n']}-{cfg['link']}-{cfg['mode']}-{cfg['adapter']}"
    return out


def build_job(root: Path, size: str) -> Path:
    from essaim.swarm.demo_task import DemoConfig, make_demo_job

    make_demo_job(root, train_lines=20000, config=DemoConfig(**SIZES[size]))
    return root


def _csv(kind: type) -> Any:
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", type=_csv(int), default=[2, 4], help="peer counts (default 2,4)")
    parser.add_argument(
        "--links",
        type=_csv(str),
        default=["loopback", "limited"],
        help="loopback, limited and/or nat (default loopback,limited)",
    )
    parser.add_argument(
        "--modes",
        type=_csv(str),
        default=["sync", "local"],
        help="sync, local (averaging overlapped with training) and/or local-blocking (default sync,local)",
    )
    parser.add_argument(
        "--full",
        type=_csv(str),
        default=["2:limited"],
        help="N:LINK pairs also run as a full fine-tune, for the LoRA/full ratio ('' for none); a link not "
        "in --links falls back to the last of them",
    )
    parser.add_argument("--epochs", type=int, default=3, help="measured swarm epochs per configuration")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--target", type=int, default=640, help="samples per swarm epoch (target batch size)")
    parser.add_argument("--batch", type=int, default=16, help="micro-batch per peer")
    parser.add_argument(
        "--compression",
        choices=["none", "fp16", "8bit"],
        default=None,
        help="averaged tensors' codec (default: the demo recipe's fp16)",
    )
    parser.add_argument(
        "--aggregation",
        choices=["robust", "mean"],
        default=None,
        help="training.aggregation (default: the recipe's, robust): robust reduction or the plain mean",
    )
    parser.add_argument(
        "--no-validation", dest="validation", action="store_false",
        help="on the nat link, the averaging peer does not validate volunteers' updates (robust, local mode)",
    )
    parser.add_argument(
        "--rate-mbit", type=float, default=20.0, help="per-peer link rate, each way (limited and nat)"
    )
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false",
        help="do not run each configuration again with averaging off (no throughput figure, no target)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per peer")
    parser.add_argument(
        "--timeout", type=float, default=420.0, help="seconds per configuration before giving up"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="copy the peers' logs and round logs into this folder (for a post-mortem)",
    )
    parser.add_argument(
        "--out", default="swarm", help="results name: bench/results/NAME.json and NAME.md (default swarm)"
    )
    parser.add_argument("--_peer", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--_role", choices=["peer", "client", "averager"], default="peer", help=argparse.SUPPRESS
    )
    for name in ("--n", "--job", "--recipe", "--job-id", "--keys", "--rounds", "--host", "--iface"):
        parser.add_argument(name, default=None, type=int if name == "--n" else str, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for link in args.links:
        if link not in LINKS:
            parser.error(f"unknown link {link!r}: use {', '.join(LINKS)}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.out):
        parser.error(f"--out takes a file name without a folder, such as swarm-nat, not {args.out!r}")
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}: use {', '.join(MODES)}")
    for item in args.full:
        if not re.fullmatch(rf"\d+:({'|'.join(LINKS)})", item):
            parser.error(f"--full takes N:LINK pairs such as 2:limited, not {item!r}")
    return args


def _nat_progress(row: dict[str, Any]) -> str:
    if row.get("rounds_with_all_volunteers") is None:
        return ""
    per = ",".join(str(k) for k in row["rounds_with_all_volunteers"])
    return (
        f", rounds with all volunteers {per} of {row['rounds_per_volunteer']}, averaging peer "
        f"{_mb(row.get('averager_tcp_bytes_per_round'))} MB and {_num(row.get('averager_cpu_s_per_round'))} CPU s per round"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args._peer is not None:
        return peer_main(args)
    began = time.monotonic()
    notes: list[str] = []
    links = list(args.links)
    if "limited" in links:
        why = netns_unavailable()
        if why:
            print(f"skipping the limited link: {why}", file=sys.stderr)
            notes.append(f"limited link skipped: {why}")
            links.remove("limited")
    if "nat" in links:
        why = natlab_unavailable()
        if why:
            print(f"skipping the nat link: {why}", file=sys.stderr)
            notes.append(f"nat link skipped: {why}")
            links.remove("nat")
    if not links:
        print("nothing to run", file=sys.stderr)
        return 1
    configs = configurations(args, links)
    net: dict[str, Any] = {}
    lab: Any = None
    rows: list[dict[str, Any]] = []
    loads = [os.getloadavg()[0]]

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        if "limited" in links:
            try:
                net["limited"] = setup_netns(
                    max(c["n"] for c in configs if c["link"] == "limited"), args.rate_mbit
                )
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"skipping the limited link: {exc}", file=sys.stderr)
                notes.append(f"limited link skipped: could not build it ({exc})")
                configs = [c for c in configs if c["link"] != "limited"]
        if "nat" in links:
            try:
                lab, net["nat"] = setup_natlab(
                    max(c["n"] for c in configs if c["link"] == "nat"), args.rate_mbit
                )
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"skipping the nat link: {exc}", file=sys.stderr)
                notes.append(f"nat link skipped: could not build it ({exc})")
                configs = [c for c in configs if c["link"] != "nat"]
        with tempfile.TemporaryDirectory(prefix="essaim-swarm-bench-") as tmp:
            os.chmod(tmp, 0o755)
            job_dir = build_job(Path(tmp) / "job", args.size)
            for number, cfg in enumerate(configs, 1):
                print(f"[{number}/{len(configs)}] {cfg['tag']} ...", file=sys.stderr, flush=True)
                try:
                    row = run_config(cfg, job_dir, Path(tmp), args, net)
                    if args.baseline and "error" not in row:  # the same peers with averaging off, right after
                        solo_cfg = {**cfg, "tag": f"{cfg['tag']}-solo", "solo": True}
                        solo = run_config(solo_cfg, job_dir, Path(tmp), args, net)
                        row.update(versus_solo(row, solo))
                        row["targets"] = targets(row)
                finally:
                    if args.keep:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        for path in Path(tmp).glob(f"*-{cfg['tag']}*"):
                            shutil.copy(path, args.keep / path.name)
                rows.append(row)
                loads.append(os.getloadavg()[0])
                if "error" in row:
                    print(f"    error: {row['error'][:3000]}", file=sys.stderr)
                else:
                    print(
                        f"    sent/peer/epoch {_mb(row['tcp_sent_per_peer_per_epoch'])} MB, round median "
                        f"{_num(row['round_s_median'], '.3f')} s (limit {_num(row['limit_s'], '.3f')}), "
                        f"throughput vs averaging off {_num(row.get('throughput_vs_solo_min'), '.3f')}, unblocked "
                        f"fraction {_num(row['unblocked_fraction_min'], '.3f')}"
                        f"{_nat_progress(row)}, {row['wall_s']:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if "limited" in net:
            teardown_netns()
        if lab is not None:
            lab.close()  # kills what is left in its namespaces, then deletes them

    model = {"small": "small (4 layers, hidden 256)", "demo": "demo (2 layers, hidden 64)"}[args.size]
    round_checks = [
        r["targets"]["round_le_1.5x_limit"] for r in rows if "round_le_1.5x_limit" in r.get("targets", {})
    ]
    throughput_checks = [
        r["targets"]["throughput_ge_0.90"] for r in rows if "throughput_ge_0.90" in r.get("targets", {})
    ]
    volunteer_checks = [
        r["targets"]["all_rounds_with_all_volunteers"]
        for r in rows
        if "all_rounds_with_all_volunteers" in r.get("targets", {})
    ]
    settings = {
        k: getattr(args, k)
        for k in (
            "peers",
            "links",
            "modes",
            "full",
            "epochs",
            "warmup_epochs",
            "size",
            "target",
            "batch",
            "rate_mbit",
            "threads",
            "baseline",
            "out",
        )
    }
    settings["compression"] = args.compression or "fp16"
    settings["aggregation"] = args.aggregation or "robust"
    report = {
        "benchmark": "swarm",
        "model": model,
        "settings": settings,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"Linux {platform.release()}",
        "cpus": os.cpu_count(),
        "load_average": f"{min(loads):.1f}-{max(loads):.1f}",
        "wall_s": round(time.monotonic() - began, 1),
        "command": shlex.join(
            [".venv/bin/python", "bench/swarm.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "targets": {
            "round_over_limit_max": TARGET_ROUND_RATIO,
            "throughput_vs_averaging_off_local_min": TARGET_THROUGHPUT_LOCAL,
        },
        "verdicts": {
            "round": [sum(round_checks), len(round_checks)],
            "throughput": [sum(throughput_checks), len(throughput_checks)],
            "volunteers": [sum(volunteer_checks), len(volunteer_checks)],
        },
        "lora_full": lora_full_ratios(rows),
        "notes": notes,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
