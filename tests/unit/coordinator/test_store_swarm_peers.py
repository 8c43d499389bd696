"""The store's swarm_peers table (how volunteers take part in each job's swarm), on every backend,
and the migration that adds it to a database written at revision 0001."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from essaim.coordinator.store import Store, SwarmPeer, open_store
from essaim.coordinator.store.engine import alembic_config, normalize_url
from essaim.protocol.errors import InvalidArgument, NotFound


def peer(job_id: str, volunteer_id: str, **kw: object) -> SwarmPeer:
    return SwarmPeer(job_id=job_id, volunteer_id=volunteer_id, **kw)  # type: ignore[arg-type]


class TestSwarmPeers:
    def test_upsert_then_query_by_job_and_by_volunteer(self, store: Store) -> None:
        written = store.upsert_swarm_peers(
            [
                peer("job-1", "v-bob", reachability="nat", observed="203.0.113.7", last_round_epoch=4,
                     averaged_in_last_round=True, updated_at=1000.0),
                peer("job-1", "v-alice", reachability="public", observed="198.51.100.2", last_round_epoch=4),
                peer("job-2", "v-bob"),
            ]
        )
        assert written == 3
        by_job = store.list_swarm_peers(job_id="job-1")
        assert [p.volunteer_id for p in by_job] == ["v-alice", "v-bob"]
        bob = by_job[1]
        assert bob == peer("job-1", "v-bob", reachability="nat", observed="203.0.113.7", last_round_epoch=4,
                           averaged_in_last_round=True, updated_at=1000.0)
        alice = by_job[0]
        assert (alice.reachability, alice.averaged_in_last_round, alice.last_round_epoch) == ("public", False, 4)
        assert alice.updated_at > 1000.0  # 0 means now
        fresh = store.list_swarm_peers(job_id="job-2")[0]
        assert (fresh.reachability, fresh.observed, fresh.last_round_epoch) == ("unknown", "", None)
        assert [p.job_id for p in store.list_swarm_peers(volunteer_id="v-bob")] == ["job-1", "job-2"]
        assert store.list_swarm_peers(job_id="job-2", volunteer_id="v-alice") == []
        assert len(store.list_swarm_peers()) == 3
        assert store.list_swarm_peers(job_id="nope") == []

    def test_upsert_replaces_a_volunteers_row(self, store: Store) -> None:
        store.upsert_swarm_peers([peer("job-1", "v-bob", reachability="unknown", last_round_epoch=3,
                                       averaged_in_last_round=True, updated_at=10.0)])
        store.upsert_swarm_peers([peer("job-1", "v-bob", reachability="nat", observed="203.0.113.7",
                                       last_round_epoch=4, averaged_in_last_round=False, updated_at=20.0)])
        assert store.list_swarm_peers(volunteer_id="v-bob") == [
            peer("job-1", "v-bob", reachability="nat", observed="203.0.113.7", last_round_epoch=4,
                 averaged_in_last_round=False, updated_at=20.0)
        ]
        assert store.upsert_swarm_peers([]) == 0

    def test_assignments_are_remembered_per_job_and_volunteer(self, store: Store) -> None:
        store.record_assignment("job-1", "v-bob", [3, 1])
        store.record_assignment("job-1", "v-alice", [0, 2])
        store.record_assignment("job-2", "v-bob", [5])
        assert store.assigned_slots("job-1") == {"v-alice": [0, 2], "v-bob": [1, 3]}
        store.record_assignment("job-1", "v-bob", [7])  # the last one counts
        assert store.assigned_slots("job-1", volunteer_id="v-bob") == {"v-bob": [7]}
        assert store.assigned_slots("job-3") == {}

    def test_a_row_needs_its_keys(self, store: Store) -> None:
        with pytest.raises(InvalidArgument, match="needs a job id and a volunteer id"):
            store.upsert_swarm_peers([peer("", "v-bob")])
        assert store.list_swarm_peers() == []


def _database_at(url: str, revision: str) -> None:
    """Bring the database at ``url`` back to an empty one, then up to ``revision`` only."""
    engine = sa.create_engine(normalize_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
            command.upgrade(config, revision)
            conn.execute(sa.text(
                "INSERT INTO jobs (id, name, status, recipe_yaml, created_at, updated_at) "
                "VALUES ('job-old', 'old', 'running', 'name: x\n', 1.0, 1.0)"
            ))
    finally:
        engine.dispose()


def test_a_0001_database_gains_the_table_and_keeps_its_rows(store_url: str) -> None:
    _database_at(store_url, "0001")
    store = open_store(store_url)
    try:
        assert store.get_job("job-old").name == "old"
        store.upsert_swarm_peers([peer("job-old", "v-bob", reachability="public", last_round_epoch=0)])
        assert store.list_swarm_peers(job_id="job-old")[0].reachability == "public"
        with pytest.raises(NotFound):
            store.get_job("job-new")
    finally:
        store.close()
