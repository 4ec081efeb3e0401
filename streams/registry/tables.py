"""Registry state: instance entries and lease accounting, both global so any worker reads them.

`registry.instances` holds one entry per `APP/ID` (see `model`); `registry.state` holds one
`partition/<n>` record per source partition (registrations minus cancellations, renewals per
minute) and the registry-wide `_registry` record (self-preservation, expected-client base).
"""

from __future__ import annotations

INSTANCES_TABLE = "registry.instances"
STATE_TABLE = "registry.state"


def partition_key(partition: int) -> str:
    return f"partition/{partition}"
