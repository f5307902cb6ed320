"""A stage's token-linear tables (``StepModel``) grow with the largest step asked of them; a table grown in steps is
the table built at its final size, point for point, and the collectives in it are priced as ``collective_time``."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.perf.collectives import collective_curve, collective_time, load_collective_params
from apex_opt.perf.replica import build_replica
from apex_opt.schema.plan import Plan

CASES = [("llama-3.1-70b", "vllm-0.6", {"tp": 4, "pp": 2}), ("mixtral-8x7b", "sglang-0.4", {"tp": 4, "ep": 4}),
         ("llama-3.1-70b", "vllm-v1", {"tp": 8, "weight_dtype": "fp8"})]


def _stages(model: str, engine: str, plan: dict) -> list:
    gpu = "h100-sxm-80gb"
    return list(build_replica(get_model(model), get_gpu(gpu), Plan(gpu=gpu, engine=engine, **plan),
                              get_engine(engine)).cost.stages)


def _tables(stage) -> list[np.ndarray]:
    return [stage._tokens, stage._tables[True], stage._tables[False], stage._eager_gpu, stage._flop_table,
            stage._byte_table]


@pytest.mark.parametrize(("model", "engine", "plan"), CASES)
def test_a_table_grown_step_by_step_equals_the_table_built_at_its_final_size(model, engine, plan):
    grown, direct = _stages(model, engine, plan), _stages(model, engine, plan)
    for a, b in zip(grown, direct):
        for tokens in (100, 3000, 5000, 9000, 40000):  # past the exact part (4096 tokens) into the grid
            a.linear_time(tokens, True)
        b.linear_time(40000, True)
        assert len(a._tokens) >= len(b._tokens)
        size = len(b._tokens)
        for x, y in zip(_tables(a), _tables(b)):
            assert np.array_equal(x[:size], y)  # the same points, bit for bit
        assert (a.kernels, a.launch_s) == (b.kernels, b.launch_s)


@pytest.mark.parametrize("kind, n, nodes", [("all_reduce", 8, 1), ("all_reduce", 2, 1), ("all_gather", 16, 2),
                                            ("alltoall", 64, 8), ("send_recv", 2, 2), ("reduce_scatter", 4, 1)])
def test_a_collectives_curve_prices_every_size_as_collective_time(kind, n, nodes):
    params = load_collective_params("h100-sxm-80gb")
    link = {"nodes": nodes, "intra_bw": 450e9, "inter_bw": 50e9, "params": params, "custom_allreduce": True}
    curve = collective_curve(kind, n, **link)
    sizes = [0.0, 1.0, 4096.0, 256 * 1024.0, 8 * 2**20, 8 * 2**20 + 1, 3e8]
    assert [curve(s) for s in sizes] == [collective_time(kind, s, n, **link) for s in sizes]
    assert curve(0.0) == 0.0 and curve(3e8) > curve(4096.0) > 0.0
