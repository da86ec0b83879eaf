"""The rules of stock and orders, without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backoffice import events
from backoffice.errors import Conflict, Unprocessable
from orders import domain
from orders.domain import Item, Line, Order, Product

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def product(
    sku: str = "A", *, on_hand: int = 10, reserved: int = 0, price: int = 250, currency: str = "EUR"
) -> Product:
    return Product(sku=sku, name=sku, unit_price_minor=price, currency=currency, on_hand=on_hand, reserved=reserved)


def order(*lines: Line, status: str = "confirmed", order_id: str = "o1") -> Order:
    return Order(id=order_id, customer_id="c1", currency="EUR", status=status, lines=tuple(lines), placed_at=NOW)


def place(catalogue: dict[str, Product], *items: Item, allow_backorder: bool = False) -> domain.Outcome:
    return domain.place_order(
        order_id="o1",
        customer_id="c1",
        currency="EUR",
        items=items,
        catalogue=catalogue,
        allow_backorder=allow_backorder,
        shipping_address="1 Main St",
        now=NOW,
    )


class TestStockAdjustments:
    def test_a_receipt_adds_to_on_hand(self) -> None:
        assert domain.adjust_stock(product(on_hand=3, reserved=2), delta=5).on_hand == 8

    def test_on_hand_cannot_fall_below_reserved(self) -> None:
        with pytest.raises(Conflict, match="reserved"):
            domain.adjust_stock(product(on_hand=5, reserved=4), delta=-2)

    def test_stock_cannot_go_negative(self) -> None:
        with pytest.raises(Conflict, match="negative"):
            domain.adjust_stock(product(on_hand=1), delta=-2)

    def test_a_count_correction_down_to_reserved_is_allowed(self) -> None:
        assert domain.adjust_stock(product(on_hand=5, reserved=4), delta=-1).available == 0


class TestPlaceOrder:
    def test_prices_come_from_the_catalogue_and_stock_is_reserved(self) -> None:
        placed = place({"A": product("A", price=250), "B": product("B", price=100)}, Item("A", 2), Item("B", 3))
        assert placed.order.status == "confirmed"
        assert placed.order.total_minor == 2 * 250 + 3 * 100
        assert [(p.sku, p.reserved) for p in placed.products] == [("A", 2), ("B", 3)]
        (event,) = placed.events
        assert isinstance(event, events.OrderPlaced)
        assert [(li.sku, li.quantity, li.unit_price_minor) for li in event.lines] == [("A", 2, 250), ("B", 3, 100)]
        assert event.total_minor == 800 and event.status == "confirmed"

    def test_short_lines_are_a_conflict_naming_each_one(self) -> None:
        catalogue = {"A": product("A", on_hand=1), "B": product("B", on_hand=5), "C": product("C", on_hand=0)}
        with pytest.raises(Conflict) as caught:
            place(catalogue, Item("A", 2), Item("B", 5), Item("C", 1))
        assert [e["field"] for e in caught.value.extra["errors"]] == ["body.lines.0.quantity", "body.lines.2.quantity"]
        assert caught.value.extra["short_lines"] == [
            {"sku": "A", "requested": 2, "available": 1},
            {"sku": "C", "requested": 1, "available": 0},
        ]

    def test_a_backorder_reserves_what_there_is(self) -> None:
        placed = place(
            {"A": product("A", on_hand=1), "B": product("B")}, Item("A", 3), Item("B", 2), allow_backorder=True
        )
        assert placed.order.status == "backordered"
        assert placed.order.confirmed_at is None
        assert [(li.sku, li.reserved, li.waiting) for li in placed.order.lines] == [("A", 1, 2), ("B", 2, 0)]
        assert [p.available for p in placed.products] == [0, 8]

    def test_allowing_backorders_with_enough_stock_confirms(self) -> None:
        assert place({"A": product("A")}, Item("A", 3), allow_backorder=True).order.status == "confirmed"

    def test_unknown_sku_is_unprocessable_naming_the_line(self) -> None:
        with pytest.raises(Unprocessable) as caught:
            place({"A": product("A")}, Item("A", 1), Item("NOPE", 1))
        assert caught.value.extra["errors"][0]["field"] == "body.lines.1.sku"

    def test_a_product_in_another_currency_is_unprocessable(self) -> None:
        with pytest.raises(Unprocessable, match="USD"):
            place({"A": product("A", currency="USD")}, Item("A", 1))


class TestShip:
    def test_partial_then_full_shipment(self) -> None:
        first = domain.ship(
            order(Line("A", 3, 100, reserved=3), Line("B", 1, 50, reserved=1)),
            shipment_id="s1",
            items=[Item("A", 2)],
            catalogue={"A": product("A", on_hand=10, reserved=3), "B": product("B", on_hand=1, reserved=1)},
            carrier="DHL",
            tracking_number="T1",
            now=NOW,
        )
        assert first.order.status == "partially_shipped"
        assert first.order.lines[0] == Line("A", 3, 100, reserved=1, shipped=2)
        assert [(p.sku, p.on_hand, p.reserved) for p in first.products] == [("A", 8, 1)]
        (shipped,) = first.events
        assert isinstance(shipped, events.OrderShipped)
        assert shipped.subtotal_minor == 200
        assert [(li.sku, li.quantity, li.unit_price_minor) for li in shipped.lines] == [("A", 2, 100)]
        second = domain.ship(
            first.order,
            shipment_id="s2",
            items=[Item("A", 1), Item("B", 1)],
            catalogue={"A": first.products[0], "B": product("B", on_hand=1, reserved=1)},
            carrier=None,
            tracking_number=None,
            now=NOW,
        )
        assert second.order.status == "shipped"

    def test_shipping_more_than_ordered_minus_shipped_is_a_conflict(self) -> None:
        with pytest.raises(Conflict, match="more than ordered minus shipped") as caught:
            domain.ship(
                order(Line("A", 3, 100, reserved=1, shipped=2), status="partially_shipped"),
                shipment_id="s",
                items=[Item("A", 2)],
                catalogue={"A": product("A", reserved=1)},
                carrier=None,
                tracking_number=None,
                now=NOW,
            )
        assert caught.value.extra["errors"][0]["field"] == "body.lines.0.quantity"

    @pytest.mark.parametrize(
        ("status", "why"),
        [("cancelled", "cancelled"), ("shipped", "already fully shipped"), ("backordered", "backordered")],
    )
    def test_an_order_in_this_state_cannot_ship(self, status: str, why: str) -> None:
        with pytest.raises(Conflict, match=why):
            domain.ship(
                order(Line("A", 3, 100), status=status),
                shipment_id="s",
                items=[Item("A", 1)],
                catalogue={"A": product("A")},
                carrier=None,
                tracking_number=None,
                now=NOW,
            )

    def test_a_sku_not_on_the_order_is_unprocessable(self) -> None:
        with pytest.raises(Unprocessable, match="not on this order"):
            domain.ship(
                order(Line("A", 1, 100, reserved=1)),
                shipment_id="s",
                items=[Item("B", 1)],
                catalogue={"A": product("A", reserved=1)},
                carrier=None,
                tracking_number=None,
                now=NOW,
            )


class TestCancel:
    def test_cancel_releases_unshipped_reservation(self) -> None:
        cancelled = domain.cancel(
            order(Line("A", 5, 100, reserved=3, shipped=2), Line("B", 1, 10, reserved=1), status="partially_shipped"),
            reason="customer changed mind",
            catalogue={"A": product("A", on_hand=8, reserved=3), "B": product("B", on_hand=1, reserved=1)},
            now=NOW,
        )
        assert cancelled.order.status == "cancelled"
        assert [(li.reserved, li.cancelled, li.shipped) for li in cancelled.order.lines] == [(0, 3, 2), (0, 1, 0)]
        assert [(p.sku, p.reserved) for p in cancelled.products] == [("A", 0), ("B", 0)]
        (event,) = cancelled.events
        assert isinstance(event, events.OrderCancelled)
        assert [(r.sku, r.quantity) for r in event.released] == [("A", 3), ("B", 1)]

    def test_a_fully_shipped_order_cannot_be_cancelled(self) -> None:
        with pytest.raises(Conflict, match="fully shipped"):
            domain.cancel(order(Line("A", 1, 1, shipped=1), status="shipped"), reason="x", catalogue={}, now=NOW)

    def test_cancelling_twice_is_a_conflict(self) -> None:
        with pytest.raises(Conflict, match="already cancelled"):
            domain.cancel(order(Line("A", 1, 1, cancelled=1), status="cancelled"), reason="x", catalogue={}, now=NOW)

    def test_a_backorder_with_nothing_reserved_releases_nothing(self) -> None:
        cancelled = domain.cancel(order(Line("A", 2, 1), status="backordered"), reason="x", catalogue={}, now=NOW)
        event = cancelled.events[0]
        assert isinstance(event, events.OrderCancelled)
        assert event.released == ()
        assert cancelled.products == ()


class TestReturns:
    def _return(self, line: Line, quantity: int, *, restock: bool) -> domain.Outcome:
        return domain.return_items(
            order(line, status="shipped"),
            return_id="r1",
            items=[Item("A", quantity)],
            reason="damaged",
            restock=restock,
            catalogue={"A": product("A", on_hand=4)},
            now=NOW,
        )

    def test_a_restocked_return_is_on_hand_again(self) -> None:
        returned = self._return(Line("A", 3, 700, shipped=3), 2, restock=True)
        assert returned.order.lines[0].returned == 2
        assert [(p.sku, p.on_hand) for p in returned.products] == [("A", 6)]
        (event,) = returned.events
        assert isinstance(event, events.OrderReturned)
        assert (event.subtotal_minor, event.restocked, event.reason, event.currency) == (1400, True, "damaged", "EUR")
        assert [(li.sku, li.quantity, li.unit_price_minor) for li in event.lines] == [("A", 2, 700)]

    def test_without_restock_stock_is_untouched(self) -> None:
        assert self._return(Line("A", 3, 700, shipped=3), 1, restock=False).products == ()

    def test_returning_more_than_shipped_is_a_conflict(self) -> None:
        with pytest.raises(Conflict, match="more than was shipped"):
            self._return(Line("A", 3, 700, shipped=2, returned=1), 2, restock=True)


class TestBackorders:
    def test_stock_goes_to_the_oldest_backorder_first(self) -> None:
        older = order(Line("A", 3, 1), Line("B", 1, 1, reserved=1), status="backordered", order_id="old")
        newer = order(Line("A", 2, 1), status="backordered", order_id="new")
        filled = domain.fill_backorders([older, newer], {"A": product("A", on_hand=4)}, now=NOW)
        assert [(o.id, o.status) for o in filled.orders] == [("old", "confirmed"), ("new", "backordered")]
        assert filled.orders[1].lines[0].reserved == 1
        assert [(p.sku, p.reserved) for p in filled.products] == [("A", 4)]
        assert [type(e).__name__ for e in filled.events] == ["OrderConfirmed"]
        assert filled.orders[0].confirmed_at == NOW

    def test_nothing_free_changes_nothing(self) -> None:
        waiting = order(Line("A", 3, 1), status="backordered")
        filled = domain.fill_backorders([waiting], {"A": product("A", on_hand=2, reserved=2)}, now=NOW)
        assert filled == domain.Filled((), (), ())

    def test_orders_no_longer_backordered_are_skipped(self) -> None:
        cancelled = order(Line("A", 3, 1, cancelled=3), status="cancelled")
        assert domain.fill_backorders([cancelled], {"A": product("A")}, now=NOW).orders == ()


class TestBillingStatus:
    @pytest.mark.parametrize(
        ("invoices", "paid", "status"), [(0, 0, "not_invoiced"), (2, 1, "invoiced"), (2, 2, "paid")]
    )
    def test_paid_means_every_invoice_paid(self, invoices: int, paid: int, status: str) -> None:
        assert domain.billing_status(invoices=invoices, paid=paid) == status


@given(
    on_hand=st.integers(0, 20),
    wanted=st.lists(st.integers(1, 8), min_size=1, max_size=8),
    receipt=st.integers(0, 30),
)
def test_reservations_never_exceed_stock_and_backorders_fill_in_order(
    on_hand: int, wanted: list[int], receipt: int
) -> None:
    """Whatever the demand, reserved stays within on_hand, and only a prefix of backorders gets confirmed."""
    stock = {"A": product("A", on_hand=on_hand)}
    placed: list[Order] = []
    for n, quantity in enumerate(wanted):
        outcome = domain.place_order(
            order_id=f"o{n}",
            customer_id="c",
            currency="EUR",
            items=[Item("A", quantity)],
            catalogue=stock,
            allow_backorder=True,
            shipping_address="x",
            now=NOW,
        )
        stock = {"A": outcome.products[0]}
        placed.append(outcome.order)
    assert 0 <= stock["A"].reserved <= stock["A"].on_hand
    stock = {"A": domain.adjust_stock(stock["A"], delta=receipt)} if receipt else stock
    filled = domain.fill_backorders([o for o in placed if o.status == "backordered"], stock, now=NOW)
    after = {o.id: o for o in placed} | {o.id: o for o in filled.orders}
    final = filled.products[0] if filled.products else stock["A"]
    assert final.reserved <= final.on_hand
    assert final.reserved == sum(li.reserved for o in after.values() for li in o.lines)
    statuses = [after[f"o{n}"].status for n in range(len(wanted))]
    backordered_from = next((n for n, s in enumerate(statuses) if s == "backordered"), len(statuses))
    assert all(s == "backordered" for s in statuses[backordered_from:])
    assert replace(final, reserved=0).on_hand == on_hand + receipt
