"""Who takes over when the primary host goes: a deterministic choice."""

from __future__ import annotations

from collections.abc import Mapping

from .state import RoomState


def successor(state: RoomState, connected_since: Mapping[str, float], *, leaving: str,
              allow_disconnected: bool = False) -> str | None:
    """The member to promote when ``leaving`` stops being primary host.

    The earliest-added connected co-host, else the connected player who has been
    connected longest (ties: the earlier seat). With ``allow_disconnected`` (the
    host gave the seat up and someone must hold the role), fall back to the
    earliest-added co-host, then the earliest-added seat.
    """
    for member_id in state.co_host_ids:
        if member_id != leaving and member_id in connected_since:
            return member_id
    best: tuple[float, int, str] | None = None
    for order, member_id in enumerate(state.seats):
        if member_id == leaving or member_id not in connected_since:
            continue
        candidate = (connected_since[member_id], order, member_id)
        if best is None or candidate < best:
            best = candidate
    if best is not None:
        return best[2]
    if allow_disconnected:
        for member_id in (*state.co_host_ids, *state.seats):
            if member_id != leaving:
                return member_id
    return None
