"""The inputs of one planning problem, resolved from names, paths and expressions into specs.

>>> s = load_specs(model="llama-3.1-70b", cluster="h100x8", workload="lmsys", slo="ttft=200ms,tpot=50ms")
>>> s.model.name, s.cluster.total_gpus, s.gpu.name, len(s.workload), s.slo.tpot
('llama-3.1-70b', 8, 'h100-sxm-80gb', 1024, 0.05)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .calibration.profile import CalibrationProfile, resolve_profile
from .catalog import check_cluster_gpus, get_cluster, get_engine, get_gpu, get_model, gpu_name, specs_dir
from .errors import SpecError, shorten
from .schema.cluster import ClusterSpec
from .schema.engine import EngineSpec
from .schema.gpu import GPUSpec
from .schema.model import ModelSpec
from .schema.slo import SLO, parse_slo
from .workload import Workload, load_workload

DEFAULT_MODEL = "llama-3.1-70b"
DEFAULT_CLUSTER = "h100x8"
DEFAULT_WORKLOAD = "lmsys"
DEFAULT_ENGINE = "vllm-0.6"
DEFAULT_SLO = "ttft=200ms,tpot=50ms"


@dataclass(frozen=True)
class Specs:
    """Model, cluster (with its GPU specs), engine, workload and SLO of one problem."""

    model: ModelSpec
    cluster: ClusterSpec
    engine: EngineSpec
    workload: Workload
    slo: SLO
    gpus: dict[str, GPUSpec]
    #: engine and hardware constants of the user's cluster over the built-in fit (``apex-opt calibrate``)
    calibration: CalibrationProfile | None = None

    @property
    def gpu(self) -> GPUSpec:
        """The GPU of the first (or only) node group."""
        return self.gpus[self.cluster.gpu]


def with_engine_settings(specs: Specs, *, cuda_graphs: bool | None = None, attention_backend: str | None = None,
                         measured_at: str | None = None, prefix_caching: bool | None = None) -> Specs:
    """``specs`` with engine settings overridden for every plan, and the SLO's measurement point.

    ``cuda_graphs`` (vLLM ``--enforce-eager``, SGLang ``--disable-cuda-graph``), ``attention_backend`` (SGLang
    ``--attention-backend``), ``prefix_caching`` (vLLM ``--enable-prefix-caching``, SGLang's radix cache) and
    ``measured_at`` (``engine`` or ``client``: where the SLO and the reported latencies
    are measured). ``None`` keeps what ``specs`` has.

    >>> import apex_opt as ax
    >>> s = with_engine_settings(ax.load_specs(engine="sglang-0.4"), cuda_graphs=False, measured_at="client")
    >>> s.engine.cuda_graphs.enabled, s.slo.measured_at
    (False, 'client')
    """
    engine, slo = specs.engine, specs.slo
    if cuda_graphs is not None:
        engine = engine.model_copy(update={"cuda_graphs": engine.cuda_graphs.model_copy(
            update={"enabled": cuda_graphs})})
    if attention_backend is not None:
        engine = engine.model_copy(update={"eager_kernels": engine.eager_kernels.model_copy(
            update={"attention_backend": attention_backend})})
    if prefix_caching is not None:
        engine = engine.model_copy(update={"scheduler": engine.scheduler.model_copy(
            update={"prefix_caching": bool(prefix_caching)})})
    if measured_at is not None:
        if measured_at not in ("engine", "client"):
            raise SpecError(f"{{measured_at=}}{shorten(measured_at)}: must be engine or client", option="measured_at")
        slo = slo.model_copy(update={"measured_at": measured_at})
    return dataclasses.replace(specs, engine=engine, slo=slo)


def _fabric_of(gpu: GPUSpec) -> str | None:
    """The intra-node fabric a quick-form node of ``gpu`` has, from its link kind (None: guess from the name)."""
    kind = gpu.intra_node.kind.lower()
    if kind.startswith("pcie"):
        return "pcie"
    if kind.startswith(("xgmi", "infinity")):
        return "infinity-fabric"
    return "nvswitch" if kind.startswith("nvlink") else None


def resolve_cluster(cluster: str | ClusterSpec | None = None, *, gpu: str | None = None, nodes: int | None = None,
                    gpus_per_node: int | None = None) -> ClusterSpec:
    """A cluster from a catalog name / file, or from the quick form ``gpu`` x ``nodes`` x ``gpus_per_node``."""
    if isinstance(cluster, ClusterSpec):
        check_cluster_gpus(cluster)
        return cluster
    if isinstance(cluster, str) and not cluster.strip():
        raise SpecError("{cluster=}'': an empty name; give a catalog cluster (apex-opt catalog clusters), a cluster "
                        "YAML file, or leave {cluster} out", option="cluster")
    if cluster is not None and gpu is not None:
        raise SpecError("give either {cluster} or {gpu} (with {nodes}/{gpus_per_node}), not both",
                        option=("cluster", "gpu", "nodes", "gpus_per_node"))
    if gpu is not None:
        spec = get_gpu(gpu)
        if nodes is not None and nodes < 1:
            raise SpecError(f"{{nodes=}}{nodes}: must be at least 1", option="nodes")
        if gpus_per_node is not None and gpus_per_node < 1:
            raise SpecError(f"{{gpus_per_node=}}{gpus_per_node}: must be at least 1", option="gpus_per_node")
        return ClusterSpec.homogeneous(gpu_name(gpu), nodes or 1, gpus_per_node or 8, fabric=_fabric_of(spec))
    return get_cluster(cluster or DEFAULT_CLUSTER)


def load_specs(
    model: str | ModelSpec = DEFAULT_MODEL,
    cluster: str | ClusterSpec | None = None,
    *,
    gpu: str | Path | None = None,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    engine: str | EngineSpec = DEFAULT_ENGINE,
    workload: str | Workload = DEFAULT_WORKLOAD,
    slo: str | SLO | None = DEFAULT_SLO,
    calibration: str | Path | CalibrationProfile | None = None,
) -> Specs:
    """Resolve every input of a problem; unknown names raise :class:`UnknownNameError` with close matches.

    ``model`` is a catalog name, a Hugging Face id (``meta-llama/Llama-3.1-70B-Instruct``: a catalog model's id
    in any case is that model; another id's config.json is read through the Hugging Face cache, see
    :mod:`apex_opt.hub`), the path of a Hugging Face ``config.json`` or a :class:`ModelSpec`.

    ``calibration`` (a profile written by ``apex-opt calibrate``, or its path) replaces built-in engine and hardware
    constants with the user's cluster's wherever this problem is estimated or simulated. ``gpu`` is a catalog name
    or the path of a GPU YAML file (the fields of ``specs/gpus/*.yaml``), e.g. ``docs/examples/gpu-custom.yaml``."""
    if isinstance(gpu, Path):
        gpu = str(gpu)
    for label, value, kinds, form in (
        ("model", model, (str, ModelSpec),
         "a catalog name such as 'llama-3.1-8b', a Hugging Face id, a config.json path or a ModelSpec"),
        ("cluster", cluster, (str, ClusterSpec, type(None)),
         "a catalog name such as 'h100x8', a YAML path or a ClusterSpec"),
        ("gpu", gpu, (str, type(None)), "a catalog GPU name such as 'h100-sxm-80gb' or a GPU YAML path"),
        ("engine", engine, (str, EngineSpec),
         "'vllm-0.6', 'vllm-v1', 'sglang-0.4', an engine YAML path or an EngineSpec"),
        ("workload", workload, (str, Workload),
         "a catalog name, a trace path, a synthetic:... expression or a Workload"),
        ("slo", slo, (str, SLO, type(None)), "a string such as 'ttft=200ms,tpot=50ms' or an SLO"),
    ):
        if not isinstance(value, kinds):
            raise SpecError(f"load_specs({label}={shorten(value)}): got a value of type {type(value).__name__}; "
                            f"give {form}", option=label)
    for label, count in (("nodes", nodes), ("gpus_per_node", gpus_per_node)):
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise SpecError(f"load_specs({label}={shorten(count)}): must be a whole number, e.g. {label}=2",
                            option=label)
    model_spec = model if isinstance(model, ModelSpec) else get_model(model)
    cluster_spec = resolve_cluster(cluster, gpu=gpu, nodes=nodes, gpus_per_node=gpus_per_node)
    engine_spec = engine if isinstance(engine, EngineSpec) else get_engine(engine)
    wl = workload if isinstance(workload, Workload) else load_workload(workload, specs_dir=specs_dir())
    slo_spec = slo if isinstance(slo, SLO) else parse_slo(slo)
    gpus = {g.gpu: get_gpu(g.gpu) for g in cluster_spec.nodes}
    return Specs(model_spec, cluster_spec, engine_spec, wl, slo_spec, gpus, resolve_profile(calibration))
