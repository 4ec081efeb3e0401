"""Two small instrumented services that call each other, for the demo and the tests.

`shop` (ASGI, `GET /order/{item}`) runs a `Service` and an `SQL` transaction and calls `stock`
(`GET /reserve/{item}`) through the SDK's httpx transport; `stock` continues the chain through
`TracingMiddleware`. They are served in-process (httpx's ASGI transport), so every request makes
two real message trees of two domains linked by CAT headers, exactly as over a socket.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from streams.sdk.tracing import Tracer, TracingMiddleware, httpx_transport

ASGIApp = Callable[..., Awaitable[None]]
ITEMS = ("book", "lamp", "chair", "kettle", "plant")


class OutOfStock(Exception):
    """The stock service has none of the item left (the demo's failure case)."""


async def _answer(send: Callable[..., Awaitable[None]], status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status,
         "headers": [(b"content-type", b"text/plain")]}
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def stock_app(tracer: Tracer, *, fail_every: int = 9, seed: int = 7) -> ASGIApp:
    """`GET /reserve/{item}`: an SQL update; every `fail_every`th call is out of stock (500)."""
    randomness = random.Random(seed)
    calls = 0

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        number = calls
        item = scope["path"].rsplit("/", 1)[-1]
        with tracer.transaction("SQL", "stock.reserve") as sql:
            sql.add_data("item", item)
            await asyncio.sleep(randomness.lognormvariate(-5.5, 0.8))
        if fail_every and number % fail_every == 0:
            tracer.log_exception(OutOfStock(item))
            await _answer(send, 500, b"out of stock")
            return
        await _answer(send, 200, b"reserved")

    return TracingMiddleware(app, tracer)


def shop_app(tracer: Tracer, stock: ASGIApp, *, seed: int = 11) -> ASGIApp:
    """`GET /order/{item}`: a Service transaction with an SQL insert and a call to stock."""
    randomness = random.Random(seed)
    client = httpx.AsyncClient(
        transport=httpx_transport(tracer, httpx.ASGITransport(app=stock)),
        base_url="http://stock",
    )

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        item = scope["path"].rsplit("/", 1)[-1]
        with tracer.transaction("Service", "placeOrder"):
            with tracer.transaction("SQL", "orders.insert"):
                await asyncio.sleep(randomness.lognormvariate(-6.0, 0.5))
            response = await client.get(f"/reserve/{item}")
            tracer.log_event("Order", "reserved" if response.status_code < 400 else "refused",
                             "0" if response.status_code < 400 else "refused")  # fmt: skip
        await _answer(send, 200 if response.status_code < 400 else 502, response.content)

    return TracingMiddleware(app, tracer)


async def call_services(shop: ASGIApp, requests: int, *, concurrency: int = 8) -> list[int]:
    """Send `requests` orders to the shop; the HTTP status of each."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=shop), base_url="http://shop")
    semaphore = asyncio.Semaphore(concurrency)

    async def order(index: int) -> int:
        async with semaphore:
            response = await client.get(f"/order/{ITEMS[index % len(ITEMS)]}")
            return response.status_code

    try:
        return list(await asyncio.gather(*(order(i) for i in range(requests))))
    finally:
        await client.aclose()


def sample_tracers(
    kafka: str, topic_prefix: str, *, shop_ip: str = "10.1.0.11", stock_ip: str = "10.1.0.21"
) -> tuple[Tracer, Tracer]:
    """Tracers of the two sample domains, sending to `trace.messages` with this prefix."""
    from streams.sdk.producer import EventProducer

    return (
        Tracer("shop", producer=EventProducer(kafka, topic_prefix=topic_prefix), ip=shop_ip),
        Tracer("stock", producer=EventProducer(kafka, topic_prefix=topic_prefix), ip=stock_ip),
    )


def sample_apps(shop_tracer: Tracer, stock_tracer: Tracer) -> ASGIApp:
    """The shop app wired to a stock app; calling it exercises both."""
    return shop_app(shop_tracer, stock_app(stock_tracer))


async def serve_for(kafka: str, topic_prefix: str, seconds: float, rate: int) -> None:
    """Send about `rate` orders a second through both services for `seconds`."""
    shop_tracer, stock_tracer = sample_tracers(kafka, topic_prefix)
    shop = sample_apps(shop_tracer, stock_tracer)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            started = time.monotonic()
            await call_services(shop, rate)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    finally:
        shop_tracer.close()
        stock_tracer.close()


def main() -> None:
    """`python -m streams.tracing.sample_services`: the demo's two services, for a while."""
    import argparse

    from streams.settings import get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=int, default=10, help="orders per second")
    arguments = parser.parse_args()
    asyncio.run(serve_for(settings.kafka, settings.topic_prefix, arguments.seconds,
                          arguments.rate))  # fmt: skip


if __name__ == "__main__":
    main()
