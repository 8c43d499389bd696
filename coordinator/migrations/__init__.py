"""essaim.coordinator.migrations: the Alembic scripts that create and evolve the store's schema.

They run from code (:func:`essaim.coordinator.store.engine.run_migrations`, called when the store
opens), with ``script_location`` set to this folder; no ``alembic.ini`` is needed. To write a new
revision, change :mod:`essaim.coordinator.store.tables` and add a script under ``versions/``
(``down_revision`` = the previous one); the tests check that the migrated schema matches the tables.
"""
