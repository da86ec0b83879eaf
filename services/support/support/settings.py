"""Settings of the support service (env prefix `SUPPORT_`)."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from backoffice.settings import ServiceSettings

PRIORITIES = ("low", "normal", "high", "urgent")


class SlaTarget(BaseModel):
    """Targets of one priority, in minutes of running clock (pauses excluded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_response_minutes: int = Field(gt=0, le=525_600)
    resolution_minutes: int = Field(gt=0, le=525_600)


DEFAULT_SLA_POLICY: dict[str, SlaTarget] = {
    "urgent": SlaTarget(first_response_minutes=60, resolution_minutes=4 * 60),
    "high": SlaTarget(first_response_minutes=4 * 60, resolution_minutes=24 * 60),
    "normal": SlaTarget(first_response_minutes=8 * 60, resolution_minutes=72 * 60),
    "low": SlaTarget(first_response_minutes=24 * 60, resolution_minutes=168 * 60),
}


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SUPPORT_", extra="ignore", frozen=True, populate_by_name=True)

    service_name: str = "support"
    # Its consumer gathers events for up to 200 ms a fetch: its timelines and customer links are read by people,
    # and none of it is on the way from an order to its journal entry.
    consumer_gather_ms: int = Field(200, ge=0, le=5000)
    # Its relay publishes at most every 250 ms under a trickle: nothing waits on support's events (disputes pause
    # dunning, which runs on a timer).
    outbox_min_cycle_ms: int = Field(250, ge=0, le=5000)
    port: int = 8002
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:55432/support",
        validation_alias=AliasChoices("SUPPORT_DATABASE_URL", "DATABASE_URL"),
    )
    # JSON in SUPPORT_SLA_POLICY, e.g. {"urgent": {"first_response_minutes": 30, "resolution_minutes": 120}};
    # priorities left out keep their defaults.
    sla_policy: dict[str, SlaTarget] = Field(default_factory=lambda: dict(DEFAULT_SLA_POLICY))
    sla_batch_size: int = Field(200, gt=0, le=5000)

    @field_validator("sla_policy", mode="before")
    @classmethod
    def _merge_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = set(value) - set(PRIORITIES)
        if unknown:
            raise ValueError(f"unknown priorities {sorted(unknown)}; expected {list(PRIORITIES)}")
        return {**DEFAULT_SLA_POLICY, **value}
