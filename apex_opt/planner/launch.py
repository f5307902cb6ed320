"""Launch commands for a plan: ``vllm serve`` and SGLang's ``python -m sglang.launch_server``.

Flags are the engines' own: vLLM ``--tensor-parallel-size``, ``--pipeline-parallel-size``, ``--max-num-seqs``,
``--max-num-batched-tokens``, ``--enable-chunked-prefill``, ``--quantization fp8``, ``--kv-cache-dtype fp8``,
``--enable-expert-parallel`` (uneven pipeline splits through ``VLLM_PP_LAYER_PARTITION``); SGLang ``--tp``,
``--dp``, ``--ep-size`` with ``--enable-ep-moe``, ``--enable-dp-attention`` (wide EP: ``--tp`` is then every GPU of
the group), ``--chunked-prefill-size``, ``--max-running-requests``,
``--quantization``, ``--kv-cache-dtype``. Data-parallel replicas run as separate vLLM 0.6 servers (one per GPU
group, behind a load balancer); vLLM V1 and SGLang take ``--data-parallel-size`` / ``--dp``.

>>> from apex_opt.schema.plan import Plan
>>> print(vllm_command(Plan(gpu="h100-sxm-80gb", tp=4, dp=2), "llama-3.1-70b", engine="vllm-0.6"))
# 2 replicas: one server per group of 4 GPUs, behind a load balancer
CUDA_VISIBLE_DEVICES=0,1,2,3 vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size 4 --port 8000
CUDA_VISIBLE_DEVICES=4,5,6,7 vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size 4 --port 8001
"""

from __future__ import annotations

from ..ir.parallel import default_layer_split
from ..schema.engine import EngineSpec
from ..schema.plan import Deployment, Plan

#: catalog name -> Hugging Face repository served (instruct variants where they exist)
HF_REPOS = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B-Instruct",
    "llama-3.1-405b": "meta-llama/Llama-3.1-405B-Instruct",
    "mistral-large-2407": "mistralai/Mistral-Large-Instruct-2407",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "mixtral-8x22b": "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B-Instruct",
    "qwen3-235b-a22b": "Qwen/Qwen3-235B-A22B",
    "deepseek-v3": "deepseek-ai/DeepSeek-V3",
    "kimi-k2": "moonshotai/Kimi-K2-Instruct",
}


def hf_repo(model: str) -> str:
    return HF_REPOS.get(model, model)


def _vllm_args(plan: Plan, num_layers: int | None) -> tuple[list[str], list[str]]:
    """(environment, flags) of one vLLM replica."""
    env: list[str] = []
    args = [f"--tensor-parallel-size {plan.tp}"]
    if plan.pp > 1:
        args.append(f"--pipeline-parallel-size {plan.pp}")
        if plan.layers_per_stage and num_layers and plan.layers_per_stage != default_layer_split(num_layers, plan.pp):
            env.append(f"VLLM_PP_LAYER_PARTITION={','.join(str(n) for n in plan.layers_per_stage)}")
    if plan.ep > 1:
        args.append("--enable-expert-parallel")
    if plan.max_num_seqs is not None:
        args.append(f"--max-num-seqs {plan.max_num_seqs}")
    if plan.max_num_batched_tokens is not None:
        args.append(f"--max-num-batched-tokens {plan.max_num_batched_tokens}")
    if plan.chunked_prefill:
        args.append("--enable-chunked-prefill")
    if plan.weight_dtype == "fp8":
        args.append("--quantization fp8")
    elif plan.weight_dtype == "int4":
        args.append("--quantization awq  # needs an AWQ int4 checkpoint")
    if plan.kv_dtype == "fp8":
        args.append("--kv-cache-dtype fp8")
    return env, args


def vllm_command(plan: Plan, model: str, *, engine: str = "vllm-0.6", num_layers: int | None = None,
                 port: int = 8000, gpus_per_node: int = 8) -> str:
    """The ``vllm serve`` command(s) for ``plan``; one line per server."""
    repo = hf_repo(model)
    env, args = _vllm_args(plan, num_layers)
    comment = [a for a in args if "#" in a]
    args = [a.split("  #")[0] for a in args]
    flags = " ".join(args)
    note = f"  # {comment[0].split('# ')[1]}" if comment else ""
    per = plan.gpus_per_replica
    lines = []
    if plan.dp_attention and plan.dp > 1:  # attention data parallel, experts over every rank (vLLM V1)
        lines.append(" ".join([*env, f"vllm serve {repo} {flags} --data-parallel-size {plan.dp} --port {port}"])
                     + note + ("  # spans nodes: see vLLM's multi-node data-parallel deployment" if plan.gpus >
                               gpus_per_node else ""))
    elif plan.dp > 1 and engine == "vllm-v1":
        lines.append(" ".join([*env, f"vllm serve {repo} {flags} --data-parallel-size {plan.dp} --port {port}"])
                     + note)
    elif plan.dp > 1 and per <= gpus_per_node:
        lines.append(f"# {plan.dp} replicas: one server per group of {per} GPUs, behind a load balancer")
        for r in range(plan.dp):
            first = r * per
            node, local = divmod(first, gpus_per_node)
            devices = ",".join(str(g) for g in range(local, local + per))
            prefix = " ".join([f"CUDA_VISIBLE_DEVICES={devices}", *env])
            where = f"  # node {node}" if plan.gpus > gpus_per_node else ""
            lines.append(f"{prefix} vllm serve {repo} {flags} --port {port + r % max(gpus_per_node // per, 1)}"
                         f"{note}{where}")
    elif plan.dp > 1:
        nodes = -(-per // gpus_per_node)
        lines.append(f"# {plan.dp} replicas of {nodes} nodes each, behind a load balancer; on each replica's Ray "
                     "cluster (vLLM multi-node serving) run:")
        prefix = " ".join(env)
        lines.append(f"{prefix + ' ' if prefix else ''}vllm serve {repo} {flags} --port {port}{note}")
    else:
        prefix = " ".join(env)
        lines.append(f"{prefix + ' ' if prefix else ''}vllm serve {repo} {flags} --port {port}{note}")
        if per > gpus_per_node:
            lines.append("# the replica spans nodes: start a Ray cluster over them first (vLLM multi-node serving)")
    return "\n".join(lines)


def sglang_command(plan: Plan, model: str, *, port: int = 30000) -> str:
    """The ``python -m sglang.launch_server`` command for ``plan``."""
    repo = hf_repo(model)
    if plan.dp_attention and plan.dp > 1:  # SGLang's --tp is every GPU of the group; attention runs dp-way
        args = [f"--model-path {repo}", f"--tp {plan.tp * plan.dp}", f"--dp {plan.dp}", "--enable-dp-attention"]
    else:
        args = [f"--model-path {repo}", f"--tp {plan.tp}"]
        if plan.dp > 1:
            args.append(f"--dp {plan.dp}")
    if plan.pp > 1:
        args.append(f"--pp-size {plan.pp}")
    if plan.ep > 1:
        args.append(f"--enable-ep-moe --ep-size {plan.ep}")
    if plan.max_num_batched_tokens is not None:
        args.append(f"--chunked-prefill-size {plan.max_num_batched_tokens}")
    if plan.max_num_seqs is not None:
        args.append(f"--max-running-requests {plan.max_num_seqs}")
    if plan.weight_dtype == "fp8":
        args.append("--quantization fp8")
    elif plan.weight_dtype == "int4":
        args.append("--quantization awq")
    if plan.kv_dtype == "fp8":
        args.append("--kv-cache-dtype fp8_e5m2")
    line = f"python -m sglang.launch_server {' '.join(args)} --port {port}"
    if plan.pp > 1:
        line += "  # --pp-size needs SGLang >= 0.4.8; 0.4.x before it has no pipeline parallelism"
    return line


def disaggregated_commands(deployment: Deployment, model: str, *, num_layers: int | None = None) -> dict:
    """Commands for a prefill/decode deployment: one server per replica of each role, then the PD router.

    vLLM (V1 engine) moves the KV cache with its NIXL connector (``--kv-transfer-config``), behind a proxy that
    sends each request to a prefill server with ``max_tokens=1`` and then to a decode server; SGLang marks each
    server's role with ``--disaggregation-mode`` and fronts them with its PD load balancer.
    """
    repo = hf_repo(model)
    nixl = """--kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'"""
    vllm = [f"# {_xpyd(deployment)}: one server per replica; GPUs are numbered across the cluster, prefill first"]
    sglang = list(vllm)
    first = 0
    ports = {"prefill": [], "decode": []}
    for plan in deployment.plans:
        env, args = _vllm_args(Plan(**{**plan.model_dump(), "dp": 1}), num_layers)
        args = [a.split("  #")[0] for a in args]
        for r in range(plan.dp):
            devices = f"{first}-{first + plan.gpus_per_replica - 1}" if plan.gpus_per_replica > 1 else str(first)
            port = 8000 + len(ports["prefill"]) + len(ports["decode"])
            ports[plan.role].append(port)
            prefix = " ".join(env)
            vllm.append(f"{prefix + ' ' if prefix else ''}vllm serve {repo} {' '.join(args)} {nixl} --port {port}"
                        f"  # {plan.role} {r}, GPUs {devices}")
            sg = sglang_command(Plan(**{**plan.model_dump(), "dp": 1}), model, port=port + 22000).split("  #")[0]
            sglang.append(f"{sg} --disaggregation-mode {plan.role}  # {plan.role} {r}, GPUs {devices}")
            first += plan.gpus_per_replica
    vllm.append(f"# then a PD proxy in front (vLLM's examples/disaggregated): each request goes to a prefill server "
                f"(ports {', '.join(map(str, ports['prefill']))}) with max_tokens=1, then to a decode server "
                f"(ports {', '.join(map(str, ports['decode']))})")
    sglang.append("# then SGLang's PD load balancer in front: python -m sglang.srt.disaggregation.mini_lb "
                  "--prefill http://<prefill host>:<port> ... --decode http://<decode host>:<port> ...")
    return {"vllm": "\n".join(vllm), "sglang": "\n".join(sglang)}


def _xpyd(deployment: Deployment) -> str:
    x = sum(p.dp for p in deployment.plans if p.role == "prefill")
    y = sum(p.dp for p in deployment.plans if p.role == "decode")
    return f"{x}P{y}D"


def engine_flags(engine: EngineSpec) -> dict[str, list[str]]:
    """Flags that set the engine settings a plan was priced with, where they differ from the engine's defaults
    (``apex-opt solve --no-cuda-graphs``, ``--attention-backend``, ``--prefix-caching/--no-prefix-caching``).

    >>> from apex_opt.catalog import get_engine
    >>> from apex_opt.specs import load_specs, with_engine_settings
    >>> engine_flags(with_engine_settings(load_specs(engine="sglang-0.4"), cuda_graphs=False).engine)
    {'vllm': ['--enforce-eager'], 'sglang': ['--disable-cuda-graph']}
    """
    from ..catalog import get_engine

    default = get_engine(engine.name) if engine.name in _engine_names() else engine
    vllm: list[str] = []
    sglang: list[str] = []
    if not engine.cuda_graphs.enabled:
        vllm.append("--enforce-eager")
        sglang.append("--disable-cuda-graph")
    backend = engine.eager_kernels.attention_backend
    if backend != default.eager_kernels.attention_backend:
        sglang.append(f"--attention-backend {backend}")
    caching = engine.scheduler.prefix_caching
    if caching != default.scheduler.prefix_caching or engine.family == "vllm-v0" and caching:
        vllm.append("--enable-prefix-caching" if caching else "--no-enable-prefix-caching")
        if not caching:
            sglang.append("--disable-radix-cache")
    return {"vllm": vllm, "sglang": sglang}


def _engine_names() -> list[str]:
    from ..catalog import ENGINES

    return list(ENGINES.names())


def launch_commands(plan: Plan | Deployment, model: str, *, engine: str = "vllm-0.6", num_layers: int | None = None,
                    gpus_per_node: int = 8, flags: dict[str, list[str]] | None = None) -> dict:
    """``{"vllm": ..., "sglang": ...}`` for ``plan`` (a disaggregated :class:`Deployment` too); ``flags`` (from
    :func:`engine_flags`) are added to every server line."""
    out = _launch_commands(plan, model, engine=engine, num_layers=num_layers, gpus_per_node=gpus_per_node)
    for key, extra in (flags or {}).items():
        if extra and key in out:
            out[key] = "\n".join(_with_flags(line, extra) for line in out[key].split("\n"))
    return out


def _with_flags(line: str, extra: list[str]) -> str:
    if " --port " not in line:
        return line
    head, tail = line.split(" --port ", 1)
    return f"{head} {' '.join(extra)} --port {tail}"


def _launch_commands(plan: Plan | Deployment, model: str, *, engine: str = "vllm-0.6", num_layers: int | None = None,
                     gpus_per_node: int = 8) -> dict:
    if isinstance(plan, Deployment):
        if plan.disaggregated:
            return disaggregated_commands(plan, model, num_layers=num_layers)
        vllm, sglang = [], []
        for p in plan.plans:  # a mixed-GPU deployment: each kind's servers, one load balancer weighting them
            vllm.append(f"# on the {p.gpu} nodes:")
            vllm.append(vllm_command(p, model, engine=engine, num_layers=num_layers, gpus_per_node=gpus_per_node))
            sglang.append(f"# on the {p.gpu} nodes:")
            sglang.append(sglang_command(p, model))
        note = "# one load balancer over all of them, weighting each server by its decode throughput"
        return {"vllm": "\n".join([*vllm, note]), "sglang": "\n".join([*sglang, note])}
    return {"vllm": vllm_command(plan, model, engine=engine, num_layers=num_layers, gpus_per_node=gpus_per_node),
            "sglang": sglang_command(plan, model)}


__all__ = ["HF_REPOS", "disaggregated_commands", "hf_repo", "launch_commands", "sglang_command", "vllm_command"]
