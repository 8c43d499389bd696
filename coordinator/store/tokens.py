"""Bearer tokens and coordinator settings in the store.

The coordinator's auth layer hashes a presented token and looks it up here (the store never sees
a token in clear); admin commands create and revoke them. Settings are a small key-value table for
things such as the first-start marker.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from essaim.coordinator.store.base import StoreBase, now
from essaim.coordinator.store.records import TokenRecord
from essaim.coordinator.store.tables import settings, tokens, used_signatures
from essaim.protocol.errors import AlreadyExists, InvalidArgument, NotFound
from essaim.protocol.types import Role

REVOKED_AT = "tokens_revoked_at"  # the settings key revocations bump
UNDO_REQUESTS = "undo_requests"  # the settings key of the banned volunteers whose rounds to undo


def _record(row: Any) -> TokenRecord:
    return TokenRecord(role=Role(row.role), subject=row.subject, label=row.label, created_at=row.created_at,
                       expires_at=row.expires_at, revoked=bool(row.revoked), id=int(row.id))


class TokensMixin(StoreBase):
    def add_token(
        self,
        *,
        token_hash: str,
        role: Role,
        subject: str,
        label: str = "",
        expires_at: float | None = None,
    ) -> None:
        """Store a token's hash. Raises AlreadyExists when that hash is already stored."""
        if not token_hash:
            raise InvalidArgument("a token hash must not be empty")
        values = {
            "token_hash": token_hash,
            "role": Role(role).value,
            "subject": subject,
            "label": label,
            "created_at": now(),
            "expires_at": expires_at,
            "revoked": False,
        }
        with self._write() as conn:
            inserted = conn.execute(
                self._insert(tokens).values(values).on_conflict_do_nothing(index_elements=["token_hash"])
            ).rowcount
        if not inserted:
            raise AlreadyExists("this token is already stored; generate a new one")

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, revoked or expired ones included (check ``usable``)."""
        with self._read() as conn:
            row = conn.execute(sa.select(tokens).where(tokens.c.token_hash == token_hash)).first()
        if row is None:
            return None
        return _record(row)

    def list_tokens(self, *, include_revoked: bool = False) -> list[TokenRecord]:
        """Every token (hashes left out), oldest first; without revoked or expired ones by default."""
        query = sa.select(tokens).order_by(tokens.c.id)
        if not include_revoked:
            query = query.where(tokens.c.revoked == sa.false(),
                                sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now()))
        with self._read() as conn:
            return [_record(row) for row in conn.execute(query)]

    def get_token(self, token_id: int) -> TokenRecord:
        with self._read() as conn:
            row = conn.execute(sa.select(tokens).where(tokens.c.id == int(token_id))).first()
        if row is None:
            raise NotFound(f"no token {token_id}; `essaim coordinator token list` shows them")
        return _record(row)

    def revoke_token(self, token_id: int) -> TokenRecord:
        """Revoke one token by id; returns it as it was. Running coordinators refuse it within seconds."""
        record = self.get_token(token_id)
        with self._write() as conn:
            conn.execute(sa.update(tokens).where(tokens.c.id == int(token_id)).values(revoked=True))
            self._note_revocation(conn)
        return record

    def revoke_tokens(self, subject: str) -> int:
        """Revoke every token of a subject; returns how many were still unrevoked."""
        with self._write() as conn:
            count = conn.execute(
                sa.update(tokens)
                .where(tokens.c.subject == subject, tokens.c.revoked == sa.false())
                .values(revoked=True)
            ).rowcount
            self._note_revocation(conn)
            return count

    def revocations_at(self) -> float:
        """When a token was last revoked (0: never): coordinators drop their token caches when it moves."""
        value = self.get_setting(REVOKED_AT)
        try:
            return float(value) if value is not None else 0.0
        except ValueError:
            return 0.0

    def _note_revocation(self, conn: Any) -> None:
        conn.execute(self._insert(settings).values(key=REVOKED_AT, value=repr(now()))
                     .on_conflict_do_update(index_elements=["key"], set_={"value": repr(now())}))

    def count_tokens(self, role: Role | None = None) -> int:
        """How many tokens (of a role) are usable now: neither revoked nor expired."""
        t = now()
        query = (
            sa.select(sa.func.count())
            .select_from(tokens)
            .where(
                tokens.c.revoked == sa.false(),
                sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > t),
            )
        )
        if role is not None:
            query = query.where(tokens.c.role == Role(role).value)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def get_setting(self, key: str) -> str | None:
        with self._read() as conn:
            return conn.execute(sa.select(settings.c.value).where(settings.c.key == key)).scalar()

    def set_setting(self, key: str, value: str) -> None:
        insert = self._insert(settings).values(key=key, value=value)
        with self._write() as conn:
            conn.execute(
                insert.on_conflict_do_update(index_elements=["key"], set_={"value": insert.excluded.value})
            )

    def setting_once(self, key: str, value: str) -> str:
        """The setting ``key``, set to ``value`` unless it is set already (every process of a
        coordinator sharing this store gets the same)."""
        with self._write() as conn:
            conn.execute(self._insert(settings).values(key=key, value=value).on_conflict_do_nothing(index_elements=["key"]))
        stored = self.get_setting(key)
        assert stored is not None
        return stored

    def use_once(self, digest: str, expires_at: float) -> bool:
        """Mark a signed message used; False when it was used already (a replay). Marks whose
        ``expires_at`` is past are dropped on the way."""
        with self._write() as conn:
            conn.execute(sa.delete(used_signatures).where(used_signatures.c.expires_at < now()))
            result = conn.execute(
                self._insert(used_signatures).values(digest=digest, expires_at=float(expires_at))
                .on_conflict_do_nothing(index_elements=["digest"])
            )
            return bool(result.rowcount == 1)

    def add_undo_request(self, volunteer_id: str) -> None:
        """Ask every job runner to undo a banned volunteer's rounds (they read :meth:`undo_requests`)."""
        with self._write() as conn:
            raw = conn.execute(sa.select(settings.c.value).where(settings.c.key == UNDO_REQUESTS)).scalar()
            requests = json.loads(raw) if raw else {}
            requests.setdefault(volunteer_id, now())
            insert = self._insert(settings).values(key=UNDO_REQUESTS, value=json.dumps(requests))
            conn.execute(insert.on_conflict_do_update(index_elements=["key"], set_={"value": insert.excluded.value}))

    def undo_requests(self) -> dict[str, float]:
        """Volunteer id -> when an admin asked to undo its rounds (see :meth:`add_undo_request`)."""
        raw = self.get_setting(UNDO_REQUESTS)
        try:
            found = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return {str(k): float(v) for k, v in found.items()} if isinstance(found, dict) else {}
