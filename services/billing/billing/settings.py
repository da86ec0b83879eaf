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
    tax_rate_bps: int = Field(2000, ge=0, le=10000, description="Sales tax in basis points (2000 = 20 %)")
    default_payment_terms_days: int = Field(30, ge=0, le=365, description="Net days for customers without terms")
