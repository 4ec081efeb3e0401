"""CAT-style tracing for Python apps: transactions, events and metrics in message trees.

    tracer = Tracer("orders")
    with tracer.transaction("URL", "/pay") as t:
        t.add_data("amount", 12)
        tracer.log_event("Pay", "card")

    @tracer.transactional("Service", "charge")
    async def charge(...): ...

The innermost open transaction lives in a contextvar, so asyncio tasks and `asyncio.to_thread`
calls nest under the transaction that started them (a plain thread starts its own tree unless
run through `contextvars.copy_context().run`). A finished root transaction becomes one
`stackstream.tracing.MessageTree`; trees wait in a bounded buffer and a background thread hands
them to the SDK producer in batches. The application never blocks: a full buffer drops the
tree and counts it (`tracer.stats.dropped`).

Cross-service calls carry CAT's headers: `X-CAT-ROOT-ID`, `X-CAT-PARENT-ID`, `X-CAT-ID`
(`TracingMiddleware` for ASGI servers, `httpx_transport` for httpx clients).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ipaddress
import itertools
import logging
import queue
import socket
import threading
import time
import traceback
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
F = TypeVar("F", bound=Callable[..., Any])


def _now_us() -> int:
    return time.time_ns() // 1000


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
    """`{domain}-{ipHex}-{hourIndex}-{seq}`: the sequence restarts every hour; thread-safe."""

    def __init__(self, domain: str, ip: str, clock: Callable[[], float] = time.time) -> None:
        self.prefix = f"{domain}-{ip_hex(ip)}"
        self.clock = clock
        self._lock = threading.Lock()
        self._hour = -1
        self._sequence = itertools.count()

    def next_id(self) -> str:
        hour = int(self.clock() * 1000) // 3_600_000
        with self._lock:
            if hour != self._hour:
                self._hour, self._sequence = hour, itertools.count()
            sequence = next(self._sequence)
        return f"{self.prefix}-{hour}-{sequence}"


@dataclass(frozen=True)
class RemoteContext:
    """The ids a caller sent: this process's tree takes `message_id` and links to the others."""

    root_message_id: str | None
    parent_message_id: str | None
    message_id: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RemoteContext | None:
        lowered = {key.lower(): value for key, value in headers.items()}
        child = lowered.get(CHILD_HEADER.lower())
        if not child:
            return None
        return cls(lowered.get(ROOT_HEADER.lower()), lowered.get(PARENT_HEADER.lower()), child)


@dataclass
class TracerStats:
    """What became of finished trees; `dropped` means the buffer was full."""

    finished: int = 0
    queued: int = 0
    dropped: int = 0
    sent: int = 0
    refused: int = 0


@dataclass
class _TreeHeader:
    message_id: str
    parent_message_id: str | None
    root_message_id: str | None
    thread_id: str
    thread_name: str


class Transaction:
    """A timed span. A context manager; an exception inside marks it failed and logs it."""

    def __init__(
        self,
        tracer: Tracer,
        type_: str,
        name: str,
        remote: RemoteContext | None = None,
    ) -> None:
        self.tracer = tracer
        self.type = type_
        self.name = name
        self.status = SUCCESS
        self.data: list[str] = []
        self.children: list[dict[str, Any]] = []
        self.timestamp_us = 0
        self.duration_us: int | None = None
        self.remote = remote
        self.parent: Transaction | None = None
        self.header: _TreeHeader | None = None
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
        self.parent = _current.get()
        if self.parent is not None and self.parent.header is not None and self.remote is None:
            self.header = self.parent.header
        else:
            remote = self.remote
            thread = threading.current_thread()
            self.header = _TreeHeader(
                message_id=(remote.message_id if remote else None) or self.tracer.ids.next_id(),
                parent_message_id=remote.parent_message_id if remote else None,
                root_message_id=(remote.root_message_id or remote.parent_message_id)
                if remote
                else None,
                thread_id=str(thread.ident or ""),
                thread_name=thread.name,
            )
            self.parent = None
        self._token = _current.set(self)
        self._trace_token = current_trace.set(
            TraceContext(self.root_message_id, self.header.message_id)
        )
        return self

    def add_data(self, key: str, value: object | None = None) -> None:
        self.data.append(key if value is None else f"{key}={value}")

    def set_status(self, status: str | BaseException) -> None:
        self.status = type(status).__name__ if isinstance(status, BaseException) else str(status)

    def add_child(self, message: dict[str, Any]) -> None:
        self.children.append(message)

    def complete(self, error: BaseException | None = None) -> None:
        if self._completed:
            return
        self._completed = True
        if error is not None:
            self.tracer.log_exception(error)
            if self.status == SUCCESS:
                self.set_status(error)
        if self.duration_us is None:
            self.duration_us = max(0, _now_us() - self.timestamp_us)
        if self._token is not None:
            try:
                _current.reset(self._token)
                if self._trace_token is not None:
                    current_trace.reset(self._trace_token)
            except ValueError:  # completed in another context than it started in
                pass
        message = self.as_message()
        if self.parent is not None:
            self.parent.add_child(message)
        else:
            assert self.header is not None
            self.tracer.finish_tree(self.header, message)

    def as_message(self) -> dict[str, Any]:
        return {
            "kind": "TRANSACTION",
            "type": self.type,
            "name": self.name,
            "status": self.status,
            "timestamp_us": self.timestamp_us,
            "duration_us": self.duration_us or 0,
            "data": "&".join(self.data),
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
    return _current.get()


class Tracer:
    """Builds message trees for one domain (application) and ships them without blocking."""

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
    ) -> None:
        if not domain or any(c.isspace() or c == "-" for c in domain):
            raise ValueError(f"domain {domain!r} must be non-empty, without spaces or '-'")
        self.domain = domain
        self.ip = ip or local_ip()
        self.hostname = hostname or socket.gethostname()
        self.ids = MessageIdFactory(domain, self.ip)
        self.stats = TracerStats()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._producer = producer
        self._buffer: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=buffer_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None
        if start_sender:
            self._sender = threading.Thread(target=self._send_loop, name="stackstream-tracing")
            self._sender.daemon = True
            self._sender.start()

    @property
    def producer(self) -> EventProducer:
        if self._producer is None:
            self._producer = EventProducer(client_id=f"stackstream-tracing-{self.domain}")
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

    def log_event(self, type_: str, name: str, status: str = SUCCESS, data: str = "") -> None:
        """An event in the current transaction, or a tree of its own outside any."""
        self._add(
            {
                "kind": "EVENT",
                "type": type_,
                "name": name,
                "status": status,
                "timestamp_us": _now_us(),
                "data": data,
            }
        )

    def log_exception(self, error: BaseException) -> None:
        """An error event (CAT's logError): type Exception or Error, the stack in data."""
        kind = "Exception" if isinstance(error, Exception) else "Error"
        stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.log_event(kind, type(error).__qualname__, "ERROR", stack[-8000:])

    def log_metric(self, name: str, aggregation: str, data: str) -> None:
        """A business metric in the trace: `C` count, `T` duration ms, `S` sum, `S,C`."""
        if aggregation not in ("C", "T", "S", "S,C"):
            raise ValueError(f"metric aggregation must be C, T, S or S,C, not {aggregation!r}")
        self._add(
            {
                "kind": "METRIC",
                "type": "",
                "name": name,
                "status": aggregation,
                "timestamp_us": _now_us(),
                "data": data,
            }
        )

    def count(self, name: str, n: int = 1) -> None:
        self.log_metric(name, "C", str(n))

    def duration(self, name: str, milliseconds: float) -> None:
        self.log_metric(name, "T", f"{milliseconds:g}")

    def remote_call_headers(self, callee: str) -> dict[str, str]:
        """Headers for an outgoing call, logging CAT's `RemoteCall` event with the child id."""
        parent = _current.get()
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

    def _add(self, message: dict[str, Any]) -> None:
        parent = _current.get()
        if parent is not None:
            parent.add_child(message)
            return
        thread = threading.current_thread()
        header = _TreeHeader(self.ids.next_id(), None, None, str(thread.ident or ""), thread.name)
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
        producer = self.producer
        for tree in trees:
            if producer.emit(MESSAGES_TOPIC, TREE_SCHEMA, tree, key=self.domain):
                with self._lock:
                    self.stats.sent += 1
            else:
                with self._lock:
                    self.stats.refused += 1

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            trees = self.drain(self.batch_size)
            if trees:
                try:
                    self.send_batch(trees)
                except Exception:  # the sender must outlive a bad tree or producer hiccup
                    log.exception("stackstream tracing: sending %d trees failed", len(trees))
            else:
                self._stop.wait(self.flush_interval)

    def flush(self, timeout: float = 10.0) -> None:
        """Send what is buffered now and wait for the producer's acknowledgements."""
        while trees := self.drain(self.batch_size):
            self.send_batch(trees)
        if self._producer is not None:
            self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._sender is not None:
            self._sender.join(timeout)
        self.flush(timeout)


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
