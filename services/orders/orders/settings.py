"""Settings of the orders service (env prefix `ORDERS_`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from backoffice.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore", frozen=True)

    service_name: str = "orders"
    # Its consumer gathers events for up to 200 ms a fetch: the billing state of its orders is shown, not acted on.
    consumer_gather_ms: int = Field(200, ge=0, le=5000)
    port: int = 8001
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:55432/orders",
        validation_alias=AliasChoices("ORDERS_DATABASE_URL", "DATABASE_URL"),
    )
    # In-stock orders arriving together are written in one transaction (`fastpath.GroupCommit`); off, each is
    # written by a statement of its own.
    group_commit: bool = True
    # Lingering (`fastpath._Writer`): a group transaction starts at most every `group_linger_ms` unless `group_fill`
    # writes are waiting. Off (0) by default: each group is written as soon as the last one is done, and a request
    # never waits for others. On a host short of CPU it trades latency for CPU: see the `_Writer`'s documentation.
    group_linger_ms: float = Field(0.0, ge=0, le=100)
    group_fill: int = Field(8, ge=1, le=48)
