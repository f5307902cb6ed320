"""The iteration-level serving simulator (vLLM 0.6 V0, vLLM V1, SGLang 0.4 schedulers), aggregated or with
disaggregated prefill and decode instances (:mod:`apex_opt.sim.disagg`).

>>> from apex_opt.sim import run_simulation, ReplicaSpec, SchedulerConfig, StaticReplicaCost, LinearStageCost
"""

from __future__ import annotations

from .config import FAMILIES, ReplicaSpec, SchedulerConfig
from .cost import BatchShape, LinearStageCost, ReplicaCost, StageCost, StaticReplicaCost
from .disagg import DisaggSimulation, KVTransfer, LinearKVTransfer
from .engine import Simulation
from .metrics import RequestRecords, SimResult, SLOTarget
from .policies import Iteration, SchedulerPolicy, SglangPolicy, VllmV0Policy, VllmV1Policy
from .router import ROUTERS
from .run import run_simulation
from .summary import SimSummary

__all__ = [
    "FAMILIES",
    "ROUTERS",
    "BatchShape",
    "DisaggSimulation",
    "Iteration",
    "KVTransfer",
    "LinearKVTransfer",
    "LinearStageCost",
    "ReplicaCost",
    "ReplicaSpec",
    "RequestRecords",
    "SLOTarget",
    "SchedulerConfig",
    "SchedulerPolicy",
    "SglangPolicy",
    "SimResult",
    "SimSummary",
    "Simulation",
    "StageCost",
    "StaticReplicaCost",
    "VllmV0Policy",
    "VllmV1Policy",
    "run_simulation",
]
