"""Pure rate limiting: a token bucket driven by the caller's clock."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

import attrs


@attrs.define
class TokenBucket:
    """Allows ``rate`` events per second on average and ``burst`` at once.

    Time is passed in (``trio.current_time()`` in the server), so tests and the
    simulation control it.
    """

    rate: float
    "Tokens added per second."
    burst: float
    "Bucket size."
    tokens: float = attrs.field(default=-1.0)
    "Tokens available now; starts full."
    updated: float = 0.0
    "When ``tokens`` was last brought up to date."

    def __attrs_post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def refill(self, now: float) -> float:
        """Bring ``tokens`` up to ``now``; the tokens available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return self.tokens

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until one token is available again."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


@attrs.define
class PerAddress:
    """One :class:`TokenBucket` per client address, the least recently used forgotten
    beyond ``max_addresses`` (a forgotten address starts again with a full bucket)."""

    rate: float
    burst: float
    max_addresses: int = 100_000
    _buckets: OrderedDict[str, TokenBucket] = attrs.field(factory=OrderedDict)

    def _bucket(self, address: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self.rate, self.burst, updated=now)
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        return bucket

    def take(self, address: str, now: float) -> bool:
        """Take a token for ``address`` if it has one."""
        return self._bucket(address, now).take(now)

    def allows(self, address: str, now: float) -> bool:
        """Whether ``address`` has a token now (none is taken)."""
        return self._bucket(address, now).refill(now) >= 1.0

    def retry_after(self, address: str) -> float:
        bucket = self._buckets.get(address)
        return 0.0 if bucket is None else bucket.retry_after()


def host_of(address: str) -> str:
    """The host part of ``host:port`` (IPv4, IPv6 or a name): what per-address limits key on."""
    return address.rsplit(":", 1)[0] if ":" in address else address


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Networks) -> bool:
    return any(ip in network for network in trusted)


def forwarded_client(peer: str, forwarded_for: str | None, trusted: Networks) -> str:
    """The client's address (``host:port``) for per-address limits and logs.

    A connection from a trusted proxy (``NEXUS_TRUSTED_PROXIES``) is counted under the
    address its ``X-Forwarded-For`` names: the right-most one that is not itself a trusted
    proxy (anything to the left of it could be written by the client). A connection from
    anywhere else is its TCP peer, whatever headers it sends.
    """
    if not trusted or not forwarded_for:
        return peer
    proxy = _ip(host_of(peer))
    if proxy is None or not _trusted(proxy, trusted):
        return peer
    for hop in reversed(forwarded_for.split(",")):
        ip = _ip(hop)
        if ip is None:
            return peer  # a malformed chain: count the proxy itself
        if not _trusted(ip, trusted):
            return f"[{ip}]:0" if ip.version == 6 else f"{ip}:0"
    return peer
