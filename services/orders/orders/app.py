"""Builds the orders service's app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from backoffice import events
from backoffice.consumer import Batched
from backoffice.service import ServiceSpec, create_service_app
from orders import api, fastpath, handlers
from orders.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service_app(
        ServiceSpec(
            settings=settings,
            routers=[api.router],
            migrations=Path(__file__).parent / "migrations",
            title="orders",
            description="Catalogue and stock, orders with atomic reservation, backorders, shipments and returns.",
            subscribes_to=("billing",),
            express={
                ("POST", "/orders"): fastpath.place_express,
                ("POST", "/orders/{order_id}/shipments"): fastpath.ship_express,
            },
            handlers={
                events.InvoiceIssued: Batched(handlers.on_invoices_issued),
                events.InvoicePaid: handlers.on_invoice_paid,
            },
        )
    )
