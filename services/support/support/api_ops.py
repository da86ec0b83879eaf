"""Operations routes: the SLA job, the SLA report and the customer timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from backoffice import events
from backoffice.auth import Principal, require
from backoffice.errors import Unprocessable
from backoffice.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from support import jobs, schemas, sla, store
from support.settings import PRIORITIES, Settings

router = APIRouter(tags=["operations"])

Admin = Annotated[Principal, Depends(require("support:admin", staff_only=True))]
AgentReader = Annotated[Principal, Depends(require("support:read", staff_only=True))]
Reader = Annotated[Principal, Depends(require("support:read"))]
Moment = Annotated[events.Rfc3339 | None, Query(description="RFC 3339 with offset")]
CustomerPath = Annotated[str, Path(min_length=1, max_length=100)]


@router.post("/jobs/sla", response_model=schemas.SlaRun, summary="Report SLA breaches as of a moment (default now)")
async def run_sla_job(request: Request, principal: Admin, as_of: Moment = None) -> schemas.SlaRun:
    moment = as_of or events.now()
    settings: Settings = request.app.state.settings
    found = await jobs.run_sla(request.app.state.pool, as_of=moment, batch_size=settings.sla_batch_size)
    return schemas.SlaRun(
        as_of=moment,
        breaches=[
            schemas.Breach(
                ticket_id=e.ticket_id,
                customer_id=e.customer_id,
                priority=e.priority,
                clock=e.clock,
                due_at=e.due_at,
                breached_at=e.breached_at,
            )
            for e in found
        ],
    )


@router.get("/reports/sla", response_model=schemas.SlaReport, summary="SLA breach rate per priority")
async def sla_report(
    request: Request, principal: AgentReader, created_from: Moment = None, created_to: Moment = None
) -> schemas.SlaReport:
    if created_from and created_to and created_to <= created_from:
        raise Unprocessable("created_to must be after created_from", field="query.created_to")
    counts = await store.sla_counts(request.app.state.pool, created_from=created_from, created_to=created_to)
    rows = sla.complete_stats((sla.PriorityStats(*c) for c in counts), PRIORITIES)
    return schemas.SlaReport(
        created_from=created_from,
        created_to=created_to,
        priorities=[schemas.PriorityReport.of(r) for r in rows],
        totals=schemas.PriorityReport.of(sla.totals(rows)),
    )


def _timeline_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    values = decode_cursor(cursor)
    if values is None:
        return None
    try:
        moment, seq = values
        parsed = datetime.fromisoformat(moment)
    except (TypeError, ValueError) as exc:
        raise Unprocessable("cursor is not valid", field="query.cursor") from exc
    if not isinstance(seq, int) or parsed.tzinfo is None:
        raise Unprocessable("cursor is not valid", field="query.cursor")
    return parsed, seq


@router.get("/customers/{customer_id}/timeline", summary="A customer's story, newest first")
async def customer_timeline(
    customer_id: CustomerPath,
    request: Request,
    principal: Reader,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.TimelineItem]:
    principal.ensure_visible(customer_id, what="customer")
    rows = await store.list_timeline(
        request.app.state.pool, customer_id=customer_id, limit=limit + 1, before=_timeline_cursor(cursor)
    )
    items = [schemas.TimelineItem.of(item) for _, item in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return Page[schemas.TimelineItem](
        items=items, next_cursor=encode_cursor([last[1].occurred_at.isoformat(), last[0]]) if last else None
    )
