"""NVLink domains larger than a node (GB200 NVL72), and the Blackwell GPUs that come in them.

A cluster's ``nvlink_domain`` says how many GPUs share one NVLink switch fabric. GB200 NVL72 puts 18 compute trays
of 4 GPUs on one switch system, so a tensor- or expert-parallel group spanning trays of one rack talks over NVLink
at 900 GB/s per direction, not over the 400 Gb/s NICs; only a group spanning racks uses the network. Without the
field each node is its own domain, as before.
"""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.catalog import get_cluster, get_engine, get_gpu, get_model, specs_dir
from apex_opt.cli.main import cli
from apex_opt.errors import SpecError
from apex_opt.perf.gemm import choose_calibration
from apex_opt.perf.replica import build_replica
from apex_opt.planner.space import build_space
from apex_opt.schema.cluster import ClusterSpec
from apex_opt.schema.plan import Plan
from apex_opt.topology import Topology

NVLINK5 = 900e9  # bytes/s per GPU, one direction (1.8 TB/s bidirectional)
NIC_400G = 50e9


def racks(count: int, *, domain: int | None = 72) -> ClusterSpec:
    """``count`` GB200 NVL72 racks: 18 trays of 4 GPUs each, one NVLink domain per rack (None: no domain)."""
    spec = yaml.safe_load((specs_dir() / "clusters" / "gb200-nvl72.yaml").read_text())
    spec["nodes"][0]["count"] = 18 * count
    spec["name"] = f"gb200-nvl72x{count}"
    if domain is None:
        del spec["nvlink_domain"]
    else:
        spec["nvlink_domain"] = domain
    return ClusterSpec.parse(spec, source="test", kind="cluster")


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


# ------------------------------------------------------------------------------------------- the topology


def test_a_tp_group_spanning_trays_of_one_nvl72_domain_is_priced_over_nvlink():
    topo = Topology.build(get_cluster("gb200-nvl72"))
    one_tray, two_trays, whole_rack = topo.group_link(range(4)), topo.group_link(range(8)), topo.group_link(range(72))
    assert (two_trays.nodes, two_trays.domains, two_trays.fabric) == (2, 1, "nvswitch")
    assert (whole_rack.nodes, whole_rack.domains, whole_rack.fabric) == (18, 1, "nvswitch")
    for link in (two_trays, whole_rack):
        assert link.bandwidth == link.intra_bandwidth == NVLINK5
        assert link.inter_bandwidth is None
        assert link.latency == one_tray.latency  # one hop through the rack's switch trays, as inside a tray


def test_a_tensor_parallel_replica_across_trays_runs_at_nvlink_speed_without_the_custom_all_reduce():
    model, gpu, engine = get_model("llama-3.1-70b"), get_gpu("gb200"), get_engine("vllm-0.6")
    plan = Plan(gpu=gpu.name, tp=8)
    rack = build_replica(model, gpu, plan, engine, topology=Topology.build(get_cluster("gb200-nvl72")))
    trays = build_replica(model, gpu, plan, engine, topology=Topology.build(racks(1, domain=None)))
    assert rack.links["tp"].fabric == "nvswitch" and trays.links["tp"].fabric == "network"
    assert rack.settings.custom_all_reduce is False  # vLLM's custom all-reduce works within one host only
    assert rack.cost.stages[0].decode_coeffs(32)[0] < trays.cost.stages[0].decode_coeffs(32)[0]
    # an 8k-token prefill moves MBs per all-reduce: NVLink at 900 GB/s beats four 400 Gb/s NICs per tray
    assert rack.cost.stages[0].linear_time(8192, False) < 0.8 * trays.cost.stages[0].linear_time(8192, False)


def test_a_group_spanning_two_domains_uses_the_network():
    topo = Topology.build(racks(2))
    assert topo.num_gpus == 144
    inside = topo.group_link([0, 71])
    across = topo.group_link([71, 72])  # the last GPU of rack 0 and the first of rack 1
    assert (inside.fabric, inside.bandwidth, inside.domains) == ("nvswitch", NVLINK5, 1)
    assert (across.fabric, across.bandwidth, across.domains) == ("network", NIC_400G, 2)
    straddle = topo.group_link(range(64, 80))  # 8 GPUs in each rack
    assert (straddle.nodes, straddle.domains, straddle.fabric) == (4, 2, "network")
    assert (straddle.intra_bandwidth, straddle.inter_bandwidth) == (NVLINK5, NIC_400G)
    assert straddle.latency > inside.latency


def test_a_group_split_unevenly_over_domains_is_priced_as_spread_over_more_of_them():
    topo = Topology.build(racks(3))
    link = topo.group_link(range(64, 192))  # 8 + 72 + 48 GPUs over three racks
    assert link.domains == 4  # the collective model spreads 128 GPUs evenly: 4 parts of 32


def test_the_domain_must_be_whole_nodes():
    with pytest.raises(SpecError, match="not a whole number of nodes"):
        racks(1, domain=6)


# ------------------------------------------------------------------------------------------- before and after


def test_clusters_without_a_domain_behave_as_before():
    cluster = get_cluster("h100x16")
    assert cluster.nvlink_domain is None and cluster.domain_gpus(cluster.nodes[0]) == 8
    topo = Topology.build(cluster)
    node = topo.group_link(range(8))
    both = topo.group_link(range(16))
    assert (node.size, node.nodes, node.domains, node.fabric) == (8, 1, 1, "nvswitch")
    assert (node.bandwidth, node.inter_bandwidth, node.latency) == (450e9, None, pytest.approx(4e-6))
    assert (both.size, both.nodes, both.domains, both.fabric) == (16, 2, 2, "network")
    assert (both.bandwidth, both.intra_bandwidth, both.inter_bandwidth) == (NIC_400G, 450e9, NIC_400G)
    assert both.latency == pytest.approx(10e-6)
    assert [s.domain for s in topo.slots] == [s.node for s in topo.slots]
    assert {n for n in topo.graph if n.endswith("/switch")} == {"n0/switch", "n1/switch"}


def test_tensor_parallel_may_cross_trays_only_inside_the_domain():
    def tp_nodes(cluster: ClusterSpec) -> dict[int, set[int]]:
        specs = ax.load_specs(model="llama-3.1-70b", cluster=cluster, workload="synthetic:rate=2rps,requests=20,prompt=1024,output=128",
                              slo="ttft=2s,tpot=100ms")
        space = build_space(specs)
        out: dict[int, set[int]] = {}
        for c in space.candidates:
            out.setdefault(c.tp, set()).add(c.tp_nodes)
        return out

    assert tp_nodes(racks(1))[8] == {1}  # an 8-GPU TP group is two trays of one domain: allowed by placement.tp
    assert tp_nodes(racks(1, domain=None))[8] == {2}  # without the domain it spans two nodes: needs --tp-across-nodes


# ------------------------------------------------------------------------------------------- the catalog


@pytest.mark.parametrize("gpu", ["gb200", "b300"])
def test_gb200_and_b300_are_blackwell_on_roofline_and_say_so(gpu):
    spec = get_gpu(gpu)
    choice = choose_calibration(spec.name, spec.architecture)
    assert spec.architecture == "blackwell"
    assert (choice.kind, choice.fit) == ("roofline", "h100-sxm-80gb")
    assert choice.describe() == (f"roofline (no blackwell GPU measured: h100-sxm-80gb efficiencies on {gpu}'s own "
                                 "peaks)")
    rows = {r["name"]: r for r in json.loads(run("catalog", "gpus", "--format", "json"))}
    assert rows[gpu]["calibration"] == "roofline"
    out = run("estimate", "--model", "llama-3.1-8b", "--gpu", gpu)
    assert f"note: calibration of {gpu}: roofline (" in " ".join(out.split())


@pytest.mark.parametrize(("gpu", "figures"), [
    # GB200 NVL72 page, 72-GPU totals / 72, tensor figures halved for dense
    ("gb200", {"memory": 186 * 2**30, "memory_bandwidth": 8e12, "bf16": 2500e12, "fp8": 5000e12, "fp4": 10000e12,
               "nvlink": NVLINK5, "max_power": 1200.0}),
    # HGX B300 figures / 8; dense FP4 is not twice FP8 on Blackwell Ultra
    ("b300", {"memory": 288 * 2**30, "memory_bandwidth": 8e12, "bf16": 2250e12, "fp8": 4500e12, "fp4": 13125e12,
              "nvlink": NVLINK5, "max_power": 1100.0}),
])
def test_the_new_blackwell_specs_carry_their_published_figures(gpu, figures):
    spec = get_gpu(gpu)
    assert spec.memory == figures["memory"] and spec.memory_bandwidth == figures["memory_bandwidth"]
    for dtype in ("bf16", "fp8", "fp4"):
        assert spec.peak(dtype) == pytest.approx(figures[dtype])
    assert spec.intra_node.kind == "nvlink5" and spec.intra_node.bandwidth == figures["nvlink"]
    assert spec.power.max == figures["max_power"]
    assert set(spec.sources) >= {"memory", "memory_bandwidth", "peak_flops", "intra_node", "power", "price_per_hour"}
    assert "ESTIMATE" in spec.sources["power"] and "ASSUMPTION" in spec.sources["price_per_hour"]
    assert gpu in (specs_dir() / "gpus" / "SOURCES.md").read_text()


def test_b300_has_no_int8_peak_so_int8_quantization_is_refused():
    assert "int8" not in get_gpu("b300").peak_flops
    assert "int8" in get_gpu("gb200").peak_flops


def test_the_nvl72_and_hgx_b300_catalog_clusters():
    nvl72, b300 = get_cluster("gb200-nvl72"), get_cluster("b300x8")
    assert (nvl72.total_gpus, nvl72.num_nodes, nvl72.gpus_per_node, nvl72.nvlink_domain) == (72, 18, 4, 72)
    assert nvl72.gpu == "gb200" and nvl72.network.bandwidth_per_gpu == NIC_400G
    assert (b300.total_gpus, b300.gpu, b300.nvlink_domain) == (8, "b300", None)
    assert b300.network.bandwidth_per_gpu == 100e9  # one 800 Gb/s ConnectX-8 per GPU
    lines = run("catalog", "clusters").splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "18x4 gb200, NVLink 72" in next(line for line in lines if line.startswith("gb200-nvl72"))


def test_the_catalog_gpus_table_still_fits_80_columns_with_the_new_gpus():
    lines = run("catalog", "gpus").splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("gb200", "b300"))}
    assert rows["gb200"][-1] == rows["b300"][-1] == "roofline"
