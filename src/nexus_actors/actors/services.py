"""What every room actor is given: configuration, injected deps and the mailboxes it talks to."""

from __future__ import annotations

import attrs
import trio

from ..config import Config
from ..deps import Deps
from ..metrics import Metrics
from ..store.base import Store
from .health import Health
from .messages import RegistryMsg
from .persistence import PersistMsg


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
    metrics: Metrics
