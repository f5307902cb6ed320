"""Scheduling policies are looked up by name in one registry; an engine spec names the one it runs.

A new policy is a SchedulerPolicy subclass registered with ``@register_policy(name)``: nothing else in
apex_opt changes, and an engine spec (a copy of a catalog engine here) selects it with ``scheduler.policy``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import apex_opt as ax
from apex_opt.catalog import ENGINES, get_engine
from apex_opt.errors import SpecError
from apex_opt.schema.engine import EngineSpec
from apex_opt.sim.config import SchedulerConfig
from apex_opt.sim.engine import EngineState
from apex_opt.sim.policies import POLICIES, Iteration, VllmV1Policy, make_policy, register_policy
from apex_opt.workload import Workload

SPF = "shortest-prompt-first"


@pytest.fixture
def spf() -> Iterator[str]:
    """Register a toy policy for the test and remove it afterwards."""

    @register_policy(SPF)
    class ShortestPromptFirst(VllmV1Policy):
        """vLLM V1's rules, but the waiting queue is served shortest prompt first (ties: arrival order)."""

        def schedule(self, st: EngineState) -> Iteration | None:
            st.waiting = type(st.waiting)(sorted(st.waiting, key=lambda r: r.prompt))
            return super().schedule(st)

    try:
        yield SPF
    finally:
        POLICIES.pop(SPF)


def with_policy(engine: EngineSpec, policy: str) -> EngineSpec:
    return engine.model_copy(update={"scheduler": engine.scheduler.model_copy(update={"policy": policy})})


def first_tokens(engine: EngineSpec) -> dict[str, float]:
    """Time of each request's first token: one long prompt arrives with four short ones, on a small budget."""
    workload = Workload.from_arrays("burst", [0.0] * 5, [4000, 100, 100, 100, 100], [8] * 5,
                                    ["long", "s1", "s2", "s3", "s4"])
    specs = ax.load_specs(model="llama-3.1-8b", engine=engine, workload=workload)
    plan = ax.Plan(gpu="h100-sxm-80gb", tp=1, engine=engine.name, max_num_batched_tokens=1024, max_num_seqs=4)
    result = ax.simulate(specs, plan, record_log=True)
    assert result["num_completed"] == 5
    return {rid: t for rid, event, t, _ in result.log if event == "first_token"}


def test_every_catalog_engine_runs_its_familys_policy_by_default() -> None:
    for name in ENGINES.names():
        engine = get_engine(name)
        assert engine.scheduler.policy == ""
        assert engine.policy == engine.family
        assert type(make_policy(SchedulerConfig.vllm_v1(100, 4096) if engine.family == "vllm-v1" else
                                SchedulerConfig.vllm_v0(100, 4096) if engine.family == "vllm-v0" else
                                SchedulerConfig.sglang(1600, 4096), 100)) is POLICIES[engine.family]


def test_a_registered_policy_runs_from_an_engine_spec(spf: str) -> None:
    base = get_engine("vllm-v1")
    fcfs = first_tokens(base)
    assert fcfs["long"] < min(fcfs[s] for s in ("s1", "s2", "s3", "s4"))  # first come, first served
    shortest = first_tokens(with_policy(base, spf))
    assert shortest["long"] > max(shortest[s] for s in ("s1", "s2", "s3", "s4"))
    assert max(shortest[s] for s in ("s1", "s2", "s3", "s4")) < min(fcfs[s] for s in ("s1", "s2", "s3", "s4"))


def test_an_unknown_policy_lists_the_registered_ones() -> None:
    engine = with_policy(get_engine("vllm-v1"), "lottery")
    with pytest.raises(SpecError, match=r"scheduling policy 'lottery' is not registered; use one of sglang, "
                                        r"vllm-v0, vllm-v1, or register"):
        first_tokens(engine)


def test_a_name_is_registered_once(spf: str) -> None:
    with pytest.raises(SpecError, match=f"'{spf}' is already registered"):
        register_policy(spf)(type("Other", (VllmV1Policy,), {}))
    assert register_policy(spf)(POLICIES[spf]) is POLICIES[spf]  # registering the same class again is harmless
