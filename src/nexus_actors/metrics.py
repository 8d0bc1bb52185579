"""What the server counts, and its Prometheus exposition (``GET /metrics``).

Actors bump plain integers on their hot paths (a frame counted is a dict
increment, no lock and no label lookup: everything runs on one thread); a
collector turns them into metric families when Prometheus scrapes, and
``prometheus-client`` writes the exposition. Histograms, observed a few times
per second at most, are ``prometheus-client`` histograms. Each server has its
own registry, so servers in one process (tests) never share a metric.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import attrs
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


@attrs.define(eq=False)
class Metrics:
    """Every count the server keeps. Written by the actors, read on scrape."""

    registry: CollectorRegistry = attrs.field(factory=CollectorRegistry)
    frames_in: Counter[str] = attrs.field(factory=Counter)
    "Client frames by event name (``heartbeat``, ``binary``, ``malformed`` otherwise)."
    frames_out: Counter[str] = attrs.field(factory=Counter)
    "Server frames written, by ``type``."
    errors: Counter[str] = attrs.field(factory=Counter)
    "``error`` frames sent, by ``code`` (invalid input, rate limits, refusals...)."
    backoffs: Counter[str] = attrs.field(factory=Counter)
    "``backoff`` hints sent (each with a close), by ``reason``."
    broadcasts: int = 0
    broadcast_recipients: int = 0
    "Frames queued by broadcasts (the fan-out: recipients summed over broadcasts)."
    cursor_ticks: int = 0
    durable_events: int = 0
    "Events journaled (applied, broadcast, handed to the persistence actor)."
    duplicates: int = 0
    "Durable events re-sent with an ``eventId`` already applied (answered, not re-applied)."
    rejections: Counter[str] = attrs.field(factory=Counter)
    "Durable events refused by a room, by reason (``version-conflict``, ``forbidden``...)."
    sessions: Counter[str] = attrs.field(factory=Counter)
    "Connections attached to a seat: ``connect`` (a new seat) or ``resume`` (a reconnect)."
    resumes: Counter[str] = attrs.field(factory=Counter)
    "Reconnects by outcome: ``replay`` (missed events replayed) or ``baseline``."
    replayed_events: int = 0
    "Events replayed to resuming clients."
    host_migrations: Counter[str] = attrs.field(factory=Counter)
    "``auto`` (the host was gone past its grace period) or ``manual`` (transferred)."
    commits: int = 0
    store_errors: int = 0
    "Failed commits (each retried) and failed pings."
    outage_seconds: float = 0.0
    "Seconds the store was unreachable, over past outages."
    lease_claims: Counter[str] = attrs.field(factory=Counter)
    """Rooms' lease claims by outcome: ``claimed`` (free, or this process's), ``takeover``
    (another process's expired lease), ``elsewhere`` (held by a live process)."""
    leases_lost: int = 0
    "Leases another process claimed while this one held them (noticed at renewal)."
    fenced: int = 0
    "Rooms whose writes a commit left out: their fence was stale (a lost lease)."
    relayed_frames: Counter[str] = attrs.field(factory=Counter)
    """Frames relayed between a client and the room's owner, by direction (``up``: to the
    owner, ``down``: to the client)."""
    relays: Counter[str] = attrs.field(factory=Counter)
    "Relays begun, by outcome (``opened``, ``unreachable``: the owner could not be reached)."
    relays_open: int = 0
    "Client connections relayed to the process that owns their room now."
    handoffs: int = 0
    "Rooms moved to the process that relayed most of their members here."
    rooms_live: int = 0
    "Room actors running (kept by the registry)."
    members_connected: int = 0
    "Members attached to a live room (kept by the rooms)."
    room_status: dict[str, int] = attrs.field(factory=dict)
    "Rooms in the store by status, fetched just before a scrape."
    gauges: dict[str, tuple[str, Callable[[], float]]] = attrs.field(factory=dict)
    "Name → (help, read the value now): set by the actors that own the value."
    rtt: Histogram = attrs.field(init=False)
    commit_seconds: Histogram = attrs.field(init=False)
    batch_size: Histogram = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.rtt = Histogram("nexus_heartbeat_rtt_seconds",
                             "Round trip of WebSocket pings to clients.",
                             buckets=RTT_BUCKETS, registry=self.registry)
        self.commit_seconds = Histogram("nexus_commit_seconds",
                                        "Time to commit one batch (retries included).",
                                        buckets=COMMIT_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("nexus_commit_batch_writes", "Writes per committed batch.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_Counts(self))

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """Expose ``read()`` as gauge ``nexus_<name>`` (read at each scrape)."""
        self.gauges[name] = (help, read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _counter(name: str, help: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"nexus_{name}", help, value=value)


def _labelled(name: str, help: str, label: str, counts: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"nexus_{name}", help, labels=[label])
    for key, value in sorted(counts.items()):
        family.add_metric([key], value)
    return family


class _Counts(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _labelled("frames_in", "Client frames received, by event name.", "type",
                        m.frames_in)
        yield _labelled("frames_out", "Server frames written, by type.", "type", m.frames_out)
        yield _labelled("errors_sent", "Error frames sent, by code.", "code", m.errors)
        yield _labelled("backoffs_sent", "Backoff hints sent with a close, by reason.",
                        "reason", m.backoffs)
        yield _counter("broadcasts", "Broadcasts by rooms.", m.broadcasts)
        yield _counter("broadcast_recipients", "Frames queued by broadcasts (fan-out).",
                       m.broadcast_recipients)
        yield _counter("cursor_ticks", "Cursor frames flushed by rooms.", m.cursor_ticks)
        yield _counter("durable_events", "Durable events journaled.", m.durable_events)
        yield _counter("duplicate_events", "Durable events re-sent with a known eventId.",
                       m.duplicates)
        yield _labelled("rejected_events", "Durable events refused, by reason.", "reason",
                        m.rejections)
        yield _labelled("sessions", "Connections attached to a seat, by kind.", "kind",
                        m.sessions)
        yield _labelled("resumes", "Reconnects, by outcome.", "mode", m.resumes)
        yield _counter("replayed_events", "Events replayed to resuming clients.",
                       m.replayed_events)
        yield _labelled("host_migrations", "Primary host changes, by kind.", "kind",
                        m.host_migrations)
        yield _counter("store_commits", "Batches committed.", m.commits)
        yield _counter("store_errors", "Failed commits and pings.", m.store_errors)
        yield _counter("store_outage_seconds", "Seconds the store was unreachable.",
                       m.outage_seconds)
        yield _labelled("lease_claims", "Room lease claims, by outcome.", "outcome",
                        m.lease_claims)
        yield _counter("leases_lost", "Leases another process claimed from this one.",
                       m.leases_lost)
        yield _counter("fenced_writes", "Rooms whose writes were refused for a stale fence.",
                       m.fenced)
        yield _labelled("relays", "Relays to a room's owner begun, by outcome.", "outcome",
                        m.relays)
        yield _labelled("relayed_frames", "Frames relayed to and from rooms' owners, by "
                        "direction.", "direction", m.relayed_frames)
        yield _counter("room_handoffs", "Rooms moved to the process relaying most of their "
                       "members here.", m.handoffs)
        yield GaugeMetricFamily("nexus_relays_open", "Connections relayed to a room's owner.",
                                value=m.relays_open)
        yield GaugeMetricFamily("nexus_rooms_live", "Room actors running.", value=m.rooms_live)
        yield GaugeMetricFamily("nexus_members_connected", "Members attached to live rooms.",
                                value=m.members_connected)
        rooms = GaugeMetricFamily("nexus_rooms", "Rooms in the store, by status.",
                                  labels=["status"])
        for status, count in sorted(m.room_status.items()):
            rooms.add_metric([status], count)
        yield rooms
        for name, (help, read) in sorted(m.gauges.items()):
            yield GaugeMetricFamily(f"nexus_{name}", help, value=read())
