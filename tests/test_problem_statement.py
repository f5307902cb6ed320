"""A planning problem is a frozen statement (apex_opt/planner/statement.py) searched by a Problem that keeps the
state of its run apart (apex_opt/planner/solve.py, SearchRun)."""

from __future__ import annotations

import dataclasses

import pytest

import apex_opt as ax
from apex_opt.planner import Problem, ProblemStatement

TINY = "synthetic:rate=4rps,requests=20,prompt=256,output=16,seed=1"


@pytest.fixture(scope="module")
def specs() -> ax.Specs:
    return ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=2, workload=TINY)


def test_assigning_a_field_of_a_statement_raises(specs):
    statement = ProblemStatement.of(specs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        statement.top_k = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        statement.specs = specs  # type: ignore[misc]
    assert statement.top_k == 3


def test_two_statements_from_the_same_inputs_are_equal(specs):
    first = ProblemStatement.of(specs, objective="throughput", top_k=2, seed=7, speculative=[None])
    second = ProblemStatement.of(specs, objective="throughput", top_k=2, seed=7, speculative=(None,))
    assert first == second
    assert first != ProblemStatement.of(specs, objective="throughput", top_k=3, seed=7, speculative=[None])
    # the constructor takes the normalised values and fills in the same defaults
    assert ProblemStatement(specs) == ProblemStatement.of(specs)
    assert dataclasses.replace(first, top_k=3).top_k == 3


def test_a_statement_fills_in_the_simulation_budget(specs):
    assert ProblemStatement.of(specs, top_k=2).max_simulations == 15
    assert ProblemStatement.of(specs, top_k=2, speculative=[None, None]).max_simulations == 30
    assert ProblemStatement.of(specs, max_simulations=4).max_simulations == 4


def test_a_problem_exposes_the_fields_of_its_statement(specs):
    problem = Problem(specs, objective="min-gpus", top_k=2, seed=3, time_limit=5.0, verify_requests=None, workers=1)
    statement = problem.statement
    assert isinstance(statement, ProblemStatement)
    for field in dataclasses.fields(ProblemStatement):
        assert getattr(problem, field.name) == getattr(statement, field.name), field.name
    assert problem.objective.name == "min-gpus" and problem.top_k == 2 and problem.verify_requests is None
    with pytest.raises(AttributeError):
        problem.top_k = 5  # type: ignore[misc]


def test_a_problem_can_search_a_statement_built_beforehand(specs):
    statement = ProblemStatement.of(specs, top_k=1)
    problem = Problem(statement, workers=1)
    assert problem.statement is statement and problem.workers == 1
    assert problem.describe() == statement.describe(problem.space)
    with pytest.raises(ax.SpecError, match="the statement already holds top_k"):
        Problem(statement, top_k=2)


@pytest.mark.parametrize(("inputs", "message", "option"), [
    ({"top_k": 0}, "top_k=0: must be at least 1", "top_k"),
    ({"top_k": "3"}, "top_k='3': must be a whole number of at least 1", "top_k"),
    ({"max_requests": 0}, "max_requests=0: must be a whole number of at least 1", "max_requests"),
    ({"verify_requests": 0}, "verify_requests=0: must be a whole number of at least 1", "verify_requests"),
])
def test_invalid_inputs_give_the_same_errors_as_before(specs, inputs, message, option):
    for build in (ProblemStatement.of, Problem):
        with pytest.raises(ax.SpecError, match=message) as err:
            build(specs, **inputs)
        assert err.value.option == option
    if "max_requests" not in inputs:  # the constructor checks what it holds
        with pytest.raises(ax.SpecError, match=message):
            ProblemStatement(specs, **inputs)


def test_a_statement_of_something_other_than_specs_is_refused():
    with pytest.raises(ax.SpecError, match=r"ProblemStatement\(specs='x'\): specs must be the Specs"):
        ProblemStatement("x")  # type: ignore[arg-type]
    with pytest.raises(ax.SpecError, match=r"Problem\(specs='x'\): specs must be the Specs"):
        Problem("x")  # type: ignore[arg-type]


def test_the_simulations_of_a_run_do_not_leak_into_the_statement(specs):
    statement = ProblemStatement.of(specs, top_k=1)
    before = {field.name: getattr(statement, field.name) for field in dataclasses.fields(statement)}
    problem = Problem(statement, workers=1)
    try:
        [entry] = problem.verify([problem.proposal(tp=1)])
        assert entry.simulated is not None and problem.simulations == 1
    finally:
        problem.close()
    assert all(getattr(statement, name) is value for name, value in before.items())
    assert statement == ProblemStatement.of(specs, top_k=1)
    assert not hasattr(statement, "simulations") and not hasattr(statement, "verifier")


def test_two_problems_sharing_one_statement_run_independently(specs):
    statement = ProblemStatement.of(specs, top_k=1)
    first, second = Problem(statement, workers=1), Problem(statement, workers=1)
    try:
        proposal = first.optimizer().next()
        assert proposal is not None
        [mine] = first.verify([proposal])
        first.disaggregated()
        assert first.simulations == 1 and first.search_seconds > 0 and first.extra_notes
        assert second.simulations == 0 and second.search_seconds == 0 and not second.extra_notes
        assert second.run is not first.run and second.space is not first.space
        [theirs] = second.verify([proposal])  # simulated again: the first run's simulations are its own
        assert second.simulations == 1 and theirs.simulated == mine.simulated
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("seed", -1, r"seed=-1: must be a whole number of at least 0"),
    ("time_limit", 0, r"time_limit=0: must be a finite number of seconds above 0"),
])
def test_a_problem_refuses_a_bad_seed_or_time_limit_as_solve_does(field, value, message):
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=2rps,requests=20,prompt=128,output=16")
    with pytest.raises(ax.SpecError, match=message):
        Problem(specs, **{field: value})
    with pytest.raises(ax.SpecError, match=message):
        ax.solve(specs, **{field: value})
