"""Settings of the ledger service (env prefix `LEDGER_`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from backoffice.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", frozen=True)

    service_name: str = "ledger"
    port: int = 8004
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:55432/ledger",
        validation_alias=AliasChoices("LEDGER_DATABASE_URL", "DATABASE_URL"),
    )
