"""Where rooms live when no actor holds them: the :class:`Store` protocol and its writes."""

from .base import (
    AppendEvent as AppendEvent,
)
from .base import (
    PutRoom as PutRoom,
)
from .base import (
    PutSnapshot as PutSnapshot,
)
from .base import (
    RoomRecord as RoomRecord,
)
from .base import (
    Store as Store,
)
from .base import (
    Write as Write,
)
from .memory import MemoryStore as MemoryStore
