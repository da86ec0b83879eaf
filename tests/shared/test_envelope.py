"""CloudEvents envelope: round trip of every event, unknown fields ignored, poison recognised."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backoffice import events
from backoffice.envelope import Envelope, PoisonRecord, decode, encode, header_map

ids = st.uuids().map(str)
money = st.integers(min_value=0, max_value=10**12)
quantity = st.integers(min_value=1, max_value=10**6)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, None]).map(lambda tz: tz or UTC),
)
currency = st.sampled_from(["EUR", "USD", "JPY", "GBP"])
text = st.text(max_size=40)
lines = st.lists(
    st.builds(events.Line, sku=st.text(min_size=1, max_size=20), quantity=quantity, unit_price_minor=money),
    min_size=1,
    max_size=5,
).map(tuple)


@st.composite
def any_event(draw: st.DrawFn) -> events.Event:
    return draw(
        st.one_of(
            st.builds(
                events.OrderShipped,
                order_id=ids,
                shipment_id=ids,
                customer_id=ids,
                currency=currency,
                lines=lines,
                subtotal_minor=money,
                carrier=st.none() | text,
                tracking_number=st.none() | text,
                shipped_at=times,
            ),
            st.builds(
                events.PaymentReceived,
                payment_id=ids,
                customer_id=ids,
                currency=currency,
                amount_minor=st.integers(1, 10**9),
                unapplied_minor=money,
                received_at=times,
                applied=st.lists(
                    st.builds(events.Allocation, invoice_id=ids, amount_minor=st.integers(1, 10**9)), max_size=3
                ).map(tuple),
            ),
            st.builds(
                events.JournalEntryPosted,
                entry_id=ids,
                source_event_id=ids,
                source_type=text,
                currency=currency,
                effective_at=times,
                posted_at=times,
                lines=st.lists(
                    st.builds(
                        events.PostedLine,
                        account=st.sampled_from(["1000", "1100"]),
                        debit_minor=money,
                        credit_minor=money,
                    ),
                    min_size=2,
                    max_size=4,
                ).map(tuple),
            ),
            st.builds(
                events.TicketOpened,
                ticket_id=ids,
                customer_id=ids,
                status=st.just("new"),
                priority=st.sampled_from(["low", "high"]),
                order_id=st.none() | ids,
                invoice_id=st.none() | ids,
            ),
            st.builds(
                events.InvoiceOverdue,
                invoice_id=ids,
                customer_id=ids,
                currency=currency,
                balance_minor=money,
                due_at=times,
                days_overdue=st.integers(0, 400),
                dunning_level=st.integers(1, 3),
            ),
        )
    )


class TestRoundTrip:
    @given(event=any_event(), correlation=st.none() | st.uuids().map(str))
    def test_decode_of_encode_gives_the_same_event(self, event: events.Event, correlation: str | None) -> None:
        envelope = Envelope(event=event, correlation_id=correlation, traceparent=f"00-{'a' * 32}-{'b' * 16}-01")
        key, value, headers = encode(envelope)
        back = decode(headers, value)
        assert back.event == event
        assert back.id == envelope.id
        assert back.correlation_id == correlation
        assert key == event.key.encode()
        assert orjson.loads(value) == event.model_dump(mode="json")  # the published JSON is the event's JSON form

    def test_headers_follow_cloudevents_binary_mode(self) -> None:
        event = events.OrderConfirmed(order_id="o-1", customer_id="c-1", confirmed_at=datetime.now(UTC))
        key, value, headers = encode(Envelope(event=event, correlation_id="corr-1"))
        h = header_map(headers)
        assert h["ce_specversion"] == "1.0"
        assert h["ce_type"] == "backoffice.orders.OrderConfirmed.v1"
        assert h["ce_source"] == "/backoffice/orders"
        assert h["ce_subject"] == "o-1"
        assert h["content-type"] == "application/json"
        assert h["ce_correlationid"] == "corr-1"
        uuid.UUID(h["ce_id"])
        datetime.fromisoformat(h["ce_time"])
        assert key == b"o-1"
        assert "type" not in orjson.loads(value)

    def test_every_catalog_type_name_matches_its_literal(self) -> None:
        for cls in events.CATALOG:
            assert cls.model_fields["type"].default == cls.ce_type()
        assert len(events.TYPES) == len(events.CATALOG)

    def test_times_are_returned_in_utc(self) -> None:
        local = datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
        event = events.OrderConfirmed(order_id="o", customer_id="c", confirmed_at=local)
        assert event.confirmed_at.utcoffset() == timedelta(0)
        wire = datetime.fromisoformat(orjson.loads(encode(Envelope(event=event))[1])["confirmed_at"])
        assert wire == datetime(2026, 1, 1, 12, tzinfo=UTC)
        assert wire.utcoffset() == timedelta(0)


def _headers(ce_type: str, ce_id: str | None = None) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", (ce_id or str(uuid.uuid4())).encode()),
        ("ce_type", ce_type.encode()),
        ("ce_source", b"/backoffice/orders"),
        ("ce_subject", b"x"),
    ]


class TestPoison:
    def test_unknown_fields_are_ignored(self) -> None:
        data = {"order_id": "o", "customer_id": "c", "confirmed_at": "2026-01-01T00:00:00+00:00", "extra": 1}
        envelope = decode(_headers("backoffice.orders.OrderConfirmed.v1"), orjson.dumps(data))
        assert envelope.event == events.OrderConfirmed(
            order_id="o", customer_id="c", confirmed_at=datetime(2026, 1, 1, tzinfo=UTC)
        )

    @pytest.mark.parametrize(
        ("headers", "value", "reason"),
        [
            (_headers("backoffice.orders.OrderConfirmed.v1"), b"not json", "not JSON"),
            (_headers("backoffice.orders.Nope.v1"), b"{}", "unknown event type"),
            (_headers("backoffice.orders.OrderConfirmed.v1"), b'{"order_id": "o"}', "fails its schema"),
            (_headers("backoffice.orders.OrderConfirmed.v1"), b"[1, 2]", "not a JSON object"),
            ([("ce_type", b"backoffice.orders.OrderConfirmed.v1")], b"{}", "CloudEvents headers"),
            (_headers("backoffice.orders.OrderConfirmed.v1", ce_id="not-a-uuid"), b"{}", "not a UUID"),
            (None, None, "CloudEvents headers"),
        ],
    )
    def test_poison_is_recognised_with_a_reason(
        self, headers: list[tuple[str, bytes]] | None, value: bytes | None, reason: str
    ) -> None:
        with pytest.raises(PoisonRecord, match=reason):
            decode(headers, value)

    def test_money_as_float_is_poison(self) -> None:
        data = {
            "payment_id": "p",
            "customer_id": "c",
            "currency": "EUR",
            "amount_minor": 10.5,
            "unapplied_minor": 0,
            "received_at": "2026-01-01T00:00:00Z",
        }
        with pytest.raises(PoisonRecord):
            decode(_headers("backoffice.billing.PaymentReceived.v1"), orjson.dumps(data))
