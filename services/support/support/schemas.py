"""Request and response models of the support API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from support import domain, sla, timeline

# Not all blank, and taken as sent, so the length limits are the ones the document shows.
Text = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"\S")]
CustomerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$")]
Priority = Literal["low", "normal", "high", "urgent"]
Status = Literal["new", "open", "pending", "resolved", "closed"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenTicket(_In):
    customer_id: CustomerId
    subject: Annotated[Text, StringConstraints(max_length=200)]
    description: Annotated[Text, StringConstraints(max_length=20_000)]
    priority: Priority = "normal"
    category: Annotated[Text, StringConstraints(max_length=50)] | None = None
    order_id: uuid.UUID | None = None
    invoice_id: uuid.UUID | None = None


class PostMessage(_In):
    body: Annotated[Text, StringConstraints(max_length=20_000)]
    visibility: Literal["public", "internal"] = "public"


class Assign(_In):
    agent: Name


class ChangeStatus(_In):
    status: Status
    note: Annotated[Text, StringConstraints(max_length=5_000)] | None = Field(
        None, description="Kept as an internal note on the ticket"
    )
    outcome: Annotated[Text, StringConstraints(max_length=200)] | None = Field(
        None, description="The outcome of the ticket's open dispute, when resolving or closing it"
    )


class OpenDispute(_In):
    invoice_id: uuid.UUID
    reason: Annotated[Text, StringConstraints(max_length=2_000)]


# --- responses ---------------------------------------------------------------------------------


class ClockOut(BaseModel):
    target_minutes: int
    elapsed_minutes: int
    running: bool
    due_at: datetime | None
    breached_at: datetime | None

    @classmethod
    def of(cls, clock: sla.Clock, *, as_of: datetime) -> ClockOut:
        return cls(
            target_minutes=int(clock.target.total_seconds() // 60),
            elapsed_minutes=int(clock.elapsed_at(as_of).total_seconds() // 60),
            running=clock.running,
            due_at=clock.due_at if clock.running else None,
            breached_at=clock.breached_at,
        )


class SlaOut(BaseModel):
    first_response: ClockOut
    resolution: ClockOut
    breached: bool


class Message(BaseModel):
    id: str
    ticket_id: str
    author: str
    author_kind: str
    visibility: str
    body: str
    created_at: datetime

    @classmethod
    def of(cls, m: domain.Message) -> Message:
        return cls(
            id=m.id,
            ticket_id=m.ticket_id,
            author=m.author,
            author_kind=m.author_kind,
            visibility=m.visibility,
            body=m.body,
            created_at=m.created_at,
        )


class Dispute(BaseModel):
    id: str
    ticket_id: str
    invoice_id: str
    reason: str
    status: str
    outcome: str | None
    opened_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, d: domain.Dispute) -> Dispute:
        return cls(
            id=d.id,
            ticket_id=d.ticket_id,
            invoice_id=d.invoice_id,
            reason=d.reason,
            status=d.status,
            outcome=d.outcome,
            opened_at=d.opened_at,
            resolved_at=d.resolved_at,
        )


class Ticket(BaseModel):
    id: str
    customer_id: str
    subject: str
    description: str
    priority: str
    category: str | None
    status: str
    assignee: str | None
    order_id: str | None
    invoice_id: str | None
    source: str
    created_at: datetime
    updated_at: datetime
    first_response_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    breached: bool | None = Field(None, description="Any SLA clock breached (agents only)")
    sla: SlaOut | None = Field(None, description="The SLA clocks (agents only)")
    messages: list[Message] | None = Field(None, description="On a single ticket: the messages the caller may see")
    disputes: list[Dispute] | None = Field(None, description="On a single ticket: its disputes")

    @classmethod
    def of(
        cls,
        t: domain.Ticket,
        *,
        for_customer: bool,
        as_of: datetime,
        messages: list[domain.Message] | None = None,
        disputes: list[domain.Dispute] | None = None,
    ) -> Ticket:
        clocks = None
        if not for_customer:
            clocks = SlaOut(
                first_response=ClockOut.of(t.first_response, as_of=as_of),
                resolution=ClockOut.of(t.resolution, as_of=as_of),
                breached=t.breached,
            )
        visible = None
        if messages is not None:
            visible = [Message.of(m) for m in messages if not for_customer or m.visibility == "public"]
        return cls(
            id=t.id,
            customer_id=t.customer_id,
            subject=t.subject,
            description=t.description,
            priority=t.priority,
            category=t.category,
            status=t.status,
            assignee=t.assignee,
            order_id=t.order_id,
            invoice_id=t.invoice_id,
            source=t.source,
            created_at=t.created_at,
            updated_at=t.updated_at,
            first_response_at=t.first_response_at,
            resolved_at=t.resolved_at,
            closed_at=t.closed_at,
            breached=None if for_customer else t.breached,
            sla=clocks,
            messages=visible,
            disputes=[Dispute.of(d) for d in disputes] if disputes is not None else None,
        )


class TimelineItem(BaseModel):
    type: str = Field(description="The event's name, e.g. `OrderShipped`")
    occurred_at: datetime
    subject: str = Field(description="The id of what the event is about: order, invoice, payment, ticket")
    summary: str

    @classmethod
    def of(cls, item: timeline.Item) -> TimelineItem:
        return cls(type=item.type, occurred_at=item.occurred_at, subject=item.subject, summary=item.summary)


class Breach(BaseModel):
    ticket_id: str
    customer_id: str
    priority: str
    clock: str
    due_at: datetime
    breached_at: datetime


class SlaRun(BaseModel):
    as_of: datetime
    breaches: list[Breach]


class PriorityReport(BaseModel):
    priority: str
    tickets: int
    breached: int
    first_response_breached: int
    resolution_breached: int
    breach_rate_bp: int = Field(description="Tickets with any breach per 10,000 tickets")

    @classmethod
    def of(cls, s: sla.PriorityStats) -> PriorityReport:
        return cls(
            priority=s.priority,
            tickets=s.tickets,
            breached=s.breached,
            first_response_breached=s.first_response_breached,
            resolution_breached=s.resolution_breached,
            breach_rate_bp=s.breach_rate_bp,
        )


class SlaReport(BaseModel):
    created_from: datetime | None
    created_to: datetime | None
    priorities: list[PriorityReport]
    totals: PriorityReport
