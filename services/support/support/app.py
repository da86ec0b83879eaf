"""Builds the support service's app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from backoffice.service import ServiceSpec, create_service_app
from support import api, api_ops, handlers, jobs
from support.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service_app(
        ServiceSpec(
            settings=settings,
            routers=[api.router, api_ops.router],
            migrations=Path(__file__).parent / "migrations",
            title="support",
            description="Tickets with SLAs, internal notes and disputes; the customer timeline.",
            subscribes_to=("orders", "billing", "support"),
            handlers=handlers.build(settings.sla_policy),
            jobs={"sla": jobs.sla_timer},
        )
    )
