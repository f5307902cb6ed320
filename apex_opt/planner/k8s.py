"""Kubernetes manifests for a plan (``apex-opt solve --emit-k8s DIR``).

Each replica group of a plan becomes one YAML file:

* replicas that fit a node: an ``apps/v1`` Deployment (one pod per replica, ``replicas`` = the plan's ``dp``) and a
  ``v1`` Service in front of its pods;
* replicas wider than a node: a ``leaderworkerset.x-k8s.io/v1`` LeaderWorkerSet (one leader-worker group per replica,
  one pod per node; the LWS controller must be installed) and a Service in front of the leaders.

Every serving container requests its GPUs as ``nvidia.com/gpu``, runs the plan's launch command (the engine's image:
``vllm/vllm-openai`` or ``lmsysorg/sglang``, tagged with the engine version the plan was priced with), is ready when
``/health`` answers, and mounts a memory-backed ``/dev/shm`` (NCCL and the engines' worker processes share tensors
through it). The functions return plain dicts; :func:`write_manifests` writes them as YAML.

>>> from apex_opt.schema.plan import Plan
>>> objs = manifests(Plan(gpu="h100-sxm-80gb", tp=2, dp=2), "llama-3.1-70b", engine="vllm-0.6")
>>> [(o["kind"], o["metadata"]["name"]) for o in objs["llama-3-1-70b-dp2-tp2-pp1"]]
[('Deployment', 'llama-3-1-70b-dp2-tp2-pp1'), ('Service', 'llama-3-1-70b-dp2-tp2-pp1')]
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from ..errors import ApexOptError
from ..schema.plan import Deployment, Plan
from .launch import (
    DP_RPC_PORT,
    RAY_PORT,
    SGLANG_DIST_PORT,
    LaunchSettings,
    _sglang_args,
    _vllm_args,
    has_flag,
    hf_repo,
    vllm_version,
)

#: serving image per engine version: the vLLM OpenAI server image and SGLang's image, tagged with the version
#: specs/engines/*.yaml model (``version``); SGLang's images carry a CUDA suffix
IMAGES = {
    "vllm-0.6": "vllm/vllm-openai:v0.6.0",
    "vllm-v1": "vllm/vllm-openai:v0.11.0",
    "sglang-0.4": "lmsysorg/sglang:v0.4.4-cu124",
}
PORTS = {"vllm": 8000, "sglang": 30000}
LWS_API = "leaderworkerset.x-k8s.io/v1"


def _name(*parts: str) -> str:
    """A DNS-1123 label (lower-case letters, digits and '-', at most 52 characters so pod suffixes still fit)."""
    text = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return text[:52].rstrip("-") or "apex-opt"


def _family(engine: str) -> str:
    return "sglang" if engine.startswith("sglang") else "vllm"


def _image(engine: str) -> str:
    return IMAGES["sglang-0.4"] if _family(engine) == "sglang" else IMAGES[vllm_version(engine)]


def _server_argv(plan: Plan, model: str, engine: str, settings: LaunchSettings, num_layers: int | None,
                 extra: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(argv, environment) of one serving process of ``plan`` (a single replica, or the dp-attention group)."""
    if _family(engine) == "sglang":
        args = _sglang_args(plan, hf_repo(model), settings)
        flat = shlex.split(" ".join([*args, *extra, "--host 0.0.0.0", f"--port {PORTS['sglang']}"]))
        return ["python3", "-m", "sglang.launch_server", *flat], []
    version = vllm_version(engine)
    env, args, _ = _vllm_args(plan, num_layers, version, settings)
    if plan.dp_attention and plan.dp > 1 and has_flag(version, "--data-parallel-size"):
        args.append(f"--data-parallel-size {plan.dp}")
    flat = shlex.split(" ".join([*args, *extra, f"--port {PORTS['vllm']}"]))
    return ["vllm", "serve", hf_repo(model), *flat], [tuple(e.split("=", 1)) for e in env]  # type: ignore[misc]


def _container(image: str, command: list[str], args: list[str], env: list[tuple[str, str]], gpus: int, port: int,
               *, probe: bool) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": "server",
        "image": image,
        "command": command,
        "args": args,
        "ports": [{"name": "http", "containerPort": port}],
        "resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if env:
        c["env"] = [{"name": k, "value": v} for k, v in env]
    if probe:  # loading weights takes minutes: probe from a minute on
        c["readinessProbe"] = {"httpGet": {"path": "/health", "port": "http"}, "initialDelaySeconds": 60,
                               "periodSeconds": 10, "failureThreshold": 3}
    return c


def _pod(labels: dict[str, str], container: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels},
        "spec": {
            "containers": [container],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        },
    }


def _service(name: str, selector: dict[str, str], port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "apex-opt"}},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "apex-opt"}


def group_manifests(plan: Plan, model: str, *, engine: str = "vllm-0.6", name: str, num_layers: int | None = None,
                    gpus_per_node: int = 8, settings: LaunchSettings | None = None,
                    flags: list[str] | None = None) -> list[dict[str, Any]]:
    """The objects of one replica group: Deployment + Service, or LeaderWorkerSet + Service when a replica is wider
    than a node."""
    settings = settings if settings is not None else LaunchSettings.of_catalog(model)
    family = _family(engine)
    port = PORTS[family]
    # one server over every GPU of the group (vLLM 0.6 has no data parallelism: its replicas stay apart)
    wide = plan.dp_attention and plan.dp > 1 and (family == "sglang" or has_flag(vllm_version(engine),
                                                                                  "--data-parallel-size"))
    alone = {"dp": 1, "dp_attention": False, "ep": min(plan.ep, plan.tp), "moe_tp": None} if plan.dp_attention else \
        {"dp": 1}
    server = plan if wide else Plan(**{**plan.model_dump(), **alone})
    server_gpus = plan.gpus if wide else plan.gpus_per_replica
    copies = 1 if wide else plan.dp
    argv, env = _server_argv(server, model, engine, settings, num_layers, list(flags or []))
    labels = _labels(name)
    image = _image(engine)
    if server_gpus <= gpus_per_node:
        container = _container(image, argv[:2] if family == "vllm" else argv[:3],
                               argv[2:] if family == "vllm" else argv[3:], env, server_gpus, port, probe=True)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": copies, "selector": {"matchLabels": labels}, "template": _pod(labels, container)},
        }
        return [deployment, _service(name, labels, port)]
    nodes = -(-server_gpus // gpus_per_node)
    leader, worker = _multi_node_scripts(server, argv, family, nodes, gpus_per_node)
    shell = ["/bin/sh", "-c"]
    leader_labels = {**labels, "apex-opt/role": "leader"}
    lws = {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": copies,
            "leaderWorkerTemplate": {
                "size": nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _pod(leader_labels, _container(image, shell, [leader], env, gpus_per_node, port,
                                                                 probe=True)),
                "workerTemplate": _pod({**labels, "apex-opt/role": "worker"},
                                       _container(image, shell, [worker], env, gpus_per_node, port, probe=False)),
            },
        },
    }
    return [lws, _service(name, leader_labels, port)]


def _multi_node_scripts(plan: Plan, argv: list[str], family: str, nodes: int, gpus_per_node: int) -> tuple[str, str]:
    """(leader, worker) shell commands of a server over ``nodes`` pods; LWS sets ``LWS_LEADER_ADDRESS``,
    ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX`` in every pod."""
    cmd = shlex.join(argv)
    if family == "sglang":
        node = (f"{cmd} --nnodes $LWS_GROUP_SIZE --node-rank $LWS_WORKER_INDEX "
                f"--dist-init-addr $LWS_LEADER_ADDRESS:{SGLANG_DIST_PORT}")
        return node, node
    if plan.dp_attention and plan.dp > 1:  # vLLM V1 data parallelism over nodes: the leader runs the API server
        local = max(1, gpus_per_node // plan.tp)
        common = (f"--data-parallel-size-local {local} --data-parallel-address $LWS_LEADER_ADDRESS "
                  f"--data-parallel-rpc-port {DP_RPC_PORT}")
        return (f"{cmd} {common}",
                f"{cmd} --headless {common} --data-parallel-start-rank $(( LWS_WORKER_INDEX * {local} ))")
    return (f"ray start --head --port={RAY_PORT} && {cmd} --distributed-executor-backend ray",
            f"ray start --address=$LWS_LEADER_ADDRESS:{RAY_PORT} --block")


def manifests(plan: Plan | Deployment, model: str, *, engine: str = "vllm-0.6", num_layers: int | None = None,
              gpus_per_node: int = 8, settings: LaunchSettings | None = None,
              flags: dict[str, list[str]] | None = None, prefix: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{group name: [objects]}`` for ``plan``: one replica group per plan (per GPU kind of a mixed deployment),
    named ``<prefix>-<plan label>`` (``prefix``: the model's name, by default the last part of ``model``).

    Raises
    ------
    ApexOptError
        For a disaggregated deployment (its KV-transfer wiring is not written as manifests yet).
    """
    if isinstance(plan, Deployment) and plan.disaggregated:
        raise ApexOptError("Kubernetes manifests for disaggregated (prefill/decode) plans are not written yet; "
                           "use the launch commands")
    plans = plan.plans if isinstance(plan, Deployment) else (plan,)
    extra = (flags or {}).get(_family(engine), [])
    out: dict[str, list[dict[str, Any]]] = {}
    for p in plans:
        name = _name(prefix or model.rsplit("/", 1)[-1], p.label, p.gpu if len(plans) > 1 else "")
        out[name] = group_manifests(p, model, engine=engine, name=name, num_layers=num_layers,
                                    gpus_per_node=gpus_per_node, settings=settings, flags=extra)
    return out


class _Dumper(yaml.SafeDumper):
    """Writes repeated label maps out in full (no YAML anchors), as kubectl users expect."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_manifests(groups: dict[str, list[dict[str, Any]]], directory: str | Path) -> list[Path]:
    """Write each group as ``DIR/<name>.yaml`` (its objects as YAML documents); returns the paths written."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objects in groups.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120))
        written.append(path)
    return written


def emit_k8s(result: Any, directory: str | Path) -> list[Path]:
    """Write the manifests of ``result``'s best plan (a :class:`~apex_opt.planner.result.PlanSet`) into
    ``directory``; nothing without a plan."""
    if not result.plans:
        return []
    best = result.plans[0]
    prob = result.problem
    model = prob.get("hf_repo") or prob.get("model", "")
    groups = manifests(best.plan, model, engine=prob.get("engine", "vllm-0.6"), num_layers=prob.get("num_layers"),
                       gpus_per_node=prob.get("gpus_per_node", 8), settings=best.launch_settings,
                       flags=prob.get("engine_flags"), prefix=prob.get("model"))
    return write_manifests(groups, directory)


__all__ = ["IMAGES", "emit_k8s", "group_manifests", "manifests", "write_manifests"]
