"""Test support: the real server over in-memory streams and a protocol v1 client.

Used by this project's tests and by the simulation; stable for users who
want to test their own clients or bots against a real server in-process.
"""

from .client import ClientError as ClientError, TestClient as TestClient, query as query
from .harness import (
    TestServer as TestServer,
    open_server as open_server,
    open_servers as open_servers,
)
from .streams import (
    MemoryListener as MemoryListener,
    MemoryStream as MemoryStream,
    stream_pair as stream_pair,
)
