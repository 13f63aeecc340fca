"""How a spread Parallel shares its concurrency limit among its hosts
(llmspell.supervisors.workflows.spread.apportion)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmspell.supervisors.workflows.spread import apportion


def test_shares_follow_the_sizes_by_largest_remainder() -> None:
    assert apportion([50, 50, 50, 50], 20) == [5, 5, 5, 5]
    assert apportion([64, 64, 64, 8], 20) == [7, 6, 6, 1]
    assert apportion([3, 2], 3) == [2, 1]
    assert apportion([1, 1, 98], 3) == [1, 1, 1]  # one each first, though 98 weighs more
    assert apportion([3, 2], 10) == [3, 2]  # more slots than branches: all at once


@given(st.lists(st.integers(1, 300), min_size=1, max_size=8), st.integers(1, 400))
def test_every_host_gets_a_slot_and_the_limit_is_never_exceeded(
        sizes: list[int], limit: int) -> None:
    if limit < len(sizes):
        return  # not spread: fewer slots than hosts
    shares = apportion(sizes, limit)
    assert sum(shares) == min(limit, sum(sizes))
    assert all(1 <= s <= size for s, size in zip(shares, sizes, strict=True))
    if limit < sum(sizes):  # each within one of its exact share, but for the slots that
        exact = [limit * size / sum(sizes) for size in sizes]  # raising some to one took
        raised = sum(e < 1 for e in exact)
        assert all(abs(s - e) < 1 + raised for s, e in zip(shares, exact, strict=True))
