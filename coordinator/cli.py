"""``essaim coordinator ...``: the commands that run on the coordinator's own machine.

    essaim coordinator serve [--host H] [--grpc-port P] [--http-port P] [--data-dir D] [--db-url U] ...
    essaim coordinator token create --role {admin,researcher,volunteer} [--label L] [--data-dir D | --db-url U]
    essaim coordinator ledger verify [--data-dir D | --db-url U] [--json]

The root CLI mounts :data:`app` as ``essaim coordinator`` and adds the remote admin commands
(``volunteers``, ``ban``). ``python -m essaim.coordinator`` runs :func:`main` on its own. Errors
are essaim.protocol.errors classes; the caller prints them and exits with their ``exit_code``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from essaim.coordinator.errors import ConfigError, EssaimError, InvalidArgument, NotFound
from essaim.protocol.types import Role

if TYPE_CHECKING:
    from essaim.coordinator.settings import CoordinatorSettings

app = typer.Typer(
    help="Run and administer an essaim coordinator.", no_args_is_help=True, add_completion=False
)
token_app = typer.Typer(help="Bearer tokens for admins, researchers and volunteers.", no_args_is_help=True)
ledger_app = typer.Typer(help="The contributions ledger.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(ledger_app, name="ledger")
tls_app = typer.Typer(help="TLS for a coordinator without a public certificate.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")

DATA_DIR = typer.Option(
    None, "--data-dir", help="Coordinator data directory (default: the platform data dir)."
)
DB_URL = typer.Option(
    None,
    "--db-url",
    help="Store URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in the data dir).",
)


def make_settings(**flags: Any) -> CoordinatorSettings:
    """Settings from flags (those not None) over the environment over defaults."""
    from essaim.coordinator.settings import CoordinatorSettings  # pydantic: only for coordinator commands
    from pydantic import ValidationError

    try:
        return CoordinatorSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid coordinator settings: {problems}") from None


@contextlib.contextmanager
def _store(data_dir: Path | None, db_url: str | None) -> Iterator[Any]:
    """The store of an existing coordinator, closed on the way out: an admin command never makes a
    new, empty one (a token created there would be known to no coordinator)."""
    from essaim.coordinator.store import open_store

    settings = make_settings(data_dir=data_dir, db_url=db_url)
    if not settings.db_url and not (settings.data_dir / "coordinator.db").exists():
        raise NotFound(f"no coordinator store in {settings.data_dir}; pass the coordinator's --data-dir or --db-url")
    store = open_store(settings.resolved_db_url())
    try:
        yield store
    finally:
        store.close()


@app.command()
def serve(
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    grpc_port: int | None = typer.Option(
        None, "--grpc-port", help="gRPC port (default 50051; 0 = pick a free one)."
    ),
    http_port: int | None = typer.Option(
        None, "--http-port", help="HTTP port (default 8080; 0 = pick a free one)."
    ),
    data_dir: Path | None = DATA_DIR,
    db_url: str | None = DB_URL,
    heartbeat_interval: float | None = typer.Option(
        None, "--heartbeat-interval", help="Seconds between volunteer heartbeats (30)."
    ),
    heartbeat_interval_max: float | None = typer.Option(
        None, "--heartbeat-interval-max", help="The longest interval volunteers are told under load (300)."
    ),
    heartbeat_timeout: float | None = typer.Option(
        None, "--heartbeat-timeout", help="Seconds of silence before a volunteer is offline (90)."
    ),
    require_approval: bool | None = typer.Option(
        None, "--require-approval/--no-require-approval", help="New jobs wait for an admin."
    ),
    allow_remote_code: bool | None = typer.Option(
        None, "--allow-remote-code/--no-allow-remote-code", help="Accept trust_remote_code recipes."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Certificate chain (PEM): serve TLS only."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="The certificate's private key (PEM)."),
    insecure: bool | None = typer.Option(
        None, "--insecure/--no-insecure", help="Plain text on a public address (behind a TLS proxy only)."
    ),
    max_researcher_priority: int | None = typer.Option(
        None, "--max-researcher-priority", help="Highest priority a researcher may submit with (0)."
    ),
    model_dir: list[Path] = typer.Option(
        [], "--allow-model-dir", help="A directory recipes may name models or datasets in (repeatable)."
    ),
    open_registration: bool | None = typer.Option(
        None, "--open-registration/--closed-registration", help="Anyone may register as a volunteer."
    ),
    signups_per_source: int | None = typer.Option(
        None, "--signups-per-minute-per-source", help="Registrations without a token a minute per address (10)."
    ),
    signups: int | None = typer.Option(
        None, "--signups-per-minute", help="Registrations without a token a minute in all (600)."
    ),
    public_pages: bool | None = typer.Option(
        None, "--public-pages/--no-public-pages", help="Serve the status pages to anyone."
    ),
    max_message_bytes: int | None = typer.Option(
        None, "--max-message-bytes", help="Largest gRPC message accepted (4 MiB)."
    ),
    max_averaging_peers: int | None = typer.Option(
        None, "--max-averaging-peers", help="Most averaging peers (processes) a job gets (4)."
    ),
    reachability_second_address: str | None = typer.Option(
        None, "--reachability-second-address",
        help="Another IP of this host, from which volunteers' reachability is tested too (none).",
    ),
    swarm: bool = typer.Option(
        True,
        "--swarm/--no-swarm",
        help="Run each running job's swarm services (DHT bootstrap peer, monitor, checkpoint keeper).",
    ),
    announce_host: str | None = typer.Option(
        None, "--announce-host", help="Address volunteers reach the jobs' DHT peers at, behind NAT."
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Run the coordinator (gRPC API + HTTP) until SIGTERM or Ctrl-C."""
    settings = make_settings(
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        data_dir=data_dir,
        db_url=db_url,
        heartbeat_interval_s=heartbeat_interval,
        heartbeat_interval_max_s=heartbeat_interval_max,
        heartbeat_timeout_s=heartbeat_timeout,
        require_approval=require_approval,
        allow_remote_code=allow_remote_code,
        model_dirs=[d.resolve() for d in model_dir] or None,
        max_researcher_priority=max_researcher_priority,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure=insecure,
        open_registration=open_registration,
        signups_per_minute_per_source=signups_per_source,
        signups_per_minute=signups,
        public_pages=public_pages,
        max_message_bytes=max_message_bytes,
        max_averaging_peers=max_averaging_peers,
        reachability_second_address=reachability_second_address,
    )
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if log_level.lower() != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    from essaim.coordinator.server import serve as run_server

    gateway = None
    if swarm:
        from essaim.coordinator.gateway import ProcessSwarmGateway

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        gateway = ProcessSwarmGateway(settings, announce_host=announce_host)
    run_server(settings, gateway=gateway)


EXPIRES_IN = typer.Option(90.0, "--expires-in", min=0.0, help="Days the token is valid (0: it never expires).")


def _expiry(days: float) -> float | None:
    return time.time() + days * 86400 if days > 0 else None


@token_app.command("create")
def token_create(
    role: Role = typer.Option(..., "--role", help="admin, researcher or volunteer."),
    label: str = typer.Option("", "--label", help="Who the token is for (also its owner name for jobs)."),
    expires_in: float = EXPIRES_IN,
    data_dir: Path | None = DATA_DIR,
    db_url: str | None = DB_URL,
) -> None:
    """Create a bearer token and print it (it is stored hashed: this is the only time it is shown)."""
    from essaim.coordinator.auth import create_token

    with _store(data_dir, db_url) as store:
        token = create_token(store, role=role, label=label, expires_at=_expiry(expires_in))
    typer.echo(token)


@token_app.command("list")
def token_list(
    include_revoked: bool = typer.Option(False, "--all", help="Revoked and expired tokens too."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    data_dir: Path | None = DATA_DIR,
    db_url: str | None = DB_URL,
) -> None:
    """The tokens (id, role, subject, label, dates): never the tokens themselves, which are not stored."""
    with _store(data_dir, db_url) as store:
        records = store.list_tokens(include_revoked=include_revoked)
    rows = [{"id": r.id, "role": str(r.role), "subject": r.subject, "label": r.label, "created_at": r.created_at,
             "expires_at": r.expires_at, "revoked": r.revoked} for r in records]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    def day(t: float | None) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(t)) if t else "never"

    for r in rows:
        state = "revoked" if r["revoked"] else ("expired" if r["expires_at"] and r["expires_at"] < time.time() else "")
        typer.echo(f"{r['id']:>6}  {r['role']:<10} {r['subject'][:32]:<32} created {day(r['created_at'])}  "
                   f"expires {day(r['expires_at'])}  {r['label'][:30]}  {state}".rstrip())


@token_app.command("revoke")
def token_revoke(
    token_id: int = typer.Argument(..., help="The token's id (`token list`)."),
    data_dir: Path | None = DATA_DIR,
    db_url: str | None = DB_URL,
) -> None:
    """Revoke a token: running coordinators refuse it within seconds."""
    with _store(data_dir, db_url) as store:
        record = store.revoke_token(token_id)
    typer.echo(f"revoked token {token_id} ({record.role} {record.subject})")


@token_app.command("rotate")
def token_rotate(
    token_id: int = typer.Argument(..., help="The token's id (`token list`)."),
    expires_in: float = EXPIRES_IN,
    data_dir: Path | None = DATA_DIR,
    db_url: str | None = DB_URL,
) -> None:
    """Replace a token: print a new one for the same role and subject, and revoke the old one."""
    from essaim.coordinator.auth import create_token

    with _store(data_dir, db_url) as store:
        old = store.get_token(token_id)
        if old.revoked:
            raise InvalidArgument(f"token {token_id} is revoked already; create a new one with `token create`")
        token = create_token(store, role=old.role, label=old.label, subject=old.subject,
                             expires_at=_expiry(expires_in))
        store.revoke_token(token_id)
    typer.echo(token)


@ledger_app.command("verify")
def ledger_verify(
    data_dir: Path | None = DATA_DIR,
    db_url: str | None = DB_URL,
    head: Path | None = typer.Option(
        None, "--head", help="A signed head saved earlier (GET /api/v1/ledger/head, or a job's provenance.json): "
        "also find rows cut off the end or a rewritten chain."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check the hash chain of the contributions ledger (exit 1 at the first broken row)."""
    from essaim.coordinator.store.ledger import head_signature_ok
    from essaim.coordinator.swarm_keys import SWARM_KEY, load_or_create_swarm_key, public_key_der

    settings = make_settings(data_dir=data_dir, db_url=db_url)
    with _store(data_dir, db_url) as store:
        signed = None
        if head is not None:
            signed = _read_signed_head(head)
            key_path = settings.data_dir / SWARM_KEY
            if not key_path.exists():
                raise NotFound(f"no swarm key in {settings.data_dir} to check the head's signature with; pass the "
                               "coordinator's --data-dir")
            if not head_signature_ok(signed, public_key_der(load_or_create_swarm_key(key_path))):
                raise InvalidArgument(f"{head}: the head's signature is not this coordinator's (a forged or "
                                      "foreign head)")
        result = store.verify_ledger(signed)
    if as_json:
        typer.echo(json.dumps({"ok": result.ok, "checked": result.checked, "first_bad_seq": result.first_bad_seq,
                               "message": result.message}))
    elif result.ok:
        typer.echo(f"ledger ok: {result.checked} row(s) verified" + (f" against the head of row {signed.seq}"
                                                                       if signed is not None else ""))
    else:
        typer.echo(f"ledger BROKEN at seq {result.first_bad_seq}: {result.message}", err=True)
    if not result.ok:
        raise typer.Exit(1)


def _read_signed_head(path: Path) -> Any:
    """A signed head from its file: the head itself, or a provenance.json holding one."""
    from essaim.coordinator.store.ledger import SignedHead

    try:
        data = json.loads(path.read_text())
        return SignedHead.from_dict(data.get("ledger_head") or {} if "ledger_head" in data else data)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, AttributeError) as exc:
        raise InvalidArgument(f"{path} holds no signed ledger head: {exc}") from None


@tls_app.command("init")
def tls_init(
    name: list[str] = typer.Option(..., "--name", help="A host name or IP address volunteers dial (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Directory for ca.pem, ca.key, server.pem and server.key."),
    days: int = typer.Option(825, "--days", min=1, max=3650, help="Validity of both certificates."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
) -> None:
    """Make a private CA and the coordinator's certificate (serve with --tls-cert/--tls-key)."""
    from essaim.coordinator.certs import issue

    issued = issue(out, name, days=days, overwrite=overwrite)
    typer.echo(f"serve with:  --tls-cert {issued.cert} --tls-key {issued.key}")
    typer.echo(f"clients:     ESSAIM_CA_FILE={issued.ca_cert} (or ca_file under [coordinator] in their config)")
    typer.echo(f"keep {issued.ca_key} offline: it signs certificates every client of this coordinator trusts")


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """The class ``name`` from click and from typer's bundled copy of click, where it has one."""
    found: list[type[BaseException]] = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as bundled  # type: ignore[import-not-found]

        found.append(getattr(bundled, name))
    except (ImportError, AttributeError):
        pass
    return tuple(found)


_CLICK_EXIT = _click_classes("Exit")
_CLICK_ERRORS = _click_classes("ClickException")
_CLICK_ABORT = _click_classes("Abort")


def main(argv: list[str] | None = None) -> int:
    """Run :data:`app` on its own (``python -m essaim.coordinator``), printing errors without tracebacks."""
    try:
        code = app(args=argv, prog_name="python -m essaim.coordinator", standalone_mode=False)
    except EssaimError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except _CLICK_EXIT as exc:  # click's Exit or typer's copy of it: both carry exit_code
        return int(getattr(exc, "exit_code", 1))
    except _CLICK_ERRORS as exc:  # ClickException, either copy: it shows itself
        getattr(exc, "show")()  # noqa: B009 (the classes are found at run time)
        return int(getattr(exc, "exit_code", 1))
    except _CLICK_ABORT:
        return 130
    return code if isinstance(code, int) else 0
