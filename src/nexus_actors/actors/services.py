"""What every room actor is given: configuration, injected deps and the mailboxes it talks to."""

from __future__ import annotations

import attrs
import trio

from ..config import Config
from ..deps import Deps
from ..metrics import Metrics
from ..store.base import Store
from .health import Health
from .messages import LeaseMsg, RegistryMsg
from .persistence import PersistMsg


@attrs.define(kw_only=True)
class Node:
    """This process among those sharing the database."""

    id: str
    "Its name in room leases (``NEXUS_NODE_ID``, or host name and port)."
    url: str | None
    "Where other processes reach it to relay a client (``NEXUS_ADVERTISE_URL``)."
    relay_secret: str | None = None
    """Shared by every process, read from the store once it answers (set once, by the
    supervisor): authenticates relayed connections. Until then nothing is relayed."""


@attrs.frozen(kw_only=True)
class Services:
    config: Config
    deps: Deps
    store: Store
    health: Health
    persist: trio.MemorySendChannel[PersistMsg]
    "The persistence actor's mailbox (rooms use ``send_nowait``)."
    registry: trio.MemorySendChannel[RegistryMsg]
    "The registry's mailbox."
    leases: trio.MemorySendChannel[LeaseMsg]
    "The lease actor's mailbox (rooms use ``send_nowait``)."
    metrics: Metrics
    node: Node
