"""Ticket rules (pure): the status machine, messages, SLA clocks, disputes and the trouble that opens tickets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from backoffice import events
from backoffice.errors import Conflict, Forbidden
from support.settings import SlaTarget
from support.sla import Clock, ClockName, new_clock

Status = Literal["new", "open", "pending", "resolved", "closed"]
Priority = Literal["low", "normal", "high", "urgent"]
Visibility = Literal["public", "internal"]
AuthorKind = Literal["customer", "agent", "system"]

TRANSITIONS: Mapping[str, frozenset[str]] = {
    "new": frozenset({"open", "pending", "resolved", "closed"}),
    "open": frozenset({"pending", "resolved", "closed"}),
    "pending": frozenset({"open", "resolved", "closed"}),
    "resolved": frozenset({"open", "closed"}),
    "closed": frozenset(),
}
WORKING: frozenset[str] = frozenset({"new", "open"})  # the SLA clocks run only here
UNRESOLVED: frozenset[str] = frozenset({"new", "open", "pending"})  # "open for" a linked order or invoice
ENDS_DISPUTES: frozenset[str] = frozenset({"resolved", "closed"})
MESSAGES_SHOWN = 500  # messages embedded in a ticket; the full list is paginated


@dataclass(frozen=True)
class Draft:
    customer_id: str
    subject: str
    description: str
    priority: Priority
    category: str | None = None
    order_id: str | None = None
    invoice_id: str | None = None
    source: str = "agent"


@dataclass(frozen=True)
class Ticket:
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
    first_response: Clock
    resolution: Clock
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None

    @property
    def breached(self) -> bool:
        return self.first_response.breached_at is not None or self.resolution.breached_at is not None

    def clock(self, name: ClockName) -> Clock:
        return self.first_response if name == "first_response" else self.resolution


@dataclass(frozen=True)
class Message:
    id: str
    ticket_id: str
    author: str
    author_kind: AuthorKind
    visibility: Visibility
    body: str
    created_at: datetime


@dataclass(frozen=True)
class Dispute:
    id: str
    ticket_id: str
    customer_id: str
    invoice_id: str
    reason: str
    opened_at: datetime
    status: Literal["open", "resolved"] = "open"
    outcome: str | None = None
    resolved_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """What a command did: the ticket after it, what else changed, and the events it caused."""

    ticket: Ticket
    events: list[events.Event] = field(default_factory=list)
    disputes: list[Dispute] = field(default_factory=list)


def _state_event(cls: type[events._TicketState], ticket: Ticket, previous: str | None, at: datetime) -> events.Event:
    return cls(
        ticket_id=ticket.id,
        customer_id=ticket.customer_id,
        status=ticket.status,
        priority=ticket.priority,
        subject=ticket.subject,
        previous_status=previous,
        order_id=ticket.order_id,
        invoice_id=ticket.invoice_id,
        occurred_at=at,
    )


def _clocks(ticket: Ticket, at: datetime) -> Ticket:
    """Run or pause each clock as the ticket's state now says."""
    working = ticket.status in WORKING
    return replace(
        ticket,
        first_response=ticket.first_response.run_if(working and ticket.first_response_at is None, at),
        resolution=ticket.resolution.run_if(working, at),
    )


def open_ticket(draft: Draft, *, ticket_id: str, policy: Mapping[str, SlaTarget], at: datetime) -> Outcome:
    """A new ticket with both clocks running; `TicketOpened`."""
    target = policy[draft.priority]
    ticket = Ticket(
        id=ticket_id,
        customer_id=draft.customer_id,
        subject=draft.subject,
        description=draft.description,
        priority=draft.priority,
        category=draft.category,
        status="new",
        assignee=None,
        order_id=draft.order_id,
        invoice_id=draft.invoice_id,
        source=draft.source,
        created_at=at,
        updated_at=at,
        first_response=new_clock(timedelta(minutes=target.first_response_minutes), at=at),
        resolution=new_clock(timedelta(minutes=target.resolution_minutes), at=at),
    )
    return Outcome(ticket, [_state_event(events.TicketOpened, ticket, None, at)])


def _move(ticket: Ticket, to: str, at: datetime) -> Outcome:
    """Apply a legal move; the caller has checked it. `TicketResolved` for a resolution, else `TicketStatusChanged`."""
    moved = replace(
        ticket,
        status=to,
        updated_at=at,
        resolved_at=at if to == "resolved" else (None if to in UNRESOLVED else ticket.resolved_at),
        closed_at=at if to == "closed" else ticket.closed_at,
    )
    moved = _clocks(moved, at)
    cls = events.TicketResolved if to == "resolved" else events.TicketStatusChanged
    return Outcome(moved, [_state_event(cls, moved, ticket.status, at)])


def change_status(
    ticket: Ticket,
    to: str,
    *,
    at: datetime,
    open_disputes: Sequence[Dispute] = (),
    outcome: str | None = None,
) -> Outcome:
    """Move the ticket to `to` (409 when the status machine forbids it); resolving or closing ends its disputes."""
    if to == ticket.status:
        raise Conflict(f"ticket is already {to}")
    if to not in TRANSITIONS[ticket.status]:
        allowed = ", ".join(sorted(TRANSITIONS[ticket.status])) or "none: it is final"
        raise Conflict(
            f"a {ticket.status} ticket cannot become {to} (allowed: {allowed})", current_status=ticket.status
        )
    moved = _move(ticket, to, at)
    if to not in ENDS_DISPUTES:
        return moved
    ended, ended_events = end_disputes(open_disputes, outcome=outcome or to, at=at)
    return Outcome(moved.ticket, moved.events + ended_events, ended)


def end_disputes(
    disputes: Sequence[Dispute], *, outcome: str, at: datetime
) -> tuple[list[Dispute], list[events.Event]]:
    ended = [replace(d, status="resolved", outcome=outcome, resolved_at=at) for d in disputes if d.status == "open"]
    return ended, [
        events.DisputeResolved(
            ticket_id=d.ticket_id, customer_id=d.customer_id, invoice_id=d.invoice_id, outcome=outcome, resolved_at=at
        )
        for d in ended
    ]


def add_message(
    ticket: Ticket, *, author: str, kind: AuthorKind, visibility: Visibility, body: str, message_id: str, at: datetime
) -> tuple[Message, Outcome]:
    """Record a reply or note: an agent's first public reply meets the first-response SLA and opens a new ticket;
    a customer's reply brings a pending or resolved ticket back to open."""
    if ticket.status == "closed":
        raise Conflict("a closed ticket takes no more messages; open a new ticket")
    if kind == "customer" and visibility != "public":
        raise Forbidden("customers cannot write internal notes")
    message = Message(message_id, ticket.id, author, kind, visibility, body, at)
    updated = replace(ticket, updated_at=at)
    if kind == "agent" and visibility == "public":
        if updated.first_response_at is None:
            updated = _clocks(replace(updated, first_response_at=at), at)
        if updated.status == "new":
            return message, _move(updated, "open", at)
    if kind == "customer" and updated.status in {"pending", "resolved"}:
        return message, _move(updated, "open", at)
    return message, Outcome(updated)


def assign(ticket: Ticket, *, agent: str, at: datetime) -> Ticket:
    if ticket.status == "closed":
        raise Conflict("a closed ticket cannot be assigned")
    if ticket.assignee == agent:
        return ticket
    return replace(ticket, assignee=agent, updated_at=at)


def open_dispute(
    ticket: Ticket, *, invoice_id: str, reason: str, dispute_id: str, at: datetime, open_disputes: Sequence[Dispute]
) -> tuple[Dispute, Outcome]:
    """A dispute of an invoice on an unresolved ticket; links the ticket to that invoice if it has none."""
    if ticket.status not in UNRESOLVED:
        raise Conflict(f"a {ticket.status} ticket cannot open a dispute; reopen it or open a new ticket")
    if any(d.status == "open" for d in open_disputes):
        raise Conflict("this ticket already has an open dispute")
    dispute = Dispute(dispute_id, ticket.id, ticket.customer_id, invoice_id, reason, at)
    linked = replace(ticket, invoice_id=ticket.invoice_id or invoice_id, updated_at=at)
    event = events.DisputeOpened(
        ticket_id=ticket.id, customer_id=ticket.customer_id, invoice_id=invoice_id, reason=reason, opened_at=at
    )
    return dispute, Outcome(linked, [event])


def sla_breaches(ticket: Ticket, *, as_of: datetime) -> Outcome:
    """Flag each clock past its target at `as_of` and not yet reported: one `TicketSLABreached` per clock, ever."""
    found: list[events.Event] = []
    clocks: dict[ClockName, Clock] = {"first_response": ticket.first_response, "resolution": ticket.resolution}
    for name, clock in clocks.items():
        if not clock.is_breached(as_of):
            continue
        clocks[name] = replace(clock, breached_at=as_of)
        found.append(
            events.TicketSLABreached(
                ticket_id=ticket.id,
                customer_id=ticket.customer_id,
                priority=ticket.priority,
                clock=name,
                due_at=clock.due_at or (ticket.created_at + clock.target),
                breached_at=as_of,
            )
        )
    updated = replace(ticket, first_response=clocks["first_response"], resolution=clocks["resolution"])
    return Outcome(updated, found)


# --- trouble heard on the topics ---------------------------------------------------------------


@dataclass(frozen=True)
class Trouble:
    """A signal that should open a ticket, or add to the one already open for the same order or invoice."""

    ref: str
    link: Literal["order", "invoice"]
    link_id: str
    draft: Draft
    note: str


def trouble_from(event: events.Event) -> Trouble | None:
    """The trouble an event signals: a return, or an invoice at dunning level 2 or more. The ticket's description
    is what the customer may read; the note, for agents only, says what happened."""
    if isinstance(event, events.OrderReturned):
        items = sum(line.quantity for line in event.lines)
        why = f" Reason given: {event.reason}." if event.reason else ""
        draft = Draft(
            customer_id=event.customer_id,
            subject=f"Your return on order {event.order_id}",
            description=f"We received your return of {items} item(s) from order {event.order_id}.{why}",
            priority="normal",
            category="returns",
            order_id=event.order_id,
            source="orders",
        )
        note = (
            f"OrderReturned {event.return_id}: {items} item(s), {money(event.subtotal_minor, event.currency)},"
            f" restocked: {'yes' if event.restocked else 'no'}.{why} Check the refund and the customer's experience."
        )
        return Trouble(f"return:{event.return_id}", "order", event.order_id, draft, note)
    if isinstance(event, events.InvoiceOverdue) and event.dunning_level >= 2:
        balance = money(event.balance_minor, event.currency)
        draft = Draft(
            customer_id=event.customer_id,
            subject=f"Invoice {event.invoice_id} is overdue",
            description=f"Invoice {event.invoice_id} is {event.days_overdue} days past due with {balance} open.",
            priority="urgent" if event.dunning_level >= 3 else "high",
            category="billing",
            order_id=event.order_id,
            invoice_id=event.invoice_id,
            source="billing",
        )
        note = (
            f"InvoiceOverdue at dunning level {event.dunning_level}: {event.days_overdue} days past due,"
            f" {balance} open. Reach out before collections escalate."
        )
        return Trouble(f"overdue:{event.invoice_id}:{event.dunning_level}", "invoice", event.invoice_id, draft, note)
    return None


_ZERO_DECIMAL = frozenset({"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV"})
_THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})


def money(minor: int, currency: str) -> str:
    """Minor units as text with the currency's decimals (`1234 EUR` -> `12.34 EUR`), without floats."""
    places = 0 if currency in _ZERO_DECIMAL else 3 if currency in _THREE_DECIMAL else 2
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**places)
    return f"{sign}{whole}.{frac:0{places}d} {currency}" if places else f"{sign}{whole} {currency}"
