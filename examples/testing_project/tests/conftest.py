"""The sample's own fixtures. jobreactor's come from its pytest plugin, not from here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shop import orders


@pytest.fixture(autouse=True)
def fresh_orders() -> Iterator[None]:
    orders.ORDER_STATUS.clear()
    yield
    orders.ORDER_STATUS.clear()
