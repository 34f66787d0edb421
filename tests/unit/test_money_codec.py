from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from residuals.codecs.money import from_money, to_money


@given(st.integers(-(10**15), 10**15), st.sampled_from([0, 2, 3, 4]))
def test_round_trip_is_exact(minor: int, digits: int) -> None:
    amount = Decimal(minor).scaleb(-digits)
    message = to_money(amount, "USD")
    assert from_money(message) == amount
    assert (message.units >= 0 and message.nanos >= 0) or (
        message.units <= 0 and message.nanos <= 0
    )


def test_negative_and_too_fine() -> None:
    m = to_money(Decimal("-1.25"), "USD")
    assert (m.units, m.nanos) == (-1, -250_000_000)
    with pytest.raises(ValueError):
        to_money(Decimal("0.0000000001"), "USD")
