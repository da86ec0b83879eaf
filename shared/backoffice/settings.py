"""The settings every service has; each service subclasses with its own env prefix (ORDERS_, BILLING_, ...)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-secret-change-me-in-production-0123456789"


class ServiceSettings(BaseSettings):
    """Settings read from the environment; `KAFKA_*`, `BACKOFFICE_*` and `OTEL_*` names are shared by all services."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "postgresql://postgres@127.0.0.1:55432/postgres"
    db_pool_min: int = 2
    db_pool_max: int = 10
    auto_migrate: bool = True
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    topic_prefix: str = Field("", validation_alias="BACKOFFICE_TOPIC_PREFIX")
    jwt_secret: SecretStr = Field(SecretStr(DEV_JWT_SECRET), validation_alias="BACKOFFICE_JWT_SECRET")
    jwks_url: str | None = Field(None, validation_alias="BACKOFFICE_JWKS_URL")
    cors_origins: list[str] = Field(default_factory=list)
    otlp_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    log_level: str = "INFO"
    consumer_batch_size: int = 500
    consumer_commit_interval_s: float = 0.5
    # How long the broker may hold the consumer's fetch to gather more events (0: each is handed over at once).
    # Every fetch answered costs the broker, this process and the database (a transaction) about the same whatever
    # it holds; a service whose consumer is on no one's critical path gathers (see each service's default).
    consumer_gather_ms: int = Field(0, ge=0, le=5000)
    outbox_batch_size: int = 500
    outbox_poll_interval_s: float = 1.0
    # Under a steady trickle of writes, the relay publishes at most once per this many ms (a write after a quiet
    # spell goes at once): each publication is a produce request, and a fetch and a transaction in every consumer.
    outbox_min_cycle_ms: int = Field(50, ge=0, le=5000)
    job_interval_s: float = 60.0
    readiness_timeout_s: float = 2.0

    @property
    def consumer_group(self) -> str:
        return f"{self.topic_prefix}{self.service_name}"
