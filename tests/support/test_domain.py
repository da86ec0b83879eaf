"""Pure rules of support: the status machine, messages, SLA clock arithmetic with pauses, disputes, trouble."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backoffice import events
from backoffice.envelope import Envelope
from backoffice.errors import Conflict, Forbidden
from support import domain, sla, timeline
from support.settings import DEFAULT_SLA_POLICY

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)


def ticket(priority: domain.Priority = "urgent", at: datetime = T0) -> domain.Ticket:
    draft = domain.Draft(customer_id="c1", subject="Broken", description="It broke", priority=priority)
    return domain.open_ticket(draft, ticket_id="t1", policy=DEFAULT_SLA_POLICY, at=at).ticket


def move(t: domain.Ticket, to: str, at: datetime) -> domain.Ticket:
    return domain.change_status(t, to, at=at).ticket


def reply(
    t: domain.Ticket, kind: domain.AuthorKind, at: datetime, visibility: domain.Visibility = "public"
) -> domain.Outcome:
    _, outcome = domain.add_message(t, author="x", kind=kind, visibility=visibility, body="hi", message_id="m", at=at)
    return outcome


class TestStatusMachine:
    @pytest.mark.parametrize(
        ("start", "to"),
        [
            ("new", "open"),
            ("new", "pending"),
            ("new", "resolved"),
            ("new", "closed"),
            ("open", "pending"),
            ("open", "resolved"),
            ("pending", "open"),
            ("pending", "closed"),
            ("resolved", "open"),
            ("resolved", "closed"),
        ],
    )
    def test_legal_moves(self, start: str, to: str) -> None:
        t = ticket() if start == "new" else move(ticket(), start, T0)
        assert move(t, to, T0 + H).status == to

    @pytest.mark.parametrize(
        ("start", "to"),
        [("open", "new"), ("pending", "new"), ("resolved", "pending"), ("closed", "open"), ("closed", "resolved")],
    )
    def test_illegal_moves_are_conflicts(self, start: str, to: str) -> None:
        t = move(ticket(), start, T0)
        with pytest.raises(Conflict, match=f"cannot become {to}"):
            domain.change_status(t, to, at=T0 + H)

    def test_same_status_is_a_conflict(self) -> None:
        with pytest.raises(Conflict, match="already new"):
            domain.change_status(ticket(), "new", at=T0)

    def test_opening_emits_ticket_opened(self) -> None:
        draft = domain.Draft(customer_id="c1", subject="S", description="D", priority="low", order_id="o1")
        outcome = domain.open_ticket(draft, ticket_id="t9", policy=DEFAULT_SLA_POLICY, at=T0)
        (event,) = outcome.events
        assert isinstance(event, events.TicketOpened)
        assert (event.ticket_id, event.status, event.priority, event.order_id) == ("t9", "new", "low", "o1")

    def test_resolving_emits_ticket_resolved_and_other_moves_status_changed(self) -> None:
        resolved = domain.change_status(ticket(), "resolved", at=T0 + H)
        assert [type(e) for e in resolved.events] == [events.TicketResolved]
        assert resolved.ticket.resolved_at == T0 + H
        pending = domain.change_status(ticket(), "pending", at=T0 + H)
        (changed,) = pending.events
        assert isinstance(changed, events.TicketStatusChanged)
        assert (changed.previous_status, changed.status) == ("new", "pending")

    def test_reopening_clears_the_resolution_time(self) -> None:
        t = move(move(ticket(), "resolved", T0 + H), "open", T0 + 2 * H)
        assert t.resolved_at is None


class TestMessages:
    def test_first_public_agent_reply_meets_first_response_and_opens(self) -> None:
        outcome = reply(ticket(), "agent", T0 + 10 * M)
        assert outcome.ticket.first_response_at == T0 + 10 * M
        assert outcome.ticket.status == "open"
        assert not outcome.ticket.first_response.running
        assert outcome.ticket.first_response.elapsed == 10 * M
        assert [type(e) for e in outcome.events] == [events.TicketStatusChanged]

    def test_internal_note_meets_nothing(self) -> None:
        outcome = reply(ticket(), "agent", T0 + 10 * M, visibility="internal")
        assert outcome.ticket.first_response_at is None
        assert outcome.ticket.status == "new"
        assert outcome.events == []

    def test_customer_reply_reopens_a_resolved_ticket(self) -> None:
        resolved = move(ticket(), "resolved", T0 + H)
        outcome = reply(resolved, "customer", T0 + 2 * H)
        assert outcome.ticket.status == "open"
        (event,) = outcome.events
        assert isinstance(event, events.TicketStatusChanged)
        assert event.previous_status == "resolved"

    def test_customer_reply_brings_pending_back_to_open(self) -> None:
        assert reply(move(ticket(), "pending", T0), "customer", T0 + H).ticket.status == "open"

    def test_customer_cannot_write_internal_notes(self) -> None:
        with pytest.raises(Forbidden):
            reply(ticket(), "customer", T0, visibility="internal")

    def test_closed_ticket_takes_no_messages(self) -> None:
        with pytest.raises(Conflict, match="closed"):
            reply(move(ticket(), "closed", T0), "customer", T0 + H)


class TestClock:
    def test_elapsed_counts_only_running_time(self) -> None:
        clock = sla.new_clock(H, at=T0).paused(T0 + 20 * M).started(T0 + 2 * H)
        assert clock.elapsed_at(T0 + 2 * H + 30 * M) == 50 * M
        assert clock.due_at == T0 + 2 * H + 40 * M

    def test_paused_clock_does_not_move(self) -> None:
        clock = sla.new_clock(H, at=T0).paused(T0 + 20 * M)
        assert clock.elapsed_at(T0 + 100 * H) == 20 * M
        assert not clock.is_breached(T0 + 100 * H)

    def test_as_of_before_the_start_adds_nothing(self) -> None:
        assert sla.new_clock(H, at=T0).elapsed_at(T0 - H) == timedelta(0)

    def test_breach_needs_more_than_the_target(self) -> None:
        clock = sla.new_clock(H, at=T0)
        assert not clock.is_breached(T0 + H)
        assert clock.is_breached(T0 + H + timedelta(seconds=1))


class TestSlaOnTickets:
    def test_pending_pauses_both_clocks(self) -> None:
        t = move(ticket("urgent"), "pending", T0 + 30 * M)  # urgent: 1 h first response, 4 h resolution
        t = move(t, "open", T0 + 10 * H)
        assert domain.sla_breaches(t, as_of=T0 + 10 * H + 29 * M).events == []
        breached = domain.sla_breaches(t, as_of=T0 + 10 * H + 31 * M)
        (event,) = breached.events
        assert isinstance(event, events.TicketSLABreached)
        assert event.clock == "first_response"
        assert event.due_at == T0 + 10 * H + 30 * M
        assert event.breached_at == T0 + 10 * H + 31 * M

    def test_each_clock_is_reported_once(self) -> None:
        first = domain.sla_breaches(ticket("urgent"), as_of=T0 + 5 * H)
        assert sorted(e.clock for e in first.events if isinstance(e, events.TicketSLABreached)) == [
            "first_response",
            "resolution",
        ]
        assert first.ticket.breached
        assert domain.sla_breaches(first.ticket, as_of=T0 + 50 * H).events == []

    def test_a_late_first_response_is_still_a_breach(self) -> None:
        late = reply(ticket("urgent"), "agent", T0 + 2 * H).ticket
        (event,) = domain.sla_breaches(late, as_of=T0 + 2 * H + M).events
        assert isinstance(event, events.TicketSLABreached)
        assert event.clock == "first_response"
        assert event.due_at == T0 + H

    def test_a_timely_answer_stops_the_first_response_clock(self) -> None:
        answered = reply(ticket("urgent"), "agent", T0 + 30 * M).ticket
        breaches = domain.sla_breaches(answered, as_of=T0 + 3 * H).events
        assert breaches == []

    def test_resolution_stops_the_clock_and_reopening_resumes_it(self) -> None:
        t = reply(ticket("urgent"), "agent", T0 + 10 * M).ticket
        t = move(t, "resolved", T0 + 3 * H)
        assert domain.sla_breaches(t, as_of=T0 + 100 * H).events == []
        t = reply(t, "customer", T0 + 100 * H).ticket
        assert t.status == "open"
        assert domain.sla_breaches(t, as_of=T0 + 100 * H + 59 * M).events == []
        (event,) = domain.sla_breaches(t, as_of=T0 + 101 * H + M).events
        assert isinstance(event, events.TicketSLABreached)
        assert event.clock == "resolution"

    def test_targets_follow_the_priority_policy(self) -> None:
        low = ticket("low")
        assert low.first_response.target == 24 * H
        assert low.resolution.target == 168 * H

    def test_breach_rate_in_basis_points(self) -> None:
        assert sla.PriorityStats("low", 3, 1, 0, 1).breach_rate_bp == 3333
        assert sla.PriorityStats("low", 3, 2, 0, 2).breach_rate_bp == 6667
        assert sla.PriorityStats("low", 0, 0, 0, 0).breach_rate_bp == 0
        rows = sla.complete_stats([sla.PriorityStats("high", 2, 1, 1, 1)], ["low", "high"])
        assert [(r.priority, r.tickets) for r in rows] == [("low", 0), ("high", 2)]
        assert sla.totals(rows).breached == 1


class TestDisputes:
    def test_opening_links_the_invoice_and_resolving_ends_it_with_an_outcome(self) -> None:
        dispute, opened = domain.open_dispute(
            ticket(), invoice_id="inv1", reason="Charged twice", dispute_id="d1", at=T0, open_disputes=[]
        )
        assert opened.ticket.invoice_id == "inv1"
        (event,) = opened.events
        assert isinstance(event, events.DisputeOpened)
        assert (event.invoice_id, event.reason) == ("inv1", "Charged twice")
        resolved = domain.change_status(
            opened.ticket, "resolved", at=T0 + H, open_disputes=[dispute], outcome="refunded"
        )
        assert [type(e) for e in resolved.events] == [events.TicketResolved, events.DisputeResolved]
        ended = resolved.events[1]
        assert isinstance(ended, events.DisputeResolved)
        assert ended.outcome == "refunded"
        assert resolved.disputes[0].status == "resolved"

    def test_closing_ends_the_dispute_too_with_a_default_outcome(self) -> None:
        dispute, opened = domain.open_dispute(
            ticket(), invoice_id="inv1", reason="r", dispute_id="d1", at=T0, open_disputes=[]
        )
        closed = domain.change_status(opened.ticket, "closed", at=T0 + H, open_disputes=[dispute])
        ended = closed.events[-1]
        assert isinstance(ended, events.DisputeResolved)
        assert ended.outcome == "closed"

    def test_one_open_dispute_per_ticket_and_none_on_a_resolved_ticket(self) -> None:
        dispute, _ = domain.open_dispute(ticket(), invoice_id="i", reason="r", dispute_id="d", at=T0, open_disputes=[])
        with pytest.raises(Conflict, match="already has an open dispute"):
            domain.open_dispute(ticket(), invoice_id="j", reason="r", dispute_id="e", at=T0, open_disputes=[dispute])
        with pytest.raises(Conflict, match="resolved"):
            domain.open_dispute(
                move(ticket(), "resolved", T0), invoice_id="j", reason="r", dispute_id="e", at=T0, open_disputes=[]
            )


class TestTrouble:
    def overdue(self, level: int) -> events.InvoiceOverdue:
        return events.InvoiceOverdue(
            invoice_id="inv1",
            customer_id="c1",
            currency="EUR",
            balance_minor=12345,
            due_at=T0,
            days_overdue=15 * level,
            dunning_level=level,
        )

    def test_first_dunning_level_is_no_trouble_yet(self) -> None:
        assert domain.trouble_from(self.overdue(1)) is None

    def test_serious_overdue_links_the_invoice_and_escalates_priority(self) -> None:
        second, third = domain.trouble_from(self.overdue(2)), domain.trouble_from(self.overdue(3))
        assert second is not None and third is not None
        assert (second.link, second.link_id, second.draft.invoice_id) == ("invoice", "inv1", "inv1")
        assert (second.draft.priority, third.draft.priority) == ("high", "urgent")
        assert second.ref != third.ref
        assert "123.45 EUR" in second.note

    def test_a_return_links_the_order(self) -> None:
        returned = events.OrderReturned(
            order_id="o1",
            return_id="r1",
            customer_id="c1",
            currency="EUR",
            lines=[events.Line(sku="A", quantity=2, unit_price_minor=500)],
            subtotal_minor=1000,
            restocked=True,
            returned_at=T0,
        )
        trouble = domain.trouble_from(returned)
        assert trouble is not None
        assert (trouble.ref, trouble.link, trouble.draft.order_id) == ("return:r1", "order", "o1")

    def test_money_is_formatted_without_floats(self) -> None:
        assert domain.money(1234, "EUR") == "12.34 EUR"
        assert domain.money(5, "USD") == "0.05 USD"
        assert domain.money(1234, "JPY") == "1234 JPY"
        assert domain.money(1234, "KWD") == "1.234 KWD"


class TestTimeline:
    def test_an_order_event_becomes_an_item_named_after_it(self) -> None:
        shipped = events.OrderShipped(
            order_id="o1",
            shipment_id="s1",
            customer_id="c1",
            currency="EUR",
            lines=[events.Line(sku="A", quantity=3, unit_price_minor=100)],
            subtotal_minor=300,
            carrier="DHL",
            shipped_at=T0,
        )
        item = timeline.item_for(Envelope(event=shipped))
        assert item is not None
        assert (item.type, item.subject, item.occurred_at, item.customer_id) == ("OrderShipped", "o1", T0, "c1")
        assert "3 item(s)" in item.summary and "DHL" in item.summary

    def test_sla_breaches_and_vendor_bills_stay_off_timelines(self) -> None:
        breach = events.TicketSLABreached(
            ticket_id="t1", customer_id="c1", clock="resolution", due_at=T0, breached_at=T0
        )
        bill = events.BillPaid(bill_id="b1", vendor_id="v1", currency="EUR", total_minor=1, paid_at=T0)
        assert timeline.item_for(Envelope(event=breach)) is None
        assert timeline.item_for(Envelope(event=bill)) is None

    def test_refs_tell_whose_orders_and_invoices_they_are(self) -> None:
        paid = events.InvoicePaid(
            invoice_id="i1", customer_id="c1", order_id="o1", currency="EUR", total_minor=1, paid_at=T0
        )
        assert sorted(timeline.refs_for(paid)) == [("invoice", "i1", "c1"), ("order", "o1", "c1")]
