"""The authorization matrix: every route of every service, read from the apps, against every kind of bad token.

No token, an expired, tampered, unsigned (`alg=none`), wrong-secret, malformed or non-bearer one: 401. A valid
token without the route's scope: 403. A customer token on a route that is not for customers: 403. A customer
asking for another customer's order, ticket, invoice, payment, statement or timeline: 404, the same answer as for
an id that does not exist. Fields a client must not set (ids, statuses, totals, prices, balances): 422.
"""

from __future__ import annotations

import inspect
import time
import uuid
from dataclasses import dataclass
from typing import Any, get_args, get_origin

import httpx
import jwt
import orjson
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from backoffice.settings import DEV_JWT_SECRET
from tests.conftest import auth, eventually, token
from tests.security.conftest import SERVICES, Platform, api_routes

ALL_SCOPES = " ".join(s.scopes for s in SERVICES.values())
# What a customer token may reach (with the right scope); every other route must refuse it with 403.
FOR_CUSTOMERS = {
    "orders": {("GET", "/products"), ("GET", "/products/{sku}"), ("POST", "/orders"), ("GET", "/orders")}
    | {("GET", "/orders/{order_id}")},
    "billing": {("GET", p) for p in ("/invoices", "/invoices/{invoice_id}", "/credit-notes", "/payments")}
    | {("GET", p) for p in ("/credit-notes/{credit_note_id}", "/payments/{payment_id}", "/reports/ar-aging")}
    | {("GET", p) for p in ("/customers/{customer_id}/terms", "/customers/{customer_id}/statement")}
    | {("GET", "/reports/balances")},
    "ledger": set(),
    "support": {("POST", "/tickets"), ("GET", "/tickets"), ("GET", "/tickets/{ticket_id}")}
    | {("POST", "/tickets/{ticket_id}/messages"), ("GET", "/tickets/{ticket_id}/messages")}
    | {("POST", "/tickets/{ticket_id}/dispute"), ("GET", "/customers/{customer_id}/timeline")},
}
# Fields only the server sets; a request naming one (where its model has no such field) is a 422.
SERVER_FIELDS = ("id", "status", "total_minor", "subtotal_minor", "tax_minor", "balance_minor", "paid_minor")
SERVER_FIELDS += ("number", "created_at", "posted_at", "issued_at", "reserved", "available", "unapplied_minor")
LINE_FIELDS = ("unit_price_minor", "amount_minor", "shipped", "id")


@dataclass(frozen=True)
class Route:
    service: str
    method: str
    path: str
    route: APIRoute

    def __str__(self) -> str:
        return f"{self.service} {self.method} {self.path}"

    def url(self) -> str:
        """The path with a well-formed value for each parameter (a fresh UUID, or `1000`)."""
        url = self.path
        for param in self.route.dependant.path_params:
            value = str(uuid.uuid4()) if param.field_info.annotation is uuid.UUID else "1000"
            url = url.replace("{" + param.name + "}", value)
        return url

    def scopes(self) -> set[str]:
        """The scopes of the route's `require(...)` dependencies (any one of them admits)."""
        found: set[str] = set()
        pending = list(self.route.dependant.dependencies)
        while pending:
            dependant = pending.pop()
            pending += dependant.dependencies
            if inspect.isfunction(dependant.call):
                scopes = inspect.getclosurevars(dependant.call).nonlocals.get("scopes")
                if isinstance(scopes, tuple):
                    found |= set(scopes)
        return found

    def body_model(self) -> type[BaseModel] | None:
        field = self.route.body_field
        if field is None:
            return None
        for candidate in (field.field_info.annotation, *get_args(field.field_info.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                return candidate
        return None


def _routes() -> list[Route]:
    out = []
    for name, service in SERVICES.items():
        app = service.create_app(service.settings())
        out += [Route(name, method, path, route) for method, path, route in api_routes(app)]
    return out


ROUTES = _routes()


def _claims(**overrides: Any) -> dict[str, Any]:
    return {"sub": "mallory", "scope": ALL_SCOPES, "exp": int(time.time()) + 600, **overrides}


def _tampered() -> str:
    head, _, sig = token("orders:read", sub="mallory").split(".")
    payload = jwt.utils.base64url_encode(orjson.dumps(_claims())).decode()
    return f"Bearer {head}.{payload}.{sig}"


BAD_TOKENS = {
    "none": None,
    "expired": "Bearer " + jwt.encode(_claims(exp=int(time.time()) - 10), DEV_JWT_SECRET, algorithm="HS256"),
    "tampered": _tampered(),
    "alg-none": "Bearer " + jwt.encode(_claims(), None, algorithm="none"),
    "wrong-secret": "Bearer " + jwt.encode(_claims(), "another-secret-" + "x" * 32, algorithm="HS256"),
    "hs256-without-exp": "Bearer " + jwt.encode({"sub": "m", "scope": ALL_SCOPES}, DEV_JWT_SECRET, algorithm="HS256"),
    "not-a-jwt": "Bearer not.a.jwt",
    "basic": "Basic bWFsbG9yeTpzZWNyZXQ=",
}


def _problem(response: httpx.Response, status: int, what: object) -> dict[str, Any]:
    assert response.status_code == status, f"{what}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/problem+json"), what
    body: dict[str, Any] = response.json()
    assert body["status"] == status, what
    return body


class TestEveryRoute:
    def test_every_service_has_routes_and_each_demands_a_scope(self) -> None:
        assert {r.service for r in ROUTES} == set(SERVICES)
        assert [str(r) for r in ROUTES if not r.scopes()] == []

    @pytest.mark.parametrize("route", ROUTES, ids=str)
    async def test_bad_tokens_get_401(self, platform: Platform, route: Route) -> None:
        for kind, header in BAD_TOKENS.items():
            headers = {"Authorization": header} if header else {}
            response = await platform.http[route.service].request(route.method, route.url(), headers=headers)
            _problem(response, 401, f"{route} with {kind} token")
            assert response.headers["www-authenticate"] == "Bearer", (route, kind)

    @pytest.mark.parametrize("route", ROUTES, ids=str)
    async def test_a_token_without_the_routes_scope_gets_403(self, platform: Platform, route: Route) -> None:
        others = [s for s in ALL_SCOPES.split() if s not in route.scopes()]
        for scopes in (others, []):
            headers = auth(" ".join(scopes), sub="scoped-out")
            response = await platform.http[route.service].request(route.method, route.url(), headers=headers)
            _problem(response, 403, f"{route} with scopes {scopes}")

    @pytest.mark.parametrize(
        "route", [r for r in ROUTES if (r.method, r.path) not in FOR_CUSTOMERS[r.service]], ids=str
    )
    async def test_a_customer_token_on_a_staff_route_gets_403(self, platform: Platform, route: Route) -> None:
        headers = auth(ALL_SCOPES, customer_id="cust-curious")
        response = await platform.http[route.service].request(route.method, route.url(), headers=headers)
        _problem(response, 403, f"{route} with a customer token")

    @pytest.mark.parametrize("route", [r for r in ROUTES if r.body_model() is not None], ids=str)
    async def test_fields_a_client_must_not_set_are_refused(self, platform: Platform, route: Route) -> None:
        model = route.body_model()
        assert model is not None
        body: dict[str, Any] = {f: 1 for f in SERVER_FIELDS if f not in model.model_fields}
        nested = _line_model(model)
        if nested is not None:
            body["lines"] = [{f: 1 for f in LINE_FIELDS if f not in nested.model_fields}]
        headers = auth(ALL_SCOPES, sub="mass-assigner")
        response = await platform.http[route.service].request(route.method, route.url(), json=body, headers=headers)
        problem = _problem(response, 422, route)
        refused = {e["field"] for e in problem["errors"] if e.get("type") == "extra_forbidden"}
        wanted = {f"body.{f}" for f in body if f != "lines"}
        if nested is not None:
            wanted |= {f"body.lines.0.{f}" for f in body["lines"][0]}
        assert wanted <= refused, (route, wanted - refused)


def _line_model(model: type[BaseModel]) -> type[BaseModel] | None:
    """The model of the items of a `lines` list, if the request has one."""
    field = model.model_fields.get("lines")
    if field is None:
        return None
    pending = [field.annotation]
    while pending:
        annotation = pending.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        if get_origin(annotation) is not None or get_args(annotation):
            pending += [a for a in get_args(annotation) if a is not type(None)]
    return None


# --- one customer asking for another's things --------------------------------------------------------------


@dataclass(frozen=True)
class Story:
    """Customer A's things, made through the APIs."""

    customer: str
    order_id: str
    ticket_id: str
    invoice_id: str
    payment_id: str


ORDERS = auth("orders:read orders:write inventory:write", sub="staff")
BILLING = auth("billing:read billing:write", sub="staff")


@pytest.fixture(scope="module")
async def story(platform: Platform) -> Story:
    """A places an order, staff ship it (billing invoices it from the event), A opens a ticket, staff take a payment."""
    a = f"cust-a-{uuid.uuid4().hex[:8]}"
    orders, billing, support = platform.http["orders"], platform.http["billing"], platform.http["support"]
    sku = f"SEC-{uuid.uuid4().hex[:8]}"
    product = {"sku": sku, "name": "Lamp", "unit_price_minor": 2500, "currency": "EUR", "on_hand": 10}
    assert (await orders.post("/products", json=product, headers=ORDERS)).status_code == 201
    order = {
        "customer_id": a,
        "currency": "EUR",
        "lines": [{"sku": sku, "quantity": 2}],
        "shipping_address": "1 Main Street, Springfield",
    }
    placed = await orders.post("/orders", json=order, headers=auth("orders:read orders:write", customer_id=a))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    shipped = await orders.post(f"/orders/{order_id}/shipments", json={"lines": order["lines"]}, headers=ORDERS)
    assert shipped.status_code == 201, shipped.text
    ticket = {"customer_id": a, "subject": "Where is it?", "description": "Still waiting", "order_id": order_id}
    opened = await support.post("/tickets", json=ticket, headers=auth("support:read support:write", customer_id=a))
    assert opened.status_code == 201, opened.text

    async def invoiced() -> bool:
        found = await billing.get(f"/invoices?customer_id={a}", headers=BILLING)
        return bool(found.json()["items"])

    await eventually(invoiced, timeout=60)
    invoice_id = (await billing.get(f"/invoices?customer_id={a}", headers=BILLING)).json()["items"][0]["id"]
    payment = {"customer_id": a, "currency": "EUR", "amount_minor": 100, "method": "card", "reference": "r1"}
    paid = await billing.post("/payments", json=payment, headers={**BILLING, "Idempotency-Key": str(uuid.uuid4())})
    assert paid.status_code == 201, paid.text
    return Story(a, order_id, opened.json()["id"], invoice_id, paid.json()["id"])


def _theirs(story: Story) -> list[tuple[str, str, str]]:
    """(service, A's URL, the same URL for something that does not exist)."""
    nobody, nothing = f"cust-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    return [
        ("orders", f"/orders/{story.order_id}", f"/orders/{nothing}"),
        ("support", f"/tickets/{story.ticket_id}", f"/tickets/{nothing}"),
        ("support", f"/tickets/{story.ticket_id}/messages", f"/tickets/{nothing}/messages"),
        ("support", f"/customers/{story.customer}/timeline", f"/customers/{nobody}/timeline"),
        ("billing", f"/invoices/{story.invoice_id}", f"/invoices/{nothing}"),
        ("billing", f"/payments/{story.payment_id}", f"/payments/{nothing}"),
        ("billing", f"/customers/{story.customer}/statement", f"/customers/{nobody}/statement"),
        ("billing", f"/customers/{story.customer}/terms", f"/customers/{nobody}/terms"),
    ]


class TestCustomers:
    async def test_a_customer_reads_their_own_things(self, platform: Platform, story: Story) -> None:
        me = auth(ALL_SCOPES, customer_id=story.customer)
        for service, url, _ in _theirs(story):
            response = await platform.http[service].get(url, headers=me)
            assert response.status_code == 200, (url, response.text)

    async def test_another_customers_things_are_404_exactly_like_nothing(
        self, platform: Platform, story: Story
    ) -> None:
        b = auth(ALL_SCOPES, customer_id=f"cust-b-{uuid.uuid4().hex[:8]}")
        for service, url, missing in _theirs(story):
            theirs = await platform.http[service].get(url, headers=b)
            nothing = await platform.http[service].get(missing, headers=b)
            _problem(theirs, 404, url)
            _problem(nothing, 404, missing)
            assert theirs.content == nothing.content, (url, theirs.text, nothing.text)
            assert "x-correlation-id" in theirs.headers

    async def test_another_customers_things_are_never_listed(self, platform: Platform, story: Story) -> None:
        b = auth(ALL_SCOPES, customer_id=f"cust-b-{uuid.uuid4().hex[:8]}")
        for service, url in [
            ("orders", "/orders"),
            ("support", "/tickets"),
            ("billing", "/invoices"),
            ("billing", "/payments"),
            ("billing", "/credit-notes"),
        ]:
            listed = await platform.http[service].get(url, params={"customer_id": story.customer}, headers=b)
            assert listed.status_code == 200, (url, listed.text)
            assert listed.json()["items"] == [], url
        aging = await platform.http["billing"].get(
            "/reports/ar-aging", params={"customer_id": story.customer}, headers=b
        )
        assert aging.json()["rows"] == []
        balances = (await platform.http["billing"].get("/reports/balances", headers=b)).json()
        assert all(r["customer_id"] != story.customer for r in balances["receivables"] + balances["customer_credit"])

    async def test_a_customer_cannot_act_for_another(self, platform: Platform, story: Story) -> None:
        b = auth(ALL_SCOPES, customer_id=f"cust-b-{uuid.uuid4().hex[:8]}")
        ticket = {"customer_id": story.customer, "subject": "s", "description": "d"}
        order = {
            "customer_id": story.customer,
            "currency": "EUR",
            "lines": [{"sku": "X1", "quantity": 1}],
            "shipping_address": "somewhere",
        }
        _problem(await platform.http["support"].post("/tickets", json=ticket, headers=b), 404, "ticket for A")
        _problem(await platform.http["orders"].post("/orders", json=order, headers=b), 404, "order for A")
        reply = {"body": "hello"}
        url = f"/tickets/{story.ticket_id}/messages"
        _problem(await platform.http["support"].post(url, json=reply, headers=b), 404, "reply on A's ticket")
