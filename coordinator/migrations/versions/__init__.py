"""Alembic revision scripts of the coordinator's store, applied in ``down_revision`` order."""
