"""Speculative decoding: drafts of k tokens verified in one target pass, an acceptance model, and its trade-off."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from apex_opt.errors import SpecError
from apex_opt.schema.speculative import SpeculativeConfig, parse_speculative, parse_speculative_option
from apex_opt.sim import LinearStageCost, ReplicaSpec, SchedulerConfig, StaticReplicaCost, run_simulation

#: a cost double whose decode step is weight-bound (a) with a visible per-token cost (b): verifying extra tokens
#: is cheap for a small batch and costly for a large one
COST = LinearStageCost(a=0.010, b=2e-4, c=1e-7, d=0.0, e=0.0)


def workload(n: int, rate: float, prompt: int = 64, output: int = 200) -> SimpleNamespace:
    return SimpleNamespace(arrival_s=np.arange(n) / rate, prompt_tokens=np.full(n, prompt),
                           output_tokens=np.full(n, output), request_ids=tuple(f"r{i}" for i in range(n)))


def run(w: SimpleNamespace, spec: SpeculativeConfig | None, *, family: str = "vllm-v1", seed: int = 0,
        record_log: bool = False) -> object:
    if family == "sglang":
        cfg = SchedulerConfig.sglang(num_kv_tokens=400_000, max_model_len=8192, speculative=spec)
    else:
        cfg = SchedulerConfig.vllm_v1(num_kv_blocks=20_000, max_model_len=8192, speculative=spec)
    rep = ReplicaSpec(StaticReplicaCost((COST,)), cfg)
    return run_simulation([rep], w, seed=seed, record_log=record_log)


def eagle(k: int, acceptance: float | tuple[float, ...], draft_cost: float = 0.0) -> SpeculativeConfig:
    return SpeculativeConfig.parse({"method": "eagle", "num_tokens": k, "acceptance": acceptance,
                                    "draft_cost": draft_cost})


def test_with_full_acceptance_each_step_emits_k_plus_one_tokens() -> None:
    res = run(workload(1, 1.0, output=41), eagle(3, 1.0), record_log=True)
    assert res["spec_tokens_per_step"] == 4.0
    # 1 token from the prefill, then 40 tokens in 10 verify steps of 4
    assert [it[4] for it in res.iterations] == [1] * 11
    assert res["output_tokens"] == 41


def test_with_zero_acceptance_speculation_only_adds_cost() -> None:
    w = workload(8, 2.0)
    base = run(w, None)
    spec = run(w, eagle(3, 0.0, draft_cost=0.05))
    assert spec["spec_tokens_per_step"] == 1.0
    assert spec["output_tokens"] == base["output_tokens"]
    assert spec["tpot_mean_s"] > base["tpot_mean_s"]
    assert spec["e2e_mean_s"] > base["e2e_mean_s"]


def test_tpot_falls_at_low_load_and_throughput_can_fall_at_high_load() -> None:
    spec = eagle(4, 0.6, draft_cost=0.02)
    quiet = workload(4, 0.2)
    assert run(quiet, spec)["tpot_mean_s"] < 0.6 * run(quiet, None)["tpot_mean_s"]
    flood = workload(600, 1000.0)  # everything queued at once: batches of hundreds, compute-bound verify
    assert run(flood, spec)["throughput_output_tok_s"] < run(flood, None)["throughput_output_tok_s"]


@pytest.mark.parametrize("family", ["vllm-v1", "sglang"])
def test_results_are_deterministic_for_a_seed(family: str) -> None:
    w = workload(30, 5.0)
    spec = eagle(3, (0.8, 0.6, 0.4), draft_cost=0.03)
    a, b = run(w, spec, family=family, seed=7), run(w, spec, family=family, seed=7)
    assert repr(a.summary()) == repr(b.summary())  # NaN-safe equality (no price given: cost is NaN)
    assert np.array_equal(a.records.finish_s, b.records.finish_s)
    assert a["num_completed"] == 30
    assert run(w, spec, family=family, seed=8)["spec_tokens_per_step"] != a["spec_tokens_per_step"]


def test_expected_tokens_per_step_matches_the_closed_form() -> None:
    spec = eagle(4, (0.9, 0.7, 0.5, 0.3))
    expected = 1 + 0.9 + 0.9 * 0.7 + 0.9 * 0.7 * 0.5 + 0.9 * 0.7 * 0.5 * 0.3
    assert spec.expected_tokens() == pytest.approx(expected)
    res = run(workload(1, 1.0, output=20_001), spec)
    steps = 20_000 / res["spec_tokens_per_step"]
    # a step emits 1..5 tokens: standard deviation < 1.5, so 5 standard errors are < 7.5 / sqrt(steps)
    assert res["spec_tokens_per_step"] == pytest.approx(expected, abs=7.5 / np.sqrt(steps))
    assert eagle(3, 0.7).expected_tokens() == pytest.approx((1 - 0.7**4) / (1 - 0.7))


@pytest.mark.parametrize("family", ["vllm-v0", "vllm-v1", "sglang"])
def test_tokens_are_conserved_and_the_kv_cache_balances_under_preemption(family: str) -> None:
    from apex_opt.sim.engine import Simulation

    spec = eagle(4, (0.9, 0.8, 0.6, 0.5), draft_cost=0.02)
    rng = np.random.default_rng(3)
    n = 120
    w = SimpleNamespace(arrival_s=np.sort(rng.uniform(0, 10, n)), prompt_tokens=rng.integers(10, 600, n),
                        output_tokens=rng.integers(1, 300, n), request_ids=tuple(map(str, range(n))))
    if family == "sglang":
        cfg = SchedulerConfig.sglang(num_kv_tokens=4800, max_model_len=4096, speculative=spec)
    elif family == "vllm-v1":
        cfg = SchedulerConfig.vllm_v1(num_kv_blocks=300, max_model_len=4096, speculative=spec)
    else:
        cfg = SchedulerConfig.vllm_v0(num_kv_blocks=300, max_model_len=4096, speculative=spec)
    sim = Simulation([ReplicaSpec(StaticReplicaCost((COST,)), cfg)], w, debug=True)  # checks invariants each step
    res = sim.run()
    assert res["num_completed"] == n and res["output_tokens"] == int(w.output_tokens.sum())
    assert all(e.kv.free == e.kv.capacity for e in sim.engines)


def test_the_option_syntax_and_its_errors() -> None:
    s = parse_speculative("mtp:k=2,acceptance=0.8/0.6")
    assert (s.method, s.num_tokens, s.rates()) == ("mtp", 2, (0.8, 0.6))
    assert [c.num_tokens for c in parse_speculative_option("ngram:k=auto,acceptance=0.5")] == [1, 2, 3, 4, 5]
    with pytest.raises(SpecError, match="unknown method 'medusa'"):
        parse_speculative("medusa:k=2,acceptance=0.5")
    with pytest.raises(SpecError, match="acceptance"):
        parse_speculative("eagle:k=2,acceptance=0.9/0.8/0.7")
    with pytest.raises(SpecError, match="draft_cost"):
        parse_speculative("draft:k=2,acceptance=0.5")


# --------------------------------------------------------------------------------- the facade, the planner, the CLI
SMALL = "synthetic:rate=2rps,requests=30,prompt=512,output=128,seed=1"


def test_a_plan_carries_its_speculation_into_label_json_and_simulation() -> None:
    import apex_opt as ax
    from apex_opt.schema.plan import Plan, with_speculative

    plain = Plan(gpu="h100-sxm-80gb", tp=1)
    assert "speculative" not in plain.model_dump()  # plans without it serialise as before
    plan = with_speculative(plain, "eagle:k=3,acceptance=0.7")
    assert plan.label == "dp1 tp1 pp1 eagle-k3"
    assert Plan(**plan.model_dump()) == plan
    specs = ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=1, workload=SMALL)
    base, spec = ax.simulate(specs, plain), ax.simulate(specs, plan)
    assert spec["tpot_mean_s"] < base["tpot_mean_s"]
    assert ax.simulate(specs, plain, speculative="eagle:k=3,acceptance=0.7").summary()["tpot_mean_s"] == \
        spec["tpot_mean_s"]


def test_solve_with_k_auto_searches_k_and_reports_it_in_label_and_launch_lines() -> None:
    import apex_opt as ax

    specs = ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=2, workload=SMALL,
                          slo="ttft=500ms,tpot=30ms", engine="vllm-v1")
    seen: list[object] = []

    def counting(specs_, plan, **kw):
        seen.append(plan.speculative)
        return ax.simulate(specs_, plan, **kw)

    result = ax.solve(specs, objective="min-tpot", top_k=1, workers=1, speculative="eagle:k=auto,acceptance=0.8",
                      simulator=counting, disaggregation="off")
    assert {None if s is None else s.num_tokens for s in seen} == {None, 1, 2, 3, 4, 5}
    best = result.plans[0]
    assert best.plan.speculative is not None and best.label.endswith(f"eagle-k{best.plan.speculative.num_tokens}")
    lines = best.launch("llama-3.1-8b", engine="vllm-v1")
    k = best.plan.speculative.num_tokens
    assert f'"num_speculative_tokens": {k}' in lines["vllm"]
    assert f"--speculative-num-steps {k} --speculative-eagle-topk 1 --speculative-num-draft-tokens {k + 1}" \
        in lines["sglang"]


def test_the_cli_takes_speculative_on_simulate_and_refuses_auto_there() -> None:
    from click.testing import CliRunner

    from apex_opt.cli.main import cli

    args = ["simulate", "--model", "llama-3.1-8b", "--tp", "1", "--workload", SMALL, "--format", "json"]
    ok = CliRunner().invoke(cli, [*args, "--speculative", "ngram:k=2,acceptance=0.5"])
    assert ok.exit_code == 0, ok.output
    assert '"label": "dp1 tp1 pp1 ngram-k2"' in ok.output and "spec_tokens_per_step" in ok.output
    bad = CliRunner().invoke(cli, [*args, "--speculative", "eagle:k=auto,acceptance=0.7"])
    assert bad.exit_code == 2 and "k=auto is for solve" in bad.output
