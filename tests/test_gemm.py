"""Specification of the operator cost model (apex_opt.perf.gemm).

The model is a roofline with fitted efficiencies: small token counts stream the weights from HBM,
large token counts are limited by tensor-core throughput, and low precision moves fewer bytes or
runs on faster math.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from apex_opt.perf.gemm import GemmEfficiency, elementwise_time, gemm_time, load_gemm_efficiency
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # profile_fit.py lives with the benchmarks, not in the wheel
from profile_fit import GEMM_OPS, predict_operators, profiles_root, read_layer_profiles, relative_errors

H100 = {"peak_flops": 989.4e12, "mem_bandwidth": 3.35e12}
H100_FP8_PEAK = 1978.9e12
A100 = {"peak_flops": 312e12, "mem_bandwidth": 2.039e12}
# Llama-3.1-70B MLP up-projection (gate and up fused) at tensor parallel 1
N, K = 2 * 28672, 8192


@pytest.fixture(scope="module")
def h100() -> GemmEfficiency:
    return load_gemm_efficiency("h100-sxm-80gb")


@pytest.fixture(scope="module")
def a100() -> GemmEfficiency:
    return load_gemm_efficiency("a100-sxm-80gb")


def test_time_never_decreases_with_more_tokens(h100: GemmEfficiency) -> None:
    m = np.arange(1, 16385, 7)
    t = gemm_time(m, N, K, eff=h100, **H100)
    assert np.all(np.diff(t) >= 0)


def test_vectorised_over_tokens_matches_scalar_calls(h100: GemmEfficiency) -> None:
    m = np.array([1, 17, 256, 3000])
    t = gemm_time(m, N, K, eff=h100, **H100)
    assert t == pytest.approx([gemm_time(int(x), N, K, eff=h100, **H100) for x in m])


def test_no_tokens_cost_nothing(h100: GemmEfficiency) -> None:
    assert gemm_time(0, N, K, eff=h100, **H100) == 0.0


def test_small_batches_are_memory_bound_weights_stream_once(h100: GemmEfficiency) -> None:
    """At a handful of tokens the time is the weight read: 1 and 16 tokens cost about the same."""
    t1 = gemm_time(1, N, K, eff=h100, **H100)
    t16 = gemm_time(16, N, K, eff=h100, **H100)
    weight_read = N * K * 2 / (H100["mem_bandwidth"] * h100.memory_efficiency(N * K * 2)) + h100.overhead_s
    assert t1 == pytest.approx(weight_read, rel=0.02)
    assert t16 / t1 < 1.05


def test_large_batches_are_compute_bound_time_scales_with_tokens(h100: GemmEfficiency) -> None:
    t8k = gemm_time(8192, N, K, eff=h100, **H100)
    t16k = gemm_time(16384, N, K, eff=h100, **H100)
    flops_time = 2 * 8192 * N * K / (H100["peak_flops"] * h100.compute_efficiency(8192, N, K))
    assert t8k == pytest.approx(flops_time + h100.overhead_s, rel=0.02)
    assert 1.8 < t16k / t8k < 2.2
    # and no better than the peak
    assert 2 * 8192 * N * K / t8k < H100["peak_flops"]


def test_efficiencies_are_fractions(h100: GemmEfficiency, a100: GemmEfficiency) -> None:
    for eff in (h100, a100):
        for m in (1, 64, 1024, 32768):
            assert 0 < eff.compute_efficiency(m, N, K) <= 1
        assert 0 < eff.memory_efficiency(N * K * 2) <= 1


def test_fp8_is_faster_than_bf16_when_compute_bound(h100: GemmEfficiency) -> None:
    bf16 = gemm_time(8192, N, K, eff=h100, **H100)
    fp8 = gemm_time(8192, N, K, eff=h100, peak_flops=H100_FP8_PEAK, mem_bandwidth=H100["mem_bandwidth"],
                    weight_bytes_per_elem=1, act_bytes_per_elem=1)
    assert fp8 < 0.75 * bf16  # the fp8 peak is 2x, reached less efficiently
    assert fp8 > 0.5 * bf16


def test_fp8_weights_halve_the_memory_bound_time(h100: GemmEfficiency) -> None:
    bf16 = gemm_time(1, N, K, eff=h100, **H100)
    fp8 = gemm_time(1, N, K, eff=h100, peak_flops=H100_FP8_PEAK, mem_bandwidth=H100["mem_bandwidth"],
                    weight_bytes_per_elem=1, act_bytes_per_elem=1)
    assert fp8 == pytest.approx(bf16 / 2, rel=0.1)


def test_int4_weight_only_helps_decode_but_not_prefill(h100: GemmEfficiency) -> None:
    """W4A16: ~3.5x less weight traffic at small batch; bf16 math plus dequantization at large batch."""
    decode_bf16 = gemm_time(8, N, K, eff=h100, **H100)
    decode_int4 = gemm_time(8, N, K, eff=h100, **H100, weight_bytes_per_elem=0.5)
    assert 2.5 < decode_bf16 / decode_int4 < 4.0
    prefill_bf16 = gemm_time(8192, N, K, eff=h100, **H100)
    prefill_int4 = gemm_time(8192, N, K, eff=h100, **H100, weight_bytes_per_elem=0.5)
    assert prefill_int4 >= prefill_bf16


def test_rejects_nonsense_hardware(h100: GemmEfficiency) -> None:
    with pytest.raises(ValueError):
        gemm_time(1, N, K, eff=h100, peak_flops=0, mem_bandwidth=1e12)


def test_elementwise_is_memory_bound_with_a_per_row_floor(h100: GemmEfficiency) -> None:
    row = 8192 * 2 * 2  # rmsnorm of one 8192-wide token: read + write
    one = elementwise_time(row, mem_bandwidth=3.35e12, eff=h100, op="rmsnorm", rows=1)
    many = elementwise_time(4096 * row, mem_bandwidth=3.35e12, eff=h100, op="rmsnorm", rows=4096)
    assert 0 < one < many
    assert many < 4096 * one  # rows run in parallel
    # unknown operators use the pooled "generic" fit
    assert elementwise_time(row, mem_bandwidth=3.35e12, eff=h100, op="softmax") > 0


def test_gpus_without_profiles_reuse_the_nearest_fit_and_say_so() -> None:
    b200 = load_gemm_efficiency("b200")
    assert "fallback" in b200.source and "h100" in b200.source
    assert b200.compute_max == load_gemm_efficiency("h100-sxm-80gb").compute_max
    assert "fallback" in load_gemm_efficiency("mi300x").source
    assert "a100" in load_gemm_efficiency("a100-pcie-40gb").source
    assert load_gemm_efficiency("h100-sxm-80gb").source.startswith("fitted on")


# A few measured rows (data/profiles, copied from the reference profiles): vidur, H100, Llama-2-70B.
@pytest.fixture(scope="module")
def llama70b_h100_rows():
    path = profiles_root() / "h100-sxm-80gb" / "layers_vidur" / "Llama-2-70b-hf.mlp.csv"
    if not path.is_file():  # an installed package without the checkout's data/ folder
        pytest.skip(f"{path} not present")
    rows = read_layer_profiles("h100-sxm-80gb", files=[path])
    keep = np.isin(rows.op, GEMM_OPS) & np.isin(rows.num_tokens, [1, 64, 512, 1024, 4064])
    return rows.select(keep)


def test_matches_measured_h100_gemms(h100: GemmEfficiency, llama70b_h100_rows) -> None:
    rows = llama70b_h100_rows
    assert len(rows) == 4 * 4 * 5  # 4 GEMMs x tp 1/2/4/8 x 5 token counts
    pred = predict_operators(rows, h100, **H100)
    err = relative_errors(pred, rows.seconds)
    assert np.median(err) < 0.10
    # cuBLAS switches kernels at tile/wave boundaries (512 tokens is one), which a smooth fit cannot follow
    assert np.max(err) < 0.7
    # spot check: the fused gate+up projection of one token streams 0.94 GB of weights in ~0.31 ms
    one = (rows.num_tokens == 1) & (rows.tp == 1) & (rows.op == "mlp_up_proj")
    assert rows.seconds[one][0] == pytest.approx(0.311e-3)
    assert pred[one][0] == pytest.approx(0.311e-3, rel=0.1)
