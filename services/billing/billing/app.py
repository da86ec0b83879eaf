"""Builds the billing service's app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from backoffice.service import ServiceSpec, create_service_app
from billing import api, api_payables, api_reports, handlers, jobs
from billing.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service_app(
        ServiceSpec(
            settings=settings,
            routers=[api.router, api_payables.router, api_reports.router],
            migrations=Path(__file__).parent / "migrations",
            title="billing",
            description="Receivables (invoices, cash application, credit notes, dunning, aging) and payables.",
            subscribes_to=("orders", "support"),
            handlers=handlers.build(settings),
            jobs={"dunning": jobs.dunning_timer},
        )
    )
