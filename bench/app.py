"""The bare baseline of `http_place_order`: FastAPI + asyncpg inserting one row, with the services' pool settings.

No auth, no idempotency key, no reservation, no outbox: what any endpoint that writes one row costs on this
machine. Started by the bench with the same uvicorn command line as the services.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from pydantic import BaseModel

from backoffice.responses import JSON
from backoffice.settings import ServiceSettings


class Line(BaseModel):
    sku: str
    quantity: int


class PlaceOrder(BaseModel):
    customer_id: str
    currency: str
    lines: list[Line]
    shipping_address: str | dict[str, str]


def create_app() -> FastAPI:
    defaults = ServiceSettings()  # the same pool bounds the services use

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            os.environ["BASELINE_DATABASE_URL"], min_size=defaults.db_pool_min, max_size=defaults.db_pool_max
        )
        assert pool is not None
        await pool.execute(
            "CREATE TABLE IF NOT EXISTS rows (id uuid PRIMARY KEY, customer_id text NOT NULL,"
            " currency text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
        app.state.pool = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan, default_response_class=JSON)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/orders", status_code=201)
    async def insert_row(body: PlaceOrder, request: Request) -> dict[str, str]:
        row_id = uuid.uuid4()
        await request.app.state.pool.execute(
            "INSERT INTO rows (id, customer_id, currency) VALUES ($1, $2, $3)", row_id, body.customer_id, body.currency
        )
        return {"id": str(row_id), "status": "confirmed"}

    return app
