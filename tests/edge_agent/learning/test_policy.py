"""The training policy on its own: every condition, alone and together, and the window across midnight."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import pytest

from edge_agent.learning.policy import BoxState, PolicyConfig, Window, decide

CFG = PolicyConfig(Window.parse("22:00-06:00"), max_load=0.5, max_temp_c=75.0, require_mains=True, min_new_examples=8, min_examples=16)
IDLE_NIGHT = BoxState(local_time=dt.time(23, 30), queue_depth=0, load_per_core=0.1, temp_c=50.0, on_mains=True, examples=40,
                      new_examples=10, budget_left=0.75, round_epsilon=0.25)

# one change that must stop a round, and the words its reason contains
BLOCKERS = {
    "queue": ({"queue_depth": 1}, "screening first"),
    "window": ({"local_time": dt.time(12, 0)}, "outside the training window"),
    "load": ({"load_per_core": 0.9}, "CPU busy"),
    "temp": ({"temp_c": 80.0}, "too hot"),
    "battery": ({"on_mains": False}, "on battery"),
    "examples": ({"examples": 15}, "too few confirmed studies"),
    "new": ({"new_examples": 7}, "too few new confirmed studies"),
    "budget": ({"budget_left": 0.2}, "privacy budget"),
}


def test_an_idle_box_at_night_with_new_cases_and_budget_trains():
    d = decide(IDLE_NIGHT, CFG)
    assert d.train and d.reasons == ("all conditions met",)


@pytest.mark.parametrize("n", range(1, len(BLOCKERS) + 1))
def test_every_combination_of_blockers_stops_the_round_and_names_each_one(n):
    for combo in itertools.combinations(BLOCKERS, n):
        changes = {k: v for name in combo for k, v in BLOCKERS[name][0].items()}
        d = decide(dataclasses.replace(IDLE_NIGHT, **changes), CFG)
        assert not d.train
        assert len(d.reasons) == len(combo), (combo, d.reasons)
        for name in combo:
            assert any(BLOCKERS[name][1] in r for r in d.reasons), (name, d.reasons)


@pytest.mark.parametrize("t, inside", [
    (dt.time(21, 59), False), (dt.time(22, 0), True), (dt.time(23, 59), True), (dt.time(0, 0), True),
    (dt.time(5, 59), True), (dt.time(6, 0), False), (dt.time(12, 0), False),
])
def test_the_window_crosses_midnight(t, inside):
    assert Window.parse("22:00-06:00").contains(t) is inside


def test_a_daytime_window_and_an_all_day_window():
    day = Window.parse("12:00-14:00")
    assert day.contains(dt.time(12, 0)) and day.contains(dt.time(13, 59)) and not day.contains(dt.time(14, 0))
    assert all(Window.parse("00:00-00:00").contains(dt.time(h, 0)) for h in range(24))
    assert str(Window.parse("22:00-06:00")) == "22:00-06:00"


def test_a_technician_may_waive_the_window_and_nothing_else():
    day = dataclasses.replace(IDLE_NIGHT, local_time=dt.time(11, 0))
    assert decide(day, CFG, force_window=True).train
    busy = dataclasses.replace(day, queue_depth=2)
    d = decide(busy, CFG, force_window=True)
    assert not d.train and d.reasons == ("screening first: 2 inference job(s) waiting",)


def test_unreported_temperature_and_power_are_not_guessed():
    d = decide(dataclasses.replace(IDLE_NIGHT, temp_c=None, on_mains=None, load_per_core=None), CFG)
    assert d.train
    assert decide(dataclasses.replace(IDLE_NIGHT, on_mains=False), dataclasses.replace(CFG, require_mains=False)).train


def test_a_paused_round_resumes_without_new_cases_or_budget_but_still_yields_to_screening():
    paused = dataclasses.replace(IDLE_NIGHT, open_round=True, new_examples=0, examples=0, budget_left=0.0)
    d = decide(paused, CFG)
    assert d.train and d.reasons == ("resume the paused round",)
    assert not decide(dataclasses.replace(paused, queue_depth=1), CFG).train


def test_disabled_training_never_runs():
    d = decide(IDLE_NIGHT, dataclasses.replace(CFG, enabled=False))
    assert not d.train and "disabled" in d.reasons[0]


def test_budget_exactly_enough_is_enough():
    assert decide(dataclasses.replace(IDLE_NIGHT, budget_left=0.25), CFG).train
    assert not decide(dataclasses.replace(IDLE_NIGHT, budget_left=0.0, round_epsilon=0.0), CFG).train
