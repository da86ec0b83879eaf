"""Request and response models of the ledger API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from backoffice.events import Rfc3339
from ledger import domain, store

MAX_MINOR = 10**15  # a quadrillion minor units per line: far beyond any real amount, far below bigint sums
AccountCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$", description="e.g. `1100`")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, e.g. `EUR`")]
Amount = Annotated[int, Field(gt=0, le=MAX_MINOR, strict=True)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------------------------------------


class NewAccount(_In):
    code: AccountCode
    name: str = Field(min_length=1, max_length=200)
    type: domain.AccountType


class ManualLine(_In):
    account: AccountCode
    debit_minor: Amount | None = None
    credit_minor: Amount | None = None
    party: str | None = Field(None, min_length=1, max_length=128, description="customer or vendor id")
    currency: Currency | None = Field(None, description="if given, must be the entry's currency")

    @model_validator(mode="after")
    def _one_side(self) -> Self:
        if (self.debit_minor is None) == (self.credit_minor is None):
            raise ValueError("a line has exactly one of debit_minor or credit_minor")
        return self

    def line(self) -> domain.Line:
        return domain.Line(
            account=self.account,
            debit_minor=self.debit_minor or 0,
            credit_minor=self.credit_minor or 0,
            party=self.party,
        )


class ManualEntry(_In):
    currency: Currency
    memo: str | None = Field(None, max_length=1000)
    effective_at: Rfc3339 | None = Field(None, description="RFC 3339 with offset; default now")
    lines: list[ManualLine] = Field(min_length=2, max_length=500)


class Reversal(_In):
    memo: str | None = Field(None, max_length=1000)
    effective_at: Rfc3339 | None = Field(None, description="default: now")


# --- responses ------------------------------------------------------------------------------------------------


class Account(BaseModel):
    code: str
    name: str
    type: str

    @classmethod
    def of(cls, account: domain.Account) -> Account:
        return cls(code=account.code, name=account.name, type=account.type)


class EntryLine(BaseModel):
    account: str
    debit_minor: int
    credit_minor: int
    party: str | None = None


class Entry(BaseModel):
    id: uuid.UUID
    currency: str
    memo: str | None
    source_type: str
    source_event_id: uuid.UUID | None
    reverses_entry_id: uuid.UUID | None
    reversed_by_entry_id: uuid.UUID | None
    effective_at: datetime
    posted_at: datetime
    total_minor: int
    lines: list[EntryLine]

    @classmethod
    def of(cls, entry: domain.Entry, *, reversed_by: uuid.UUID | None = None) -> Entry:
        return cls(
            id=entry.id,
            currency=entry.currency,
            memo=entry.memo,
            source_type=entry.source_type,
            source_event_id=entry.source_event_id,
            reverses_entry_id=entry.reverses_entry_id,
            reversed_by_entry_id=reversed_by,
            effective_at=entry.effective_at,
            posted_at=entry.posted_at,
            total_minor=entry.total_minor,
            lines=[EntryLine(**line.__dict__) for line in entry.lines],
        )

    @classmethod
    def stored(cls, found: store.StoredEntry) -> Entry:
        return cls.of(found.entry, reversed_by=found.reversed_by)


class Balance(BaseModel):
    account: str
    name: str
    type: str
    currency: str
    as_of: datetime
    debit_minor: int
    credit_minor: int
    balance_minor: int = Field(description="on the account's normal side: debit - credit for assets and expenses")


class TrialBalanceRow(BaseModel):
    account: str
    name: str
    type: str
    debit_minor: int
    credit_minor: int


class Totals(BaseModel):
    debit_minor: int
    credit_minor: int


class TrialBalance(BaseModel):
    as_of: datetime
    currency: str
    rows: list[TrialBalanceRow]
    totals: Totals
    balanced: bool


class LedgerLine(BaseModel):
    line_id: int
    entry_id: uuid.UUID
    currency: str
    effective_at: datetime
    posted_at: datetime
    source_type: str
    memo: str | None
    debit_minor: int
    credit_minor: int
    party: str | None
    balance_minor: int = Field(description="the account's balance in this currency after this line")


class Difference(BaseModel):
    kind: Literal["receivables", "customer_credit", "payables"]
    party: str | None
    currency: str
    ledger_minor: int
    billing_minor: int
    difference_minor: int

    @classmethod
    def of(cls, d: domain.Difference) -> Difference:
        return cls(
            kind=d.kind,  # type: ignore[arg-type]
            party=d.party,
            currency=d.currency,
            ledger_minor=d.ledger_minor,
            billing_minor=d.billing_minor,
            difference_minor=d.difference_minor,
        )


class Reconciliation(BaseModel):
    as_of: datetime = Field(description="when billing's figures were taken")
    checked: int = Field(description="(kind, party, currency) balances compared, non-zero on either side")
    differences: list[Difference] = Field(description="empty when the ledger and billing agree")


# --- billing's answer (GET /reports/balances) -----------------------------------------------------------------


class _BillingRow(BaseModel):
    model_config = ConfigDict(extra="ignore")
    currency: str
    balance_minor: int = Field(strict=True)


class CustomerRow(_BillingRow):
    customer_id: str


class VendorRow(_BillingRow):
    vendor_id: str


class BillingBalances(BaseModel):
    model_config = ConfigDict(extra="ignore")
    as_of: AwareDatetime
    receivables: list[CustomerRow]
    customer_credit: list[CustomerRow] = []
    payables: list[VendorRow]

    def party_balances(self) -> list[domain.PartyBalance]:
        out = [domain.PartyBalance("receivables", r.customer_id, r.currency, r.balance_minor) for r in self.receivables]
        out += [
            domain.PartyBalance("customer_credit", r.customer_id, r.currency, r.balance_minor)
            for r in self.customer_credit
        ]
        out += [domain.PartyBalance("payables", r.vendor_id, r.currency, r.balance_minor) for r in self.payables]
        return out
