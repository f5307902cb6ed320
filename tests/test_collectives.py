"""Specification of the collective cost model (apex_opt.perf.collectives).

Alpha-beta per fabric: a latency floor, then bytes over a fitted fraction of the link bandwidth;
groups spanning nodes go through the NICs; vLLM's custom all-reduce is a separate, faster curve for
small messages inside one NVLink node.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from apex_opt.perf.collectives import (
    CollectiveParams,
    bus_factor,
    collective_time,
    custom_allreduce_applies,
    load_collective_params,
)
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # profile_fit.py lives with the benchmarks, not in the wheel
from profile_fit import (
    BandwidthContext,
    predict_collectives,
    profiles_root,
    read_collective_profiles,
    relative_errors,
)

NVLINK_H100 = 450e9  # per GPU, per direction
NIC_400G = 50e9
KINDS = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")
SIZES = [2.0**e for e in range(10, 31)]  # 1 KiB .. 1 GiB


@pytest.fixture(scope="module")
def h100() -> CollectiveParams:
    return load_collective_params("h100-sxm-80gb")


def t(params: CollectiveParams, kind: str, nbytes: float, n: int, nodes: int = 1, **kw) -> float:
    return collective_time(kind, nbytes, n, nodes=nodes, intra_bw=NVLINK_H100, inter_bw=NIC_400G, params=params, **kw)


def test_bus_factors_are_the_ring_algorithm_traffic() -> None:
    assert bus_factor("all_reduce", 8) == pytest.approx(2 * 7 / 8)
    assert bus_factor("all_gather", 8) == pytest.approx(7 / 8)
    assert bus_factor("reduce_scatter", 4) == pytest.approx(3 / 4)
    assert bus_factor("alltoall", 2) == pytest.approx(1 / 2)
    assert bus_factor("send_recv", 2) == 1.0
    assert bus_factor("all_reduce", 1) == 0.0


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_time_grows_with_message_size(h100: CollectiveParams, kind: str, nodes: int) -> None:
    times = [t(h100, kind, s, 8, nodes) for s in SIZES]
    assert np.all(np.diff(times) > 0)


def test_send_recv_grows_with_message_size_inside_and_across_nodes(h100: CollectiveParams) -> None:
    for nodes in (1, 2):
        times = [t(h100, "send_recv", s, 2, nodes) for s in SIZES]
        assert np.all(np.diff(times) > 0)


def test_small_messages_pay_a_latency_floor(h100: CollectiveParams) -> None:
    tiny = t(h100, "all_reduce", 16, 8)
    assert 3e-6 < tiny < 30e-6
    assert t(h100, "all_reduce", 4096, 8) < 1.5 * tiny


def test_large_messages_approach_the_link_bandwidth(h100: CollectiveParams) -> None:
    s = 1 << 30
    busbw = bus_factor("all_reduce", 8) * s / t(h100, "all_reduce", s, 8)
    assert 0.5 * NVLINK_H100 < busbw < NVLINK_H100


def test_crossing_a_node_boundary_is_slower(h100: CollectiveParams) -> None:
    for kind in KINDS:
        for s in (64 * 2**10, 16 * 2**20, 256 * 2**20):
            assert t(h100, kind, s, 8, nodes=2) > t(h100, kind, s, 8, nodes=1), (kind, s)
    for s in (4 * 2**10, 64 * 2**20):
        assert t(h100, "send_recv", s, 2, nodes=2) > t(h100, "send_recv", s, 2, nodes=1)


def test_more_gpus_per_node_share_the_inter_node_traffic(h100: CollectiveParams) -> None:
    """Rail-optimised: 2 nodes x 8 GPUs all-reduce large messages faster than 2 nodes x 1 GPU."""
    s = 256 * 2**20
    assert t(h100, "all_reduce", s, 16, nodes=2) < t(h100, "all_reduce", s, 2, nodes=2)


def test_single_gpu_and_empty_messages_are_free(h100: CollectiveParams) -> None:
    assert t(h100, "all_reduce", 1 << 20, 1) == 0.0
    assert t(h100, "all_gather", 0, 8) == 0.0


def test_custom_allreduce_follows_vllm_rules() -> None:
    assert custom_allreduce_applies(1 << 20, 8)
    assert not custom_allreduce_applies(8 * 2**20 + 16, 8)  # > 8 MiB goes to NCCL
    assert not custom_allreduce_applies(1 << 20, 16, nodes=2)  # spans nodes
    assert not custom_allreduce_applies(1 << 20, 3)  # world size not in {2, 4, 6, 8}
    assert not custom_allreduce_applies(1 << 20, 4, intra_fabric="pcie")  # > 2 GPUs need full NVLink
    assert custom_allreduce_applies(1 << 20, 2, intra_fabric="pcie")


def test_custom_allreduce_beats_nccl_on_small_messages_only_where_it_applies(h100: CollectiveParams) -> None:
    small = 256 * 2**10  # a decode batch's hidden states
    assert t(h100, "all_reduce", small, 8, custom_allreduce=True) < t(h100, "all_reduce", small, 8)
    big = 64 * 2**20
    assert t(h100, "all_reduce", big, 8, custom_allreduce=True) == t(h100, "all_reduce", big, 8)
    assert t(h100, "all_reduce", small, 16, nodes=2, custom_allreduce=True) == t(h100, "all_reduce", small, 16, 2)


def test_pcie_is_slower_than_nvlink(h100: CollectiveParams) -> None:
    s = 64 * 2**20
    nv = t(h100, "all_reduce", s, 4)
    pcie = collective_time("all_reduce", s, 4, intra_bw=63e9, inter_bw=None, params=h100, intra_fabric="pcie")
    assert pcie > 3 * nv


def test_bad_requests_are_refused(h100: CollectiveParams) -> None:
    with pytest.raises(ValueError, match="unknown collective"):
        t(h100, "broadcast_all", 1024, 8)
    with pytest.raises(ValueError, match="inter_bw"):
        collective_time("all_reduce", 1024, 16, nodes=2, intra_bw=NVLINK_H100, inter_bw=None, params=h100)
    with pytest.raises(ValueError, match="evenly"):
        t(h100, "all_reduce", 1024, 6, nodes=4)


def test_gpus_without_profiles_reuse_the_nearest_fit_and_say_so() -> None:
    b200 = load_collective_params("b200")
    assert "fallback" in b200.source
    assert b200.fabric("nvswitch") == load_collective_params("h100-sxm-80gb").fabric("nvlink")
    assert "fallback" in load_collective_params("mi300x").source


def test_matches_measured_h100_nccl_rows(h100: CollectiveParams) -> None:
    """APEX H100 profiles (data/profiles, copied from the reference data): one node, 2/4/8 GPUs."""
    if not (profiles_root() / "h100-sxm-80gb" / "collectives_apex").is_dir():
        pytest.skip("data/profiles not present (installed package without the checkout's data/ folder)")
    rows = read_collective_profiles("h100-sxm-80gb")
    keep = (rows.dataset == "apex") & np.isin(rows.nbytes, [2.0**20, 16 * 2.0**20, 128 * 2.0**20])
    rows = rows.select(keep)
    assert len(rows) == 3 * 3 * 4 + 3  # 3 sizes x 3 group sizes x 4 collectives + 3 send_recv
    ctx = BandwidthContext(lambda n: NVLINK_H100, lambda n: "nvlink", None)
    err = relative_errors(predict_collectives(rows, h100, ctx), rows.seconds)
    assert np.median(err) < 0.20
    assert np.max(err) < 0.6
