"""Load benchmark of the coordinator: many simulated volunteers heartbeating against one server.

For each store backend (SQLite, and PostgreSQL when one answers) it
1. fills a fresh store with ``--volunteers`` registered volunteers (bulk insert),
2. starts ``python -m essaim.coordinator serve`` as a subprocess on free ports,
3. starts ``--procs`` client processes, each running ``--clients`` asyncio gRPC volunteers that
   Register (Ed25519-signed) and then heartbeat in a closed loop for ``--duration`` seconds,
4. reports sustained heartbeats/s over the measured window (after ``--warmup``), p50/p99
   latency as the clients saw it, and the coordinator's RSS and CPU (psutil). Only the replies that
   came back within the window count, and only the CPU the coordinator spent within it; the
   heartbeats still in flight at its end are awaited afterwards and reported apart (*drained*).

Writes ``bench/results/coordinator_load.json`` and ``.md``. Target on a 2-core machine:
>= 3,000 heartbeats/s with p99 <= 50 ms (100,000 volunteers heartbeating every 30 s).

    .venv/bin/python bench/coordinator_load.py                    # both backends, 60 s each
    .venv/bin/python bench/coordinator_load.py --backends sqlite --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_BENCH_DB = "essaim_bench"
READY = "essaim coordinator ready "


# ---- store preparation ----


def prepare_store(url: str, volunteers: int) -> float:
    """Create the schema and bulk-insert ``volunteers`` volunteers; returns seconds taken."""
    from essaim.coordinator.store import open_store
    from essaim.protocol.types import Hardware, Volunteer, VolunteerStatus

    start = time.perf_counter()
    store = open_store(url)
    try:
        hw = Hardware(os="linux", arch="x86_64", cpu_cores=8, ram_bytes=16 * 1024**3)
        batch = []
        now = time.time()
        for i in range(volunteers):
            batch.append(
                Volunteer(
                    id=f"bench{i:07d}",
                    name=f"bench-{i}",
                    peer_id=f"QmBench{i}",
                    public_key=secrets.token_bytes(44),
                    status=VolunteerStatus.OFFLINE,
                    hardware=hw,
                    last_seen=now - 3600,
                    registered_at=now - 86400,
                )
            )
            if len(batch) == 20_000:
                store.bulk_insert_volunteers(batch)
                batch = []
        if batch:
            store.bulk_insert_volunteers(batch)
    finally:
        store.close()
    return time.perf_counter() - start


def fresh_postgres(url: str) -> str | None:
    """A URL to a freshly created bench database on the server of ``url``, or None if none answers."""
    try:
        import psycopg
        import sqlalchemy as sa
    except ImportError:
        return None
    parsed = sa.make_url(url)
    conninfo = f"host={parsed.host or '127.0.0.1'} port={parsed.port or 5432} user={parsed.username or 'postgres'} dbname={parsed.database or 'postgres'}"
    if parsed.password:
        conninfo += f" password={parsed.password}"
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_BENCH_DB}")
    except Exception as exc:
        print(
            f"PostgreSQL not usable at {parsed.render_as_string(hide_password=True)}: {exc}", file=sys.stderr
        )
        return None
    return parsed.set(database=PG_BENCH_DB, drivername="postgresql+psycopg").render_as_string(
        hide_password=False
    )


# ---- coordinator ----


def start_coordinator(data_dir: Path, db_url: str, extra: list[str]) -> tuple[subprocess.Popen[str], str, str]:
    cmd = [
        sys.executable,
        "-m",
        "essaim.coordinator",
        "serve",
        "--data-dir",
        str(data_dir),
        "--db-url",
        db_url,
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--log-level",
        "warning",
        # every simulated volunteer registers from this machine: no sign-up rate limit
        "--signups-per-minute-per-source",
        "0",
        "--signups-per-minute",
        "0",
        *extra,
    ]
    log = (data_dir / "coordinator.log").open("wb")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith(READY):
            fields = dict(p.split("=", 1) for p in line[len(READY) :].split())
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, fields["grpc"], fields["http"]
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"the coordinator did not start; see {data_dir / 'coordinator.log'}")


# ---- client processes ----


def _register_request(index: int, nonce: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from essaim.protocol import serde
    from essaim.protocol.auth_metadata import registration_message
    from essaim.protocol.types import Hardware, RegistrationRequest

    key = ed25519.Ed25519PrivateKey.generate()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ts = time.time()
    name, peer = f"load-{os.getpid()}-{index}", f"QmLoad{os.getpid()}x{index}"
    hw = Hardware(os="linux", arch="x86_64", cpu_cores=4, ram_bytes=8 * 1024**3)
    signature = key.sign(registration_message(peer, name, ts, nonce))
    return serde.registration_request_to_proto(
        RegistrationRequest(der, peer, name, ts, signature, hw, nonce=nonce)
    )


async def _client_main(
    address: str,
    ca_file: str | None,
    creds: list[tuple[str, str]],
    register: int,
    rate: float,
    clients: int,
    channels: int,
    t_start: float,
    t_end: float,
) -> dict[str, Any]:
    import grpc
    from essaim.protocol import serde
    from essaim.protocol.auth_metadata import bearer_metadata
    from essaim.protocol.types import HeartbeatReport
    from essaim.protocol.v1 import coordinator_pb2 as pb
    from essaim.protocol.v1 import coordinator_pb2_grpc as pb_grpc

    options = [("grpc.use_local_subchannel_pool", 1)]
    if ca_file:  # the coordinator's TLS, its certificate verified as a real client does
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        target = address.removeprefix("https://")
        chans = [grpc.aio.secure_channel(target, credentials, options=options) for _ in range(channels)]
    else:
        chans = [grpc.aio.insecure_channel(address, options=options) for _ in range(channels)]
    stubs = [pb_grpc.CoordinatorStub(c) for c in chans]
    stats = {"errors": 0, "missed": 0, "register_errors": 0}
    completions: list[tuple[float, float]] = []  # (wall time the reply came, latency s), from t_start on
    reg_lat: list[float] = []
    samples: list[str] = []

    # 1. new volunteers register through the API as the app does: a challenge, then the signed
    # registration (signature and nonce checked, token issued)
    async def register_one(i: int) -> None:
        stub = stubs[i % channels]
        for attempt in range(10):
            start = time.perf_counter()
            try:
                challenge = await stub.RegistrationChallenge(
                    pb.RegistrationChallengeRequest(header=serde.request_header()), timeout=30
                )
                reply = await stub.Register(_register_request(i, bytes(challenge.nonce)), timeout=30)
            except Exception as exc:
                if len(samples) < 3:
                    samples.append(f"register: {exc.details() if hasattr(exc, 'details') else repr(exc)}")
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            reg_lat.append(time.perf_counter() - start)
            creds.append((reply.volunteer_id, reply.token))
            return
        stats["register_errors"] += 1

    sem = asyncio.Semaphore(32)

    async def bounded(i: int) -> None:
        async with sem:
            await register_one(i)

    await asyncio.gather(*(bounded(i) for i in range(register)))

    # 2. every volunteer heartbeats: open loop at `rate` per second, or closed loop with `clients`
    # requests serialized once and sent as bytes (replies left unparsed): the load generator
    # should spend its CPU on the transport, as the coordinator's real clients spread over machines do
    raw_heartbeats = [
        c.unary_unary("/essaim.v1.Coordinator/Heartbeat", request_serializer=None, response_deserializer=None)
        for c in chans
    ]
    prepared = [
        (
            raw_heartbeats[i % channels],
            serde.heartbeat_report_to_proto(
                HeartbeatReport(volunteer_id=vid, state="training")
            ).SerializeToString(),
            tuple(bearer_metadata(token)),
        )
        for i, (vid, token) in enumerate(creds)
    ]

    async def beat(k: int) -> None:
        call, request, metadata = prepared[k % len(prepared)]
        start = time.perf_counter()
        try:
            await call(request, timeout=10, metadata=metadata)
        except Exception as exc:
            stats["errors"] += 1
            if len(samples) < 3:
                detail = exc.details() if hasattr(exc, "details") else repr(exc)
                samples.append(f"{detail} at t_end{time.time() - t_end:+.1f}s")
            return
        done = time.time()
        if done >= t_start:
            completions.append((done, time.perf_counter() - start))

    if rate > 0:
        max_inflight = 2000
        inflight: set[asyncio.Task[None]] = set()
        begin = time.perf_counter()
        issued = 0
        while time.time() < t_end:
            due = int((time.perf_counter() - begin) * rate) - issued
            for _ in range(due):
                issued += 1
                if len(inflight) >= max_inflight:
                    stats["missed"] += 1
                    continue
                task = asyncio.create_task(beat(issued))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            await asyncio.sleep(0.002)
        if inflight:
            await asyncio.wait(inflight, timeout=15)
    else:

        async def loop(c: int) -> None:
            k = c
            while time.time() < t_end:
                await beat(k)
                k += clients

        await asyncio.gather(*(loop(c) for c in range(clients)))
    for c in chans:
        await c.close()
    return {"completions": completions, "register_latencies": reg_lat, "error_samples": samples, **stats}


def client_process(
    address: str, creds: list[tuple[str, str]], args: dict[str, Any], t_start: float, t_end: float, out: Any
) -> None:
    out.put(
        asyncio.run(
            _client_main(
                address,
                args["ca_file"],
                creds,
                args["register"],
                args["rate"],
                args["clients"],
                args["channels"],
                t_start,
                t_end,
            )
        )
    )


def make_tokens(url: str, count: int) -> list[tuple[str, str]]:
    """Volunteer tokens for the first ``count`` bulk-inserted volunteers (as if they had registered)."""
    from essaim.coordinator.auth import create_token
    from essaim.coordinator.store import open_store
    from essaim.protocol.types import Role

    store = open_store(url)
    try:
        return [
            (vid, create_token(store, role=Role.VOLUNTEER, subject=vid))
            for vid in (f"bench{i:07d}" for i in range(count))
        ]
    finally:
        store.close()


# ---- one run ----


def split_window(
    completions: list[tuple[float, float]], t_start: float, t_end: float
) -> tuple[list[float], list[float]]:
    """The latencies of the replies that came back within ``[t_start, t_end)`` and of those drained
    after ``t_end`` (heartbeats still in flight when the window closed), from ``(done, latency)``
    pairs; replies before ``t_start`` are warm-up. Counting the drained ones in the window would
    credit it with up to 2,000 heartbeats per client process that it did not answer in time."""
    window: list[float] = []
    drained: list[float] = []
    for done, latency in completions:
        if done >= t_end:
            drained.append(latency)
        elif done >= t_start:
            window.append(latency)
    return window, drained


def window_rates(heartbeats: int, duration: float, cpu_s: float, cpu_span: float) -> dict[str, float]:
    """Heartbeats/s and the coordinator's CPU over the window: ``heartbeats`` answered within its
    ``duration`` seconds, ``cpu_s`` CPU seconds read over ``cpu_span`` wall seconds (the readings
    bracket the window as closely as the sampling allows; the CPU rate is scaled to the window)."""
    cpu_rate = cpu_s / cpu_span if cpu_span > 0 else float("nan")
    rate = heartbeats / duration
    return {
        "heartbeats_per_s": rate,
        "coordinator_cpu_percent": 100 * cpu_rate,
        "coordinator_cpu_us_per_heartbeat": 1e6 * cpu_rate / rate if heartbeats else float("nan"),
    }


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def server_latency(http: str, ca_file: str | None) -> dict[str, Any]:
    """The coordinator's own view from /metrics: heartbeat latency quantiles (bucket bounds), store errors."""
    import ssl
    import urllib.request

    url = f"{http}/metrics" if "://" in http else f"http://{http}/metrics"
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    with urllib.request.urlopen(url, timeout=30, context=context) as resp:
        text = resp.read().decode()
    buckets: list[tuple[float, int]] = []
    info: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("essaim_heartbeat_latency_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), int(line.rsplit(" ", 1)[1])))
        elif line.startswith(
            (
                "essaim_store_errors_total",
                "essaim_heartbeats_pending",
                "essaim_heartbeat_latency_seconds_count",
            )
        ):
            name, value = line.rsplit(" ", 1)
            info[name] = float(value)
    total = buckets[-1][1] if buckets else 0
    for q in (0.5, 0.99):
        info[f"p{int(q * 100)}_ms_at_most"] = next(
            (b * 1000 for b, n in buckets if total and n >= q * total), None
        )
    return info


def run_backend(name: str, db_url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"essaim-bench-{name}-") as tmp:
        data_dir = Path(tmp)
        url = db_url or f"sqlite:///{data_dir / 'coordinator.db'}"
        print(f"[{name}] inserting {args.volunteers:,} volunteers, {args.active:,} tokens...", flush=True)
        fill_s = prepare_store(url, args.volunteers)
        t0 = time.perf_counter()
        creds = make_tokens(url, args.active)
        tokens_s = time.perf_counter() - t0
        extra, ca_file = [], None
        if args.tls:
            from essaim.coordinator.certs import issue

            issued = issue(data_dir / "tls", ["127.0.0.1", "localhost"])
            extra, ca_file = ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)], str(issued.ca_cert)
        proc, address, http = start_coordinator(data_dir, url, extra)
        coord = psutil.Process(proc.pid)
        try:
            register_s = max(5.0, args.procs * args.register / 100)
            # every volunteer's first heartbeat looks its token up in the store (later ones hit the
            # coordinator's cache): let each of them send one before measuring
            warmup = args.warmup + (1.5 * args.active / args.rate if args.rate > 0 else 0.0)
            t_start = time.time() + register_s + warmup
            t_end = t_start + args.duration
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            per_proc = {
                "register": args.register,
                "rate": args.rate / args.procs,
                "clients": args.clients,
                "channels": args.channels,
                "ca_file": ca_file,
            }
            workers = [
                ctx.Process(
                    target=client_process,
                    args=(address, creds[i :: args.procs], per_proc, t_start, t_end, out),
                )
                for i in range(args.procs)
            ]
            for w in workers:
                w.start()
            mode = (
                f"open loop at {args.rate:,.0f}/s"
                if args.rate > 0
                else f"closed loop, {args.procs * args.clients} in flight"
            )
            print(
                f"[{name}] {args.procs} client processes on {address}, {mode}; measuring {args.duration:.0f} s",
                flush=True,
            )
            time.sleep(max(0.0, t_start - time.time()))
            cpu0, wall0 = _cpu_seconds(coord), time.time()
            rss: list[int] = []
            while (now := time.time()) < t_end:
                rss.append(coord.memory_info().rss)
                time.sleep(min(1.0, t_end - now))
            cpu1, wall1 = _cpu_seconds(coord), time.time()
            results = [out.get(timeout=180) for _ in workers]
            cpu2, wall2 = _cpu_seconds(coord), time.time()
            for w in workers:
                w.join(30)
            server_side = server_latency(http, ca_file)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        window, drained = split_window(
            [c for r in results for c in r["completions"]], t_start, t_end
        )
        lat, drained = sorted(window), sorted(drained)
        reg = sorted(x for r in results for x in r["register_latencies"])
        ok = len(lat)
        rates = window_rates(ok, args.duration, cpu1 - cpu0, wall1 - wall0)

        def q(values: list[float], p: float) -> float:
            return values[min(len(values) - 1, int(p * len(values)))] * 1000 if values else float("nan")

        return {
            "backend": name,
            "volunteers_in_store": args.volunteers,
            "heartbeating_volunteers": len(creds) + sum(len(r["register_latencies"]) for r in results),
            "registered_via_api": len(reg),
            "client_processes": args.procs,
            "mode": "open" if args.rate > 0 else "closed",
            "tls": bool(args.tls),
            "target_rate": args.rate,
            "duration_s": args.duration,
            "heartbeats": ok,
            "drained_after_window": len(drained),
            "drained_p50_ms": q(drained, 0.50),
            "drained_p99_ms": q(drained, 0.99),
            "drain_s": wall2 - wall1,
            "drain_coordinator_cpu_s": cpu2 - cpu1,
            "cpu_window_s": wall1 - wall0,
            "errors": sum(r["errors"] for r in results) + sum(r["register_errors"] for r in results),
            "missed": sum(r["missed"] for r in results),
            "error_samples": sorted({e for r in results for e in r["error_samples"]})[:5],
            "heartbeats_per_s": rates["heartbeats_per_s"],
            "p50_ms": q(lat, 0.50),
            "p99_ms": q(lat, 0.99),
            "max_ms": lat[-1] * 1000 if lat else float("nan"),
            "register_p50_ms": q(reg, 0.50),
            "coordinator_rss_mb": max(rss) / 2**20 if rss else float("nan"),
            "coordinator_cpu_percent": rates["coordinator_cpu_percent"],
            "coordinator_cpu_us_per_heartbeat": rates["coordinator_cpu_us_per_heartbeat"],
            "store_fill_s": fill_s,
            "token_setup_s": tokens_s,
            "server_side": server_side,
        }


def write_results(runs: list[dict[str, Any]], notes: list[str], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "target": ">= 3000 heartbeats/s, p99 <= 50 ms",
    }
    (RESULTS / "coordinator_load.json").write_text(
        json.dumps({"meta": meta, "runs": runs, "notes": notes}, indent=2)
    )
    lines = [
        "# Coordinator load",
        "",
        f"{meta['machine']}; Python {meta['python']}; `{meta['command']}`; target {meta['target']}.",
        "",
        "| backend | TLS | volunteers in store | heartbeating | mode | heartbeats/s | p50 ms | p99 ms | errors+missed | "
        "drained after the window | server-side p99 ms | coordinator CPU % | CPU µs/heartbeat | RSS MB |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        mode = f"open @ {r['target_rate']:,.0f}/s" if r["mode"] == "open" else "closed"
        lines.append(
            f"| {r['backend']} | {'on' if r.get('tls') else 'off'} | {r['volunteers_in_store']:,} | {r['heartbeating_volunteers']:,} | {mode} | "
            f"{r['heartbeats_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors'] + r['missed']} | "
            f"{r['drained_after_window']:,} (p50 {r['drained_p50_ms']:.0f} ms) | "
            f"<= {r['server_side'].get('p99_ms_at_most') or float('nan'):g} | {r['coordinator_cpu_percent']:.0f} | "
            f"{r['coordinator_cpu_us_per_heartbeat']:.0f} | {r['coordinator_rss_mb']:.0f} |"
        )
    lines += ["", *[f"- {n}" for n in notes]]
    (RESULTS / "coordinator_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds per backend")
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of load before measuring (open loop adds the time for every volunteer to send one)",
    )
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument(
        "--rate",
        default="3333",
        help="open loop: heartbeats/s in total (100,000 volunteers every 30 s = 3,333); 0 = closed "
        "loop; a comma-separated list runs each backend once per rate",
    )
    parser.add_argument(
        "--clients", type=int, default=40, help="closed loop: heartbeats in flight per client process"
    )
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels per client process")
    parser.add_argument(
        "--volunteers", type=int, default=100_000, help="volunteers inserted in the store first"
    )
    parser.add_argument(
        "--active", type=int, default=10_000, help="of those, how many heartbeat (tokens made in the store)"
    )
    parser.add_argument(
        "--register", type=int, default=100, help="new volunteers per client process that Register first"
    )
    parser.add_argument("--pg-url", default=os.environ.get("ESSAIM_TEST_POSTGRES_URL", PG_DEFAULT))
    parser.add_argument("--tls", default="off", help="off, on, or off,on: each run without and/or with TLS "
                        "(a private CA's certificate, verified by the clients)")
    args = parser.parse_args(argv)

    runs, notes = [], []
    load_before = os.getloadavg()[0]
    rates = [float(r) for r in str(args.rate).split(",") if r.strip()]
    tls_modes = [{"off": False, "on": True}[m.strip()] for m in args.tls.split(",") if m.strip()]
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
        for rate, tls in [(r, t) for r in rates for t in tls_modes]:
            one = argparse.Namespace(**{**vars(args), "rate": rate, "tls": tls})
            if backend == "sqlite":
                runs.append(run_backend("sqlite", None, one))
                continue
            url = fresh_postgres(args.pg_url)
            if url is None:
                notes.append(f"PostgreSQL skipped: no server answered at {args.pg_url}")
                break
            runs.append(run_backend("postgresql", url, one))
    load = os.getloadavg()
    notes.append(
        f"Machine load average (runnable processes, this benchmark included): {load_before:.1f} at the start, "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at the end; above 2 the cores were shared."
    )
    notes.append(
        "p50/p99 are what the clients saw (queueing included); server-side p99 is the handler's own time, "
        "read from the coordinator's /metrics histogram (a bucket bound)."
    )
    notes.append(
        "heartbeats/s, p50/p99 and the coordinator's CPU count only the replies that came back within the "
        "measured window and the CPU spent within it; heartbeats still in flight at its end were awaited "
        "afterwards and are counted apart as drained (their latency includes the queue they waited in)."
    )
    notes.append(
        "Open loop: client processes issue heartbeats at the target rate whatever the latency, cycling over the "
        "heartbeating volunteers (each with its own token); closed loop: a fixed number in flight. The client "
        "processes run on the same machine and compete with the coordinator for its cores."
    )
    write_results(runs, notes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
