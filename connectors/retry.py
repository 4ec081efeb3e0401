"""Retry with capped exponential backoff, shared by the sinks: a sink waits out its server."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays of first, first*factor, ... capped at `maximum`, with ±20% jitter.

    `attempts=None` retries until it succeeds: a sink must not drop data while its server is away.
    """

    first: float = 0.2
    factor: float = 2.0
    maximum: float = 10.0
    attempts: int | None = None

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.first * self.factor ** (attempt - 1))
        return base * random.uniform(0.8, 1.2)


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    is_retryable: Callable[[BaseException], bool],
    backoff: Backoff,
    what: str,
) -> T:
    """Run `operation` until it succeeds, retrying retryable errors with backoff."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except Exception as error:
            if not is_retryable(error) or (
                backoff.attempts is not None and attempt >= backoff.attempts
            ):
                raise
            delay = backoff.delay(attempt)
            log.warning(
                "%s failed (%s: %s); retry %d in %.1fs",
                what,
                type(error).__name__,
                error,
                attempt,
                delay,
            )
            await asyncio.sleep(delay)


def stable_id(*parts: object) -> str:
    """A deterministic document id from the parts that identify a record: redelivery overwrites."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()
