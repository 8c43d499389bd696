"""essaim.coordinator: the server that volunteers, researchers and admins talk to.

It tracks volunteers (registration, heartbeats, bans), jobs (submission, approval, scheduling),
uploaded files and artifacts, and the contributions ledger. Layout, one noun per module:

    settings.py    the one settings object (flags > ESSAIM_COORDINATOR_* > defaults)
    store/         persistence (SQLAlchemy; SQLite or PostgreSQL)
    auth.py        bearer tokens and roles;   keys.py  registration signatures
    service.py     domain logic (no transport); scheduler.py  which job a volunteer trains
    heartbeats.py  batched heartbeat writes and the offline sweeper
    blobs.py       uploaded files and artifacts on disk
    servicer.py    the thin gRPC servicer;    http.py  /healthz, /metrics, JSON API
    server.py      runs both on one event loop; cli.py  ``essaim coordinator ...``

It never imports torch or hivemind: swarm services are injected (service.SwarmGateway). They run
one process per running job (gateway.py starts jobrunner.py): the DHT bootstrap peer, the job's
averaging peer that takes part in every round (averaging.py), the rounds it saw (rounds.py), the
monitor (monitor.py) and the checkpoint keeper (keeper.py).
"""
