"""Self-preservation through a real worker: renewals drop below the threshold, expiry stops,
`/registry/status` shows it, and it recovers when renewals come back."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.test_registry import apps_json, call, ids, register_body
from tests.integration.worker import apply_topics, eventually, get_json, running_worker

pytestmark = pytest.mark.integration
INSTANCES = ("sp-0", "sp-1", "sp-2", "sp-3")


class Heartbeats:
    """Sends a heartbeat for each chosen instance every half second, like Eureka clients do."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.beating: set[str] = set(INSTANCES)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for instance_id in sorted(self.beating):
                with contextlib.suppress(OSError):
                    call("PUT", f"{self.base}/eureka/apps/GUARDED/{instance_id}?status=UP")


# Several renewal windows per lease, as Eureka's 60 s window against 90 s leases: the
# switch to self-preservation (one window after the silence) comes before any lease ends.
LEASE_S = 8


def test_expiry_stops_below_the_renewal_threshold_and_resumes_after(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(
        update={
            "domains": "bus,registry",
            "registry_self_preservation": True,
            "registry_renewal_rate_window_s": 2.0,
            "registry_expected_renewal_interval_s": 1,
            "registry_eviction_interval_s": 0.5,
        }
    )
    apply_topics(settings)
    base = f"http://127.0.0.1:{settings.web_port}"
    log = tmp_path / "worker.log"
    with running_worker(settings, log):

        def status() -> dict:
            return get_json(f"{base}/registry/status")[1]

        eventually(
            lambda: get_json(f"{base}/registry/status")[0] == 200 and status()["ready"],
            120,
            "the worker to take writes",
            log,
        )
        for instance_id in INSTANCES:
            status_code, body = call(
                "POST",
                f"{base}/eureka/apps/GUARDED",
                register_body(instance_id, "GUARDED", lease_s=LEASE_S),
                **{"Content-Type": "application/json"},
            )
            assert status_code == 204, body
        heartbeats = Heartbeats(base)
        heartbeats.thread.start()
        try:
            healthy = eventually(
                lambda: (
                    (state := status())["expected_clients"] == 4
                    and state["lease_expiration_enabled"]
                    and not state["self_preservation_active"]
                    and state
                ),
                60,
                "renewals above the threshold",
                log,
            )
            # 4 clients renewing every second, counted per 2 s window, 85 %: int(4 x 2 x 0.85).
            assert healthy["renewal_threshold_per_min"] == 6
            assert healthy["renewal_window_s"] == 2.0

            # Three clients fall silent (a network partition, say): 4 renewals per window < 6.
            heartbeats.beating = {"sp-0"}
            silent_at = time.monotonic()
            preserving = eventually(
                lambda: (
                    (state := status())["self_preservation_active"]
                    and not state["lease_expiration_enabled"]
                    and state
                ),
                60,
                "self-preservation to switch on",
                log,
            )
            assert preserving["renews_last_min"] <= preserving["renewal_threshold_per_min"]
            # Their leases are long over, yet nothing is expired while preserving.
            while time.monotonic() - silent_at < LEASE_S + 4:
                assert ids(apps_json(base)) >= set(INSTANCES), "a lease expired while preserving"
                time.sleep(0.5)
            assert status()["self_preservation_active"]

            # Renewals come back: self-preservation switches off and expiry works again.
            heartbeats.beating = set(INSTANCES)
            eventually(
                lambda: (
                    not (state := status())["self_preservation_active"]
                    and state["lease_expiration_enabled"]
                ),
                60,
                "self-preservation to switch off",
                log,
            )
            assert ids(apps_json(base)) >= set(INSTANCES)
            heartbeats.beating = {"sp-0", "sp-1", "sp-2"}
            eventually(lambda: "sp-3" not in ids(apps_json(base)), 60, "sp-3 to be expired", log)
            assert {"sp-0", "sp-1", "sp-2"} <= ids(apps_json(base))
        finally:
            heartbeats.stop.set()
            heartbeats.thread.join(5)
