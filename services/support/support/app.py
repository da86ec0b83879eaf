"""Builds the support service's app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from backoffice.service import ServiceSpec, create_service_app
from support.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service_app(
        ServiceSpec(
            settings=settings,
            routers=[],
            migrations=Path(__file__).parent / "migrations",
            title="support",
        )
    )
