"""Where simulations run: this machine's worker processes (``local``) or a Ray cluster (``ray``).

An executor runs one function over a list of argument tuples and returns the results in submission order, never
in completion order, so which executor (and how many workers) ran a batch does not change what it returns:
:class:`apex_opt.planner.verify.Verifier` and :func:`apex_opt.sweep.sweep` give identical results with either.

``local`` (the default) is a process pool that leaves Ctrl-C to its parent, which terminates the workers itself;
one worker (or one job) runs in this process. ``ray`` submits each job as a Ray task: with an address it connects
to that cluster (``ray start --head`` on a machine the others can reach), without one it starts a Ray instance on
this machine (``workers`` CPUs, no dashboard). Ray is an optional extra: ``pip install 'apex-opt[ray]'``.

>>> with running(make_executor("local", workers=1)) as ex:
...     ex.map_ordered(pow, [(2, 3), (3, 2)])
[8, 9]
>>> make_executor("dask", workers=2)
Traceback (most recent call last):
...
apex_opt.errors.SpecError: executor='dask': unknown executor; use one of local, ray, e.g. executor='local'
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, Protocol

from .errors import ApexOptError, SpecError, shorten

#: seconds to wait for a Ray cluster's address to answer before giving up with a message
CONNECT_TIMEOUT_S = 10.0
#: seconds ``ray.init`` may take to join a cluster whose address answers (Ray itself retries for minutes)
JOIN_TIMEOUT_S = 30.0


class ExecutorError(ApexOptError):
    """The chosen executor cannot run: its package is not installed or its cluster does not answer."""


class Executor(Protocol):
    """Runs ``fn(*args)`` for each argument tuple; results in submission order."""

    name: str
    workers: int

    def map_ordered(self, fn: Callable[..., Any], args_list: Sequence[tuple[Any, ...]],
                    on_done: Callable[[int], None] | None = None) -> list[Any]:
        """``[fn(*args) for args in args_list]``, run in parallel; ``on_done(i)`` as job ``i`` finishes."""
        ...

    def close(self) -> None:
        """Release the workers, waiting for them normally."""
        ...

    def terminate(self) -> None:
        """Stop the workers now, jobs in flight included (on Ctrl-C)."""
        ...


# ------------------------------------------------------------------------------------------------- local
def usable_workers(requested: int, plans: int | None = None) -> int:
    """Worker processes that can help: at most ``requested``, the CPUs of this machine and the ``plans`` to run."""
    n = min(max(1, int(requested)), os.cpu_count() or 1)
    return max(1, min(n, plans)) if plans is not None else n


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group; the parent terminates its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_pool(size: int) -> ProcessPoolExecutor:
    """``size`` worker processes (forked where the platform allows) that leave Ctrl-C to their parent."""
    method = "fork" if "fork" in mp.get_all_start_methods() and os.name == "posix" else "spawn"
    return ProcessPoolExecutor(max_workers=size, mp_context=mp.get_context(method), initializer=_ignore_sigint)


def terminate_pool(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool``'s worker processes now, work in flight included (on Ctrl-C): SIGTERM, then SIGKILL."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=2.0)
        if proc.is_alive():  # SIGTERM not honoured in time (a worker still starting up): SIGKILL
            proc.kill()
            proc.join(timeout=5.0)
    if manager is not None:  # it reaps the workers too: once it is done, every exit status is recorded
        manager.join(timeout=5.0)


class LocalExecutor:
    """This machine's worker processes (at most its CPUs); a batch that one worker can run runs in this process.

    The pool is kept between batches (and grown for a larger one) until :meth:`close`.
    """

    name = "local"

    def __init__(self, workers: int = 2) -> None:
        self.workers = usable_workers(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 0

    def pool(self, size: int) -> ProcessPoolExecutor:
        """The process pool, with at least ``size`` workers (a pool made for fewer is replaced)."""
        if self._pool is not None and self._pool_size < size:  # a larger batch than the pool was made for
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._pool is None:
            self._pool = process_pool(size)
            self._pool_size = size
        return self._pool

    def map_ordered(self, fn: Callable[..., Any], args_list: Sequence[tuple[Any, ...]],
                    on_done: Callable[[int], None] | None = None) -> list[Any]:
        jobs = list(args_list)
        if usable_workers(self.workers, max(1, len(jobs))) == 1:
            out = []
            for i, args in enumerate(jobs):
                out.append(fn(*args))
                if on_done is not None:
                    on_done(i)
            return out
        pool = self.pool(usable_workers(self.workers, len(jobs)))
        try:
            futures: dict[Future[Any], int] = {pool.submit(fn, *args): i for i, args in enumerate(jobs)}
            for future in as_completed(futures):  # only to report progress: results are taken in order below
                if on_done is not None:
                    on_done(futures[future])
            return [f.result() for f in futures]
        except BaseException:  # Ctrl-C (or a worker that died): leave no process behind
            self.terminate()
            raise

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def terminate(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            terminate_pool(pool)


# --------------------------------------------------------------------------------------------------- ray
def import_ray() -> Any:
    """The ``ray`` module, or an :class:`ExecutorError` that says how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ExecutorError("{executor=}'ray' needs Ray, which is not installed: pip install 'apex-opt[ray]' (or "
                            "pip install 'ray>=2.40'), or run the simulations on this machine with {executor=}'local'",
                            option="executor") from None


def parse_ray_address(address: object) -> tuple[str, int] | None:
    """The (host, port) that must answer for a Ray ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``); None for
    ``auto`` (Ray finds the cluster: ``RAY_ADDRESS``, else the one ``ray start`` started on this machine).

    >>> parse_ray_address("10.0.0.5:6379"), parse_ray_address("ray://head:10001"), parse_ray_address("auto")
    (('10.0.0.5', 6379), ('head', 10001), None)
    >>> parse_ray_address("10.0.0.5")
    Traceback (most recent call last):
    ...
    apex_opt.errors.SpecError: ray_address='10.0.0.5': not a Ray address; write HOST:PORT ...
    """
    if not isinstance(address, str) or not address.strip():
        raise SpecError(f"{{ray_address=}}{shorten(address)}: give the address of a Ray cluster as text, e.g. "
                        "{ray_address=}'10.0.0.5:6379'", option="ray_address")
    text = address.strip()
    if text == "auto":
        return None
    rest = text.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        example = f"{host or rest or '10.0.0.5'}:6379" if "/" not in rest else "10.0.0.5:6379"
        raise SpecError(f"{{ray_address=}}{shorten(address)}: not a Ray address; write HOST:PORT of the cluster's "
                        f"head (the port ray start --head printed, 6379 by default), e.g. {{ray_address=}}"
                        f"'{example}', or ray://HOST:10001 for Ray Client, or auto", option="ray_address")
    return host, int(port)


def _unreachable(address: str, why: str) -> ExecutorError:
    return ExecutorError(f"{{ray_address=}}{shorten(address)}: no Ray cluster answers there ({why}); start one on "
                         "that machine with ray start --head --port 6379, check the address, the port and the "
                         "firewall, or leave {ray_address} out to start a Ray instance on this machine",
                         option="ray_address")


@contextmanager
def sigint_held() -> Iterator[None]:
    """Hold a Ctrl-C back until the block is done, then deliver it (KeyboardInterrupt): a Ray instance interrupted
    while it starts leaves processes (GCS, raylet, agents) that ``ray.shutdown`` does not know of, and Ray's agents
    outlive this process. A second Ctrl-C is not held (Ray's start-up may hang): it interrupts the block at once.
    Only the main thread receives signals; elsewhere the block runs as it is."""
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        if held and sys.exc_info()[0] is None:
            signal.raise_signal(signal.SIGINT)  # to the handler it was meant for (none if SIGINT was ignored)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Ray task body for a callable that is not a plain function."""
    return fn(*args)


class RayExecutor:
    """Ray tasks, one per job: on the cluster at ``address``, or on a Ray instance this executor starts here.

    A Ray session that is already running in this process (``ray.init`` by the caller) is used as it is and left
    running; a session this executor started (or connected) is shut down by :meth:`close`.
    """

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, join_timeout: float = JOIN_TIMEOUT_S) -> None:
        if address is not None:
            parse_ray_address(address)
        self.workers = usable_workers(workers)
        self.address = address.strip() if address is not None else None
        self.connect_timeout = connect_timeout
        self.join_timeout = join_timeout
        self._ray: Any = import_ray()
        self._started = False
        self._connected = False
        self._remote: dict[Any, Any] = {}
        self._inflight: list[Any] = []

    def _probe(self) -> None:
        """Fail within ``connect_timeout`` with a message when nothing answers at the address (Ray would retry for
        minutes)."""
        assert self.address is not None
        target = parse_ray_address(self.address)
        shown = self.address
        if target is None:  # auto: probe RAY_ADDRESS if it names one; else Ray looks on this machine (quickly)
            env = os.environ.get("RAY_ADDRESS", "").strip()
            if not env or env in ("auto", "local"):
                return
            try:
                target = parse_ray_address(env)
            except SpecError:
                return  # Ray reports a malformed RAY_ADDRESS itself
            if target is None:
                return
            shown = f"{self.address} (RAY_ADDRESS={env})"
        try:
            with socket.create_connection(target, timeout=self.connect_timeout):
                pass
        except TimeoutError:
            raise _unreachable(shown, f"no answer within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise _unreachable(shown, (exc.strerror or type(exc).__name__).lower()) from None

    def _join(self, settings: dict[str, Any]) -> None:
        """``ray.init(address=...)``, given at most ``join_timeout`` s: it runs in a helper thread, as Ray retries an
        address that accepts connections but is no Ray head for minutes (the thread is left behind on a timeout)."""
        ray, address, outcome = self._ray, self.address, {}

        def join() -> None:
            try:
                ray.init(address=address, **settings)
            except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
                outcome["error"] = exc

        thread = threading.Thread(target=join, name="apex-opt-ray-join", daemon=True)
        thread.start()
        thread.join(self.join_timeout)
        if thread.is_alive():
            raise _unreachable(str(address), f"it accepts connections, but no Ray head answered within "
                                             f"{self.join_timeout:g} s")
        if "error" in outcome:
            raise outcome["error"]

    def connect(self) -> Any:
        """Start or join the Ray session (once); the ``ray`` module."""
        ray = self._ray
        if self._connected:
            return ray
        if ray.is_initialized():  # the caller's own session: use it, never shut it down
            self._connected = True
            return ray
        quiet = {"log_to_driver": False, "ignore_reinit_error": True, "logging_level": logging.WARNING}
        if self.address is None:
            with sigint_held():  # Ctrl-C while Ray starts: raised once it runs, so that terminate() stops it
                try:
                    ray.init(address="local", num_cpus=self.workers, include_dashboard=False, **quiet)
                except (RuntimeError, ConnectionError, OSError) as exc:
                    raise ExecutorError(f"{{executor=}}'ray': could not start a Ray instance on this machine: "
                                        f"{exc}; use {{executor=}}'local', or give the address of a running cluster "
                                        "with {ray_address=}'HOST:6379'", option=("executor", "ray_address")) from None
                self._started = self._connected = True  # before a Ctrl-C held back is raised
        else:
            self._probe()
            try:
                self._join(quiet)
            except (RuntimeError, ConnectionError, OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExecutorError(f"{{ray_address=}}{shorten(self.address)}: could not join the Ray cluster there "
                                    f"({shorten(first, 200)}); check that it runs Ray {ray.__version__} and Python "
                                    f"{sys.version_info.major}.{sys.version_info.minor} like this machine, or leave "
                                    "{ray_address} out to start a Ray instance on this machine",
                                    option="ray_address") from None
        self._started = self._connected = True
        return ray

    def _task(self, fn: Callable[..., Any]) -> tuple[Any, tuple[Any, ...]]:
        """The Ray task that runs ``fn``, and the arguments that go before each job's own."""
        if not inspect.isfunction(fn):  # a builtin, a functools.partial, ...: Ray decorates functions only
            return self._task(_call)[0], (fn,)
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(fn)
        return self._remote[fn], ()

    def map_ordered(self, fn: Callable[..., Any], args_list: Sequence[tuple[Any, ...]],
                    on_done: Callable[[int], None] | None = None) -> list[Any]:
        jobs = list(args_list)
        if not jobs:
            return []
        ray = self.connect()
        task, first = self._task(fn)
        try:
            refs = [task.remote(*first, *args) for args in jobs]
            self._inflight = refs
            position = {ref: i for i, ref in enumerate(refs)}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                if on_done is not None:
                    for ref in done:
                        on_done(position[ref])
            return list(ray.get(refs))  # in submission order
        except BaseException:  # Ctrl-C: cancel what still runs
            self.terminate()
            raise
        finally:
            self._inflight = []

    def _cancel(self) -> None:
        refs, self._inflight = self._inflight, []
        for ref in refs:
            with contextlib.suppress(Exception):  # a task that finished meanwhile cannot be cancelled
                self._ray.cancel(ref, force=True)

    def close(self) -> None:
        self._cancel()
        if self._started:
            self._started = self._connected = False
            self._ray.shutdown()

    def terminate(self) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- registry
#: executor name -> factory(workers, ray_address); :func:`make_executor` builds one by name
EXECUTORS: dict[str, Callable[[int, str | None], Executor]] = {
    "local": lambda workers, _address: LocalExecutor(workers),
    "ray": RayExecutor,
}


def check_executor(executor: object, ray_address: object = None) -> None:
    """Raise the error a user can fix for a bad ``executor`` / ``ray_address``, before any work (imports Ray for
    ``ray``, without starting it)."""
    if not isinstance(executor, str) or executor not in EXECUTORS:
        raise SpecError(f"{{executor=}}{shorten(executor)}: unknown executor; use one of {', '.join(EXECUTORS)}, "
                        "e.g. {executor=}'local'", option="executor")
    if ray_address is not None:
        if executor != "ray":
            raise SpecError(f"{{ray_address=}}{shorten(ray_address)}: a Ray address needs {{executor=}}'ray'; add "
                            "it, or leave {ray_address} out", option=("ray_address", "executor"))
        parse_ray_address(ray_address)
    if executor == "ray":
        import_ray()


def make_executor(executor: str = "local", *, workers: int = 2, ray_address: str | None = None) -> Executor:
    """The executor named ``executor`` (see :data:`EXECUTORS`), with ``workers`` processes on this machine.

    ``ray_address`` (``ray`` only): the cluster to join, ``HOST:PORT``; without it a Ray instance with ``workers``
    CPUs is started here. On a cluster its CPUs decide how many jobs run at once.
    """
    check_executor(executor, ray_address)
    return EXECUTORS[executor](workers, ray_address)


@contextmanager
def running(executor: Executor) -> Iterator[Executor]:
    """Use ``executor`` and release it afterwards: closed normally, terminated when an exception (Ctrl-C) leaves."""
    try:
        yield executor
    except BaseException:
        executor.terminate()
        raise
    executor.close()


__all__ = ["CONNECT_TIMEOUT_S", "EXECUTORS", "JOIN_TIMEOUT_S", "Executor", "ExecutorError", "LocalExecutor",
           "RayExecutor", "check_executor", "import_ray", "make_executor", "parse_ray_address", "process_pool",
           "running", "terminate_pool", "usable_workers"]
