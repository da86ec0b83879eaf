"""Builds the ledger service's app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from backoffice.service import ServiceSpec, create_service_app
from ledger import api, handlers, reports
from ledger.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service_app(
        ServiceSpec(
            settings=settings,
            routers=[api.router, reports.router],
            migrations=Path(__file__).parent / "migrations",
            title="ledger",
            description="Double-entry books fed by billing events: accounts, journal entries, balances and reports.",
            subscribes_to=("billing",),
            handlers=handlers.HANDLERS,
        )
    )
