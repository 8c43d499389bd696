"""Traffic accounting, rate caps, the identity key and the idle sources that need no display."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
from datetime import date

import pytest
from essaim.client import keys
from essaim.client.errors import IdentityError
from essaim.client.idle import NoSession, detect_idle_source
from essaim.client.netlimit import (
    MB,
    DailyTraffic,
    NetCaps,
    NetPacer,
    RateLimiter,
    TrafficBudget,
    TrafficMeter,
    TrainerTraffic,
)
from essaim.protocol.auth_metadata import registration_message


def test_daily_traffic_counts_resets_at_midnight_and_persists(tmp_path):
    day = [date(2024, 5, 6)]
    t = DailyTraffic(tmp_path / "traffic.json", today=lambda: day[0])
    t.add_totals(sent=100, received=50)  # a trainer's counters start at 0: all of it is today's
    t.add_totals(sent=1100, received=50)
    assert t.today_bytes() == 1150
    t.add_totals(sent=10, received=0)  # a counter that went down began again at 0
    assert t.today_bytes() == 1160
    t.save(every=0)
    again = DailyTraffic(tmp_path / "traffic.json", today=lambda: day[0])
    assert again.today_bytes() == 1160
    day[0] = date(2024, 5, 7)
    assert again.today_bytes() == 0


def test_a_restarted_trainer_counts_on_top_of_the_one_before(tmp_path):
    """Each trainer's counters start at 0: its reports add to what the trainers before it moved, and
    its first report (the state it downloaded on joining) is counted, not taken as a baseline."""
    day = DailyTraffic(tmp_path / "traffic.json")
    trainers = TrainerTraffic()

    def report(sent: int, received: int) -> None:
        total_sent, total_received = trainers.report(sent=sent, received=received)
        day.add_totals(sent=total_sent, received=total_received)

    trainers.new_trainer()
    report(1 * MB, 1 * MB)
    report(2 * MB, 3 * MB)  # the old trainer's last report: 5 MB
    assert day.today_bytes() == 5 * MB
    trainers.new_trainer()
    report(2 * MB, 6 * MB)  # the new trainer's first report: 8 MB, its state download included
    assert day.today_bytes() == 13 * MB
    report(2 * MB, 7 * MB)
    report(0, 0)  # a report without counters (a stop before the meter read anything) takes nothing back
    assert day.today_bytes() == 14 * MB
    trainers.new_trainer()
    report(MB, 0)  # smaller than the trainer before it: still all new traffic
    assert day.today_bytes() == 15 * MB


def test_the_trainer_budget_is_what_was_left_when_it_started():
    meter = _Meter()
    budget = TrafficBudget.from_env(meter, {"ESSAIM_NET_REMAINING_BYTES": str(3 * MB)})
    assert budget.active and not budget.spent()
    meter.sent, meter.received = MB, 2 * MB - 1
    assert not budget.spent()
    meter.received += 1
    assert budget.spent()
    assert not TrafficBudget.from_env(meter, {}).active and not TrafficBudget.from_env(meter, {}).spent()
    assert not TrafficBudget.from_env(meter, {"ESSAIM_NET_REMAINING_BYTES": "lots"}).active


def test_remaining_and_env_for_the_trainer(tmp_path):
    t = DailyTraffic(tmp_path / "t.json")
    t.add(3 * MB)
    caps = NetCaps(upload_kbps=100, download_kbps=200, daily_mb=10)
    assert t.remaining(caps) == 7 * MB
    assert t.remaining(NetCaps()) is None
    env = caps.to_env(remaining_bytes=t.remaining(caps))
    assert env == {
        "ESSAIM_NET_UPLOAD_KBPS": "100",
        "ESSAIM_NET_DOWNLOAD_KBPS": "200",
        "ESSAIM_NET_REMAINING_BYTES": str(7 * MB),
    }
    assert NetCaps.from_env(env) == NetCaps(upload_kbps=100, download_kbps=200)


def test_rate_limiter_token_bucket():
    now = [0.0]
    limiter = RateLimiter(10, clock=lambda: now[0], sleep=lambda s: None)  # 10 KB/s, 1 s burst
    assert limiter.delay_for(10 * 1024) == 0.0
    assert limiter.delay_for(5 * 1024) == pytest.approx(0.5)
    now[0] = 2.0
    assert limiter.delay_for(1024) == 0.0
    assert RateLimiter(0).delay_for(10**9) == 0.0


class _Meter:
    def __init__(self) -> None:
        self.sent = self.received = 0

    def totals(self) -> tuple[int, int]:
        return self.sent, self.received

    def total(self) -> int:
        return self.sent + self.received


def test_net_pacer_holds_the_trainer_when_traffic_runs_ahead_of_a_cap():
    now, meter = [0.0], _Meter()
    pacer = NetPacer(NetCaps(upload_kbps=10, download_kbps=0), meter, clock=lambda: now[0])
    assert pacer.active and pacer() == 0.0
    meter.sent = 100 * 1024  # 100 KB at once; the bucket holds 5 s = 50 KB
    now[0] = 1.0
    assert pacer() == pytest.approx(5.0)
    now[0] = 1.2
    meter.sent += 10**9
    assert pacer() == 0.0  # read at most every 0.5 s
    meter.received = 10**9  # no download cap
    now[0] = 20.0
    assert pacer() == pytest.approx(10**9 / 10240 - 14.0, rel=1e-3)
    assert not NetPacer(NetCaps(), meter).active and NetPacer(NetCaps(), meter)() == 0.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-process I/O counters are Linux's")
@pytest.mark.timeout(30)
def test_traffic_meter_reads_the_relay_child_kernel_counters():
    meter = TrafficMeter(names=("cat",))
    relay = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        def feed() -> None:
            relay.stdin.write(b"x" * MB)
            relay.stdin.flush()

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        got = 0
        while got < MB:
            got += len(relay.stdout.read1(MB))
        writer.join(10)
        sent, received = meter.totals()
        assert MB <= sent + received <= MB + 64 * 1024  # read 1 MB + wrote 1 MB, relayed once
        relay.stdin.close()
        relay.wait(5)
        assert sum(meter.totals()) == sent + received  # an exited relay keeps its last count
    finally:
        relay.kill()


def test_identity_key_is_made_once_with_mode_0600(tmp_path):
    path = tmp_path / "data" / "identity.pem"
    key = keys.load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.peer_id_for(keys.load_or_create_private_key(path)) == keys.peer_id_for(key)
    assert keys.peer_id_for(key).startswith("Qm")


def test_identity_key_matches_the_swarm_identity(tmp_path):
    """The app's light key code and essaim.swarm.identity (hivemind) agree on file, peer id and signature."""
    from essaim.swarm import identity  # loads hivemind: for this test only
    path = tmp_path / "identity.pem"
    key = keys.load_or_create_private_key(path)
    swarm_key = identity.load_or_create_private_key(path)
    assert identity.peer_id_for_key(swarm_key) == keys.peer_id_for(key)
    assert identity.public_key_bytes(swarm_key) == keys.public_key_der(key)
    message = registration_message(keys.peer_id_for(key), "ada", 1700000000.5)
    assert identity.verify(keys.public_key_der(key), message, keys.sign(key, message))


def test_unreadable_identity_key_says_how_to_fix(tmp_path):
    path = tmp_path / "identity.pem"
    path.write_text("not a key")
    with pytest.raises(IdentityError, match="move the file away"):
        keys.load_or_create_private_key(path)


def test_the_light_identity_check_agrees_with_loading_the_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = tmp_path / "identity.pem"
    keys.check_identity_file(path)  # none yet: made when first needed
    assert not path.exists()
    pem = keys.load_or_create_private_key(path) and path.read_text()
    path.chmod(0o644)
    keys.check_identity_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for bad, why in [
        ("not a key", "move the file away"),
        (pem[: len(pem) // 2], "move the file away"),
        (pem.replace(pem.splitlines()[1], "!" * 64), "move the file away"),
        (other.decode(), "not an RSA key"),
    ]:
        path.write_text(bad)
        with pytest.raises(IdentityError, match=why):
            keys.check_identity_file(path)
        with pytest.raises(IdentityError, match=why):
            keys.load_or_create_private_key(path)


def test_no_display_and_no_session_is_headless(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("essaim.client.idle.LogindIdle.find", classmethod(lambda cls: None))
    source = detect_idle_source()
    assert isinstance(source, NoSession)
    assert source.idle_seconds() is None


def test_unusable_display_counts_the_user_as_active(monkeypatch):
    monkeypatch.setattr("essaim.client.idle.LogindIdle.find", classmethod(lambda cls: None))
    source = detect_idle_source(display=":4242")  # no X server there
    assert source.idle_seconds() == 0.0
