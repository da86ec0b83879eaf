"""The ledger API against the real PostgreSQL (and the real broker for JournalEntryPosted)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson

from backoffice.envelope import header_map
from tests.conftest import auth, read_topic
from tests.ledger.conftest import READ, T0, WRITE, currency, fields, open_account, post_entry, problem


class TestAccounts:
    async def test_the_chart_is_seeded_with_the_contracts_accounts(self, client: httpx.AsyncClient) -> None:
        body = (await client.get("/accounts?limit=200", headers=READ)).json()
        chart = {a["code"]: a["type"] for a in body["items"]}
        assert {
            "1000": "asset",
            "1100": "asset",
            "1300": "asset",
            "2000": "liability",
            "2100": "liability",
            "2300": "liability",
            "4000": "revenue",
            "4100": "revenue",
            "6000": "expense",
        }.items() <= chart.items()

    async def test_an_account_is_opened_and_read_back(self, client: httpx.AsyncClient) -> None:
        code = await open_account(client, "expense")
        got = await client.get(f"/accounts/{code}", headers=READ)
        assert got.json() == {"code": code, "name": f"Test {code}", "type": "expense"}

    async def test_a_taken_code_is_409(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/accounts", json={"code": "1100", "name": "Again", "type": "asset"}, headers=WRITE
        )
        assert "already exists" in problem(response, 409)["detail"]

    async def test_a_bad_account_is_422_naming_each_field(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/accounts", json={"code": "no spaces", "name": "", "type": "income", "id": "x"}, headers=WRITE
        )
        assert fields(problem(response, 422)) == {"body.code", "body.name", "body.type", "body.id"}

    async def test_accounts_page_through_the_chart(self, client: httpx.AsyncClient) -> None:
        seen: list[str] = []
        cursor = None
        while True:
            url = "/accounts?limit=4" + (f"&cursor={cursor}" if cursor else "")
            body = (await client.get(url, headers=READ)).json()
            seen += [a["code"] for a in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(seen) and len(seen) == len(set(seen)) >= 10

    async def test_unknown_account_is_404(self, client: httpx.AsyncClient) -> None:
        problem(await client.get("/accounts/7777777", headers=READ), 404)


class TestAccess:
    async def test_no_token_is_401(self, client: httpx.AsyncClient) -> None:
        problem(await client.get("/accounts"), 401)

    async def test_reading_needs_ledger_read(self, client: httpx.AsyncClient) -> None:
        problem(await client.get("/accounts", headers=auth("billing:read")), 403)

    async def test_posting_needs_ledger_write(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/journal-entries",
            json={"currency": "EUR", "lines": []},
            headers={**READ, "Idempotency-Key": str(uuid.uuid4())},
        )
        problem(response, 403)

    async def test_a_customer_token_never_sees_the_books(self, client: httpx.AsyncClient) -> None:
        problem(await client.get("/accounts/1100/balance", headers=auth("ledger:read", customer_id="c1")), 403)


class TestManualEntries:
    async def test_a_balanced_entry_is_posted(self, client: httpx.AsyncClient) -> None:
        response = await post_entry(client, [("1000", 700), ("4000", -500), ("2100", -200)], memo="cash sale")
        assert response.status_code == 201, response.text
        entry = response.json()
        assert entry["source_type"] == "manual" and entry["memo"] == "cash sale" and entry["total_minor"] == 700
        assert [(li["account"], li["debit_minor"], li["credit_minor"]) for li in entry["lines"]] == [
            ("1000", 700, 0),
            ("4000", 0, 500),
            ("2100", 0, 200),
        ]
        assert (await client.get(f"/journal-entries/{entry['id']}", headers=READ)).json() == {
            **entry,
            "reversed_by_entry_id": None,
        }

    async def test_the_idempotency_key_is_required(self, client: httpx.AsyncClient) -> None:
        body = {
            "currency": "EUR",
            "lines": [{"account": "1000", "debit_minor": 1}, {"account": "4000", "credit_minor": 1}],
        }
        problem(await client.post("/journal-entries", json=body, headers=WRITE), 400)

    async def test_a_repeated_key_replays_the_first_answer_and_posts_once(self, client: httpx.AsyncClient) -> None:
        code = await open_account(client)
        body = {
            "currency": "EUR",
            "lines": [{"account": code, "debit_minor": 9}, {"account": "4000", "credit_minor": 9}],
        }
        headers = {**WRITE, "Idempotency-Key": str(uuid.uuid4())}
        answers = await asyncio.gather(*(client.post("/journal-entries", json=body, headers=headers) for _ in range(5)))
        assert {a.status_code for a in answers} == {201} and len({a.content for a in answers}) == 1
        listed = (await client.get(f"/journal-entries?account={code}", headers=READ)).json()
        assert len(listed["items"]) == 1
        changed = {**body, "memo": "other"}
        problem(await client.post("/journal-entries", json=changed, headers=headers), 422)

    async def test_unbalanced_is_422_naming_the_lines(self, client: httpx.AsyncClient) -> None:
        body = problem(await post_entry(client, [("1000", 100), ("4000", -99)]), 422)
        assert fields(body) == {"body.lines"} and "does not balance" in body["detail"]

    async def test_unknown_account_is_422_naming_the_line(self, client: httpx.AsyncClient) -> None:
        body = problem(await post_entry(client, [("1000", 100), ("8888888", -100)]), 422)
        assert fields(body) == {"body.lines.1.account"} and "8888888" in body["detail"]

    async def test_a_line_in_another_currency_is_422(self, client: httpx.AsyncClient) -> None:
        body = {
            "currency": "EUR",
            "lines": [
                {"account": "1000", "debit_minor": 100},
                {"account": "4000", "credit_minor": 100, "currency": "USD"},
            ],
        }
        response = await client.post("/journal-entries", json=body, headers={**WRITE, "Idempotency-Key": "mixed-1"})
        assert fields(problem(response, 422)) == {"body.lines.1.currency"}

    async def test_malformed_lines_are_422_naming_the_field(self, client: httpx.AsyncClient) -> None:
        cases: list[tuple[list[dict[str, Any]], str]] = [
            (
                [{"account": "1000", "debit_minor": 5, "credit_minor": 5}, {"account": "4000", "credit_minor": 5}],
                "body.lines.0",
            ),
            ([{"account": "1000"}, {"account": "4000", "credit_minor": 5}], "body.lines.0"),
            (
                [{"account": "1000", "debit_minor": -5}, {"account": "4000", "credit_minor": 5}],
                "body.lines.0.debit_minor",
            ),
            (
                [{"account": "1000", "debit_minor": 1.5}, {"account": "4000", "credit_minor": 5}],
                "body.lines.0.debit_minor",
            ),
            ([{"account": "1000", "debit_minor": 5}], "body.lines"),
            (
                [{"account": "1000", "debit_minor": 5, "status": "x"}, {"account": "4000", "credit_minor": 5}],
                "body.lines.0.status",
            ),
        ]
        for lines, field in cases:
            response = await client.post(
                "/journal-entries",
                json={"currency": "EUR", "lines": lines},
                headers={**WRITE, "Idempotency-Key": str(uuid.uuid4())},
            )
            assert field in fields(problem(response, 422)), (lines, response.text)

    async def test_a_client_cannot_set_ids_or_totals(self, client: httpx.AsyncClient) -> None:
        response = await post_entry(client, [("1000", 5), ("4000", -5)], id=str(uuid.uuid4()), total_minor=5)
        assert fields(problem(response, 422)) == {"body.id", "body.total_minor"}

    async def test_each_entry_is_announced_as_journal_entry_posted(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        entry = (await post_entry(client, [("1000", 42), ("4000", -42)])).json()

        def mine(records: list[Any]) -> list[Any]:
            return [r for r in records if r.key == entry["id"].encode()]

        records = mine(await read_topic(f"{topics}ledger.events", until=lambda rs: bool(mine(rs))))
        assert len(records) == 1
        headers = header_map(records[0].headers)
        assert headers["ce_type"] == "backoffice.ledger.JournalEntryPosted.v1"
        assert headers["ce_subject"] == entry["id"] and headers["ce_source"] == "/backoffice/ledger"
        data = orjson.loads(records[0].value)
        assert data["source_type"] == "manual" and data["currency"] == "EUR"
        assert [(li["account"], li["debit_minor"], li["credit_minor"]) for li in data["lines"]] == [
            ("1000", 42, 0),
            ("4000", 0, 42),
        ]


class TestReversal:
    async def test_a_reversal_swaps_the_lines_and_references_the_original(self, client: httpx.AsyncClient) -> None:
        code = await open_account(client)
        original = (await post_entry(client, [(code, 300), ("4000", -300)], effective_at=T0)).json()
        response = await client.post(f"/journal-entries/{original['id']}/reverse", headers=WRITE)
        assert response.status_code == 201, response.text
        reversal = response.json()
        assert reversal["reverses_entry_id"] == original["id"] and reversal["source_type"] == "reversal"
        assert [(li["account"], li["debit_minor"], li["credit_minor"]) for li in reversal["lines"]] == [
            (code, 0, 300),
            ("4000", 300, 0),
        ]
        again = (await client.get(f"/journal-entries/{original['id']}", headers=READ)).json()
        assert again["reversed_by_entry_id"] == reversal["id"]
        balance = (await client.get(f"/accounts/{code}/balance?currency=EUR", headers=READ)).json()
        assert balance["balance_minor"] == 0 and balance["debit_minor"] == balance["credit_minor"] == 300
        before = (
            await client.get(
                f"/accounts/{code}/balance", params={"currency": "EUR", "as_of": T0.isoformat()}, headers=READ
            )
        ).json()
        assert before["balance_minor"] == 300  # the past is not rewritten: the reversal takes effect now

    async def test_the_second_reversal_is_409(self, client: httpx.AsyncClient) -> None:
        original = (await post_entry(client, [("1000", 5), ("4000", -5)])).json()
        assert (await client.post(f"/journal-entries/{original['id']}/reverse", headers=WRITE)).status_code == 201
        body = problem(await client.post(f"/journal-entries/{original['id']}/reverse", headers=WRITE), 409)
        assert "already been reversed" in body["detail"]

    async def test_parallel_reversals_make_exactly_one(self, client: httpx.AsyncClient) -> None:
        original = (await post_entry(client, [("1000", 5), ("4000", -5)])).json()
        answers = await asyncio.gather(
            *(client.post(f"/journal-entries/{original['id']}/reverse", headers=WRITE) for _ in range(6))
        )
        assert sorted(a.status_code for a in answers) == [201, 409, 409, 409, 409, 409]
        listed = (await client.get("/journal-entries?source_type=reversal&limit=200", headers=READ)).json()
        assert [e["reverses_entry_id"] for e in listed["items"]].count(original["id"]) == 1

    async def test_a_reversal_is_not_reversed(self, client: httpx.AsyncClient) -> None:
        original = (await post_entry(client, [("1000", 5), ("4000", -5)])).json()
        reversal = (await client.post(f"/journal-entries/{original['id']}/reverse", headers=WRITE)).json()
        problem(await client.post(f"/journal-entries/{reversal['id']}/reverse", headers=WRITE), 409)

    async def test_a_reversal_takes_a_memo_and_a_date_and_a_key(self, client: httpx.AsyncClient) -> None:
        original = (await post_entry(client, [("1000", 5), ("4000", -5)], effective_at=T0)).json()
        body = {"memo": "typo", "effective_at": (T0 + timedelta(days=1)).isoformat()}
        headers = {**WRITE, "Idempotency-Key": str(uuid.uuid4())}
        first = await client.post(f"/journal-entries/{original['id']}/reverse", json=body, headers=headers)
        replay = await client.post(f"/journal-entries/{original['id']}/reverse", json=body, headers=headers)
        assert first.status_code == replay.status_code == 201 and first.content == replay.content
        assert first.json()["memo"] == "typo"
        assert datetime.fromisoformat(first.json()["effective_at"]) == T0 + timedelta(days=1)

    async def test_times_are_returned_in_utc(self, client: httpx.AsyncClient) -> None:
        local = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        entry = (await post_entry(client, [("1000", 5), ("4000", -5)], effective_at=local)).json()
        assert entry["effective_at"] == "2026-03-01T10:00:00Z" and entry["posted_at"].endswith("Z")

    async def test_unknown_entry_is_404(self, client: httpx.AsyncClient) -> None:
        problem(await client.post(f"/journal-entries/{uuid.uuid4()}/reverse", headers=WRITE), 404)
        problem(await client.get(f"/journal-entries/{uuid.uuid4()}", headers=READ), 404)


class TestEntryLists:
    async def test_filter_by_account_and_page_in_posting_order(self, client: httpx.AsyncClient) -> None:
        code = await open_account(client)
        posted = [(await post_entry(client, [(code, n), ("4000", -n)])).json()["id"] for n in range(1, 6)]
        await post_entry(client, [("1000", 1), ("4000", -1)])
        seen: list[str] = []
        cursor = None
        while True:
            params = {"account": code, "limit": 2, **({"cursor": cursor} if cursor else {})}
            body = (await client.get("/journal-entries", params=params, headers=READ)).json()
            seen += [e["id"] for e in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == posted

    async def test_a_forged_cursor_is_422(self, client: httpx.AsyncClient) -> None:
        assert fields(problem(await client.get("/journal-entries?cursor=WyJ4Il0", headers=READ), 422)) == {
            "query.cursor"
        }


class TestBalances:
    async def test_balance_as_of_any_time_per_currency(self, client: httpx.AsyncClient) -> None:
        code = await open_account(client)
        for days, amount in ((0, 1000), (5, -300), (10, 50)):
            await post_entry(client, [(code, amount), ("4000", -amount)], effective_at=T0 + timedelta(days=days))
        await post_entry(client, [(code, 7), ("4000", -7)], currency="USD", effective_at=T0)

        async def at(days: float, cur: str = "EUR") -> dict[str, Any]:
            when = (T0 + timedelta(days=days)).astimezone(UTC).isoformat()
            response = await client.get(
                f"/accounts/{code}/balance", params={"as_of": when, "currency": cur}, headers=READ
            )
            assert response.status_code == 200, response.text
            return dict(response.json())

        assert (await at(-1))["balance_minor"] == 0
        assert (await at(0))["balance_minor"] == 1000
        assert await at(7) == {
            "account": code,
            "name": f"Test {code}",
            "type": "asset",
            "currency": "EUR",
            "as_of": (T0 + timedelta(days=7)).isoformat().replace("+00:00", "Z"),
            "debit_minor": 1000,
            "credit_minor": 300,
            "balance_minor": 700,
        }
        assert (await at(30))["balance_minor"] == 750
        assert (await at(30, "USD"))["balance_minor"] == 7

    async def test_currency_may_be_left_out_only_when_one_is_in_use(self, client: httpx.AsyncClient) -> None:
        code = await open_account(client)
        problem(await client.get(f"/accounts/{code}/balance", headers=READ), 422)
        await post_entry(client, [(code, 10), ("4000", -10)])
        assert (await client.get(f"/accounts/{code}/balance", headers=READ)).json()["currency"] == "EUR"
        await post_entry(client, [(code, 10), ("4000", -10)], currency="CHF")
        body = problem(await client.get(f"/accounts/{code}/balance", headers=READ), 422)
        assert fields(body) == {"query.currency"} and "CHF, EUR" in body["detail"]

    async def test_a_naive_or_malformed_as_of_is_422(self, client: httpx.AsyncClient) -> None:
        for value in ("2026-01-01T00:00:00", "yesterday"):
            response = await client.get(
                "/accounts/1000/balance", params={"as_of": value, "currency": "EUR"}, headers=READ
            )
            assert fields(problem(response, 422)) == {"query.as_of"}

    async def test_trial_balance_as_of_a_time_has_matching_totals(self, client: httpx.AsyncClient) -> None:
        cur = currency()
        await post_entry(client, [("1100", 1200), ("4000", -1000), ("2100", -200)], currency=cur, effective_at=T0)
        await post_entry(client, [("1000", 500), ("1100", -500)], currency=cur, effective_at=T0 + timedelta(days=2))
        await post_entry(client, [("6000", 80), ("1000", -80)], currency=cur, effective_at=T0 + timedelta(days=4))

        async def tb(days: int) -> dict[str, Any]:
            params = {"currency": cur, "as_of": (T0 + timedelta(days=days)).isoformat()}
            return dict((await client.get("/reports/trial-balance", params=params, headers=READ)).json())

        early = await tb(1)
        assert [(r["account"], r["debit_minor"], r["credit_minor"]) for r in early["rows"]] == [
            ("1100", 1200, 0),
            ("2100", 0, 200),
            ("4000", 0, 1000),
        ]
        assert early["totals"] == {"debit_minor": 1200, "credit_minor": 1200} and early["balanced"]
        late = await tb(5)
        assert [(r["account"], r["debit_minor"], r["credit_minor"]) for r in late["rows"]] == [
            ("1000", 420, 0),
            ("1100", 700, 0),
            ("2100", 0, 200),
            ("4000", 0, 1000),
            ("6000", 80, 0),
        ]
        assert late["totals"] == {"debit_minor": 1200, "credit_minor": 1200} and late["currency"] == cur


class TestGeneralLedger:
    async def test_lines_page_in_effective_order_with_a_running_balance(self, client: httpx.AsyncClient) -> None:
        code = await open_account(client)
        amounts = [100, -30, 200, -50, 10, 5, -1]
        for days, amount in reversed(list(enumerate(amounts))):  # posted out of order: the ledger sorts by date
            await post_entry(client, [(code, amount), ("4000", -amount)], effective_at=T0 + timedelta(days=days))
        seen: list[tuple[int, int, int]] = []
        cursor = None
        while True:
            params = {"currency": "EUR", "limit": 3, **({"cursor": cursor} if cursor else {})}
            body = (await client.get(f"/accounts/{code}/entries", params=params, headers=READ)).json()
            seen += [(li["debit_minor"], li["credit_minor"], li["balance_minor"]) for li in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        running = [sum(amounts[: n + 1]) for n in range(len(amounts))]
        assert seen == [(max(a, 0), max(-a, 0), r) for a, r in zip(amounts, running, strict=True)]

    async def test_the_ledger_alias_and_a_date_window(self, client: httpx.AsyncClient) -> None:
        code = await open_account(client)
        for days in range(4):
            await post_entry(client, [(code, 10), ("4000", -10)], effective_at=T0 + timedelta(days=days))
        params = {"from": (T0 + timedelta(days=1)).isoformat(), "to": (T0 + timedelta(days=2)).isoformat()}
        body = (await client.get(f"/accounts/{code}/ledger", params=params, headers=READ)).json()
        assert [li["balance_minor"] for li in body["items"]] == [20, 30]
