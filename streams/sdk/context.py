"""The trace context of the current task or thread: tracing fills it, log records read it.

A contextvar, so each asyncio task and thread sees its own trace; no dependency at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class TraceContext:
    """The trace and (optionally) the span that the code running now belongs to."""

    trace_id: str
    span_id: str | None = None


current_trace: ContextVar[TraceContext | None] = ContextVar("stackstream_trace", default=None)


def get_trace() -> TraceContext | None:
    return current_trace.get()


@contextmanager
def trace_scope(trace_id: str, span_id: str | None = None) -> Iterator[TraceContext]:
    """Run a block inside a trace (and span); the previous context comes back afterwards."""
    context = TraceContext(trace_id, span_id)
    token = current_trace.set(context)
    try:
        yield context
    finally:
        current_trace.reset(token)
