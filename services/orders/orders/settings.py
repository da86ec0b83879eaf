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
