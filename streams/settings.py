"""The one settings object: `STACKSTREAM_*` environment variables over an optional file.

The file is YAML or TOML, named by `STACKSTREAM_SETTINGS_FILE` (default `stackstream.yaml` in
the working directory when it exists). Every default runs against the local stack.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE_VARIABLE = "STACKSTREAM_SETTINGS_FILE"


def _settings_file() -> Path | None:
    named = os.environ.get(SETTINGS_FILE_VARIABLE)
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"{SETTINGS_FILE_VARIABLE} names {path}, which does not exist")
        return path
    default = Path.cwd() / "stackstream.yaml"
    return default if default.is_file() else None


class Settings(BaseSettings):
    """Addresses, ports, folders and processing options of one stackstream deployment."""

    model_config = SettingsConfigDict(env_prefix="STACKSTREAM_", extra="forbid")

    # Where the servers are; empty means the local stack's ports below. Set these to use
    # servers stackstream did not start.
    kafka: str = ""
    elasticsearch: str = ""
    cassandra: str = ""
    cassandra_datacenter: str = "datacenter1"

    # The worker.
    app_id: str = "stackstream"
    domains: str = Field(
        default="",
        description="comma-separated domains this worker runs (e.g. 'bus,metrics'); empty: all",
    )
    topic_prefix: str = Field(
        default="", description="prepended to every topic name: isolates tests and tenants"
    )
    topology_file: Path = PROJECT_ROOT / "topology.yaml"
    schemas_dir: Path = PROJECT_ROOT / "schemas"
    data_dir: Path = Path.home() / ".local" / "share" / "stackstream" / "worker"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    table_store: Literal["rocksdb", "memory"] = "rocksdb"
    elasticsearch_index_prefix: str = "stackstream"
    cassandra_keyspace: str = "stackstream"

    # Log governance: fallbacks for apps whose config-centre namespace sets no rule.
    logs_min_level: str = "WARN"
    logs_quota_per_minute: int = 6000
    logs_sample_every: int = Field(default=100, description="past the quota keep 1 line in N")
    logs_max_line_bytes: int = 16384
    logs_config_namespace: str = "stackstream.logging"
    logs_config_cluster: str = "default"
    logs_mask_default_secrets: bool = True
    logs_secret_patterns: str = Field(
        default="", description="extra regexes masking secrets, one per line (group 'secret')"
    )

    # The registry (Eureka-compatible). Eureka's own defaults are in docs/registry.md.
    registry_eviction_interval_s: float = Field(
        default=1.0, gt=0, description="how often a partition owner looks for expired leases"
    )
    registry_self_preservation: bool = True
    registry_renewal_percent_threshold: float = Field(default=0.85, gt=0, le=1)
    registry_expected_renewal_interval_s: int = Field(default=30, gt=0)
    registry_renewal_rate_window_s: float = Field(
        default=60.0, gt=0, description="renewals are counted per window (Eureka: one minute)"
    )
    registry_threshold_update_interval_s: float = Field(default=900.0, gt=0)
    registry_delta_retention_s: float = Field(default=180.0, gt=0)
    registry_read_your_writes_timeout_s: float = Field(
        default=1.0, ge=0, description="how long a write waits to see itself in this worker's table"
    )
    registry_lease_flush_interval_s: float = Field(
        default=0.25,
        ge=0,
        description="renewals are written to registry.leases at most this often per partition",
    )
    config_admin_token: str = Field(
        default="stackstream-local-admin",
        description="bearer token of the config admin API (until OAuth2 scopes replace it)",
    )
    config_long_poll_seconds: float = Field(
        default=60.0, gt=0, le=90, description="how long /notifications/v2 holds a request"
    )

    # Metrics (KairosDB-compatible).
    metrics_telnet_port: int = Field(
        default=4242, ge=0, description="telnet `put` port (KairosDB: 4242); 0 turns it off"
    )
    metrics_telnet_max_line_bytes: int = Field(default=8192, gt=0)
    metrics_max_request_bytes: int = Field(
        default=32 * 2**20, gt=0, description="largest POST /api/v1/datapoints body, after gunzip"
    )
    metrics_raw_retention_s: int = Field(
        default=30 * 86400, ge=0, description="TTL of raw points without their own ttl; 0: forever"
    )
    metrics_series_limit: int = Field(
        default=10_000, gt=0, description="distinct tag sets per metric before new ones are refused"
    )
    metrics_rollup_grace_s: float = Field(
        default=60.0, ge=0, description="how far behind the newest point a minute stays open"
    )
    metrics_query_cache_mb: int = Field(
        default=256, ge=0, description="decoded rollup hours kept for queries (MiB); 0: none"
    )

    # Tracing (CAT reports; docs/tracing.md). Problem thresholds: CAT's defaults, overridable
    # per domain as JSON, e.g. {"shop": {"long_url": [500, 1000], "long_sql": [50]}}.
    tracing_grace_s: float = Field(
        default=10.0, ge=0, description="how far behind the newest root time a minute stays open"
    )
    tracing_keep_closed_s: float = Field(
        default=3600.0, ge=0, description="how long a closed minute stays in memory for late trees"
    )
    tracing_problem_thresholds: str = Field(
        default="", description="JSON: per domain, long-* thresholds in ms replacing CAT's"
    )
    tracing_problem_samples: int = Field(
        default=5, ge=0, description="sample message ids kept per problem row"
    )
    tracing_logview_sample_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="share of call chains without failure or problem kept for logview",
    )
    tracing_hour_flush_s: float = Field(
        default=10.0,
        ge=0,
        description="while the report agent is behind the log, an open hour's changed rows "
        "are written at most this often (wall clock); at once when it has caught up, the hour "
        "ends or a minute is amended",
    )
    tracing_idle_close_s: float = Field(
        default=30.0,
        ge=0,
        description="a partition without new trees for this long (wall clock) takes the wall "
        "clock as its event time, so its last minutes close; 0 turns it off",
    )
    tracing_report_recheck_s: float = Field(
        default=1.0,
        ge=0,
        description="a cached report answer is checked against the minute index when it was "
        "last checked longer ago than this",
    )

    # The local stack (`stackstream dev`).
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "stackstream",
        description="downloaded server artifacts; the second start needs no registry",
    )
    stack_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "stackstream" / "stack",
        description="data and log folders of the local servers",
    )
    kafka_version: str = "3.9.1"
    elasticsearch_version: str = "8.19.7"
    cassandra_version: str = "5.0.6"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    elasticsearch_port: int = 19200
    elasticsearch_transport_port: int = 19300
    cassandra_port: int = 19042
    cassandra_storage_port: int = 17000
    kafka_heap: str = "1g"
    elasticsearch_heap: str = "768m"
    cassandra_heap: str = "1g"
    elasticsearch_user: str = "stackstream-es"
    start_timeout_seconds: float = 240.0

    @model_validator(mode="after")
    def _addresses_default_to_the_local_stack(self) -> Settings:
        if not self.kafka:
            self.kafka = f"127.0.0.1:{self.kafka_port}"
        if not self.elasticsearch:
            self.elasticsearch = f"http://127.0.0.1:{self.elasticsearch_port}"
        if not self.cassandra:
            self.cassandra = f"127.0.0.1:{self.cassandra_port}"
        return self

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix_is_legal(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("topic_prefix may hold only letters, digits, '.', '_' and '-'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _settings_file()
        if path is not None:
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def environment(self) -> dict[str, str]:
        """These settings as `STACKSTREAM_*` variables, for a worker started as a child process."""
        return {
            f"STACKSTREAM_{name.upper()}": str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    @property
    def domain_names(self) -> list[str]:
        return [name.strip() for name in self.domains.split(",") if name.strip()]

    @property
    def kafka_bootstrap(self) -> list[str]:
        return [address.strip() for address in self.kafka.split(",") if address.strip()]

    @property
    def cassandra_contact_points(self) -> list[tuple[str, int]]:
        points = []
        for address in self.cassandra.split(","):
            host, _, port = address.strip().rpartition(":")
            points.append((host or address.strip(), int(port) if port.isdigit() else 9042))
        return points


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
