"""Verify plans by simulation, in parallel processes, with results independent of the number of workers.

Each plan is simulated on the (possibly truncated) workload in a worker process (or a Ray task, with
``executor="ray"``: :mod:`apex_opt.executors`); only the summary (a :class:`~apex_opt.sim.summary.SimSummary`)
travels back. Results are collected by position, never by completion order, and every simulation uses the same
seed, so ``workers=1`` and ``workers=2``, ``local`` and ``ray``, give identical rankings.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Self

from ..errors import ApexOptError
from ..executors import (
    Executor,
    LocalExecutor,
    check_executor,
    make_executor,
    process_pool,
    terminate_pool,
    usable_workers,
)
from ..schema.plan import Deployment, Plan
from ..sim.summary import SimSummary
from ..specs import Specs
from .sampling import ReplicaSample, replica_sample, sampled, scaled_up

#: simulate(specs, plan, seed=...) -> object with .summary() (or a dict); module-level for pickling
Simulator = Callable[..., Any]


#: a simulation summary, named as in :mod:`apex_opt.metrics` (the planner's earlier name for it): besides the
#: simulator's own metrics it always holds ``gpus``, ``goodput_per_gpu_req_s`` (with an SLO) and
#: ``cost_per_mtok_usd``; earlier names (``goodput_rps``, ``energy_per_token_j``, ``cost``, ...) stay readable for
#: one release, with a DeprecationWarning
SimMetrics = SimSummary


def normalize_summary(summary: Mapping[str, Any], plan: Plan | Deployment) -> SimSummary:
    """A simulator summary (a :class:`SimSummary`, or a custom simulator's mapping of registered names) as a
    :class:`SimSummary` with the metrics derived from the plan (a key that is no metric: a SpecError naming it)."""
    return SimSummary.of(summary).with_derived(plan.gpus)


def _default_simulator() -> Simulator:
    """``simulate``, cutting a run once its SLO verdict is decided (a plan that has missed is not read further)."""
    from ..simulate import simulate

    return functools.partial(simulate, cut_early=True)


def _run_one(simulator: Simulator | None, specs: Specs, plan: Plan | Deployment, seed: int) -> tuple[str, Any]:
    """Worker: ('ok', summary) or ('error', message) for an error a user can cause."""
    sim = simulator or _default_simulator()
    try:
        result = sim(specs, plan, seed=seed)
    except ApexOptError as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    summary = result.summary() if hasattr(result, "summary") else dict(result)
    return "ok", summary


@dataclass(frozen=True)
class SimOutcome:
    plan: Plan | Deployment
    metrics: SimSummary | None
    error: str = ""


class Verifier:
    """Runs simulations for one problem; ``workers`` processes (1: in this process), or Ray tasks with
    ``executor="ray"`` (on the cluster at ``ray_address``, else on a Ray instance started on this machine)."""

    def __init__(self, specs: Specs, *, workers: int = 2, seed: int = 0, simulator: Simulator | None = None,
                 progress: Callable[[str], None] | None = None,
                 simulation_progress: Callable[[int, int], None] | None = None,
                 executor: str = "local", ray_address: str | None = None,
                 sample_requests: int | None = None) -> None:
        check_executor(executor, ray_address)  # a bad name, address or a missing Ray fails before any work
        self.specs = specs
        #: simulate a plan's identical replicas only as far as they cover this many requests (None: every one;
        #: apex_opt.planner.sampling); only with the built-in simulator, whose router it reproduces
        self.sample_requests = sample_requests if simulator is None else None
        self.workers = usable_workers(workers)  # never more processes than CPUs
        self.executor = executor
        self.ray_address = ray_address
        self.seed = seed
        self.simulator = simulator
        self.progress = progress
        #: called with (simulations finished, simulations started) when a batch starts and as each one finishes
        self.simulation_progress = simulation_progress
        self.count = 0
        self.seconds = 0.0
        self._runner: Executor | None = None
        self._cache: dict[str, SimOutcome] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the worker processes down: wait for them normally, terminate them while an exception (Ctrl-C)
        is on its way out."""
        if sys.exc_info()[0] is not None:
            self.terminate()
        else:
            runner, self._runner = self._runner, None
            if runner is not None:
                runner.close()

    def terminate(self) -> None:
        """Stop the worker processes now, simulations in flight included (on Ctrl-C)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.terminate()

    def runner(self) -> Executor:
        """The executor the simulations run on (made on first use, kept until :meth:`close`)."""
        if self._runner is None:
            self._runner = make_executor(self.executor, workers=self.workers, ray_address=self.ray_address)
        return self._runner

    @property
    def _pool(self) -> ProcessPoolExecutor | None:
        """The local executor's process pool, if one runs."""
        return self._runner._pool if isinstance(self._runner, LocalExecutor) else None

    def _executor(self, size: int) -> ProcessPoolExecutor:
        """The local executor's process pool, with at least ``size`` workers."""
        runner = self.runner()
        if not isinstance(runner, LocalExecutor):
            raise TypeError(f"Verifier._executor: the {runner.name} executor has no process pool")
        return runner.pool(size)

    def simulated(self, plan: Plan | Deployment) -> bool:
        """Whether ``plan`` was simulated already (its outcome is cached)."""
        return plan.model_dump_json() in self._cache

    def _ticker(self, batch: int) -> Callable[[], None]:
        """Report a batch of ``batch`` simulations starting; the function returned reports one finishing."""
        report = self.simulation_progress
        if report is None:
            return lambda: None
        done = [self.count]
        report(done[0], self.count + batch)

        def tick() -> None:
            done[0] += 1
            report(done[0], self.count + batch)

        return tick

    def _inputs(self, plan: Plan | Deployment, sample: ReplicaSample | None) -> tuple[Specs, Plan | Deployment]:
        """The specs and plan a simulation of ``plan`` runs: a sample of its replicas with their requests, or all."""
        if sample is None or not isinstance(plan, Plan):
            return self.specs, plan
        sub_plan, sub_specs = sampled(plan, self.specs, sample)
        return sub_specs, sub_plan

    def run(self, plans: Sequence[Plan | Deployment]) -> list[SimOutcome]:
        """Simulate ``plans`` (in parallel when workers > 1); outcomes in the order of ``plans``."""
        import time

        start = time.perf_counter()
        todo = [p for p in plans if p.model_dump_json() not in self._cache]
        unique: dict[str, Plan | Deployment] = {p.model_dump_json(): p for p in todo}
        if unique:
            if self.progress:
                self.progress(f"simulating {len(unique)} plan{'s' if len(unique) != 1 else ''}: "
                              + ", ".join(p.label for p in unique.values()))
            keys = list(unique)
            tick = self._ticker(len(keys))
            samples = [replica_sample(unique[k], self.specs, self.sample_requests) for k in keys]
            jobs = [(self.simulator, *self._inputs(unique[k], sample), self.seed) for k, sample in zip(keys, samples)]
            try:  # results by position, whatever order the simulations finish in
                raw = self.runner().map_ordered(_run_one, jobs, on_done=lambda _: tick())
            except BaseException:  # Ctrl-C (or a worker that died): leave no process behind
                self.terminate()
                raise
            for k, sample, (status, payload) in zip(keys, samples, raw):
                plan = unique[k]
                if status == "ok" and sample is not None:
                    payload = scaled_up(payload, sample)
                if status == "ok":
                    self._cache[k] = SimOutcome(plan, normalize_summary(payload, plan))
                else:
                    self._cache[k] = SimOutcome(plan, None, payload)
                self.count += 1
        self.seconds += time.perf_counter() - start
        return [self._cache[p.model_dump_json()] for p in plans]


__all__ = ["SimMetrics", "SimOutcome", "Verifier", "normalize_summary", "process_pool", "terminate_pool",
           "usable_workers"]
