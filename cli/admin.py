"""``essaim coordinator volunteers | ban``: an admin's remote commands on a running coordinator.

    essaim coordinator volunteers [--online] [--json]    the swarm as a table
    essaim coordinator ban VOLUNTEER_ID [--reason R]     revoke a volunteer's access
    essaim coordinator unban VOLUNTEER_ID [--reason R]   lift the ban

:mod:`essaim.main` adds these commands to the ``coordinator`` group, next to the ones the
coordinator package defines (``serve``, ``token create``, ``ledger verify``).
"""

from __future__ import annotations

from typing import Annotated

import typer
from essaim import output
from essaim.protocol.types import Volunteer, VolunteerStatus
from essaim.remote import CoordinatorOption, TokenOption, client_from_options

app = typer.Typer(name="coordinator", help="Administer a running coordinator.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

STATUS_STYLE = {
    VolunteerStatus.ONLINE: "green",
    VolunteerStatus.OFFLINE: "dim",
    VolunteerStatus.BANNED: "red",
}


def state_text(volunteer: Volunteer) -> str:
    """``training``, ``paused: on battery``: the app's last reported state and its reason."""
    state, reason = volunteer.state.strip(), volunteer.reason.strip()
    if state and reason and not reason.startswith(state):
        return f"{state}: {reason}"
    return reason or state or "-"


@app.command("volunteers")
def volunteers(
    online: Annotated[bool, typer.Option("--online", help="Only volunteers online now.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many (0: the server's default).")] = 0,
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """List the volunteers: state, hardware, throughput, last seen and app version."""
    with client_from_options(coordinator, token) as client:
        found = client.list_volunteers(online_only=online, limit=limit)
    if as_json:
        output.print_json(found)
        return
    if not found:
        output.notice("no volunteers online" if online else "no volunteers yet")
        return
    rows = output.table("NAME", "ID", "STATUS", "STATE", "HARDWARE", "SAMPLES/S", "LAST SEEN", "VERSION")
    for v in found:
        rows.add_row(
            output.escape(v.name) or "-",
            v.id,
            f"[{STATUS_STYLE.get(v.status, 'white')}]{v.status.value}[/]",
            output.escape(state_text(v)),
            output.escape(output.hardware_summary(v.hardware)),
            output.number(v.samples_per_second),
            output.ago(v.last_seen),
            output.escape(v.client_version) or "-",
        )
    output.print_table(rows)
    online_count = sum(v.status == VolunteerStatus.ONLINE for v in found)
    output.notice(f"{len(found)} volunteer{'s' if len(found) != 1 else ''}, {online_count} online")


@app.command("ban")
def ban(
    volunteer_id: Annotated[str, typer.Argument(metavar="VOLUNTEER_ID", help="From `essaim coordinator volunteers`.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept with the ban.")] = "",
    undo: Annotated[bool, typer.Option(
        "--undo", help="Also take each running job back to its last checkpoint from before the volunteer's "
        "first averaged round, and resume from there.")] = False,
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Ban a volunteer: its swarm token stops working and its later contributions are refused."""
    with client_from_options(coordinator, token) as client:
        banned = client.ban_volunteer(volunteer_id, reason, undo=undo)
    if as_json:
        output.print_json(banned)
        return
    output.notice(f"banned volunteer {output.escape(banned.name) or '-'} ({banned.id})")
    output.plain(banned.id)


@app.command("unban")
def unban(
    volunteer_id: Annotated[str, typer.Argument(metavar="VOLUNTEER_ID", help="From `essaim coordinator volunteers`.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept as the volunteer's reason.")] = "",
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Lift a volunteer's ban: its app registers again by itself; what the ban refused stays refused."""
    with client_from_options(coordinator, token) as client:
        lifted = client.unban_volunteer(volunteer_id, reason)
    if as_json:
        output.print_json(lifted)
        return
    output.notice(f"lifted the ban on volunteer {output.escape(lifted.name) or '-'} ({lifted.id})")
    output.plain(lifted.id)
