"""The worker-wide bound on bytes held in unfinished messages, as pure bookkeeping."""

from __future__ import annotations

from prefork_tcp.unfinished import UnfinishedBytes, limit_for


def test_unfinished_bytes_are_bounded_for_the_whole_worker():
    assert limit_for([1 << 20]) == 32 << 20 and limit_for([100 << 20, 1 << 20]) == 200 << 20
    sizes: dict[str, int] = {}
    budget = UnfinishedBytes(limit=10_000, threshold=1_000)
    assert budget.note("small", 999, sizes.get) == [] and not budget.sizes  # below the threshold
    for name, size in [("a", 3_000), ("b", 4_000), ("c", 2_000)]:
        sizes[name] = size
        assert budget.note(name, size, sizes.get) == []
    assert budget.total == 9_000
    sizes["a"] = 0  # its message was finished by a read that did not tell: the recount sees it
    sizes["d"] = 2_000
    assert budget.note("d", 2_000, sizes.get) == []  # 11,000 counted, 8,000 really
    assert budget.total == 8_000 and "a" not in budget.sizes
    sizes["e"] = 5_000
    assert budget.note("e", 5_000, sizes.get) == ["e"]  # 13,000: the largest goes
    assert budget.total == 8_000
    sizes["b"] = 6_500  # 10,500: b is the largest now
    assert budget.note("b", 6_500, sizes.get) == ["b"]
    sizes["c"] = 0
    assert budget.note("c", 0, sizes.get) == [] and "c" not in budget.sizes and budget.total == 2_000
