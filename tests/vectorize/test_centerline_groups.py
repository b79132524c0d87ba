"""The walk along centrelines joined end to end, shared by the seam merge and the bridging."""

from __future__ import annotations

import random
from itertools import pairwise

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from geoseg.vectorize.centerlines.lines import _walk_groups

End = tuple[int, int]


def joined(*pairs: tuple[End, End]) -> dict[End, End]:
    """``link`` as the callers build it: each pair both ways."""
    return {a: b for a, b in pairs} | {b: a for a, b in pairs}


def walked(lines: list[np.ndarray], members: list[End]) -> list[np.ndarray]:
    return [lines[p] if first == 0 else lines[p][::-1] for p, first in members]


def test_an_open_chain_is_walked_from_a_free_end_with_each_line_turned_to_fit() -> None:
    # Three lines along y = 0 stored in mixed directions: 0 runs 0 -> 1, 1 runs 2 -> 1,
    # 2 runs 2 -> 3. Line 1's end 0 is joined to line 2's end 0, its end 1 to line 0's end 1.
    lines = [
        np.array([[0.0, 0], [1, 0]]),
        np.array([[2.0, 0], [1, 0]]),
        np.array([[2.0, 0], [3, 0]]),
    ]
    link = joined(((1, 1), (0, 1)), ((1, 0), (2, 0)))

    # Walking back from line 1's end 0 reaches the free end 1 of line 2: the walk starts there.
    assert _walk_groups(link, [1, 0, 2]) == [([(2, 1), (1, 0), (0, 1)], False)]
    pieces = walked(lines, [(2, 1), (1, 0), (0, 1)])
    for a, b in pairwise(pieces):
        np.testing.assert_array_equal(a[-1], b[0])  # one continuous line 3 -> 0
    # From line 0 the walk back ends at its own free end 0: the same chain, the other way.
    assert _walk_groups(link, [0, 1, 2]) == [([(0, 0), (1, 1), (2, 0)], False)]


def test_a_ring_starts_at_its_first_line_in_order_entered_by_end_0() -> None:
    # A triangle 0 -> 1 -> 2 -> 0 whose middle line is stored backwards.
    link = joined(((0, 1), (1, 1)), ((1, 0), (2, 0)), ((2, 1), (0, 0)))

    assert _walk_groups(link, [0, 1, 2]) == [([(0, 0), (1, 1), (2, 0)], True)]
    assert _walk_groups(link, [1, 0, 2]) == [([(1, 0), (0, 1), (2, 1)], True)]
    assert _walk_groups(link, [2]) == [([(2, 0), (0, 0), (1, 1)], True)]


def test_a_line_joined_to_itself_is_a_ring_of_one() -> None:
    assert _walk_groups(joined(((4, 0), (4, 1))), [4]) == [([(4, 0)], True)]


def test_a_line_without_joins_is_a_group_of_its_own_and_groups_keep_the_order() -> None:
    link = joined(((0, 1), (2, 0)))
    assert _walk_groups(link, [3, 2, 1, 0]) == [
        ([(3, 0)], False),
        ([(0, 0), (2, 0)], False),
        ([(1, 0)], False),
    ]
    # Lines left out of the order still join the group of a line in it; alone they are left out.
    assert _walk_groups(link, [2]) == [([(0, 0), (2, 0)], False)]
    assert _walk_groups(link, []) == []


@st.composite
def networks(draw: st.DrawFn) -> tuple[int, dict[End, End]]:
    """Some lines and a random pairing of some of their ends (a line may close on itself)."""
    n = draw(st.integers(1, 12))
    ends = draw(st.permutations([(i, e) for i in range(n) for e in (0, 1)]))
    k = draw(st.integers(0, n))
    return n, joined(*((ends[2 * j], ends[2 * j + 1]) for j in range(k)))


@given(networks(), st.randoms(use_true_random=False))
def test_every_line_is_walked_once_along_its_joins(
    network: tuple[int, dict[End, End]], rnd: random.Random
) -> None:
    n, link = network
    order = list(range(n))
    rnd.shuffle(order)
    groups = _walk_groups(link, order)

    walked_lines = [p for members, _ in groups for p, _ in members]
    assert sorted(walked_lines) == list(range(n))
    # Each group is met first at its first line in the order.
    firsts = [min(order.index(p) for p, _ in members) for members, _ in groups]
    assert firsts == sorted(firsts)
    for members, ring in groups:
        # Each member leaves by the end joined to the next one's entry.
        for (p, first), nxt in pairwise(members):
            assert link[(p, 1 - first)] == nxt
        (p0, f0), (pn, fn) = members[0], members[-1]
        if ring:
            assert link[(pn, 1 - fn)] == (p0, f0)
            assert f0 == 0 and order.index(p0) == min(order.index(p) for p, _ in members)
        else:
            assert (p0, f0) not in link and (pn, 1 - fn) not in link
