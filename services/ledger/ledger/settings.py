"""Settings of the ledger service (env prefix `LEDGER_`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from backoffice.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", frozen=True, populate_by_name=True)

    service_name: str = "ledger"
    # Its relay publishes at most every 250 ms under a trickle: JournalEntryPosted ends the chain, no service here
    # waits for it, and each publication costs a produce request.
    outbox_min_cycle_ms: int = Field(250, ge=0, le=5000)
    port: int = 8004
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:55432/ledger",
        validation_alias=AliasChoices("LEDGER_DATABASE_URL", "DATABASE_URL"),
    )
    billing_url: str = "http://127.0.0.1:8003"  # LEDGER_BILLING_URL: where reconciliation asks billing
    billing_timeout_s: float = Field(3.0, gt=0)
    billing_attempts: int = Field(3, ge=1, le=10)
    billing_backoff_s: float = Field(0.2, ge=0)
