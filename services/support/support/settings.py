"""Settings of the support service (env prefix `SUPPORT_`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from backoffice.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SUPPORT_", extra="ignore", frozen=True)

    service_name: str = "support"
    port: int = 8002
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:55432/support",
        validation_alias=AliasChoices("SUPPORT_DATABASE_URL", "DATABASE_URL"),
    )
