"""The coordinator's store, run against every backend (SQLite file, PostgreSQL when one answers)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from essaim.coordinator.store import (
    Contribution,
    HeartbeatRecord,
    LedgerDraft,
    Store,
    entry_hash,
    open_store,
)
from essaim.coordinator.store.engine import alembic_config
from essaim.coordinator.store.tables import metadata
from essaim.protocol.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from essaim.protocol.types import (
    Hardware,
    Job,
    JobFile,
    JobMetrics,
    JobStatus,
    Role,
    Volunteer,
    VolunteerStatus,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def volunteer(n: int, **kw: object) -> Volunteer:
    return Volunteer(id="", name=f"vol-{n}", peer_id=f"Qm{n}", public_key=f"key-{n}".encode(), **kw)  # type: ignore[arg-type]


def job(name: str = "tiny-lora", **kw: object) -> Job:
    return Job(id="", name=name, status=JobStatus.QUEUED, recipe_yaml="name: x\n", **kw)  # type: ignore[arg-type]


def raw_sql(url: str, *statements: str) -> None:
    """Run SQL outside the store, as someone editing the database by hand would."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def drafts(
    volunteer_ids: list[str], *, job_id: str = "job-1", epoch: int = 0, samples: int = 10
) -> list[LedgerDraft]:
    return [
        LedgerDraft(job_id=job_id, volunteer_id=vid, epoch=epoch, samples=samples, compute_seconds=1.25)
        for vid in volunteer_ids
    ]


class TestStore:
    def test_tokens(self, store: Store) -> None:
        store.add_token(token_hash="h-admin", role=Role.ADMIN, subject="alice", label="laptop")
        store.add_token(token_hash="h-old", role=Role.RESEARCHER, subject="bob", expires_at=time.time() - 1)
        store.add_token(token_hash="h-bob", role=Role.RESEARCHER, subject="bob")
        record = store.find_token("h-admin")
        assert record is not None
        assert (record.role, record.subject, record.label, record.revoked) == (
            Role.ADMIN,
            "alice",
            "laptop",
            False,
        )
        assert record.usable(time.time())
        assert store.find_token("nope") is None
        assert store.count_tokens() == 2  # the expired one does not count
        assert store.count_tokens(Role.RESEARCHER) == 1
        with pytest.raises(AlreadyExists):
            store.add_token(token_hash="h-admin", role=Role.ADMIN, subject="mallory")
        assert store.revoke_tokens("bob") == 2
        assert store.revoke_tokens("bob") == 0
        bob = store.find_token("h-bob")
        assert bob is not None and bob.revoked and not bob.usable(time.time())
        assert store.count_tokens(Role.RESEARCHER) == 0

    def test_tokens_are_listed_and_revoked_by_id(self, store: Store) -> None:
        assert store.revocations_at() == 0.0
        store.add_token(token_hash="h-a", role=Role.ADMIN, subject="alice")
        store.add_token(token_hash="h-b", role=Role.RESEARCHER, subject="bob", label="b")
        listed = store.list_tokens()
        assert [(t.subject, t.label) for t in listed] == [("alice", ""), ("bob", "b")]
        assert store.get_token(listed[1].id).subject == "bob"
        assert store.revoke_token(listed[1].id).revoked is False  # as it was
        assert [t.subject for t in store.list_tokens()] == ["alice"]
        assert [t.revoked for t in store.list_tokens(include_revoked=True)] == [False, True]
        first = store.revocations_at()
        assert first > 0
        store.revoke_tokens("alice")
        assert store.revocations_at() >= first
        with pytest.raises(NotFound):
            store.revoke_token(10_000)

    def test_settings(self, store: Store) -> None:
        assert store.get_setting("first_start") is None
        store.set_setting("first_start", "1")
        store.set_setting("first_start", "2")
        assert store.get_setting("first_start") == "2"

    def test_an_erased_volunteer_keeps_its_id_and_ledger_rows_only(self, store: Store) -> None:
        a = store.upsert_volunteer(volunteer(1, hardware=Hardware(cpu_cores=8), team="red", client_version="0.3"))
        store.record_heartbeats([HeartbeatRecord(volunteer_id=a.id, at=time.time(), state="training",
                                                 reason="idle", current_job_id="j1", samples_per_second=2.0)])
        store.append_ledger([LedgerDraft(job_id="j1", volunteer_id=a.id, epoch=0, samples=64, compute_seconds=1.0)])
        erased = store.erase_volunteer(a.id)
        assert erased.status == VolunteerStatus.ERASED and erased.id == a.id and erased.samples == 64
        assert (erased.name, erased.team, erased.peer_id, erased.state, erased.reason) == ("", "", "", "", "")
        assert (erased.hardware, erased.client_version, erased.current_job_id) == (Hardware(), "", "")
        # a heartbeat that was in flight writes nothing back
        store.record_heartbeats([HeartbeatRecord(volunteer_id=a.id, at=time.time(), state="training")])
        assert store.get_volunteer(a.id).state == "" and store.get_volunteer(a.id).status == VolunteerStatus.ERASED
        assert store.verify_ledger().ok
        # the same key registering again is a new consent: the account comes back, with what it says now
        back = store.upsert_volunteer(volunteer(1, team="blue"))
        assert back.id == a.id and back.status == VolunteerStatus.ONLINE and back.team == "blue"
        # a ban outlives an erasure
        store.set_volunteer_status(a.id, VolunteerStatus.BANNED, "poison")
        assert store.erase_volunteer(a.id).status == VolunteerStatus.BANNED

    def test_undo_requests_accumulate(self, store: Store) -> None:
        assert store.undo_requests() == {}
        store.add_undo_request("v1")
        first = store.undo_requests()["v1"]
        store.add_undo_request("v2")
        store.add_undo_request("v1")  # asked again: the first request stands
        assert set(store.undo_requests()) == {"v1", "v2"} and store.undo_requests()["v1"] == first

    def test_a_signature_is_used_once_until_it_expires(self, store: Store) -> None:
        soon = time.time() + 600
        assert store.use_once("a" * 64, soon) and not store.use_once("a" * 64, soon)
        assert store.use_once("b" * 64, soon)
        # an expired mark is dropped: its timestamp would be refused as too old anyway
        assert store.use_once("c" * 64, time.time() - 1)
        assert store.use_once("c" * 64, soon)

    def test_volunteer_upsert_get_list(self, store: Store) -> None:
        first = store.upsert_volunteer(volunteer(1, hardware=Hardware(os="linux", cpu_cores=8), team="red"))
        assert len(first.id) == 32 and first.status == VolunteerStatus.ONLINE
        assert first.registered_at > 0 and first.hardware.cpu_cores == 8 and first.team == "red"
        again = store.upsert_volunteer(
            Volunteer(
                id="ignored",
                name="renamed",
                peer_id="QmNew",
                public_key=b"key-1",
                hardware=Hardware(os="linux", cpu_cores=16, accelerator="cuda", gpu_count=1),
                client_version="0.2.0",
                registered_at=1.0,
            )
        )
        assert again.id == first.id and again.registered_at == first.registered_at
        assert (again.name, again.peer_id, again.client_version) == ("renamed", "QmNew", "0.2.0")
        assert again.hardware.has_gpu
        assert store.get_volunteer(first.id) == again
        found = store.find_volunteer_by_public_key(b"key-1")
        assert found is not None and found.id == first.id
        assert store.find_volunteer_by_public_key(b"other") is None
        with pytest.raises(NotFound, match="no volunteer with id"):
            store.get_volunteer("missing")
        with pytest.raises(InvalidArgument):
            store.upsert_volunteer(Volunteer(id="", name="x", peer_id="p"))
        second = store.upsert_volunteer(volunteer(2))
        assert [v.id for v in store.list_volunteers()] == [first.id, second.id]
        assert [v.id for v in store.list_volunteers(limit=1, offset=1)] == [second.id]
        assert store.count_volunteers() == 2 and store.count_volunteers(VolunteerStatus.OFFLINE) == 0

    def test_heartbeats_and_presence(self, store: Store) -> None:
        a = store.upsert_volunteer(volunteer(1, client_version="0.1.0", hardware=Hardware(cpu_cores=4)))
        b = store.upsert_volunteer(volunteer(2))
        c = store.upsert_volunteer(volunteer(3, last_seen=100.0))
        store.mark_offline(last_seen_before=time.time() + 1)
        assert store.count_volunteers(VolunteerStatus.OFFLINE) == 3
        t = time.time()
        store.record_heartbeats(
            [
                HeartbeatRecord(
                    volunteer_id=a.id, at=t, state="training", current_job_id="j1", samples_per_second=3.5
                ),
                HeartbeatRecord(volunteer_id=b.id, at=t - 5, state="old"),
                HeartbeatRecord(
                    volunteer_id=b.id,
                    at=t,
                    state="paused",
                    reason="on battery",
                    hardware=Hardware(cpu_cores=2),
                    client_version="0.3.0",
                ),
                HeartbeatRecord(volunteer_id="unknown", at=t),
            ]
        )
        got_a, got_b, got_c = (store.get_volunteer(v.id) for v in (a, b, c))
        assert got_a.status == VolunteerStatus.ONLINE and got_a.last_seen == t
        assert (got_a.state, got_a.current_job_id, got_a.samples_per_second) == ("training", "j1", 3.5)
        assert got_a.client_version == "0.1.0" and got_a.hardware.cpu_cores == 4  # kept
        assert (got_b.state, got_b.reason, got_b.client_version) == ("paused", "on battery", "0.3.0")
        assert got_b.hardware.cpu_cores == 2
        assert got_c.status == VolunteerStatus.OFFLINE
        # a new pseudonym and team: from the latest beat of the batch that gave them
        store.record_heartbeats([
            HeartbeatRecord(volunteer_id=a.id, at=t, name="first", team="x"),
            HeartbeatRecord(volunteer_id=a.id, at=t + 0.5, name="Ada", team="lyon"),
            HeartbeatRecord(volunteer_id=a.id, at=t + 1, state="training"),
        ])
        got_a = store.get_volunteer(a.id)
        assert (got_a.name, got_a.team, got_a.last_seen) == ("Ada", "lyon", t + 1)
        assert store.get_volunteer(b.id).name == "vol-2"
        t = t + 1
        assert store.mark_offline(last_seen_before=t - 1) == 0
        assert store.mark_offline(last_seen_before=t + 1) == 2
        assert store.list_volunteers(status=VolunteerStatus.ONLINE) == []

    def test_ban_survives_upsert_and_heartbeats(self, store: Store) -> None:
        v = store.upsert_volunteer(volunteer(1))
        banned = store.set_volunteer_status(v.id, VolunteerStatus.BANNED, "sent NaN gradients")
        assert banned.status == VolunteerStatus.BANNED and banned.reason == "sent NaN gradients"
        store.record_heartbeats([HeartbeatRecord(volunteer_id=v.id, at=time.time(), state="training",
                                                 reason="idle 0:42")])
        assert store.get_volunteer(v.id).reason == "sent NaN gradients"  # a heartbeat keeps the ban's reason
        assert store.upsert_volunteer(volunteer(1)).status == VolunteerStatus.BANNED
        assert store.mark_offline(last_seen_before=time.time() + 10) == 0
        assert store.get_volunteer(v.id).status == VolunteerStatus.BANNED
        assert store.set_volunteer_status(v.id, VolunteerStatus.OFFLINE).status == VolunteerStatus.OFFLINE
        with pytest.raises(NotFound):
            store.set_volunteer_status("missing", VolunteerStatus.BANNED)

    def test_bulk_insert_and_totals(self, store: Store) -> None:
        store.bulk_insert_volunteers([volunteer(n, registered_at=float(n + 1)) for n in range(2000)])
        assert store.count_volunteers() == 2000
        page = store.list_volunteers(limit=1200)  # totals looked up by id
        assert len(page) == 1200 and page[0].name == "vol-0"
        store.append_ledger(drafts([page[0].id, page[0].id, page[1100].id]))
        for limit in (1200, 5000):  # and from one pass over the ledger
            totals = {v.id: (v.samples, v.compute_seconds) for v in store.list_volunteers(limit=limit)}
            assert totals[page[0].id] == (20, 2.5) and totals[page[1100].id] == (10, 1.25)
            assert totals[page[1].id] == (0, 0.0)
        assert store.get_volunteer(page[0].id).samples == 20
        with pytest.raises(AlreadyExists):  # same public key as vol-0; nothing of the batch is kept
            store.bulk_insert_volunteers([volunteer(5000), volunteer(0)])
        assert store.count_volunteers() == 2000

    def test_jobs(self, store: Store) -> None:
        files = [JobFile(path="data/train.jsonl", sha256=SHA_A, size=12)]
        first = store.create_job(job("first", owner="alice", files=files, created_at=100.0))
        assert len(first.id) == 32 and first.updated_at == 100.0 and first.files == files
        second = store.create_job(job("second", created_at=200.0))
        assert store.get_job(first.id) == first
        with pytest.raises(NotFound, match="no job with id"):
            store.get_job("missing")
        with pytest.raises(AlreadyExists):
            store.create_job(Job(id=first.id, name="dup", status=JobStatus.QUEUED, recipe_yaml=""))
        assert [j.name for j in store.list_jobs()] == ["second", "first"]
        assert [j.name for j in store.list_jobs(limit=1)] == ["second"]
        store.update_job_status(second.id, JobStatus.RUNNING)
        assert [j.name for j in store.list_jobs(statuses=[JobStatus.RUNNING])] == ["second"]
        assert store.list_jobs(statuses=[]) == []
        assert store.set_job_priority(first.id, 7).priority == 7
        store.set_job_artifact(first.id)
        assert store.get_job(first.id).has_artifact
        for missing_call in (
            lambda: store.set_job_priority("missing", 1),
            lambda: store.set_job_artifact("missing"),
            lambda: store.update_job_metrics("missing", JobMetrics()),
        ):
            with pytest.raises(NotFound):
                missing_call()

    def test_a_job_is_found_by_the_start_of_its_id(self, store: Store) -> None:
        """The demo and the dashboard show short ids; the CLI takes them, as git takes a commit's."""
        for suffix in ("1111", "2222"):
            store.create_job(Job(id=f"abcd{suffix}" + "0" * 24, name=suffix, status=JobStatus.QUEUED, recipe_yaml=""))
        full = "abcd1111" + "0" * 24
        assert store.find_job(full) == store.get_job(full)
        assert store.find_job("abcd1").id == full
        assert store.find_job(" ABCD2 ").id == "abcd2222" + "0" * 24
        with pytest.raises(InvalidArgument, match=r"'abcd' is the start of 2 jobs' ids .*give more of it"):
            store.find_job("abcd")
        for missing in ("abc", "abcd3", "ab%", "abcd_", ""):  # too short, no such job, not an id
            with pytest.raises(NotFound, match="no job with id"):
                store.find_job(missing)

    def test_job_metrics_and_progress(self, store: Store) -> None:
        j = store.create_job(job())
        for epoch in range(3):
            store.update_job_metrics(
                j.id,
                JobMetrics(
                    epoch=epoch,
                    target_epochs=3,
                    samples=100 * epoch,
                    loss=2.0 - epoch / 2,
                    eval_metric_name="ppl",
                    live_peers=4,
                ),
                at=1000.0 + epoch,
            )
        store.update_job_metrics(j.id, JobMetrics(epoch=9), record_progress=False)
        assert store.get_job(j.id).metrics == JobMetrics(epoch=9)
        curve = store.list_progress(j.id)
        assert [at for at, _ in curve] == [1000.0, 1001.0, 1002.0]
        assert curve[-1][1] == JobMetrics(epoch=2, samples=200, loss=1.0, live_peers=4)
        assert [m.epoch for _, m in store.list_progress(j.id, limit=2)] == [1, 2]
        assert store.list_progress("other") == []

    def test_status_transitions_with_expect(self, store: Store) -> None:
        j = store.create_job(job())
        running = store.update_job_status(j.id, JobStatus.RUNNING, expect=[JobStatus.QUEUED])
        assert running.status == JobStatus.RUNNING and running.updated_at >= j.updated_at
        with pytest.raises(FailedPrecondition, match="is running"):
            store.update_job_status(j.id, JobStatus.RUNNING, expect=[JobStatus.QUEUED, JobStatus.PAUSED])
        done = store.update_job_status(j.id, JobStatus.COMPLETED, "all epochs done")
        assert done.status_reason == "all epochs done"
        with pytest.raises(NotFound):
            store.update_job_status("missing", JobStatus.CANCELLED, expect=[JobStatus.RUNNING])

    def test_blobs(self, store: Store) -> None:
        assert not store.has_blob(SHA_A)
        assert store.add_blob(SHA_A, 5) is True
        assert store.add_blob(SHA_A, 5) is False
        assert store.has_blob(SHA_A) and not store.has_blob(SHA_B)
        with pytest.raises(InvalidArgument):
            store.add_blob("not-a-hash", 1)

    def test_uploaded_bytes_count_the_files_each_uploader_brought_first(self, store: Store) -> None:
        assert store.add_blob(SHA_A, 5, "alice") and store.add_blob(SHA_B, 7, "alice")
        assert store.add_blob(SHA_B, 7, "bob") is False  # already there: alice brought it
        assert store.uploaded_bytes("alice") == 12 and store.uploaded_bytes("bob") == 0

    def test_ledger_append_read_verify(self, store: Store) -> None:
        a = store.upsert_volunteer(volunteer(1))
        b = store.upsert_volunteer(volunteer(2))
        assert store.ledger_head() is None and store.verify_ledger().ok
        first = store.append_ledger(drafts([a.id, b.id], epoch=0))
        second = store.append_ledger(
            [
                LedgerDraft(
                    job_id="job-2",
                    volunteer_id=a.id,
                    epoch=0,
                    samples=5,
                    compute_seconds=0.1234567,
                    note="réglé",
                    created_at=1_700_000_000.123456,
                    claimed_samples=500,
                    claimed_compute_seconds=0.5,
                ),
                *drafts([a.id], epoch=1, samples=30),
            ]
        )
        assert store.append_ledger([]) == []
        entries = first + second
        assert [e.seq for e in entries] == [1, 2, 3, 4]
        assert entries[0].prev_hash == "0" * 64
        assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(entries))
        assert store.list_ledger() == entries  # what append returned is exactly what is stored
        assert (entries[2].claimed_samples, entries[2].claimed_compute_seconds) == (500, 0.5)
        assert entries[3].claimed_samples is None  # a row without claims (hashed by definition 1)
        e = entries[3]
        assert e.hash == entry_hash(
            e.seq,
            e.job_id,
            e.volunteer_id,
            e.epoch,
            e.samples,
            e.compute_seconds,
            e.note,
            e.created_at,
            e.prev_hash,
        )
        assert store.list_ledger(job_id="job-1") == [entries[0], entries[1], entries[3]]
        assert store.list_ledger(after_seq=2, limit=1) == [entries[2]]
        assert store.ledger_head() == entries[3]
        result = store.verify_ledger()
        assert result.ok and result.checked == 4 and result.first_bad_seq is None
        assert store.contributions() == [
            Contribution(a.id, "vol-1", 45, 1.25 + 0.123457 + 1.25, 3),
            Contribution(b.id, "vol-2", 10, 1.25, 1),
        ]
        assert [c.epochs for c in store.contributions(job_id="job-1")] == [2, 1]
        with pytest.raises(InvalidArgument, match="samples -1 is negative"):
            store.append_ledger(
                [LedgerDraft(job_id="j", volunteer_id="v", epoch=0, samples=-1, compute_seconds=0)]
            )
        with pytest.raises(InvalidArgument, match="claimed_compute_seconds inf"):
            store.append_ledger([LedgerDraft(job_id="j", volunteer_id="v", epoch=0, samples=1, compute_seconds=0,
                                             claimed_samples=1, claimed_compute_seconds=float("inf"))])

    def test_ledger_detects_an_edited_row(self, store: Store) -> None:
        store.append_ledger(drafts([f"v{n}" for n in range(5)]))
        raw_sql(store.url, "UPDATE ledger SET samples = samples + 1000 WHERE seq = 3")
        result = store.verify_ledger()
        assert not result.ok and result.first_bad_seq == 3 and result.checked == 2
        assert "altered" in result.message

    def test_ledger_detects_a_deleted_row(self, store: Store) -> None:
        store.append_ledger(drafts([f"v{n}" for n in range(5)]))
        raw_sql(store.url, "DELETE FROM ledger WHERE seq = 3")
        result = store.verify_ledger()
        assert not result.ok and result.first_bad_seq == 3 and "missing" in result.message

    def test_ledger_detects_a_rehashed_forged_row(self, store: Store) -> None:
        entries = store.append_ledger(drafts([f"v{n}" for n in range(5)]))
        e = entries[2]  # the forger re-hashes row 3 after raising its samples; row 4 no longer follows it
        forged = entry_hash(
            e.seq,
            e.job_id,
            e.volunteer_id,
            e.epoch,
            10_000,
            e.compute_seconds,
            e.note,
            e.created_at,
            e.prev_hash,
        )
        raw_sql(store.url, f"UPDATE ledger SET samples = 10000, hash = '{forged}' WHERE seq = 3")
        result = store.verify_ledger()
        assert not result.ok and result.first_bad_seq == 4 and "does not follow" in result.message

    def test_concurrent_appends_from_threads(self, store: Store) -> None:
        errors: list[BaseException] = []

        def append(worker: int) -> None:
            try:
                for i in range(15):
                    store.append_ledger(drafts([f"w{worker}", f"w{worker}"], epoch=i))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        assert [e.seq for e in store.list_ledger()] == list(range(1, 121))
        assert store.verify_ledger().ok

    @pytest.mark.timeout(120)
    def test_concurrent_appends_from_processes(self, store: Store) -> None:
        script = textwrap.dedent(
            """
            import sys
            from essaim.coordinator.store import LedgerDraft, open_store
            store = open_store(sys.argv[1])
            for i in range(20):
                store.append_ledger([LedgerDraft(job_id="j", volunteer_id=sys.argv[2], epoch=i, samples=1,
                                                 compute_seconds=0.5)])
            store.close()
            """
        )
        procs = [subprocess.Popen([sys.executable, "-c", script, store.url, f"p{n}"]) for n in range(2)]
        try:
            codes = [proc.wait(timeout=90) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert codes == [0, 0]
        assert [e.seq for e in store.list_ledger()] == list(range(1, 41))
        assert store.verify_ledger().ok

    def test_reopen_keeps_data_and_migrations_are_idempotent(self, store_url: str) -> None:
        first = open_store(store_url)
        try:
            v = first.upsert_volunteer(volunteer(1))
            j = first.create_job(job())
            entries = first.append_ledger(drafts([v.id]))
            first.set_setting("first_start", "done")
            v = first.get_volunteer(v.id)
            assert v.samples == 10
        finally:
            first.close()
        again = open_store(store_url)
        try:
            again.migrate()
            assert again.get_volunteer(v.id) == v
            assert again.get_job(j.id) == j
            assert again.list_ledger() == entries and again.verify_ledger().ok
            assert again.get_setting("first_start") == "done"
        finally:
            again.close()

    def test_migrated_schema_matches_the_tables(self, store: Store) -> None:
        engine = sa.create_engine(store.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={"compare_type": True})
                head = ScriptDirectory.from_config(alembic_config()).get_current_head()
                assert head == "0006" and context.get_current_revision() == head
                assert compare_metadata(context, metadata) == []
        finally:
            engine.dispose()


def test_bad_urls_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="not supported"):
        open_store("mysql://root@localhost/essaim")
    with pytest.raises(InvalidArgument, match="in-memory"):
        open_store("sqlite://")


def test_unreachable_postgres_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="cannot be used right now"):
        open_store("postgresql://postgres@127.0.0.1:1/essaim?connect_timeout=2")
