"""Plain HTTP answers for the routes that share the WebSocket port (pure data, no I/O)."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class HttpReply:
    """A JSON response; the connection layer serializes it."""

    status: int
    body: Any
    "Encoded as JSON, unless it is ``bytes`` (sent as it is, with ``content_type``)."
    headers: dict[str, str] = attrs.Factory(dict)
    "Extra headers (``Allow``, CORS, ...); one given here replaces the default."
    content_type: str = "application/json"
