"""Order to cash, end to end: four service processes, the real broker and database, one customer's whole story."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.conftest import auth, eventually

STAFF = auth(
    " ".join(f"{s}:{a}" for s in ("orders", "support", "billing", "ledger") for a in ("read", "write", "admin"))
    + " inventory:write",
    sub="e2e-staff",
)
CURRENCY = "EUR"


def _key() -> dict[str, str]:
    return {**STAFF, "Idempotency-Key": str(uuid.uuid4())}


async def _ok(response: Awaitable[httpx.Response], status: int = 200) -> Any:
    r = await response
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json()


async def _until(fetch: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], timeout: float = 45) -> Any:
    """Poll `fetch` until `check(result)` holds; return that result."""
    box: dict[str, Any] = {}

    async def ready() -> bool:
        box["value"] = await fetch()
        return check(box["value"])

    await eventually(ready, timeout=timeout, interval=0.3)
    return box["value"]


class TestOrderToCash:
    async def test_a_customer_story_from_stock_to_ledger(self, http: dict[str, httpx.AsyncClient]) -> None:
        orders, billing, ledger, support = http["orders"], http["billing"], http["ledger"], http["support"]
        run = uuid.uuid4().hex[:6]
        customer = f"cust-{run}"
        sku_a, sku_b = f"A-{run}", f"B-{run}"

        # Products and stock.
        await _ok(
            orders.post(
                "/products",
                headers=STAFF,
                json={"sku": sku_a, "name": "Widget", "unit_price_minor": 1000, "currency": CURRENCY, "on_hand": 10},
            ),
            201,
        )
        await _ok(
            orders.post(
                "/products",
                headers=STAFF,
                json={"sku": sku_b, "name": "Gadget", "unit_price_minor": 2500, "currency": CURRENCY, "on_hand": 5},
            ),
            201,
        )

        # An order shipped in two parts: two invoices.
        order = await _ok(
            orders.post(
                "/orders",
                headers=_key(),
                json={
                    "customer_id": customer,
                    "currency": CURRENCY,
                    "shipping_address": "1 Main St, Springfield",
                    "lines": [{"sku": sku_a, "quantity": 4}, {"sku": sku_b, "quantity": 2}],
                },
            ),
            201,
        )
        assert order["status"] == "confirmed"
        await _ok(
            orders.post(
                f"/orders/{order['id']}/shipments",
                headers=_key(),
                json={"lines": [{"sku": sku_a, "quantity": 2}], "carrier": "DHL"},
            ),
            201,
        )
        await _ok(
            orders.post(
                f"/orders/{order['id']}/shipments",
                headers=_key(),
                json={"lines": [{"sku": sku_a, "quantity": 2}, {"sku": sku_b, "quantity": 2}]},
            ),
            201,
        )
        invoices = await _until(lambda: self._invoices(billing, customer), lambda inv: len(inv) == 2)
        first, second = sorted(invoices, key=lambda i: i["number"])
        assert first["subtotal_minor"] == 2000
        assert second["subtotal_minor"] == 7000
        for invoice in invoices:
            assert invoice["subtotal_minor"] + invoice["tax_minor"] == invoice["total_minor"]

        # A payment applied oldest first; the over-payment becomes credit.
        overpay = 1000
        payment = await _ok(
            billing.post(
                "/payments",
                headers=_key(),
                json={
                    "customer_id": customer,
                    "currency": CURRENCY,
                    "method": "bank_transfer",
                    "reference": f"r-{run}",
                    "amount_minor": first["total_minor"] + second["total_minor"] + overpay,
                },
            ),
            201,
        )
        assert [a["invoice_id"] for a in payment["applied"]] == [first["id"], second["id"]]
        assert payment["unapplied_minor"] == overpay
        paid = await self._invoices(billing, customer)
        assert {i["status"] for i in paid} == {"paid"}

        # The credit is applied to the next invoice.
        order2 = await _ok(
            orders.post(
                "/orders",
                headers=_key(),
                json={
                    "customer_id": customer,
                    "currency": CURRENCY,
                    "shipping_address": "1 Main St, Springfield",
                    "lines": [{"sku": sku_b, "quantity": 1}],
                },
            ),
            201,
        )
        await _ok(
            orders.post(
                f"/orders/{order2['id']}/shipments", headers=_key(), json={"lines": [{"sku": sku_b, "quantity": 1}]}
            ),
            201,
        )
        third = await _until(lambda: self._invoices(billing, customer), lambda inv: len(inv) == 3)
        third = next(i for i in third if i["order_id"] == order2["id"])
        third = await _until(
            lambda: _ok(billing.get(f"/invoices/{third['id']}", headers=STAFF)),
            lambda inv: inv["credit_applied_minor"] == overpay,
        )
        assert third["balance_minor"] == third["total_minor"] - overpay

        # A return with restock, and its credit note: the invoice's balance first, the rest to credit.
        stock_before = (await _ok(orders.get(f"/products/{sku_b}", headers=STAFF)))["on_hand"]
        await _ok(
            orders.post(
                f"/orders/{order2['id']}/returns",
                headers=_key(),
                json={"lines": [{"sku": sku_b, "quantity": 1}], "reason": "damaged", "restock": True},
            ),
            201,
        )
        assert (await _ok(orders.get(f"/products/{sku_b}", headers=STAFF)))["on_hand"] == stock_before + 1
        notes = await _until(
            lambda: _ok(billing.get(f"/credit-notes?customer_id={customer}", headers=STAFF)),
            lambda page: len(page["items"]) == 1,
        )
        note = notes["items"][0]
        assert note["number"].startswith("CN-")
        assert note["applied_to_invoice_minor"] == third["balance_minor"]
        assert note["to_customer_credit_minor"] == note["total_minor"] - third["balance_minor"]

        # An invoice left unpaid goes overdue; at dunning level 2 support opens a ticket for it.
        order3 = await _ok(
            orders.post(
                "/orders",
                headers=_key(),
                json={
                    "customer_id": customer,
                    "currency": CURRENCY,
                    "shipping_address": "1 Main St, Springfield",
                    "lines": [{"sku": sku_a, "quantity": 5}],
                },
            ),
            201,
        )
        await _ok(
            orders.post(
                f"/orders/{order3['id']}/shipments", headers=_key(), json={"lines": [{"sku": sku_a, "quantity": 5}]}
            ),
            201,
        )
        late = await _until(lambda: self._invoices(billing, customer), lambda inv: len(inv) == 4)
        late = next(i for i in late if i["order_id"] == order3["id"])
        late = await _until(
            lambda: _ok(billing.get(f"/invoices/{late['id']}", headers=STAFF)),
            lambda inv: inv["credit_applied_minor"] > 0,
        )
        assert late["balance_minor"] > 0
        due = datetime.fromisoformat(late["due_at"])
        await _ok(billing.post("/jobs/dunning", params={"as_of": _iso(due + timedelta(days=16))}, headers=STAFF))
        late = await _ok(billing.get(f"/invoices/{late['id']}", headers=STAFF))
        assert late["status"] == "overdue"
        assert late["dunning_level"] == 2
        tickets = await _until(
            lambda: _ok(support.get(f"/tickets?customer_id={customer}", headers=STAFF)),
            lambda page: any(t["invoice_id"] == late["id"] for t in page["items"]),
        )
        ticket = next(t for t in tickets["items"] if t["invoice_id"] == late["id"])

        # A dispute pauses dunning until it is resolved.
        await _ok(
            support.post(
                f"/tickets/{ticket['id']}/dispute",
                headers=_key(),
                json={"invoice_id": late["id"], "reason": "never received the goods"},
            ),
            201,
        )
        await self._wait_disputed(billing, late["id"], due)
        await _ok(billing.post("/jobs/dunning", params={"as_of": _iso(due + timedelta(days=31))}, headers=STAFF))
        assert (await _ok(billing.get(f"/invoices/{late['id']}", headers=STAFF)))["dunning_level"] == 2
        await _ok(
            support.post(
                f"/tickets/{ticket['id']}/status",
                headers=_key(),
                json={"status": "resolved", "note": "goods found at the neighbour"},
            )
        )

        async def level_three() -> Any:
            await _ok(billing.post("/jobs/dunning", params={"as_of": _iso(due + timedelta(days=32))}, headers=STAFF))
            return await _ok(billing.get(f"/invoices/{late['id']}", headers=STAFF))

        await _until(level_three, lambda inv: inv["dunning_level"] == 3)

        # A vendor bill paid in two parts.
        vendor = await _ok(billing.post("/vendors", headers=_key(), json={"name": f"Supplier {run}"}), 201)
        bill = await _ok(
            billing.post(
                "/bills",
                headers=_key(),
                json={
                    "vendor_id": vendor["id"],
                    "bill_number": f"B-{run}",
                    "currency": CURRENCY,
                    "lines": [{"description": "packaging", "amount_minor": 10000, "tax_minor": 2000}],
                    "expense_account": "6000",
                    "due_at": _iso(due),
                },
            ),
            201,
        )
        await _ok(
            billing.post(
                f"/bills/{bill['id']}/payments", headers=_key(), json={"amount_minor": 5000, "reference": "first half"}
            ),
            201,
        )
        await _ok(
            billing.post(
                f"/bills/{bill['id']}/payments", headers=_key(), json={"amount_minor": 7000, "reference": "the rest"}
            ),
            201,
        )
        assert (await _ok(billing.get(f"/bills/{bill['id']}", headers=STAFF)))["status"] == "paid"

        # The books: balanced, agreeing with billing, reconciliation clean.
        recon = await _until(
            lambda: _ok(ledger.get("/reports/reconciliation", headers=STAFF)),
            lambda r: r["differences"] == [] and r["checked"] > 0,
            timeout=60,
        )
        assert recon["differences"] == []
        trial = await _ok(ledger.get(f"/reports/trial-balance?currency={CURRENCY}", headers=STAFF))
        assert trial["totals"]["debit_minor"] == trial["totals"]["credit_minor"] > 0
        balances = await _ok(billing.get("/reports/balances", headers=STAFF))
        receivable = sum(r["balance_minor"] for r in balances["receivables"] if r["customer_id"] == customer)
        ar = await _ok(ledger.get(f"/accounts/1100/balance?currency={CURRENCY}", headers=STAFF))
        assert receivable == late["balance_minor"]
        # Other stories may share these books: the ledger's control accounts must equal billing's sub-ledgers in
        # total, and this story's own vendor must be owed nothing.
        assert ar["balance_minor"] == sum(
            r["balance_minor"] for r in balances["receivables"] if r["currency"] == CURRENCY
        )
        ap = await _ok(ledger.get(f"/accounts/2000/balance?currency={CURRENCY}", headers=STAFF))
        assert ap["balance_minor"] == sum(r["balance_minor"] for r in balances["payables"] if r["currency"] == CURRENCY)
        assert sum(r["balance_minor"] for r in balances["payables"] if r["vendor_id"] == vendor["id"]) == 0

        # The customer's timeline tells the story in order.
        mine = auth("support:read", customer_id=customer)
        timeline = await _until(
            lambda: self._timeline(support, customer, mine),
            lambda items: "DisputeResolved" in [i["type"] for i in items],
        )
        story = [i["type"] for i in reversed(timeline)]
        expected = [
            "OrderPlaced",
            "OrderShipped",
            "InvoiceIssued",
            "PaymentReceived",
            "CreditApplied",
            "OrderReturned",
            "CreditNoteIssued",
            "InvoiceOverdue",
            "TicketOpened",
            "DisputeOpened",
            "DisputeResolved",
        ]
        assert _in_order(expected, story), story
        stamps = [i["occurred_at"] for i in timeline]
        assert stamps == sorted(stamps, reverse=True)

    async def _invoices(self, billing: httpx.AsyncClient, customer: str) -> list[dict[str, Any]]:
        page = await _ok(billing.get(f"/invoices?customer_id={customer}&limit=200", headers=STAFF))
        return list(page["items"])

    async def _wait_disputed(self, billing: httpx.AsyncClient, invoice_id: str, due: datetime) -> None:
        """Billing hears of the dispute through Kafka; until then a dunning run could still raise the level."""

        async def disputed() -> bool:
            invoice = await _ok(billing.get(f"/invoices/{invoice_id}", headers=STAFF))
            return bool(invoice.get("disputed"))

        await eventually(disputed, timeout=30)

    async def _timeline(
        self, support: httpx.AsyncClient, customer: str, headers: dict[str, str]
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            url = f"/customers/{customer}/timeline?limit=200" + (f"&cursor={cursor}" if cursor else "")
            page = await _ok(support.get(url, headers=headers))
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items


def _in_order(expected: list[str], story: list[str]) -> bool:
    position = 0
    for kind in story:
        if position < len(expected) and kind == expected[position]:
            position += 1
    return position == len(expected)


def _iso(moment: datetime) -> str:
    return moment.isoformat()
