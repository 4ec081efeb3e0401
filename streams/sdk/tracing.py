"""CAT-style tracing for Python apps: transactions, events and metrics in message trees.

    tracer = Tracer("orders")
    with tracer.transaction("URL", "/pay") as t:
        t.add_data("amount", 12)
        tracer.log_event("Pay", "card")

    @tracer.transactional("Service", "charge")
    async def charge(...): ...

The innermost open transaction lives in a contextvar, so asyncio tasks and `asyncio.to_thread`
calls nest under the transaction that started them (a plain thread starts its own tree unless
run through `contextvars.copy_context().run`). Work that outlives its transaction (a background
task) becomes a tree of its own whose parent and root message ids link to the finished one.
A finished root transaction becomes one `stackstream.tracing.MessageTree`, kept inside what
the server's `validate_tree` accepts (`TreeLimits`); trees wait in a bounded buffer and a
background thread hands them to the SDK producer in batches, flushed at interpreter exit too.
The application never blocks: a full buffer drops the tree and counts it (`tracer.stats`).

Cross-service calls carry CAT's headers: `X-CAT-ROOT-ID`, `X-CAT-PARENT-ID`, `X-CAT-ID`
(`TracingMiddleware` for ASGI servers, `httpx_transport` for httpx clients).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import ipaddress
import itertools
import logging
import os
import queue
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from streams.sdk.context import TraceContext, current_trace
from streams.sdk.producer import EventProducer

log = logging.getLogger(__name__)

MESSAGES_TOPIC = "trace.messages"
TREE_SCHEMA = "stackstream.tracing.MessageTree"
ROOT_HEADER = "X-CAT-ROOT-ID"
PARENT_HEADER = "X-CAT-PARENT-ID"
CHILD_HEADER = "X-CAT-ID"
SUCCESS = "0"
MAX_HEADER_ID = 256  # CAT ids are about 40 characters
UNNAMED = "unknown"
CANCELLED = "Cancelled"
TRUNCATED_EVENT_TYPE = "TruncatedTree"
PID_SLOTS = 4_194_304  # Linux's PID_MAX_LIMIT (64-bit): two live pids never share a slot
SEQUENCE_STRIDE = 1_000_000_000
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TreeLimits:
    """What the server's `validate_tree` accepts, so that no SDK tree is dead-lettered.

    Mirrors `streams.tracing.model.TreeLimits` (not imported: that module pulls numpy and
    ddsketch into the app, against DESIGN rule 10); a unit test keeps the two equal.
    """

    max_messages: int = 5_000
    max_depth: int = 64
    max_string: int = 4_096
    max_data: int = 65_536

    def __post_init__(self) -> None:
        if self.max_messages < 2 or self.max_depth < 3 or self.max_string < 1 or self.max_data < 1:
            raise ValueError(
                "tree limits need max_messages >= 2 (a root and the truncation note), "
                f"max_depth >= 3 and positive string sizes, not {self}"
            )


def _now_us() -> int:
    return time.time_ns() // 1000


def _text(value: object, limit: int) -> str:
    """`value` as a string of at most `limit` characters: Avro refuses a whole tree for one."""
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:
            value = f"<unprintable {type(value).__name__}>"
    return value if len(value) <= limit else value[:limit]


def _named(value: object, limit: int) -> str:
    """A type or name: blank ones become UNNAMED, which the server would refuse the tree for."""
    text = _text(value, limit)
    return text if text.strip() else UNNAMED


def ip_hex(ip: str) -> str:
    """The 8 lowercase hex digits of an IPv4 address, as CAT message ids carry it."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ipaddress.AddressValueError:
        raise ValueError(f"CAT message ids need an IPv4 address, not {ip!r}") from None
    return f"{int(address):08x}"


def local_ip() -> str:
    """The address this host uses to reach the network (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class MessageIdFactory:
    """`{domain}-{ipHex}-{hourIndex}-{seq}`, CAT's format; thread-safe.

    Each hour's sequence starts at `(pid % PID_SLOTS) * SEQUENCE_STRIDE`, so the processes of a
    host (workers, a restart within the hour: Linux reuses a pid only after pid_max others) never
    issue the same id, with no shared state. Trade-off against CAT's mark file
    (`cat-{domain}.mark`): no file, lock or writable directory, but long sequences (the pid is
    their leading digits), a ceiling of 10^9 ids per process and hour (277,000 a second), and a
    process restarted under the same pid and IP within the hour (pid 1 in a container) may repeat
    ids. The hour index never moves backwards: after a clock step back the sequence goes on.
    `shared` gives one factory per domain and IP to a process and re-seeds it after a fork.
    """

    def __init__(
        self,
        domain: str,
        ip: str,
        clock: Callable[[], float] = time.time,
        pid: int | None = None,
    ) -> None:
        self.prefix = f"{domain}-{ip_hex(ip)}"
        self.clock = clock
        self._seed(os.getpid() if pid is None else pid)

    @classmethod
    def shared(cls, domain: str, ip: str) -> MessageIdFactory:
        """This process's factory for `domain` and `ip`: two in one process would collide."""
        with _shared_lock:
            factory = _shared_factories.get((domain, ip))
            if factory is None:
                factory = _shared_factories[(domain, ip)] = cls(domain, ip)
            return factory

    def _seed(self, pid: int) -> None:
        self.pid = pid
        self._first = (pid % PID_SLOTS) * SEQUENCE_STRIDE
        self._lock = threading.Lock()
        self._hour = -1
        self._sequence = itertools.count(self._first)

    def next_id(self) -> str:
        hour = int(self.clock() * 1000) // 3_600_000
        with self._lock:
            if hour > self._hour:
                self._hour, self._sequence = hour, itertools.count(self._first)
            hour, sequence = self._hour, next(self._sequence)
        return f"{self.prefix}-{hour}-{sequence}"


_shared_factories: dict[tuple[str, str], MessageIdFactory] = {}
_shared_lock = threading.Lock()


_sending_tracers: weakref.WeakSet[Tracer] = weakref.WeakSet()


def _reseed_after_fork() -> None:
    """A forked worker (gunicorn --preload) must not go on with its parent's sequence, and
    needs its own sender: threads do not survive a fork."""
    global _shared_lock
    _shared_lock = threading.Lock()
    for factory in _shared_factories.values():
        factory._seed(os.getpid())
    for tracer in list(_sending_tracers):
        tracer._restart_after_fork()


os.register_at_fork(after_in_child=_reseed_after_fork)


@dataclass(frozen=True)
class RemoteContext:
    """The ids a caller sent: this process's tree takes `message_id` and links to the others."""

    root_message_id: str | None
    parent_message_id: str | None
    message_id: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RemoteContext | None:
        """The caller's ids; a value that is no usable message id (empty, with white space, over
        MAX_HEADER_ID characters) is ignored, so a bad header never gets the tree refused."""
        lowered = {key.lower(): value for key, value in headers.items()}
        child, root, parent = (
            _header_id(lowered.get(name.lower()))
            for name in (CHILD_HEADER, ROOT_HEADER, PARENT_HEADER)
        )
        if child is None and parent is None:
            return None
        return cls(root, parent, child)


def _header_id(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if not value or len(value) > MAX_HEADER_ID or any(c.isspace() for c in value):
        return None
    return value


@dataclass
class TracerStats:
    """What became of finished trees and of messages left out of them.

    `dropped`: the buffer was full. `refused`: the producer did not take the tree (it does not fit
    the schema or Kafka's message size, or the producer's queue was full; `last_error` says why
    when it raised). `truncated`: messages left out of trees that reached `max_messages`.
    """

    finished: int = 0
    queued: int = 0
    dropped: int = 0
    sent: int = 0
    refused: int = 0
    truncated: int = 0
    last_error: str | None = None


@dataclass
class _TreeHeader:
    message_id: str
    parent_message_id: str | None
    root_message_id: str | None
    thread_id: str
    thread_name: str
    size: int = 1
    truncated: int = 0


def _open(transaction: Transaction | None) -> Transaction | None:
    """The innermost transaction of this chain that has not completed yet."""
    while transaction is not None and transaction._completed:
        transaction = transaction.parent
    return transaction


class Transaction:
    """A timed span, a context manager. An exception inside marks it failed and logs it.

    A cancellation (`asyncio.CancelledError`, `KeyboardInterrupt`, `SystemExit`,
    `GeneratorExit`: BaseExceptions that are not Exceptions) sets the status `Cancelled`, not a
    success (it still counts as a failure), without an error event: a client that hangs up adds
    no `error` problem row.
    Past `max_depth - 1` levels a transaction is recorded as a sibling of its parent, so that
    deep recursion neither crashes the encoder nor makes the server refuse the tree.
    """

    def __init__(
        self,
        tracer: Tracer,
        type_: str,
        name: str,
        remote: RemoteContext | None = None,
    ) -> None:
        self.tracer = tracer
        self.type = _named(type_, tracer.limits.max_string)
        self.name = _named(name, tracer.limits.max_string)
        self.status: str = SUCCESS
        self.data: list[str] = []
        self.children: list[dict[str, Any]] = []
        self.timestamp_us = 0
        self.duration_us: int | None = None
        self.remote = remote
        self.parent: Transaction | None = None
        self.header: _TreeHeader | None = None
        self.depth = 1
        self._recorded = True
        self._data_chars = 0
        self._token: contextvars.Token[Transaction | None] | None = None
        self._trace_token: contextvars.Token[TraceContext | None] | None = None
        self._completed = False

    @property
    def message_id(self) -> str:
        """The message id of the tree this transaction belongs to."""
        assert self.header is not None, "the transaction has not started"
        return self.header.message_id

    @property
    def root_message_id(self) -> str:
        assert self.header is not None, "the transaction has not started"
        return self.header.root_message_id or self.header.message_id

    def start(self) -> Transaction:
        self.timestamp_us = _now_us()
        current = _current.get()
        parent = _open(current)
        remote = self.remote
        if remote is not None:
            self.header = self.tracer._header(
                remote.parent_message_id,
                remote.root_message_id or remote.parent_message_id,
                remote.message_id,
            )
        elif parent is not None:
            self._join(parent)
        elif current is not None:
            self.header = self.tracer._linked_header(current)
        else:
            self.header = self.tracer._header()
        self._token = _current.set(self)
        self._trace_token = current_trace.set(
            TraceContext(self.root_message_id, self.header.message_id)
        )
        return self

    def _join(self, parent: Transaction) -> None:
        self.header = parent.header
        if parent.depth >= self.tracer.limits.max_depth - 1 and parent.parent is not None:
            parent = parent.parent
        self.parent = parent
        self.depth = parent.depth + 1
        self._recorded = self.tracer._admit(parent.header)

    def add_data(self, key: object, value: object | None = None) -> None:
        """Append `key=value` (or a bare key); past `max_data` characters the rest is left out."""
        limit = self.tracer.limits.max_data
        if self._data_chars > limit:
            return
        entry = _text(key, limit) if value is None else f"{_text(key, limit)}={_text(value, limit)}"
        self.data.append(entry)
        self._data_chars += len(entry) + 1

    def set_status(self, status: object) -> None:
        """A status other than "0" is a failure; an exception gives its class name."""
        if isinstance(status, BaseException):
            self.status = type(status).__name__
        else:
            self.status = _text(status, self.tracer.limits.max_string)

    def add_child(self, message: dict[str, Any]) -> None:
        self.children.append(message)

    def _record(self, message: dict[str, Any]) -> None:
        """Add an event or metric, unless the tree already holds `max_messages`."""
        if self.header is not None and self.tracer._admit(self.header):
            self.children.append(message)

    def complete(self, error: BaseException | None = None) -> None:
        if self._completed:
            return
        if isinstance(error, Exception):
            self._record(self.tracer._error_event(error))
            if self.status == SUCCESS:
                self.set_status(error)
        elif error is not None and self.status == SUCCESS:
            self.status = CANCELLED
        self._completed = True
        if self.duration_us is None:
            self.duration_us = max(0, _now_us() - self.timestamp_us)
        if self._token is not None:
            try:
                _current.reset(self._token)
                if self._trace_token is not None:
                    current_trace.reset(self._trace_token)
            except ValueError:  # completed in another context than it started in
                pass
        assert self.header is not None, "the transaction has not started"
        if self.parent is None:
            if self.header.truncated:
                self.children.append(self.tracer._truncation_event(self.header))
            self.tracer.finish_tree(self.header, self.as_message())
        elif self._recorded:
            target = _open(self.parent)
            if target is not None:
                target.add_child(self.as_message())
            else:  # its tree was sent before it finished: report it linked to that tree
                self.tracer.finish_tree(self.tracer._linked_header(self.parent), self.as_message())

    def as_message(self) -> dict[str, Any]:
        return {
            "kind": "TRANSACTION",
            "type": self.type,
            "name": self.name,
            "status": self.status,
            "timestamp_us": self.timestamp_us,
            "duration_us": self.duration_us or 0,
            "data": _text("&".join(self.data), self.tracer.limits.max_data),
            "children": sorted(self.children, key=lambda m: m["timestamp_us"]),
        }

    def __enter__(self) -> Transaction:
        return self.start()

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        self.complete(error)


_current: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "stackstream_transaction", default=None
)


def current_transaction() -> Transaction | None:
    """The innermost open transaction of this task or thread."""
    return _open(_current.get())


class Tracer:
    """Builds message trees for one domain (application) and ships them without blocking.

    With a sender thread, an exit hook sends what is buffered within `exit_timeout` seconds
    (Kafka being away cannot hold the interpreter longer); `close` removes it. A tracer without
    one (`start_sender=False`) is drained by its owner.
    """

    def __init__(
        self,
        domain: str,
        *,
        producer: EventProducer | None = None,
        ip: str | None = None,
        hostname: str | None = None,
        buffer_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        start_sender: bool = True,
        limits: TreeLimits | None = None,
        exit_timeout: float = 5.0,
    ) -> None:
        if not domain or any(c.isspace() or c == "-" for c in domain):
            raise ValueError(f"domain {domain!r} must be non-empty, without spaces or '-'")
        self.domain = domain
        self.ip = ip or local_ip()
        self.hostname = hostname or socket.gethostname()
        self.ids = MessageIdFactory.shared(domain, self.ip)
        self.limits = limits or TreeLimits()
        self.stats = TracerStats()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.exit_timeout = exit_timeout
        self._producer = producer
        self._owns_producer = False
        self._producer_lock = threading.Lock()
        self._buffer: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=buffer_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None
        if start_sender:
            atexit.register(self.close, exit_timeout)
            self._start_sender()

    def _start_sender(self) -> None:
        self._sender = threading.Thread(target=self._send_loop, name="stackstream-tracing")
        self._sender.daemon = True
        self._sender.start()
        _sending_tracers.add(self)

    def _restart_after_fork(self) -> None:
        """In a forked child: fresh locks and an empty buffer (the parent sends what it had
        queued), no producer made by the parent (librdkafka's state does not survive a fork;
        one is made on first use), and a sender thread of its own."""
        if self._stop.is_set():
            return
        self._lock = threading.Lock()
        self._producer_lock = threading.Lock()
        self._buffer = queue.Queue(maxsize=self._buffer.maxsize)
        if self._owns_producer:
            self._producer, self._owns_producer = None, False
        self.stats = TracerStats()
        self._start_sender()

    @property
    def producer(self) -> EventProducer:
        with self._producer_lock:
            if self._producer is None:
                self._producer = EventProducer(client_id=f"stackstream-tracing-{self.domain}")
                self._owns_producer = True
                if self._sender is not None and not self._stop.is_set():
                    # exit hooks run last-registered first: send our trees before it closes
                    atexit.unregister(self.close)
                    atexit.register(self.close, self.exit_timeout)
            return self._producer

    # --- the API applications use -----------------------------------------------------------

    def transaction(
        self, type_: str, name: str, *, remote: RemoteContext | None = None
    ) -> Transaction:
        return Transaction(self, type_, name, remote)

    def transactional(self, type_: str, name: str | None = None) -> Callable[[F], F]:
        """Decorator: every call runs in a transaction (the function's name by default)."""

        def decorate(function: F) -> F:
            label = name or function.__qualname__
            if asyncio.iscoroutinefunction(function):

                @functools.wraps(function)
                async def run_async(*args: Any, **kwargs: Any) -> Any:
                    with self.transaction(type_, label):
                        return await function(*args, **kwargs)

                return run_async  # type: ignore[return-value]

            @functools.wraps(function)
            def run(*args: Any, **kwargs: Any) -> Any:
                with self.transaction(type_, label):
                    return function(*args, **kwargs)

            return run  # type: ignore[return-value]

        return decorate

    def log_event(self, type_: str, name: str, status: object = SUCCESS, data: object = "") -> None:
        """An event in the current transaction, or a tree of its own outside any.

        Values that are not strings are converted, and strings cut to the tree limits.
        """
        self._add(self._message("EVENT", type_, name, status, data))

    def log_exception(self, error: BaseException) -> None:
        """An error event (CAT's logError): type Exception or Error, the stack in data."""
        self._add(self._error_event(error))

    def log_metric(self, name: str, aggregation: str, data: object) -> None:
        """A business metric in the trace: `C` count, `T` duration ms, `S` sum, `S,C`."""
        if aggregation not in ("C", "T", "S", "S,C"):
            raise ValueError(f"metric aggregation must be C, T, S or S,C, not {aggregation!r}")
        self._add(self._message("METRIC", "", name, aggregation, data))

    def count(self, name: str, n: int = 1) -> None:
        self.log_metric(name, "C", str(n))

    def duration(self, name: str, milliseconds: float) -> None:
        self.log_metric(name, "T", f"{milliseconds:g}")

    def remote_call_headers(self, callee: str) -> dict[str, str]:
        """Headers for an outgoing call, logging CAT's `RemoteCall` event with the child id."""
        parent = _open(_current.get())
        if parent is None or parent.header is None:
            return {}
        child = self.ids.next_id()
        self.log_event("RemoteCall", callee, SUCCESS, child)
        return {
            ROOT_HEADER: parent.root_message_id,
            PARENT_HEADER: parent.message_id,
            CHILD_HEADER: child,
        }

    # --- trees --------------------------------------------------------------------------------

    def _message(
        self, kind: str, type_: object, name: object, status: object, data: object
    ) -> dict[str, Any]:
        limits = self.limits
        return {
            "kind": kind,
            "type": _named(type_, limits.max_string)
            if kind == "EVENT"
            else _text(type_, limits.max_string),
            "name": _named(name, limits.max_string),
            "status": _text(status, limits.max_string),
            "timestamp_us": _now_us(),
            "data": "" if data is None else _text(data, limits.max_data),
        }

    def _error_event(self, error: BaseException) -> dict[str, Any]:
        kind = "Exception" if isinstance(error, Exception) else "Error"
        stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return self._message("EVENT", kind, type(error).__qualname__, "ERROR", stack[-8000:])

    def _truncation_event(self, header: _TreeHeader) -> dict[str, Any]:
        """The note that ends a tree that reached `max_messages`, as CAT marks truncated trees."""
        return self._message(
            "EVENT",
            TRUNCATED_EVENT_TYPE,
            "messages",
            SUCCESS,
            f"dropped={header.truncated}&max_messages={self.limits.max_messages}",
        )

    def _admit(self, header: _TreeHeader) -> bool:
        """Count one more message into the tree; False (and counted) when it is full."""
        with self._lock:
            if header.size < self.limits.max_messages - 1:  # the last place is the note
                header.size += 1
                return True
            header.truncated += 1
            self.stats.truncated += 1
            return False

    def _header(
        self,
        parent_message_id: str | None = None,
        root_message_id: str | None = None,
        message_id: str | None = None,
    ) -> _TreeHeader:
        thread = threading.current_thread()
        return _TreeHeader(
            message_id or self.ids.next_id(),
            parent_message_id,
            root_message_id,
            str(thread.ident or ""),
            thread.name,
        )

    def _linked_header(self, finished: Transaction) -> _TreeHeader:
        """A tree for work that outlived `finished`'s tree, linked to it as CAT links async work."""
        return self._header(finished.message_id, finished.root_message_id)

    def _add(self, message: dict[str, Any]) -> None:
        current = _current.get()
        parent = _open(current)
        if parent is not None:
            parent._record(message)
            return
        header = self._linked_header(current) if current is not None else self._header()
        self.finish_tree(header, message)

    def finish_tree(self, header: _TreeHeader, root: dict[str, Any]) -> None:
        tree = {
            "domain": self.domain,
            "hostname": self.hostname,
            "ip": self.ip,
            "thread_group_name": "",
            "thread_id": header.thread_id,
            "thread_name": header.thread_name,
            "message_id": header.message_id,
            "parent_message_id": header.parent_message_id,
            "root_message_id": header.root_message_id,
            "session_token": None,
            "root": root,
        }
        with self._lock:
            self.stats.finished += 1
        try:
            self._buffer.put_nowait(tree)
        except queue.Full:
            with self._lock:
                self.stats.dropped += 1
            return
        with self._lock:
            self.stats.queued += 1

    def drain(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Take up to `limit` finished trees from the buffer (the sender does this)."""
        trees: list[dict[str, Any]] = []
        while limit is None or len(trees) < limit:
            try:
                trees.append(self._buffer.get_nowait())
            except queue.Empty:
                break
        return trees

    def send_batch(self, trees: Iterable[dict[str, Any]]) -> None:
        """Hand trees to the producer one by one: one it refuses is counted, the others go on."""
        producer = self.producer
        for tree in trees:
            try:
                accepted = producer.emit(MESSAGES_TOPIC, TREE_SCHEMA, tree, key=self.domain)
                error = None
            except Exception as refusal:  # too large for Kafka, refused by the schema, ...
                accepted, error = False, f"{type(refusal).__name__}: {refusal}"
            with self._lock:
                if accepted:
                    self.stats.sent += 1
                else:
                    self.stats.refused += 1
                    self.stats.last_error = error or self.stats.last_error
            if error is not None:
                log.warning("stackstream tracing: tree %s refused: %s", tree["message_id"], error)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            trees = self.drain(self.batch_size)
            if trees:
                try:
                    self.send_batch(trees)
                except Exception:  # the sender must outlive a producer that cannot be built
                    log.exception("stackstream tracing: sending %d trees failed", len(trees))
            else:
                self._stop.wait(self.flush_interval)

    def _send_buffered(self) -> None:
        while trees := self.drain(self.batch_size):
            self.send_batch(trees)

    def flush(self, timeout: float = 10.0) -> None:
        """Send what is buffered now and wait for the producer's acknowledgements."""
        self._send_buffered()
        if self._producer is not None:
            self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the sender and send what is buffered, within about `timeout` seconds in all.

        Also the exit hook; a producer the tracer made is closed with it, one given is flushed.
        """
        atexit.unregister(self.close)
        _sending_tracers.discard(self)
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._sender is not None:
            self._sender.join(timeout)
        self._send_buffered()
        if self._producer is not None:
            remaining = max(0.0, deadline - time.monotonic())
            if self._owns_producer:
                self._producer.close(remaining)
            else:
                self._producer.flush(remaining)


# --- HTTP: ASGI middleware and httpx transport ---------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class TracingMiddleware:
    """ASGI middleware: each HTTP request is a `URL` transaction joined to the caller's chain."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], tracer: Tracer):
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        remote = RemoteContext.from_headers(headers)
        with self.tracer.transaction("URL", scope.get("path", "/"), remote=remote) as span:
            span.add_data("method", scope.get("method", ""))

            async def record_status(message: MutableMapping[str, Any]) -> None:
                if message.get("type") == "http.response.start":
                    code = int(message.get("status", 200))
                    span.add_data("status", code)
                    if code >= 500:
                        span.set_status(str(code))
                await send(message)

            await self.app(scope, receive, record_status)


def httpx_transport(tracer: Tracer, inner: Any = None, *, asynchronous: bool = True) -> Any:
    """An httpx transport that runs each request in a `Call` transaction and sends CAT headers.

    `httpx.AsyncClient(transport=httpx_transport(tracer))`; `asynchronous=False` for `Client`.
    httpx is imported here only, so apps without it can still use the rest of the SDK.
    """
    import httpx

    def open_call(request: httpx.Request) -> Transaction:
        span = tracer.transaction("Call", f"{request.url.host}{request.url.path}").start()
        span.add_data("method", request.method)
        request.headers.update(tracer.remote_call_headers(str(request.url.host)))
        return span

    def close_call(span: Transaction, response: httpx.Response) -> None:
        span.add_data("status", response.status_code)
        if response.status_code >= 500:
            span.set_status(str(response.status_code))
        span.complete()

    if asynchronous:
        wrapped_async = inner or httpx.AsyncHTTPTransport()

        class AsyncTracingTransport(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                span = open_call(request)
                try:
                    response = await wrapped_async.handle_async_request(request)
                except BaseException as error:
                    span.complete(error)
                    raise
                close_call(span, response)
                return response

            async def aclose(self) -> None:
                await wrapped_async.aclose()

        return AsyncTracingTransport()

    wrapped = inner or httpx.HTTPTransport()

    class TracingTransport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            span = open_call(request)
            try:
                response = wrapped.handle_request(request)
            except BaseException as error:
                span.complete(error)
                raise
            close_call(span, response)
            return response

        def close(self) -> None:
            wrapped.close()

    return TracingTransport()


__all__ = [
    "CHILD_HEADER",
    "PARENT_HEADER",
    "ROOT_HEADER",
    "MessageIdFactory",
    "RemoteContext",
    "Tracer",
    "TracerStats",
    "TracingMiddleware",
    "Transaction",
    "current_transaction",
    "httpx_transport",
    "ip_hex",
]
