"""Helpers for tests that run the server as a separate process."""

from __future__ import annotations

import os
import socket

from ..config import Config


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any server setting, plus ``settings``."""
    names = {meta.env for _, meta, _ in Config.settings()}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(settings)
    return env
