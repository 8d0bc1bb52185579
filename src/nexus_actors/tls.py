"""TLS on the server's own port (``wss://`` and ``https://``), when
``NEXUS_TLS_CERT`` and ``NEXUS_TLS_KEY`` are set. The alternative, usually
simpler in a cloud, is TLS at the load balancer (``docs/operations.md``)."""

from __future__ import annotations

import ssl

from .config import Config
from .errors import ConfigError


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context, or ``None`` to serve plain TCP.

    Raises :class:`ConfigError` (one line, no secrets) if only one of the two files
    is given or they cannot be loaded.
    """
    cert, key = config.tls_cert, config.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("NEXUS_TLS_CERT and NEXUS_TLS_KEY must be set together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot load the TLS certificate {cert} and key {key}: "
                          f"{reason}") from None
    return context
