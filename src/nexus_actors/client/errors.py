"""Errors the client raises, each with a stable ``code``.

Codes that come from the server (a refused connect: ``room-not-found``,
``invalid-token``, ...) are the wire protocol's own codes; the others name
conditions of the client itself (``outbox-full``, ``session-closed``, ...).
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the client raises."""

    default_code = "client-error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code: str = code if code is not None else self.default_code


class OutboxFull(ClientError):
    """Too many durable events are waiting for the server's answer; nothing was sent.

    The event is refused at once instead of being dropped later: wait for answers
    (:meth:`~nexus_actors.client.Session.flush`) and send it again.
    """

    default_code = "outbox-full"

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} durable events are waiting for the server's answer; "
                         "wait for acknowledgements before sending more")
        self.limit = limit


class Refused(ClientError):
    """The server refused the connect request (``code`` is the server's error code)."""

    default_code = "refused"

    def __init__(self, message: str, *, code: str, close_code: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.close_code = close_code
        "The WebSocket close code that came with the refusal (``None``: not a close)."
        self.retry_after = retry_after
        "Seconds the server asked to wait before trying again, if it said."


class ConnectFailed(ClientError):
    """The first connection could not be made (network, handshake or timeout)."""

    default_code = "connect-failed"


class SessionClosed(ClientError):
    """The session has ended (left, kicked, superseded, gave up reconnecting or closed)."""

    default_code = "session-closed"


class EventsLagged(ClientError):
    """The application read events too slowly and ``dropped`` were discarded.

    The session's state is still complete and current: redraw from it, then
    call :meth:`~nexus_actors.client.Session.events` again.
    """

    default_code = "events-lagged"

    def __init__(self, dropped: int) -> None:
        super().__init__(f"{dropped} events were dropped because the application did not "
                         "read them in time")
        self.dropped = dropped


class UnknownEntity(ClientError):
    """An optimistic update names an entity this client does not have."""

    default_code = "not-found"

    def __init__(self, kind: str, entity_id: str) -> None:
        super().__init__(f"{kind} {entity_id!r} does not exist in this client's copy")
        self.kind = kind
        self.entity_id = entity_id

