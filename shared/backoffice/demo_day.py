"""One business day of the demo: every step goes through the services' public HTTP APIs, nothing else."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from backoffice.demo_api import SERVICES, Api, DemoError, until

CURRENCY = "EUR"
CATALOGUE = [
    ("Espresso beans 1 kg", 1890),
    ("Burr grinder", 12900),
    ("Milk jug 600 ml", 1450),
    ("Paper filters x100", 490),
    ("Descaler 500 ml", 990),
    ("Tamper 58 mm", 3400),
]
SCARCE = ("Dual-boiler espresso machine", 149900)  # out of stock at opening: ordered on backorder
CITIES = [("Lyon", "FR"), ("Porto", "PT"), ("Ghent", "BE"), ("Leipzig", "DE"), ("Bologna", "IT"), ("Utrecht", "NL")]
CARRIERS = ["DHL", "UPS", "DPD", "GLS"]
ROLES = ("late payer", "over-payer", "partial payer")  # then "regular" customers


@dataclass
class Customer:
    id: str
    role: str
    terms_days: int
    orders: list[Placed] = field(default_factory=list)


@dataclass
class Placed:
    id: str
    customer: Customer
    lines: dict[str, int]
    plan: str  # full | split | partial | hold | cancel
    status: str = ""


def _split(lines: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """About half the units in a first shipment, the rest in a second."""
    units = sum(lines.values())
    first: dict[str, int] = {}
    left = max(1, units // 2)
    for sku, quantity in lines.items():
        take = min(quantity, left)
        if take:
            first[sku] = take
            left -= take
    rest = {sku: q - first.get(sku, 0) for sku, q in lines.items() if q - first.get(sku, 0) > 0}
    return first, rest


def _lines(lines: dict[str, int]) -> list[dict[str, Any]]:
    return [{"sku": sku, "quantity": q} for sku, q in lines.items()]


class Day:
    """One business day of one run; each method is a step of the progress bar."""

    def __init__(self, apis: dict[str, Api], *, run: str, rng: random.Random, customers: int, timeout: float) -> None:
        self.api, self.run, self.rng, self.timeout = apis, run, rng, timeout
        self.orders, self.billing, self.support, self.ledger = (apis[s] for s in SERVICES)
        self.customers = [
            Customer(
                id=f"demo-{run}-c{i + 1:02d}",
                role=ROLES[i] if i < len(ROLES) else "regular",
                terms_days=7 if i == 0 else 30 if i == 1 else rng.choice([30, 45, 60]),
            )
            for i in range(customers)
        ]
        self.skus = [f"DEMO-{run}-{i + 1:02d}" for i in range(len(CATALOGUE))]
        self.scarce = f"DEMO-{run}-X1"
        self.vendors: list[str] = []
        self.backorders: list[Placed] = []
        self.filled = self.shipments = self.payments = self.collected = self.bills = self.bill_payments = 0
        self.invoices: list[dict[str, Any]] = []
        self.late: dict[str, Any] = {}
        self.aging_as_of: datetime | None = None
        self.recon: dict[str, Any] = {}

    def role(self, role: str) -> Customer:
        return next(c for c in self.customers if c.role == role)

    async def catalogue(self) -> None:
        stock = 25 * len(self.customers) + 20
        for sku, (name, price) in zip(self.skus, CATALOGUE, strict=True):
            body = {"sku": sku, "name": name, "unit_price_minor": price, "currency": CURRENCY}
            await self.orders.post("/products", {**body, "on_hand": stock, "reorder_level": 10}, what="product")
        body = {"sku": self.scarce, "name": SCARCE[0], "unit_price_minor": SCARCE[1], "currency": CURRENCY}
        await self.orders.post("/products", {**body, "on_hand": 0, "reorder_level": 2}, what="product")

    async def terms(self) -> None:
        for c in self.customers:
            await self.billing.put(f"/customers/{c.id}/terms", {"payment_terms_days": c.terms_days})

    async def _place(self, c: Customer, lines: dict[str, int], plan: str, *, backorder: bool = False) -> Placed:
        city, country = self.rng.choice(CITIES)
        address = {"name": c.id, "line1": f"{self.rng.randint(1, 200)} Market Street", "city": city, "country": country}
        body = {"customer_id": c.id, "currency": CURRENCY, "lines": _lines(lines), "shipping_address": address}
        order = await self.orders.post("/orders", {**body, "allow_backorder": backorder}, what="order")
        placed = Placed(order["id"], c, lines, plan, order["status"])
        c.orders.append(placed)
        return placed

    def _basket(self, kinds: int) -> dict[str, int]:
        return {sku: self.rng.randint(1, 4) for sku in self.rng.sample(self.skus, kinds)}

    async def place_orders(self) -> None:
        for i, c in enumerate(self.customers):
            if c.role == "late payer":
                await self._place(c, self._basket(self.rng.randint(1, 3)), "full")
            elif c.role == "over-payer":
                await self._place(c, {**self._basket(2), self.skus[0]: 2}, "split")
            elif c.role == "partial payer":
                await self._place(c, self._basket(2), "partial")
            else:
                await self._place(c, self._basket(self.rng.randint(1, 3)), "full")
                if i == len(ROLES) or self.rng.random() < 0.5:
                    plan = "cancel" if i == len(ROLES) else self.rng.choice(["full", "split", "partial", "hold"])
                    await self._place(c, self._basket(self.rng.randint(1, 2)), plan)
            if c.role in ("over-payer", "partial payer"):  # the machine is out of stock: placed on backorder
                placed = await self._place(c, {self.scarce: 1, self.skus[-1]: 1}, "full", backorder=True)
                if placed.status != "backordered":
                    raise DemoError(
                        f"orders: an order of an out-of-stock product is {placed.status!r}, not backordered"
                    )
                self.backorders.append(placed)

    async def receive_stock(self) -> None:
        delta = len(self.backorders) + self.rng.randint(2, 5)
        body = {"delta": delta, "reason": "receipt: supplier delivery of espresso machines"}
        receipt = await self.orders.post(f"/products/{self.scarce}/stock-adjustments", body, what="receipt")
        missing = {o.id for o in self.backorders} - set(receipt["confirmed_orders"])
        if missing:
            raise DemoError(f"orders: the stock receipt did not confirm backorders {sorted(missing)}")
        self.filled = len(self.backorders)

    async def _ship(self, order: Placed, lines: dict[str, int]) -> None:
        carrier = self.rng.choice(CARRIERS)
        body = {
            "lines": _lines(lines),
            "carrier": carrier,
            "tracking_number": f"{carrier}{self.rng.randint(10**9, 10**10)}",
        }
        await self.orders.post(f"/orders/{order.id}/shipments", body, what="shipment")
        self.shipments += 1

    async def ship(self) -> None:
        for c in self.customers:
            for order in c.orders:
                if order.plan == "full":
                    await self._ship(order, order.lines)
                elif order.plan in ("split", "partial"):
                    first, rest = _split(order.lines)
                    await self._ship(order, first)
                    if order.plan == "split" and rest:
                        await self._ship(order, rest)

    async def cancel(self) -> None:
        for c in self.customers:
            for order in c.orders:
                if order.plan == "cancel":
                    body = {"reason": "the customer changed their mind"}
                    await self.orders.post(f"/orders/{order.id}/cancel", body, what="cancel")

    async def our_invoices(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for c in self.customers:
            found += await self.billing.items("/invoices", customer_id=c.id)
        return found

    async def wait_invoices(self) -> None:
        self.invoices = await until(
            self.our_invoices, lambda inv: len(inv) >= self.shipments, timeout=self.timeout, what="invoices"
        )

    async def _pay(self, c: Customer, amount: int, method: str, allocations: list[dict[str, Any]] | None = None) -> Any:
        body: dict[str, Any] = {"customer_id": c.id, "currency": CURRENCY, "amount_minor": amount, "method": method}
        body["reference"] = f"{method.upper()}-{self.run}-{self.payments + 1}"
        if allocations:
            body["allocations"] = allocations
        payment = await self.billing.post("/payments", body, what="payment")
        self.payments += 1
        self.collected += amount
        return payment

    async def receive_payments(self) -> None:
        for c in self.customers:
            mine = sorted((i for i in self.invoices if i["customer_id"] == c.id), key=lambda i: i["number"])
            owed = sum(i["balance_minor"] for i in mine)
            if not owed or c.role == "late payer":
                continue
            if c.role == "over-payer":
                extra = self.rng.randint(20, 50) * 100
                payment = await self._pay(c, owed + extra, "bank_transfer")
                if payment["unapplied_minor"] != extra:
                    raise DemoError(f"billing: an over-payment of {extra} left {payment['unapplied_minor']} unapplied")
            elif c.role == "partial payer":
                part = max(1, mine[0]["balance_minor"] // 2)
                await self._pay(c, part, "card", [{"invoice_id": mine[0]["id"], "amount_minor": part}])
            elif self.rng.random() < 0.6:
                await self._pay(c, owed, self.rng.choice(["card", "bank_transfer"]))

    async def customer_return(self) -> None:
        order = next(o for o in self.role("over-payer").orders if o.plan == "split")
        body = {"lines": [{"sku": self.skus[0], "quantity": 1}], "reason": "arrived damaged", "restock": True}
        await self.orders.post(f"/orders/{order.id}/returns", body, what="return")

    async def dunning(self) -> None:
        late = self.role("late payer")
        invoice = next(i for i in self.invoices if i["customer_id"] == late.id)
        due = datetime.fromisoformat(invoice["due_at"])
        for days in (1, 16):  # a reminder a day after it fell due, a second notice two weeks later
            await self.billing.post("/jobs/dunning", params={"as_of": (due + timedelta(days=days)).isoformat()})
        self.aging_as_of = due + timedelta(days=16)
        self.late = await self.billing.get(f"/invoices/{invoice['id']}")
        if self.late["status"] != "overdue" or self.late["dunning_level"] < 2:
            raise DemoError(
                f"billing: invoice {self.late['number']} is {self.late['status']} at dunning level "
                f"{self.late['dunning_level']} 16 days past due"
            )

    async def dispute(self) -> None:
        invoice, late = self.late["id"], self.role("late payer")

        async def tickets() -> list[dict[str, Any]]:
            return await self.support.items("/tickets", customer_id=late.id)

        found = await until(
            tickets,
            lambda ts: any(t["invoice_id"] == invoice for t in ts),
            timeout=self.timeout,
            what="support to open a ticket for the overdue invoice",
        )
        ticket = next(t for t in found if t["invoice_id"] == invoice)
        body = {"invoice_id": invoice, "reason": "the customer says half of the goods arrived broken"}
        await self.support.post(f"/tickets/{ticket['id']}/dispute", body, what="dispute")
        self.late = await until(
            lambda: self.billing.get(f"/invoices/{invoice}"),
            lambda i: bool(i["disputed"]),
            timeout=self.timeout,
            what="billing to pause dunning on the disputed invoice",
        )

    async def question(self) -> None:
        c = self.role("partial payer")
        order = next(o for o in c.orders if o.plan == "partial")
        body = {
            "customer_id": c.id,
            "subject": "Where is the rest of my order?",
            "priority": "normal",
            "description": "Only part of my order arrived today.",
            "category": "delivery",
            "order_id": order.id,
        }
        ticket = await self.support.post("/tickets", body, what="ticket")
        reply = {
            "body": "The rest ships as soon as it is packed; you are only invoiced for what shipped.",
            "visibility": "public",
        }
        await self.support.post(f"/tickets/{ticket['id']}/messages", reply, what="reply")

    async def payables(self) -> None:
        for n, (name, terms, what) in enumerate([("Roastery", 30, "green coffee"), ("PackCo", 45, "packaging")]):
            vendor = await self.billing.post(
                "/vendors", {"name": f"{name} {self.run}", "payment_terms_days": terms}, what="vendor"
            )
            self.vendors.append(vendor["id"])
            amount = self.rng.randint(200, 900) * 100
            lines = [{"description": what, "amount_minor": amount, "tax_minor": amount // 5}]
            body = {
                "vendor_id": vendor["id"],
                "bill_number": f"{name[:3].upper()}-{self.run}-{n + 1}",
                "currency": CURRENCY,
                "lines": lines,
                "expense_account": "6000",
            }
            bill = await self.billing.post("/bills", body, what="bill")
            self.bills += 1
            total = bill["total_minor"]
            parts = [total * 2 // 5, total - total * 2 // 5] if n == 0 else [total // 2]  # the second stays open
            for k, part in enumerate(parts):
                pay = {"amount_minor": part, "reference": f"TRF-{self.run}-{n + 1}-{k + 1}"}
                await self.billing.post(f"/bills/{bill['id']}/payments", pay, what="bill-payment")
                self.bill_payments += 1

    async def _state(self) -> dict[str, Any]:
        ours = {c.id for c in self.customers} | set(self.vendors)
        recon = await self.ledger.get("/reports/reconciliation")
        notes = await self.billing.items("/credit-notes", customer_id=self.role("over-payer").id)
        return {
            "invoices": len(await self.our_invoices()),
            "credit_notes": len(notes),
            "own_differences": [d for d in recon["differences"] if d.get("party") in ours],
            "recon": recon,
        }

    async def settle(self) -> None:
        """Wait, at most `timeout` seconds, for every event of this run to be applied and the books to agree."""

        def ours_settled(s: dict[str, Any]) -> bool:
            return s["invoices"] >= self.shipments and s["credit_notes"] >= 1 and not s["own_differences"]

        state = await until(self._state, ours_settled, timeout=self.timeout, what="this run's events to settle")
        if state["recon"]["differences"]:  # someone else's: give the platform a moment more, then report it
            deadline = time.monotonic() + min(10.0, self.timeout)
            while state["recon"]["differences"] and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                state = await self._state()
        self.recon = state["recon"]
