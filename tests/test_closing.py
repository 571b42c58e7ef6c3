"""Close-by-uuid bookkeeping in the master: whom to ask, and when a request settles."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_tcp.closing import CloseRequests


class Outcomes:
    """The ``done`` callbacks of one test: what each request was told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, bool]] = []

    def done(self, name: str):
        return lambda found: self.told.append((name, found))


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


def test_nobody_to_ask_settles_at_once_as_not_found(outcomes):
    requests = CloseRequests()
    assert requests.start("u", set(), 10.0, outcomes.done("u")) is None
    assert outcomes.told == [("u", False)] and requests.pending == {}


def test_all_answer_not_found(outcomes):
    requests = CloseRequests()
    rid = requests.start("u", {1, 2, 3}, 10.0, outcomes.done("u"))
    requests.answer(rid, 1, False)
    requests.answer(rid, 3, False)
    assert outcomes.told == [] and rid in requests.pending and requests.pending[rid].waiting == {2}
    requests.answer(rid, 2, False)
    assert outcomes.told == [("u", False)] and requests.pending == {}


def test_the_first_found_settles_without_waiting_for_the_others(outcomes):
    requests = CloseRequests()
    rid = requests.start("u", {1, 2, 3}, 10.0, outcomes.done("u"))
    requests.answer(rid, 2, True)
    assert outcomes.told == [("u", True)] and requests.pending == {}
    requests.answer(rid, 1, True)  # late answers change nothing
    requests.answer(rid, 3, False)
    assert outcomes.told == [("u", True)]


def test_found_after_not_found_answers_is_still_found(outcomes):
    requests = CloseRequests()
    rid = requests.start("u", {1, 2}, 10.0, outcomes.done("u"))
    requests.answer(rid, 1, False)
    requests.answer(rid, 2, True)
    assert outcomes.told == [("u", True)]


def test_a_worker_that_dies_before_answering_is_not_waited_for(outcomes):
    requests = CloseRequests()
    rid = requests.start("u", {1, 2}, 10.0, outcomes.done("u"))
    requests.answer(rid, 1, False)
    requests.gone(2)
    assert outcomes.told == [("u", False)] and requests.pending == {}


def test_a_death_touches_every_request_that_waits_for_that_worker(outcomes):
    requests = CloseRequests()
    only_7 = requests.start("a", {7}, 10.0, outcomes.done("a"))
    both = requests.start("b", {7, 8}, 10.0, outcomes.done("b"))
    other = requests.start("c", {8}, 10.0, outcomes.done("c"))
    requests.gone(7)
    assert outcomes.told == [("a", False)]
    assert set(requests.pending) == {both, other} and requests.pending[both].waiting == {8}
    requests.gone(8)
    assert sorted(outcomes.told) == [("a", False), ("b", False), ("c", False)] and requests.pending == {}
    assert only_7 not in requests.pending


def test_the_death_of_a_worker_nobody_asked_changes_nothing(outcomes):
    requests = CloseRequests()
    rid = requests.start("u", {1}, 10.0, outcomes.done("u"))
    requests.gone(99)
    assert outcomes.told == [] and requests.pending[rid].waiting == {1}


def test_the_deadline_settles_with_what_is_known(outcomes):
    requests = CloseRequests()
    rid = requests.start("u", {1, 2}, 5.0, outcomes.done("u"))
    requests.answer(rid, 1, False)
    requests.expire(4.999)
    assert outcomes.told == [] and rid in requests.pending
    requests.expire(5.0)  # the deadline itself is past
    assert outcomes.told == [("u", False)] and requests.pending == {}
    requests.answer(rid, 2, True)  # too late
    requests.expire(100.0)
    assert outcomes.told == [("u", False)]


def test_expire_settles_only_the_requests_past_their_own_deadline(outcomes):
    requests = CloseRequests()
    requests.start("early", {1}, 1.0, outcomes.done("early"))
    late = requests.start("late", {1}, 9.0, outcomes.done("late"))
    requests.expire(5.0)
    assert outcomes.told == [("early", False)] and list(requests.pending) == [late]


def test_answers_to_unknown_or_settled_ids_are_ignored(outcomes):
    requests = CloseRequests()
    requests.answer(1, 1, True)  # nothing started yet
    rid = requests.start("u", {1, 2}, 10.0, outcomes.done("u"))
    requests.answer(rid + 1, 1, True)
    requests.answer(0, 1, True)  # id 0: what a worker answers to a close the master sent on adoption
    assert outcomes.told == [] and requests.pending[rid].waiting == {1, 2}


def test_a_repeated_not_found_answer_is_counted_once(outcomes):
    requests = CloseRequests()
    rid = requests.start("u", {1, 2}, 10.0, outcomes.done("u"))
    requests.answer(rid, 1, False)
    requests.answer(rid, 1, False)
    assert outcomes.told == [] and requests.pending[rid].waiting == {2}


def test_ids_are_positive_and_never_reused(outcomes):
    requests = CloseRequests()
    ids = []
    for n in range(50):
        rid = requests.start(f"u{n}", {1}, 10.0, outcomes.done(f"u{n}"))
        assert rid is not None
        ids.append(rid)
        if n % 2:
            requests.answer(rid, 1, False)  # settled: its id must not come back
    assert len(set(ids)) == len(ids) and min(ids) > 0


def test_the_request_keeps_its_own_copy_of_the_pids(outcomes):
    pids = {1, 2}
    requests = CloseRequests()
    rid = requests.start("u", pids, 10.0, outcomes.done("u"))
    requests.answer(rid, 1, False)
    pids.clear()
    assert pids == set() and requests.pending[rid].waiting == {2} and requests.pending[rid].uuid == "u"


def test_a_callback_may_start_another_request_while_others_settle(outcomes):
    requests = CloseRequests()

    def retry(found: bool) -> None:
        outcomes.told.append(("first", found))
        requests.start("again", {2}, 20.0, outcomes.done("again"))

    requests.start("first", {1}, 5.0, retry)
    requests.start("second", {1}, 5.0, outcomes.done("second"))
    requests.expire(6.0)
    assert sorted(outcomes.told) == [("first", False), ("second", False)]
    assert [r.uuid for r in requests.pending.values()] == ["again"]


# -- any interleaving, against a model -------------------------------------------------------


@dataclass
class Model:
    asked: frozenset[int]
    deadline: int
    waiting: set[int] = field(default_factory=set)
    found: bool = False
    settled: bool | None = None  # None: in flight

    def settle(self) -> None:
        if self.settled is None:
            self.settled = self.found


PIDS = st.integers(min_value=1, max_value=5)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.frozensets(PIDS, max_size=4), st.integers(0, 10)),
        st.tuples(st.just("answer"), st.integers(0, 20), st.integers(0, 3), st.booleans()),  # request index, which asked pid
        st.tuples(st.just("gone"), PIDS),
        st.tuples(st.just("expire"), st.integers(0, 12)),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_every_request_settles_once_with_found_only_when_a_worker_found_it(ops):
    requests = CloseRequests()
    models: list[Model] = []
    ids: list[int | None] = []
    told: dict[int, list[bool]] = {}
    for op in ops:
        if op[0] == "start":
            _, pids, deadline = op
            index = len(models)
            told[index] = []
            models.append(Model(pids, deadline, set(pids)))
            ids.append(requests.start(f"u{index}", set(pids), float(deadline), told[index].append))
            if not pids:
                models[index].settle()
        elif op[0] == "answer" and models:
            _, which, pick, found = op
            index = which % len(models)
            model, rid = models[index], ids[index]
            if rid is None:
                continue
            pid = sorted(model.asked)[pick % len(model.asked)]
            requests.answer(rid, pid, found)
            if model.settled is None:
                model.found = model.found or found
                model.waiting.discard(pid)
                if found or not model.waiting:
                    model.settle()
        elif op[0] == "gone":
            requests.gone(op[1])
            for model in models:
                model.waiting.discard(op[1])
                if not model.waiting:
                    model.settle()
        elif op[0] == "expire":
            requests.expire(float(op[1]))
            for model in models:
                if op[1] >= model.deadline:
                    model.settle()
        for index, model in enumerate(models):
            assert told[index] == ([] if model.settled is None else [model.settled]), (index, model)
        in_flight = {rid for rid, model in zip(ids, models, strict=True) if model.settled is None}
        assert set(requests.pending) == in_flight
    requests.expire(float("inf"))
    assert requests.pending == {} and all(len(results) == 1 for results in told.values())
    started = [rid for rid in ids if rid is not None]
    assert len(set(started)) == len(started)


def test_a_connection_found_on_its_way_between_workers_settles_its_requests_as_found():
    closes = CloseRequests()
    results: list[bool] = []
    closes.start("u-1", {1, 2}, 10.0, results.append)
    closes.start("u-2", {1}, 10.0, results.append)
    assert closes.settle_for("u-1") is True
    assert results == [True] and len(closes.pending) == 1  # u-2 still waits
    assert closes.settle_for("u-3") is False
