"""Launch commands for a plan: ``vllm serve`` and SGLang's ``python -m sglang.launch_server``.

Flags are the engines' own: vLLM ``--tensor-parallel-size``, ``--pipeline-parallel-size``, ``--max-num-seqs``,
``--max-num-batched-tokens``, ``--enable-chunked-prefill``, ``--quantization fp8``, ``--kv-cache-dtype fp8``,
``--enable-expert-parallel`` (uneven pipeline splits through ``VLLM_PP_LAYER_PARTITION``); SGLang ``--tp``,
``--dp``, ``--ep-size`` with ``--enable-ep-moe``, ``--enable-dp-attention`` (wide EP: ``--tp`` is then every GPU of
the group), ``--chunked-prefill-size``, ``--max-running-requests``,
``--quantization``, ``--kv-cache-dtype``. Data-parallel replicas run as separate vLLM 0.6 servers (one per GPU
group, behind a load balancer); vLLM V1 and SGLang take ``--data-parallel-size`` / ``--dp``. Each line carries only
flags its engine version has (:data:`FLAG_VERSIONS`), the context one replica's KV cache holds (``--max-model-len``,
``--context-length``; :func:`launch_settings`), what the checkpoint needs (``--trust-remote-code``; no
``--quantization fp8`` for an fp8 checkpoint), and one line per node for a replica wider than a node.

>>> from apex_opt.schema.plan import Plan
>>> print(vllm_command(Plan(gpu="h100-sxm-80gb", tp=4, dp=2), "llama-3.1-70b", engine="vllm-0.6"))
# 2 replicas: one server per group of 4 GPUs, behind a load balancer
CUDA_VISIBLE_DEVICES=0,1,2,3 vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size 4 --port 8000
CUDA_VISIBLE_DEVICES=4,5,6,7 vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size 4 --port 8001
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from ..errors import ApexOptError
from ..ir.parallel import default_layer_split
from ..perf.replica import build_replica
from ..schema.engine import EngineSpec
from ..schema.gpu import GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Deployment, Plan
from ..topology.graph import Topology

#: Ports and placeholders of multi-node lines: Ray's default GCS port, the port of vLLM's data-parallel
#: coordinator (the value in vLLM's data-parallel deployment docs) and of SGLang's torch.distributed rendezvous.
RAY_PORT = 6379
DP_RPC_PORT = 13345
SGLANG_DIST_PORT = 5000

V06, V1, SG04 = "vllm-0.6", "vllm-v1", "sglang-0.4"

#: Which engine version has each flag a launch line may carry. Checked in each version's source or versioned docs:
#: vLLM 0.6.0 = ``EngineArgs.add_cli_args`` in ``vllm/engine/arg_utils.py`` of the v0.6.0 wheel (docs/engines.md) and
#: the engine-arguments page of docs.vllm.ai v0.6.3.post1 (no data- or expert-parallel flag, ``--enable-prefix-caching``
#: a plain switch); vLLM V1 = 0.11.0, the version specs/engines/vllm-v1.yaml models (docs.vllm.ai engine arguments;
#: ``serving/data_parallel_deployment.md`` and ``examples/online_serving/multi_instance_data_parallel.py`` of v0.9.1 for
#: the multi-node data-parallel flags and ``--headless``; ``serving/expert_parallel_deployment.md``); SGLang 0.4 = 0.4.4
#: (specs/engines/sglang-0.4.yaml), ``python/sglang/srt/server_args.py`` and ``docs/backend/server_arguments.md``
#: (``--enable-ep-moe``/``--ep-size`` from 0.4.1, docs/engines.md section 4; ``--pp-size`` only from 0.4.8).
FLAG_VERSIONS: dict[str, tuple[str, ...]] = {
    "--tensor-parallel-size": (V06, V1),
    "--pipeline-parallel-size": (V06, V1),
    "--max-model-len": (V06, V1),
    "--trust-remote-code": (V06, V1, SG04),
    "--max-num-seqs": (V06, V1),
    "--max-num-batched-tokens": (V06, V1),
    "--enable-chunked-prefill": (V06, V1),  # V1: always on, so the lines leave it out
    "--quantization": (V06, V1, SG04),
    "--kv-cache-dtype": (V06, V1, SG04),
    "--distributed-executor-backend": (V06, V1),
    "--enforce-eager": (V06, V1),
    "--enable-prefix-caching": (V06, V1),
    "--no-enable-prefix-caching": (V1,),
    "--enable-expert-parallel": (V1,),
    "--data-parallel-size": (V1,),
    "--data-parallel-size-local": (V1,),
    "--data-parallel-address": (V1,),
    "--data-parallel-rpc-port": (V1,),
    "--data-parallel-start-rank": (V1,),
    "--headless": (V1,),
    "--kv-transfer-config": (V1,),
    "--port": (V06, V1, SG04),
    "--model-path": (SG04,),
    "--tp": (SG04,),
    "--dp": (SG04,),
    "--enable-dp-attention": (SG04,),
    "--enable-ep-moe": (SG04,),
    "--ep-size": (SG04,),
    "--context-length": (SG04,),
    "--chunked-prefill-size": (SG04,),
    "--max-running-requests": (SG04,),
    "--nnodes": (SG04,),
    "--node-rank": (SG04,),
    "--dist-init-addr": (SG04,),
    "--host": (SG04,),
    "--disable-cuda-graph": (SG04,),
    "--disable-radix-cache": (SG04,),
    "--attention-backend": (SG04,),
    # speculative decoding (docs/simulator.md, "Speculative decoding"): V1 takes one JSON --speculative-config; V0
    # took separate arguments [unverified for 0.6.0]; SGLang 0.4 EAGLE/NEXTN (MTP); NGRAM and STANDALONE are later
    "--speculative-config": (V1,),
    "--speculative-model": (V06,),
    "--num-speculative-tokens": (V06,),
    "--speculative-algorithm": (SG04,),
    "--speculative-num-steps": (SG04,),
    "--speculative-eagle-topk": (SG04,),
    "--speculative-num-draft-tokens": (SG04,),
    "--speculative-draft-model-path": (SG04,),
}

#: vLLM V1 ``speculative_config.method`` and SGLang ``--speculative-algorithm`` of each apex-opt method
VLLM_SPEC_METHOD = {"ngram": "ngram", "eagle": "eagle", "mtp": "deepseek_mtp", "draft": "draft_model"}
SGLANG_SPEC_ALGORITHM = {"ngram": "NGRAM", "eagle": "EAGLE", "mtp": "NEXTN", "draft": "STANDALONE"}


def _vllm_spec_args(plan: Plan, version: str) -> tuple[list[str], list[str]]:
    """(flags, notes) for the plan's speculative decoding on vLLM ``version``."""
    sp = plan.speculative
    if sp is None:
        return [], []
    draft = sp.draft_model or "<draft-model>"
    if version == V06:
        model = "[ngram]" if sp.method == "ngram" else draft
        notes = ["vLLM 0.6 has no MTP drafting"] if sp.method == "mtp" else []
        return [f"--speculative-model {model}", f"--num-speculative-tokens {sp.num_tokens}"], notes
    config: dict[str, object] = {"method": VLLM_SPEC_METHOD[sp.method], "num_speculative_tokens": sp.num_tokens}
    if sp.method in ("eagle", "draft"):
        config["model"] = draft
    if sp.method == "ngram":
        config["prompt_lookup_max"] = 4
    return [f"--speculative-config '{json.dumps(config)}'"], []


def _sglang_spec_args(plan: Plan) -> list[str]:
    """SGLang flags for the plan's speculative decoding: a chain of k drafts (top-k 1), k + 1 tokens verified."""
    sp = plan.speculative
    if sp is None:
        return []
    args = [f"--speculative-algorithm {SGLANG_SPEC_ALGORITHM[sp.method]}", f"--speculative-num-steps {sp.num_tokens}",
            "--speculative-eagle-topk 1", f"--speculative-num-draft-tokens {sp.num_tokens + 1}"]
    if sp.method in ("eagle", "draft"):
        args.append(f"--speculative-draft-model-path {sp.draft_model or '<draft-model>'}")
    return args


def has_flag(engine: str, flag: str) -> bool:
    """Whether engine version ``engine`` (``vllm-0.6``, ``vllm-v1``, ``sglang-0.4``) accepts ``flag``.

    >>> has_flag("vllm-0.6", "--enable-expert-parallel"), has_flag("vllm-v1", "--enable-expert-parallel")
    (False, True)
    """
    return engine in FLAG_VERSIONS.get(flag, ())


def vllm_version(engine: str) -> str:
    """The vLLM version a line is written for: ``vllm-0.6`` for the V0 engine, else ``vllm-v1`` (also the vLLM line
    shown beside an SGLang plan)."""
    return V06 if engine in (V06, "vllm-v0") else V1


@dataclass(frozen=True)
class LaunchSettings:
    """What launch lines take besides the plan: context caps from the memory model and facts of the checkpoint.

    ``max_model_len`` (vLLM ``--max-model-len``) and ``context_length`` (SGLang ``--context-length``) are each the
    longest sequence one replica's KV cache holds under that line's engine (:func:`launch_settings`);
    ``chunked_prefill`` is the vLLM 0.6 chunked-prefill state the plan was simulated with, pinned on the line because
    a capped ``--max-model-len`` at or below 32,768 would turn vLLM 0.6's automatic switch off.
    """

    max_model_len: int | None = None
    context_length: int | None = None
    chunked_prefill: bool | None = None
    trust_remote_code: bool = False
    checkpoint_quantization: str | None = None

    @classmethod
    def of_model(cls, model: ModelSpec) -> LaunchSettings:
        """Only the checkpoint facts of ``model`` (no caps)."""
        return cls(trust_remote_code=model.trust_remote_code, checkpoint_quantization=model.checkpoint_quantization)

    @classmethod
    def of_catalog(cls, model: str) -> LaunchSettings:
        """The checkpoint facts of catalog model ``model``; none for a name the catalog does not know."""
        from ..catalog import MODELS, model_for_repo

        spec = MODELS.get(model) if model in MODELS else model_for_repo(model)
        return cls.of_model(spec) if spec is not None else cls()


def launch_settings(model: ModelSpec, gpu: GPUSpec, plan: Plan, engine: EngineSpec, *,
                    topology: Topology | None = None) -> LaunchSettings:
    """The caps and checkpoint facts for ``plan``'s launch lines, from the memory model the planner prices plans with.

    Each line's context is ``min(plan.max_model_len or the model's max_position_embeddings, KV tokens of one replica)``
    under that line's engine: ``engine`` for its own family, vLLM V1 or SGLang 0.4 for the other line. A line whose
    engine leaves no KV cache gets no cap.
    """
    from ..catalog import get_engine

    vllm_engine = engine if engine.family in ("vllm-v0", "vllm-v1") else get_engine(V1)
    sglang_engine = engine if engine.family == "sglang" else get_engine(SG04)
    longest = plan.max_model_len or model.max_position_embeddings
    caps: list[int | None] = []
    chunked = None
    for eng in (vllm_engine, sglang_engine):
        try:
            replica = build_replica(model, gpu, plan, eng, topology=topology)
        except (ApexOptError, ValueError):  # the other engine cannot run this layout: no cap
            caps.append(None)
            continue
        kv = replica.memory.kv_tokens
        caps.append(min(longest, kv) if kv > 0 else None)
        if eng.family == "vllm-v0":
            chunked = replica.settings.chunked_prefill
    return replace(LaunchSettings.of_model(model), max_model_len=caps[0], context_length=caps[1],
                   chunked_prefill=chunked)


def hf_repo(model: str) -> str:
    """The Hugging Face repository served for ``model``: a catalog name's ``hf_repo``, else ``model`` as given (an HF
    id or a config path)."""
    from ..catalog import MODELS

    return (MODELS.get(model).hf_repo or model) if model in MODELS else model


#: wide EP is priced as a true all-to-all of each rank's tokens (dispatch and combine, docs/planner.md), which is what
#: DeepEP does; the engines' defaults move more (vLLM's allgather_reducescatter backend; SGLang 0.4's EP MoE layer
#: combines with an all-reduce). Backend names: vLLM's VLLM_ALL2ALL_BACKEND (deepep_high_throughput, pplx) and
#: SGLang's --enable-deepep-moe (0.4.5 and later), from their sources and deployment guides.
WIDE_EP_NOTE = {
    "vllm": "priced as DeepEP's all-to-all: VLLM_ALL2ALL_BACKEND=deepep_high_throughput needs DeepEP installed "
            "(the default allgather_reducescatter moves more bytes)",
    "sglang": "wide EP is priced as DeepEP's all-to-all: SGLang 0.4.5 and later take --enable-deepep-moe for it; "
              "0.4's --enable-ep-moe combines with an all-reduce and moves more bytes",
}


def _vllm_args(plan: Plan, num_layers: int | None, version: str = V06,
               settings: LaunchSettings | None = None) -> tuple[list[str], list[str], list[str]]:
    """(environment, flags, notes) of one vLLM replica on vLLM ``version``."""
    s = settings or LaunchSettings()
    env: list[str] = []
    notes: list[str] = []
    args = [f"--tensor-parallel-size {plan.tp}"]
    if plan.pp > 1:
        args.append(f"--pipeline-parallel-size {plan.pp}")
        if plan.layers_per_stage and num_layers and plan.layers_per_stage != default_layer_split(num_layers, plan.pp):
            env.append(f"VLLM_PP_LAYER_PARTITION={','.join(str(n) for n in plan.layers_per_stage)}")
    if plan.ep > 1:
        if has_flag(version, "--enable-expert-parallel"):
            args.append("--enable-expert-parallel")
            if plan.dp_attention and plan.dp > 1:
                env.append("VLLM_ALL2ALL_BACKEND=deepep_high_throughput")
                notes.append(WIDE_EP_NOTE["vllm"])
        else:
            notes.append("vLLM 0.6 has no expert parallelism: its experts run tensor-parallel")
    if s.trust_remote_code:
        args.append("--trust-remote-code")
    if s.max_model_len is not None:
        args.append(f"--max-model-len {s.max_model_len}")
    if plan.max_num_seqs is not None:
        args.append(f"--max-num-seqs {plan.max_num_seqs}")
    if plan.max_num_batched_tokens is not None:
        args.append(f"--max-num-batched-tokens {plan.max_num_batched_tokens}")
    chunked = plan.chunked_prefill if plan.chunked_prefill is not None else s.chunked_prefill
    if chunked and version == V06:  # V1 always chunks prefills
        args.append("--enable-chunked-prefill")
    if plan.weight_dtype == "fp8" and s.checkpoint_quantization != "fp8":
        args.append("--quantization fp8")
    elif plan.weight_dtype == "int4" and s.checkpoint_quantization is None:
        args.append("--quantization awq")
        notes.append("needs an AWQ int4 checkpoint")
    elif plan.weight_dtype in ("int8", "fp4") and s.checkpoint_quantization is None:
        fmt = "a W8A8 int8 (compressed-tensors)" if plan.weight_dtype == "int8" else "an NVFP4 (ModelOpt)"
        notes.append(f"needs {fmt} checkpoint: serve that repository; vLLM reads its quantization_config")
    if s.checkpoint_quantization and plan.weight_dtype in ("bf16", "fp16"):
        notes.append(f"the checkpoint is {s.checkpoint_quantization}: the engine serves it as stored")
    if plan.kv_dtype == "fp8":
        args.append("--kv-cache-dtype fp8")
    spec_args, spec_notes = _vllm_spec_args(plan, version)
    return env, args + spec_args, notes + spec_notes


def _note(notes: list[str]) -> str:
    return f"  # {'; '.join(notes)}" if notes else ""


def vllm_command(plan: Plan, model: str, *, engine: str = "vllm-0.6", num_layers: int | None = None,
                 port: int = 8000, gpus_per_node: int = 8, settings: LaunchSettings | None = None) -> str:
    """The ``vllm serve`` command(s) for ``plan`` on vLLM ``engine``; one line per server or node.

    A replica wider than a node is a Ray cluster over its nodes (``ray start`` on each, ``vllm serve`` on the head);
    vLLM V1 data parallelism over several nodes runs one ``vllm serve`` per node (``--headless`` after the first).
    ``settings`` default to the catalog's checkpoint facts for ``model`` (no context cap).
    """
    version = vllm_version(engine)
    settings = settings if settings is not None else LaunchSettings.of_catalog(model)
    repo = hf_repo(model)
    env, args, notes = _vllm_args(plan, num_layers, version, settings)
    prefix = " ".join(env) + " " if env else ""
    serve = f"{prefix}vllm serve {repo} {' '.join(args)}"
    per = plan.gpus_per_replica
    lines: list[str] = []
    one_server = plan.dp > 1 and (plan.dp_attention or version == V1) and has_flag(version, "--data-parallel-size")
    if one_server and per <= gpus_per_node:  # vLLM V1: one server with data-parallel ranks
        dp = f"--data-parallel-size {plan.dp}"
        if plan.gpus <= gpus_per_node:
            lines.append(f"{serve} {dp} --port {port}{_note(notes)}")
        else:
            local = gpus_per_node // per
            nodes = -(-plan.dp // local)
            lines.append(f"# {plan.dp} data-parallel ranks on {nodes} nodes ({local} per node); run each line on its "
                         "node, <node-0-ip> being the first node's address")
            for n in range(nodes):
                here = min(local, plan.dp - n * local)
                common = (f"{dp} --data-parallel-size-local {here} --data-parallel-address <node-0-ip> "
                          f"--data-parallel-rpc-port {DP_RPC_PORT}")
                if n == 0:
                    lines.append(f"{serve} {common} --port {port}{_note(['node 0, API server', *notes])}")
                else:
                    lines.append(f"{serve} --headless {common} --data-parallel-start-rank {n * local} --port {port}"
                                 f"  # node {n}")
    elif plan.dp > 1 and per <= gpus_per_node:
        lines.append(f"# {plan.dp} replicas: one server per group of {per} GPUs, behind a load balancer")
        for r in range(plan.dp):
            first = r * per
            node, local = divmod(first, gpus_per_node)
            devices = ",".join(str(g) for g in range(local, local + per))
            where = [f"node {node}"] if plan.gpus > gpus_per_node else []
            lines.append(f"CUDA_VISIBLE_DEVICES={devices} {serve} --port {port + r % max(gpus_per_node // per, 1)}"
                         f"{_note([*notes, *where])}")
    elif per <= gpus_per_node:
        lines.append(f"{serve} --port {port}{_note(notes)}")
    else:  # each replica spans nodes: a Ray cluster over them, vllm serve on its head node
        nodes = -(-per // gpus_per_node)
        if plan.dp > 1:
            lines.append(f"# {plan.dp} replicas of {nodes} nodes each, behind a load balancer; each is its own Ray "
                         "cluster")
        lines.append(f"# a replica spans {nodes} nodes: start Ray on each (<node-K-ip> is node K's address), then "
                     "vllm serve on the head node once every node has joined")
        for r in range(plan.dp):
            head = r * nodes
            lines.append(f"{prefix}ray start --head --port {RAY_PORT}  # node {head} (head)")
            lines.extend(f"{prefix}ray start --address <node-{head}-ip>:{RAY_PORT}  # node {head + n}"
                         for n in range(1, nodes))
            lines.append(f"{serve} --distributed-executor-backend ray --port {port}"
                         f"{_note([f'node {head}', *notes])}")
    return "\n".join(lines)


def _sglang_args(plan: Plan, repo: str, settings: LaunchSettings) -> list[str]:
    """Flags of one SGLang server for ``plan`` (its parallel layout first)."""
    if plan.dp_attention and plan.dp > 1:  # SGLang's --tp is every GPU of the group; attention runs dp-way
        args = [f"--model-path {repo}", f"--tp {plan.tp * plan.dp}", f"--dp {plan.dp}", "--enable-dp-attention"]
    else:
        args = [f"--model-path {repo}", f"--tp {plan.tp}"]
    if plan.pp > 1:
        args.append(f"--pp-size {plan.pp}")
    if plan.ep > 1:
        args.append(f"--enable-ep-moe --ep-size {plan.ep}")
    if settings.trust_remote_code:
        args.append("--trust-remote-code")
    if settings.context_length is not None:
        args.append(f"--context-length {settings.context_length}")
    if plan.max_num_batched_tokens is not None:
        args.append(f"--chunked-prefill-size {plan.max_num_batched_tokens}")
    if plan.max_num_seqs is not None:
        args.append(f"--max-running-requests {plan.max_num_seqs}")
    if plan.weight_dtype == "fp8" and settings.checkpoint_quantization != "fp8":  # SGLang reads an fp8 checkpoint as is
        args.append("--quantization fp8")
    elif plan.weight_dtype == "int4" and settings.checkpoint_quantization is None:
        args.append("--quantization awq")
    if plan.kv_dtype == "fp8":
        args.append("--kv-cache-dtype fp8_e5m2")
    return args + _sglang_spec_args(plan)


def _sglang_servers(plan: Plan, gpus_per_node: int) -> list[tuple[int, int, int]]:
    """(first node, nodes, data-parallel replicas) of each SGLang server ``plan`` runs as."""
    if plan.dp_attention and plan.dp > 1:
        return [(0, -(-plan.tp * plan.dp // gpus_per_node), plan.dp)]
    per = plan.gpus_per_replica
    if plan.dp == 1 or plan.gpus <= gpus_per_node:
        return [(0, -(-plan.gpus // gpus_per_node), plan.dp)]
    if per <= gpus_per_node:  # one server per node, its replicas as --dp
        local = gpus_per_node // per
        return [(n, 1, min(local, plan.dp - n * local)) for n in range(-(-plan.dp // local))]
    nodes = -(-per // gpus_per_node)
    return [(r * nodes, nodes, 1) for r in range(plan.dp)]


def sglang_command(plan: Plan, model: str, *, port: int = 30000, gpus_per_node: int = 8,
                   settings: LaunchSettings | None = None) -> str:
    """The ``python -m sglang.launch_server`` command(s) for ``plan``: one line per server, or per node of a server
    wider than a node (``--nnodes N --node-rank R --dist-init-addr <first node>:PORT``)."""
    settings = settings if settings is not None else LaunchSettings.of_catalog(model)
    args = _sglang_args(plan, hf_repo(model), settings)
    servers = _sglang_servers(plan, gpus_per_node)
    tail = "  # --pp-size needs SGLang >= 0.4.8; 0.4.x before it has no pipeline parallelism" if plan.pp > 1 else ""
    lines: list[str] = []
    if plan.dp_attention and plan.ep > 1:
        lines.append(f"# {WIDE_EP_NOTE['sglang']}")
    if len(servers) > 1:
        lines.append(f"# {len(servers)} servers, one per {'node' if servers[0][1] == 1 else 'group of nodes'}, "
                     "behind a load balancer")
    if any(nodes > 1 for _, nodes, _ in servers):
        lines.append("# a server spans nodes: run each line on its node; <node-K-ip> is node K's address")
    for first, nodes, dp in servers:
        flags = list(args)
        if dp > 1 and not (plan.dp_attention and plan.dp > 1):
            flags.insert(2, f"--dp {dp}")
        cmd = f"python -m sglang.launch_server {' '.join(flags)}"
        if nodes == 1:
            where = f"node {first}" if len(servers) > 1 else ""
            note = tail or (f"  # {where}" if where else "")
            lines.append(f"{cmd} --port {port}{note}")
            continue
        for rank in range(nodes):
            lines.append(f"{cmd} --nnodes {nodes} --node-rank {rank} --dist-init-addr <node-{first}-ip>:"
                         f"{SGLANG_DIST_PORT} --port {port}{tail or f'  # node {first + rank}'}")
    return "\n".join(lines)


def disaggregated_commands(deployment: Deployment, model: str, *, num_layers: int | None = None,
                           settings: LaunchSettings | None = None) -> dict:
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
    ports: dict[str, list[int]] = {"prefill": [], "decode": []}
    for plan in deployment.plans:
        env, args, _ = _vllm_args(Plan(**{**plan.model_dump(), "dp": 1}), num_layers, V1, settings)
        for r in range(plan.dp):
            devices = f"{first}-{first + plan.gpus_per_replica - 1}" if plan.gpus_per_replica > 1 else str(first)
            port = 8000 + len(ports["prefill"]) + len(ports["decode"])
            ports[plan.role].append(port)
            prefix = " ".join(env)
            vllm.append(f"{prefix + ' ' if prefix else ''}vllm serve {repo} {' '.join(args)} {nixl} --port {port}"
                        f"  # {plan.role} {r}, GPUs {devices}")
            sg = sglang_command(Plan(**{**plan.model_dump(), "dp": 1}), model, port=port + 22000,
                                settings=settings).split("  #")[0]
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
                    gpus_per_node: int = 8, flags: dict[str, list[str]] | None = None,
                    settings: LaunchSettings | None = None) -> dict:
    """``{"vllm": ..., "sglang": ...}`` for ``plan`` (a disaggregated :class:`Deployment` too); ``flags`` (from
    :func:`engine_flags`) are added to every server line; ``settings`` (:func:`launch_settings`) cap each line's
    context and say what the checkpoint needs (default: the catalog's checkpoint facts, no cap)."""
    settings = settings if settings is not None else LaunchSettings.of_catalog(model)
    out = _launch_commands(plan, model, engine=engine, num_layers=num_layers, gpus_per_node=gpus_per_node,
                           settings=settings)
    for key, extra in (flags or {}).items():
        if extra and key in out:
            out[key] = "\n".join(_with_flags(line, extra) for line in out[key].split("\n"))
    return out


def _with_flags(line: str, extra: list[str]) -> str:
    if " --port " not in line or not ("vllm serve" in line or "sglang.launch_server" in line) or line.startswith("#"):
        return line  # comments and ray start lines take no engine flags
    head, tail = line.split(" --port ", 1)
    return f"{head} {' '.join(extra)} --port {tail}"


def _launch_commands(plan: Plan | Deployment, model: str, *, engine: str = "vllm-0.6", num_layers: int | None = None,
                     gpus_per_node: int = 8, settings: LaunchSettings) -> dict:
    if isinstance(plan, Deployment):
        facts = LaunchSettings(trust_remote_code=settings.trust_remote_code,
                               checkpoint_quantization=settings.checkpoint_quantization)
        if plan.disaggregated:
            return disaggregated_commands(plan, model, num_layers=num_layers, settings=facts)
        vllm, sglang = [], []
        for p in plan.plans:  # a mixed-GPU deployment: each kind's servers, one load balancer weighting them
            vllm.append(f"# on the {p.gpu} nodes:")
            vllm.append(vllm_command(p, model, engine=engine, num_layers=num_layers, gpus_per_node=gpus_per_node,
                                     settings=facts))
            sglang.append(f"# on the {p.gpu} nodes:")
            sglang.append(sglang_command(p, model, gpus_per_node=gpus_per_node, settings=facts))
        note = "# one load balancer over all of them, weighting each server by its decode throughput"
        return {"vllm": "\n".join([*vllm, note]), "sglang": "\n".join([*sglang, note])}
    return {"vllm": vllm_command(plan, model, engine=engine, num_layers=num_layers, gpus_per_node=gpus_per_node,
                                 settings=settings),
            "sglang": sglang_command(plan, model, gpus_per_node=gpus_per_node, settings=settings)}


__all__ = ["FLAG_VERSIONS", "LaunchSettings", "disaggregated_commands", "has_flag", "hf_repo", "launch_commands",
           "launch_settings", "sglang_command", "vllm_command", "vllm_version"]
