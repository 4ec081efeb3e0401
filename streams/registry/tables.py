"""Registry state: instance entries and lease accounting, both global so any worker reads them.

`registry.instances` holds one entry per `APP/ID` (see `model`); `registry.state` holds one
`partition/<n>` record per source partition (registrations minus cancellations, renewals per
minute) and the registry-wide `_registry` record (self-preservation, expected-client base).
`registry.leases` holds one `leases/<n>` record per source partition: the last renewal time of
every renewed lease there, written by the owner at most every `registry_lease_flush_interval_s`
(renewals are most of the traffic; writing each into its instance document made the changelog
carry a whole document per heartbeat).
"""

from __future__ import annotations

INSTANCES_TABLE = "registry.instances"
STATE_TABLE = "registry.state"
LEASES_TABLE = "registry.leases"


def partition_key(partition: int) -> str:
    return f"partition/{partition}"


def lease_key(partition: int) -> str:
    return f"leases/{partition}"
