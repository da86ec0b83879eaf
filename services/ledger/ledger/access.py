"""Who may use the ledger: staff tokens with the ledger scopes; a customer token never sees the books."""

# No `from __future__ import annotations` here: FastAPI must see the closure's dependency, not a string.
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends

from backoffice.auth import Principal, require
from backoffice.errors import Forbidden


def staff(scope: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency: a principal holding `scope` that is not a customer."""
    scoped = require(scope)

    async def dependency(principal: Annotated[Principal, Depends(scoped)]) -> Principal:
        if principal.is_customer:
            raise Forbidden("the ledger is not open to customer tokens")
        return principal

    return dependency


Reader = Annotated[Principal, Depends(staff("ledger:read"))]
Writer = Annotated[Principal, Depends(staff("ledger:write"))]
