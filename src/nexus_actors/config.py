"""The one immutable :class:`Config`, read from flags, then environment, then defaults.

Every setting is declared once below with its environment variable, its flag
and a help line; ``--help``, ``docs/configuration.md`` and the start-up
validation all come from these declarations. A bad value fails start-up with a
one-line :class:`~nexus_actors.errors.ConfigError` naming the setting.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .errors import ConfigError
from .protocol.limits import Networks

_META = "nexus_setting"


@attrs.frozen
class Setting:
    """How one :class:`Config` field is named outside and parsed."""

    env: str
    "Environment variable holding the value."
    flag: str
    "Command-line flag (``--port``) holding the value; flags win over the environment."
    help: str
    "One line for ``--help`` and ``docs/configuration.md``."
    parse: Callable[[str], Any]
    "Turns the text into a value or raises ``ValueError`` with a reason."
    unit: str = ""
    "Unit shown in the docs (``s``, ``bytes``, ...)."


def _number(kind: type[int] | type[float], *, low: float, high: float = math.inf,
            low_open: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            bound = f"> {low}" if low_open else f">= {low}"
            if high != math.inf:
                bound += f" and <= {high}"
            raise ValueError(f"expected a value {bound}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _text(text: str) -> str:
    return text


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _optional_text(text: str) -> str | None:
    return text or None


def _origins(text: str) -> frozenset[str] | None:
    """Comma-separated origins (``scheme://host[:port]``); empty: any origin."""
    origins = frozenset(o.strip().rstrip("/").lower() for o in text.split(",") if o.strip())
    for origin in origins:
        scheme, _, rest = origin.partition("://")
        if origin != "*" and (scheme not in ("http", "https") or not rest or "/" in rest):
            raise ValueError(f"{origin!r} is not an origin like https://table.example.com")
    return origins or None


def _networks(text: str) -> Networks | None:
    found = []
    for item in text.split(","):
        if item.strip():
            try:
                found.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{item.strip()!r} is not an IP address or network") from None
    return tuple(found) or None


def _node_id(text: str) -> str | None:
    if not text:
        return None
    if len(text) > 100 or not all(c.isalnum() or c in "-_.:" for c in text):
        raise ValueError("expected at most 100 letters, digits, '-', '_', '.' or ':'")
    return text


def _ws_url(text: str) -> str | None:
    if not text:
        return None
    scheme, _, rest = text.partition("://")
    if scheme not in ("ws", "wss") or not rest or rest.startswith("/"):
        raise ValueError(f"{text!r} is not a ws:// or wss:// URL like ws://10.0.0.5:5000")
    return text.rstrip("/")


def setting(default: Any, env: str, flag: str, help: str, parse: Callable[[str], Any],
            unit: str = "", *, secret: bool = False) -> Any:
    return attrs.field(default=default, repr=not secret,
                       metadata={_META: Setting(env, flag, help, parse, unit)})


_seconds = _number(float, low=0.0, low_open=True)
_seconds_or_zero = _number(float, low=0.0)


@attrs.frozen(kw_only=True)
class Config:
    """Every timing and limit of the server. Build with :meth:`from_sources` or directly."""

    host: str = setting("0.0.0.0", "NEXUS_HOST", "--host", "Address to listen on.", _text)
    port: int = setting(5000, "PORT", "--port", "TCP port for HTTP and WebSocket.",
                        _number(int, low=0, high=65535))
    heartbeat_interval: float = setting(
        30.0, "NEXUS_HEARTBEAT_INTERVAL", "--heartbeat-interval",
        "Seconds between WebSocket pings to each client.", _seconds, "s")
    heartbeat_timeout: float = setting(
        10.0, "NEXUS_HEARTBEAT_TIMEOUT", "--heartbeat-timeout",
        "Seconds to wait for a pong before the connection is closed as dead.", _seconds, "s")
    host_grace: float = setting(
        15.0, "NEXUS_HOST_GRACE", "--host-grace",
        "Seconds a disconnected primary host may resume before another member is promoted "
        "(0: promote at once). Also how long an empty room waits before hibernating.",
        _seconds_or_zero, "s")
    hibernation_timeout: float = setting(
        600.0, "NEXUS_HIBERNATION_TIMEOUT", "--hibernation-timeout",
        "Seconds a hibernating room (nobody connected) is kept before it is abandoned.",
        _seconds, "s")
    abandoned_retention: float = setting(
        86_400.0, "NEXUS_ABANDONED_RETENTION", "--abandoned-retention",
        "Seconds after its last activity that an abandoned room is deleted from the store.",
        _seconds_or_zero, "s")
    cursor_tick_hz: float = setting(
        20.0, "NEXUS_CURSOR_TICK_HZ", "--cursor-tick-hz",
        "Cursor frames per second sent to each member (changed cursors coalesced per tick).",
        _number(float, low=0.0, high=1000.0, low_open=True), "Hz")
    max_message_bytes: int = setting(
        65536, "NEXUS_MAX_MESSAGE_BYTES", "--max-message-bytes",
        "Largest inbound WebSocket message; larger ones close the connection with 1009.",
        _number(int, low=256), "bytes")
    max_players: int = setting(
        16, "NEXUS_MAX_PLAYERS", "--max-players",
        "Seats per room (connected or not); joins beyond it get room-full.",
        _number(int, low=1, high=10_000))
    max_rooms: int = setting(
        10_000, "NEXUS_MAX_ROOMS", "--max-rooms",
        "Live rooms per process; creating or waking more gets overloaded.",
        _number(int, low=1))
    max_state_bytes: int = setting(
        4 * 1024 * 1024, "NEXUS_MAX_STATE_BYTES", "--max-state-bytes",
        "Size of one room's state (scenes, tokens, characters, initiative, chat, seats) "
        "beyond which creates and updates are refused state-too-large; deletes still work.",
        _number(int, low=65536), "bytes")
    max_name_length: int = setting(
        50, "NEXUS_MAX_NAME_LENGTH", "--max-name-length",
        "Longest player name, in characters.", _number(int, low=1, high=1000))
    max_chat_length: int = setting(
        2000, "NEXUS_MAX_CHAT_LENGTH", "--max-chat-length",
        "Longest chat message, in characters.", _number(int, low=1, high=1_000_000))
    chat_history: int = setting(
        100, "NEXUS_CHAT_HISTORY", "--chat-history",
        "Chat messages kept in the room state.", _number(int, low=0, high=100_000))
    outbox_frames: int = setting(
        2048, "NEXUS_OUTBOX_FRAMES", "--outbox-frames",
        "Frames offered to one client and not yet written to it before it is closed as a "
        "slow consumer (keep it above NEXUS_JOURNAL_RETAIN so a whole journal can be "
        "replayed on resume).",
        _number(int, low=8))
    outbox_bytes: int = setting(
        4 * 1024 * 1024, "NEXUS_OUTBOX_BYTES", "--outbox-bytes",
        "Bytes offered to one client and not yet written to it before it is closed as a "
        "slow consumer.",
        _number(int, low=65536), "bytes")
    room_inbox: int = setting(
        1024, "NEXUS_ROOM_INBOX", "--room-inbox",
        "Messages queued to one room; when full, its sockets stop being read.",
        _number(int, low=8))
    rate_limit: float = setting(
        60.0, "NEXUS_RATE_LIMIT", "--rate-limit",
        "Messages per second one connection may send (token bucket refill rate).",
        _number(float, low=0.0, low_open=True), "1/s")
    rate_burst: int = setting(
        120, "NEXUS_RATE_BURST", "--rate-burst",
        "Token bucket size: messages a connection may send in a burst.", _number(int, low=1))
    compress_min_bytes: int = setting(
        1024, "NEXUS_COMPRESS_MIN_BYTES", "--compress-min-bytes",
        "With permessage-deflate negotiated, frames at least this big are compressed; "
        "smaller ones are sent uncompressed.", _number(int, low=0), "bytes")
    persist_flush_interval: float = setting(
        0.005, "NEXUS_PERSIST_FLUSH_INTERVAL", "--persist-flush-interval",
        "Seconds the persistence actor waits to fill a batch before committing it.",
        _seconds_or_zero, "s")
    persist_batch: int = setting(
        500, "NEXUS_PERSIST_BATCH", "--persist-batch",
        "Write intents committed in one transaction at most.", _number(int, low=1))
    persist_queue: int = setting(
        20_000, "NEXUS_PERSIST_QUEUE", "--persist-queue",
        "Write intents waiting for the store; when full, durable events get overloaded.",
        _number(int, low=16))
    snapshot_every: int = setting(
        100, "NEXUS_SNAPSHOT_EVERY", "--snapshot-every",
        "A room writes a state snapshot every this many durable events.", _number(int, low=1))
    journal_retain: int = setting(
        1000, "NEXUS_JOURNAL_RETAIN", "--journal-retain",
        "Durable events kept per room for resume replay and duplicate detection.",
        _number(int, low=1))
    handshake_timeout: float = setting(
        10.0, "NEXUS_HANDSHAKE_TIMEOUT", "--handshake-timeout",
        "Seconds a client has to finish the HTTP request and join a room.", _seconds, "s")
    close_timeout: float = setting(
        2.0, "NEXUS_CLOSE_TIMEOUT", "--close-timeout",
        "Seconds to wait for a client's close frame before dropping the socket.", _seconds, "s")
    drain_timeout: float = setting(
        10.0, "NEXUS_DRAIN_TIMEOUT", "--drain-timeout",
        "Seconds a SIGTERM drain may take before the process exits anyway.", _seconds, "s")
    drain_batch: int = setting(
        50, "NEXUS_DRAIN_BATCH", "--drain-batch",
        "Rooms sent away at a time when the server drains (their clients get their "
        "backoff hints together).", _number(int, low=1))
    drain_spread: float = setting(
        2.0, "NEXUS_DRAIN_SPREAD", "--drain-spread",
        "Seconds over which a drain spreads its batches of rooms (at most a quarter of "
        "NEXUS_DRAIN_TIMEOUT).", _seconds, "s")
    restart_retry_ms: int = setting(
        1000, "NEXUS_RESTART_RETRY_MS", "--restart-retry-ms",
        "retryAfterMs hint sent to clients when the server drains or a room restarts.",
        _number(int, low=0), "ms")
    overload_retry_ms: int = setting(
        2000, "NEXUS_OVERLOAD_RETRY_MS", "--overload-retry-ms",
        "retryAfterMs hint sent to clients shed for overload or slow consumption.",
        _number(int, low=0), "ms")
    database_url: str | None = setting(
        None, "DATABASE_URL", "--database-url",
        "PostgreSQL URL (libpq form; e.g. with sslmode=require). Unset: an embedded "
        "PostgreSQL in NEXUS_DATA_DIR. 'memory': keep rooms in this process only.",
        _optional_text, secret=True)
    db_pool_max: int = setting(
        10, "DB_POOL_MAX", "--db-pool-max", "Database connections at most.",
        _number(int, low=1, high=1000))
    db_ssl: bool = setting(
        False, "DB_SSL", "--db-ssl",
        "Require TLS to the database (adds sslmode=require unless the URL sets sslmode).",
        _boolean)
    db_startup_timeout: float = setting(
        60.0, "NEXUS_DB_STARTUP_TIMEOUT", "--db-startup-timeout",
        "Seconds start-up waits for the database to answer before giving up.", _seconds, "s")
    data_dir: str = setting(
        "./.nexus", "NEXUS_DATA_DIR", "--data-dir",
        "Directory of the embedded PostgreSQL (used when DATABASE_URL is unset).", _text)
    snapshot_interval: float = setting(
        60.0, "NEXUS_SNAPSHOT_INTERVAL", "--snapshot-interval",
        "A room with events not yet in a snapshot writes one after this many seconds.",
        _seconds, "s")
    seat_ttl: float = setting(
        86_400.0, "NEXUS_SEAT_TTL", "--seat-ttl",
        "A seat whose member has not been connected for this long is given up.", _seconds, "s")
    cleanup_interval: float = setting(
        3600.0, "NEXUS_CLEANUP_INTERVAL", "--cleanup-interval",
        "Seconds between deletions of rooms abandoned for NEXUS_ABANDONED_RETENTION.",
        _seconds, "s")
    log_level: str = setting(
        "info", "LOG_LEVEL", "--log-level", "Log level.",
        _choice("debug", "info", "warning", "error"))
    address_connect_rate: float = setting(
        10.0, "NEXUS_ADDRESS_CONNECT_RATE", "--address-connect-rate",
        "WebSocket handshakes per second from one address (a bucket of "
        "NEXUS_ADDRESS_CONNECT_BURST); beyond it, 429 with Retry-After.",
        _number(float, low=0.0, low_open=True), "1/s")
    address_connect_burst: int = setting(
        60, "NEXUS_ADDRESS_CONNECT_BURST", "--address-connect-burst",
        "Handshakes one address may make at once (a class behind one NAT joining together).",
        _number(int, low=1))
    address_failure_rate: float = setting(
        0.2, "NEXUS_ADDRESS_FAILURE_RATE", "--address-failure-rate",
        "Failed joins and reconnects (unknown room, wrong token) per second one address may "
        "make (a bucket of NEXUS_ADDRESS_FAILURE_BURST); beyond it, join and reconnect "
        "attempts are refused rate-limited: room codes are short, guessing must be slow.",
        _number(float, low=0.0, low_open=True), "1/s")
    address_failure_burst: int = setting(
        10, "NEXUS_ADDRESS_FAILURE_BURST", "--address-failure-burst",
        "Failed joins and reconnects one address may make before it is slowed down.",
        _number(int, low=1))
    tls_cert: str | None = setting(
        None, "NEXUS_TLS_CERT", "--tls-cert",
        "PEM certificate chain: serve wss:// and https:// on PORT (with NEXUS_TLS_KEY); "
        "unset: plain TCP (TLS at the load balancer).", _optional_text)
    tls_key: str | None = setting(
        None, "NEXUS_TLS_KEY", "--tls-key", "PEM private key of NEXUS_TLS_CERT.",
        _optional_text)
    cors_origin: frozenset[str] | None = setting(
        None, "CORS_ORIGIN", "--cors-origin",
        "Origins allowed to open a WebSocket from a browser and to read the HTTP routes, "
        "comma-separated (e.g. https://table.example.com); unset: any origin (a warning at "
        "start-up).", _origins)
    log_format: str = setting(
        "auto", "NEXUS_LOG_FORMAT", "--log-format",
        "Log line format: human, json (one JSON object per line), or auto (human on a "
        "terminal, json otherwise).", _choice("auto", "human", "json"))
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = setting(
        None, "NEXUS_TRUSTED_PROXIES", "--trusted-proxies",
        "Addresses or networks of the proxies in front (comma-separated, e.g. "
        "10.0.0.0/8,127.0.0.1): a connection from one of them is counted, for per-address "
        "limits and logs, under the client its X-Forwarded-For names; unset: every "
        "connection is its TCP peer.", _networks)
    node_id: str | None = setting(
        None, "NEXUS_NODE_ID", "--node-id",
        "This process's name in room leases, unique among the live processes sharing the "
        "database; unset: host name and port (unique: a port has one listener). A process "
        "restarted with the same id takes its rooms back at once instead of after "
        "NEXUS_LEASE_TTL.", _node_id)
    lease_ttl: float = setting(
        15.0, "NEXUS_LEASE_TTL", "--lease-ttl",
        "Seconds a room's lease lasts unless its owner renews it (every third of this); "
        "after a process dies, its rooms move to another within about this long.",
        _number(float, low=1.0, high=3600.0), "s")
    advertise_url: str | None = setting(
        None, "NEXUS_ADVERTISE_URL", "--advertise-url",
        "How other processes reach this one to relay a client to a room it owns "
        "(ws://10.0.0.5:5000, or wss:// with TLS on PORT); unset: ws:// with this host's "
        "address and PORT.", _ws_url)
    metrics_auth_token: str | None = setting(
        None, "METRICS_AUTH_TOKEN", "--metrics-auth-token",
        "If set, GET /metrics requires 'Authorization: Bearer <token>'.",
        _optional_text, secret=True)

    @classmethod
    def settings(cls) -> list[tuple[str, Setting, Any]]:
        """``(field name, setting, default)`` for every setting, in declaration order."""
        return [
            (field.name, field.metadata[_META], field.default)
            for field in attrs.fields(cls)
            if _META in field.metadata
        ]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare one flag per setting (values stay text until :meth:`from_sources`)."""
        for name, meta, default in cls.settings():
            unit = f" {meta.unit}" if meta.unit else ""
            parser.add_argument(
                meta.flag, dest=name, default=None, metavar=meta.env,
                help=f"{meta.help} [env {meta.env}, default "
                     f"{'unset' if default is None else default}{unit}]",
            )

    @classmethod
    def from_sources(cls, flags: Mapping[str, str | None] | None = None,
                     environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Flags win over the environment, which wins over defaults.

        Raises :class:`ConfigError` naming the first setting whose text does not parse.
        """
        flags = flags or {}
        environ = environ or {}
        values: dict[str, Any] = {}
        for name, meta, _default in cls.settings():
            text = flags.get(name)
            source = meta.flag
            if text is None:
                text = environ.get(meta.env)
                source = meta.env
            if text is None or (text.strip() == "" and source == meta.env):
                continue
            try:
                values[name] = meta.parse(text.strip())
            except ValueError as exc:
                raise ConfigError(f"invalid setting {source}={text!r}: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def evolve(self, **changes: Any) -> Config:
        return attrs.evolve(self, **changes)

    def retry_ms(self, reason: str) -> int:
        """The ``retryAfterMs`` a ``backoff`` hint for ``reason`` starts from, before
        jitter: ``restart_retry_ms`` when the server or a room restarts, a quarter of it
        when the room moved (it is live elsewhere already), else ``overload_retry_ms``."""
        if reason == "room-moved":
            return self.restart_retry_ms // 4
        if reason in ("server-restart", "room-restart"):
            return self.restart_retry_ms
        return self.overload_retry_ms


def settings_table() -> str:
    """The Markdown table of every setting, as ``docs/configuration.md`` shows it."""
    rows = ["| Environment | Flag | Default | Meaning |", "|---|---|---|---|"]
    for _name, meta, default in Config.settings():
        unit = f" {meta.unit}" if meta.unit else ""
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{meta.env}` | `{meta.flag}` | {shown}{unit} | {meta.help} |")
    return "\n".join(rows)
