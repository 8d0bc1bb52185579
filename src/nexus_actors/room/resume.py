"""Where a resuming client's history and the room's agree: replay from there, or start over."""

from __future__ import annotations

from collections.abc import Sequence


def resume_point(last_seen: int | None, client_epoch: int | None, *, sequence: int,
                 epochs: Sequence[tuple[int, int]], first_retained: int) -> int | None:
    """The sequence to replay after, or ``None`` when the client needs a fresh baseline.

    ``epochs`` are ``(epoch, first sequence)`` pairs. A room starts a new epoch
    when it is restored after an unclean stop, because events its clients saw
    may not have been durable and their sequence numbers may be reused. A client
    from an older epoch may resume only from a sequence that was durable when
    the next epoch began.
    """
    if last_seen is None or last_seen > sequence:
        return None
    if client_epoch is not None and epochs and client_epoch != epochs[-1][0]:
        known = [e for e, _ in epochs]
        if client_epoch not in known:
            return None
        later = [first for e, first in epochs if e > client_epoch]
        if later and last_seen > min(later) - 1:
            return None
    if last_seen < first_retained - 1:
        return None
    return last_seen
