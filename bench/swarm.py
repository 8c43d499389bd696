"""essaim's swarm training with several peers: traffic per epoch, averaging round time, compute fraction.

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

Per configuration, over the measured epochs:

- *bytes sent per peer per epoch*, two counters: **TCP**, the sum of ``bytes_sent`` (payload,
  retransmissions included) over the TCP sockets of the peer's libp2p daemon (``p2pd``, the process
  that carries all of hivemind's traffic), read with ``ss -tinp`` at every epoch boundary and every
  3 s, on every link; **wire**, on the limited link only, the ``tx_bytes`` counter of the peer's veth
  (everything its namespace sent: Ethernet, IP and TCP headers and pure ACKs included, which weigh
  a lot when the messages are small). A socket opened and closed between two ``ss`` readings would
  be missed; libp2p keeps one connection per pair of peers open, so there are almost none (the
  wire counter misses nothing). The table also divides the TCP figure by ``2(n-1)/n * S``, what one
  all-reduce must send: the rest is the DHT, progress records and matchmaking, which hivemind runs
  as a tight loop of DHT lookups while a peer waits for its group (tens of kB/s per peer). The
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
- *compute fraction*: per peer, the trainer's own compute counter (``TrainingPeer``: forward,
  backward and the optimizer's work on every micro-batch, but none of the step that ends an epoch,
  which starts the averaging round and, unless it is overlapped, waits for it) over the wall time
  between the same epoch boundaries. Target >= 0.90 on every peer in local mode (INTELLECT-1
  reported 83% across continents). The epoch-ending step's time is split into before the peer's
  round (its group forming at the time hivemind scheduled, the other peers arriving), the round,
  and after it (the optimizer or outer step); the JSON has the split and the compute per epoch
  that 0.90 would need. In overlapped local mode the step only waits when the previous epoch's
  round is still running.
- *LoRA / full*: bytes per epoch of the LoRA run over the full fine-tune's, for the ``--full``
  (peers:link) pairs, with the same ratio for the averaged tensors alone.

The epochs stop short of the 5th, where essaim also averages the whole training state
(``average_state_every=5``: parameters and optimizer statistics); ``--warmup-epochs 1 --epochs 4``
puts that round in the window (``state_rounds`` in the JSON).

    .venv/bin/python bench/swarm.py                                  # the default set, ~10 min on 2 cores
    .venv/bin/python bench/swarm.py --peers 2 --links loopback --modes local --epochs 2
    .venv/bin/python bench/swarm.py --links limited --rate-mbit 50 --full 2:limited,4:limited

Writes ``bench/results/swarm.json`` and ``bench/results/swarm.md``.
"""

from __future__ import annotations

import argparse
import contextlib
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
SAMPLE_EVERY_S = 3.0
TARGET_ROUND_RATIO = 1.5
TARGET_COMPUTE_LOCAL = 0.90


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
    """Bytes this peer sent/received: its veth's counters (in a namespace) and its p2pd's TCP sockets."""

    def __init__(self, p2pd_pid: int | None, iface: str | None) -> None:
        self.p2pd_pid, self.iface = p2pd_pid, iface
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
    import torch

    torch.set_num_threads(args.threads)
    index, n = args._peer, args.n
    _log_rounds(Path(args.rounds), index)

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
        client_mode=False,
        record_validators=progress_validators(args.job_id),
        private_key=key,
    )
    dht = None
    if index == 0:  # first, so that the others can be told where it is while they load
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
    traffic = Traffic(_p2pd_pid(), args.iface or None)
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
    _say(event="ready", p2pd=traffic.p2pd_pid)
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
    )
    sys.stdin.readline()  # "quit": the others may still need this peer in their last round
    with contextlib.suppress(Exception):
        optimizer.shutdown()
    os._exit(0)  # hivemind's helper processes (DHT, averagers, p2pd) leave with this one


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


# ---- the driver ----


class PeerProcess:
    """One peer process of a configuration; its JSON lines are queued as they arrive."""

    def __init__(self, index: int, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.index, self.log_path = index, log
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
                raise RuntimeError(f"peer {self.index}: no {event!r} in time; {self.tail()}") from None
            if item is None:
                raise RuntimeError(
                    f"peer {self.index} exited ({self.proc.poll()}) before {event!r}; {self.tail()}"
                )
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
    training["target_batch_size"] = args.target
    training["batch_size"] = args.batch
    if args.compression:
        training["compression"] = args.compression
    path = job_dir / f"recipe-{cfg['tag']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_config(
    cfg: dict[str, Any],
    job_dir: Path,
    work: Path,
    args: argparse.Namespace,
    links: list[dict[str, str]] | None,
) -> dict[str, Any]:
    n, tag = cfg["n"], cfg["tag"]
    recipe = make_recipe(job_dir, cfg, args)
    rounds = work / f"rounds-{tag}.jsonl"
    keys = work / "keys"
    keys.mkdir(exist_ok=True, mode=0o700)
    env = _peer_env(args.threads)
    peers: list[PeerProcess] = []
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    loads = [os.getloadavg()[0]]
    try:
        for i in range(n):
            link = links[i] if cfg["link"] == "limited" and links else None
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--_peer",
                str(i),
                "--n",
                str(n),
                "--job",
                str(job_dir),
                "--recipe",
                str(recipe),
                "--job-id",
                f"swarm-bench-{tag}",
                "--keys",
                str(keys),
                "--rounds",
                str(rounds),
                "--threads",
                str(args.threads),
                "--host",
                link["host"] if link else "127.0.0.1",
                "--iface",
                link["iface"] if link else "",
            ]
            if link:
                cmd = ["ip", "netns", "exec", link["ns"], *cmd]
            peers.append(PeerProcess(i, cmd, work / f"peer-{tag}-{i}.log", env))
        maddrs = peers[0].expect("dht", deadline)["maddrs"]
        for peer in peers[1:]:
            peer.send(json.dumps({"initial_peers": maddrs}))
        for peer in peers:
            peer.expect("ready", deadline)
        setup_s = time.monotonic() - started
        for peer in peers:
            peer.send("go")
        results = [peer.expect("done", deadline) for peer in peers]
        loads.append(os.getloadavg()[0])
    except RuntimeError as exc:
        return {**cfg, "error": str(exc)}
    finally:
        for peer in peers:  # all done (or failed): now they may leave
            peer.send("quit")
        for peer in peers:
            peer.close()
    rows = [json.loads(line) for line in rounds.read_text().splitlines()] if rounds.exists() else []
    return analyze(cfg, results, rows, args, setup_s=setup_s, wall_s=time.monotonic() - started, loads=loads)


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
    per_peer = []
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
            "compute_fraction": round((b["compute"] - a["compute"]) / (b["t"] - a["t"]), 4),
            "samples": b["samples"] - a["samples"],
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
    measured = []
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
    bandwidth = args.rate_mbit * 1e6 / 8 if cfg["link"] == "limited" else None
    limit = 2 * (n - 1) / n * s_bytes / bandwidth if bandwidth else None
    median = statistics.median(times) if times else None
    fractions = [p["compute_fraction"] for p in good]
    row = {
        **cfg,
        "trainable_parameters": trainable,
        "averaged_bytes": s_bytes,
        "allreduce_bytes_per_peer": round(2 * (n - 1) / n * s_bytes),
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
        "round_s_p90": round(_quantile(times, 0.9), 4) if times else None,
        "rounds": len(grad_rounds),
        "rounds_partial_or_failed": sum(1 for r in grad_rounds if r["size"] < n or not r["ok"]),
        "state_rounds": len(measured) - len(grad_rounds),
        "straggler_wait_s_median": round(statistics.median(r["straggler_wait_s"] for r in grad_rounds), 4)
        if grad_rounds
        else None,
        "limit_s": round(limit, 4) if limit else None,
        "round_over_limit": round(median / limit, 3) if limit and median is not None else None,
        "compute_fraction_min": min(fractions) if fractions else None,
        "compute_fraction_mean": round(statistics.mean(fractions), 4) if fractions else None,
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
    if good:  # compute per epoch that would give 0.90 with the same non-compute time per epoch
        waste = max(p["seconds"] - p["compute_seconds"] for p in good) / (last - first)
        row["compute_s_per_epoch_for_0.90"] = round(9 * waste, 1)
    row["targets"] = targets(row)
    return row


def targets(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if row.get("round_over_limit") is not None:
        out["round_le_1.5x_limit"] = row["round_over_limit"] <= TARGET_ROUND_RATIO
    if row["mode"].startswith("local") and row.get("compute_fraction_min") is not None:
        out["compute_fraction_ge_0.90"] = row["compute_fraction_min"] >= TARGET_COMPUTE_LOCAL
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
        f"{a['compression']} compression, {a['threads']} torch thread per peer; limited link: "
        f"{a['rate_mbit']:g} Mbit/s per peer each way (tc tbf on both veth ends). "
        f"Machine: {report['machine']}; load average {report['load_average']}; run took "
        f"{report['wall_s'] / 60:.1f} min.",
        "",
        "| n | link | mode | adapter | trainable params | S (MB) | sent/peer/epoch, TCP (MB) "
        "| sent/peer/epoch, wire (MB) | TCP ÷ 2(n-1)/n·S | round median (s) | round p90 (s) | limit (s) "
        "| round / limit | compute fraction min (mean) | stall/epoch (s) | epoch (s) | targets |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        head = f"| {row['n']} | {row['link']} | {row['mode']} | {row['adapter']} |"
        if "error" in row:
            lines.append(f"{head} error: {row['error'].splitlines()[0][:160]} |" + " |" * 12)
            continue
        sent = row["tcp_sent_per_peer_per_epoch"]
        over = sent / row["allreduce_bytes_per_peer"] if sent else None
        verdicts = []
        t = row["targets"]
        if "round_le_1.5x_limit" in t:
            verdicts.append(f"round {_verdict(t['round_le_1.5x_limit'])}")
        if "compute_fraction_ge_0.90" in t:
            verdicts.append(f"compute {_verdict(t['compute_fraction_ge_0.90'])}")
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
            f"{_num(row['compute_fraction_min'], '.3f')} ({_num(row['compute_fraction_mean'], '.3f')}) | "
            f"{_num(row['stall_s_median'])} | {_num(row['epoch_s_mean'], '.1f')} | {', '.join(verdicts) or '-'} |"
        )
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
        "Targets: round time <= 1.5 x the all-reduce limit 2(n-1)/n·S/B (limited link only; on "
        "loopback B is not a link rate, so no limit); compute fraction >= 0.90 on every peer in local mode "
        "(INTELLECT-1: 83% across continents). Sync-mode compute fractions are shown for comparison.",
        "",
    ]
    verdicts = report["verdicts"]
    lines.append(
        f"Round-time target met in {verdicts['round'][0]} of {verdicts['round'][1]} limited-link "
        f"configurations; compute-fraction target met in {verdicts['compute'][0]} of "
        f"{verdicts['compute'][1]} local-mode configurations."
    )
    for row in report["rows"]:
        if row.get("targets", {}).get("compute_fraction_ge_0.90") is False:
            b = row["stall_breakdown_s_median"]
            lines.append(
                f"- {row['tag']}: {row['compute_s_per_epoch']:.1f} s of compute per epoch; with the same "
                f"time lost per epoch it would need {row['compute_s_per_epoch_for_0.90']:.0f} s for 0.90 "
                f"(epoch-ending step, median: {_num(b['before_round'])} s before the round, "
                f"{_num(b['round_own'])} s in it, {_num(b['after_round'])} s after)."
            )
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
        "link); *wire*: the peer's veth tx_bytes (limited link: headers and ACKs included). "
        "*TCP ÷ 2(n-1)/n·S*: the TCP figure over what one all-reduce must send. *round*: one gradient (sync) or "
        "pseudo-gradient (local) all-reduce, from the last peer joining it to the last peer done. "
        "*stall/epoch*: median time a peer's training loop spent in the step that ends an epoch (the group "
        "forming, the last peer arriving, the round, the optimizer step). *compute fraction*: a peer's compute "
        "seconds over its wall seconds across the measured epochs, lowest peer (mean of peers). *epoch*: wall "
        "seconds per measured epoch.",
        "",
        f"Command: `{report['command']}`",
    ]
    return "\n".join(lines) + "\n"


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
        help="loopback and/or limited (default both)",
    )
    parser.add_argument(
        "--modes", type=_csv(str), default=["sync", "local"],
        help="sync, local (averaging overlapped with training) and/or local-blocking (default sync,local)",
    )
    parser.add_argument(
        "--full",
        type=_csv(str),
        default=["2:limited"],
        help="N:LINK pairs also run as a full fine-tune, for the LoRA/full ratio ('' for none)",
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
        "--rate-mbit", type=float, default=20.0, help="per-peer link rate, each way (limited)"
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
    parser.add_argument("--_peer", type=int, default=None, help=argparse.SUPPRESS)
    for name in ("--n", "--job", "--recipe", "--job-id", "--keys", "--rounds", "--host", "--iface"):
        parser.add_argument(name, default=None, type=int if name == "--n" else str, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for link in args.links:
        if link not in ("loopback", "limited"):
            parser.error(f"unknown link {link!r}: use loopback and/or limited")
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}: use {', '.join(MODES)}")
    for item in args.full:
        if not re.fullmatch(r"\d+:(loopback|limited)", item):
            parser.error(f"--full takes N:LINK pairs such as 2:limited, not {item!r}")
    return args


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
    if not links:
        print("nothing to run", file=sys.stderr)
        return 1
    configs = configurations(args, links)
    net: list[dict[str, str]] | None = None
    rows: list[dict[str, Any]] = []
    loads = [os.getloadavg()[0]]

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        if "limited" in links:
            try:
                net = setup_netns(max(c["n"] for c in configs if c["link"] == "limited"), args.rate_mbit)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"skipping the limited link: {exc}", file=sys.stderr)
                notes.append(f"limited link skipped: could not build it ({exc})")
                configs = [c for c in configs if c["link"] != "limited"]
        with tempfile.TemporaryDirectory(prefix="essaim-swarm-bench-") as tmp:
            os.chmod(tmp, 0o755)
            job_dir = build_job(Path(tmp) / "job", args.size)
            for number, cfg in enumerate(configs, 1):
                print(f"[{number}/{len(configs)}] {cfg['tag']} ...", file=sys.stderr, flush=True)
                try:
                    row = run_config(cfg, job_dir, Path(tmp), args, net)
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
                        f"{_num(row['round_s_median'], '.3f')} s (limit {_num(row['limit_s'], '.3f')}), compute "
                        f"fraction {_num(row['compute_fraction_min'], '.3f')}-"
                        f"{_num(max(p['compute_fraction'] for p in row['peers'] if 'compute_fraction' in p), '.3f')}"
                        f", {row['wall_s']:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if net is not None:
            teardown_netns()

    model = {"small": "small (4 layers, hidden 256)", "demo": "demo (2 layers, hidden 64)"}[args.size]
    round_checks = [
        r["targets"]["round_le_1.5x_limit"] for r in rows if "round_le_1.5x_limit" in r.get("targets", {})
    ]
    compute_checks = [
        r["targets"]["compute_fraction_ge_0.90"]
        for r in rows
        if "compute_fraction_ge_0.90" in r.get("targets", {})
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
        )
    }
    settings["compression"] = args.compression or "fp16"
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
            "compute_fraction_local_min": TARGET_COMPUTE_LOCAL,
        },
        "verdicts": {
            "round": [sum(round_checks), len(round_checks)],
            "compute": [sum(compute_checks), len(compute_checks)],
        },
        "lora_full": lora_full_ratios(rows),
        "notes": notes,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "swarm.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "swarm.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
