"""Settings of the billing service (env prefix `BILLING_`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from backoffice.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore", frozen=True)

    service_name: str = "billing"
    port: int = 8003
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:55432/billing",
        validation_alias=AliasChoices("BILLING_DATABASE_URL", "DATABASE_URL"),
    )
