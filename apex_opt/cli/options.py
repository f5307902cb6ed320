"""Option types and option groups shared by the commands."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from ..errors import SpecError, shorten
from ..executors import EXECUTORS, parse_ray_address
from ..schema.slo import SLO, parse_slo
from ..schema.speculative import SpeculativeConfig, parse_speculative_option


class ParsedType(click.ParamType):
    """An option value parsed by a library function; its SpecError becomes click's usage error (exit 2), with the
    CLI's spelling of the options it names. A value that is already parsed (a default) passes through."""

    parsed: type = object

    def parse(self, value: str) -> Any:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.parsed):
            return value
        try:
            return self.parse(value)
        except SpecError as exc:
            self.fail(exc.render("cli"), param, ctx)


class SLOType(ParsedType):
    """``--slo ttft=200ms,tpot.p90=50ms,attainment=95%``"""

    name = "SLO"
    parsed = SLO

    def parse(self, value: str) -> SLO:
        return parse_slo(value)


def plan_options(func: Callable) -> Callable:
    """--tp/--pp/--dp/--ep and the dtype options of a single plan."""
    options = [
        click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="tensor-parallel size"),
        click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True, help="pipeline stages"),
        click.option("--dp", type=click.IntRange(min=1), default=1, show_default=True, help="data-parallel replicas"),
        click.option("--ep", type=click.IntRange(min=1), default=1, show_default=True,
                     help="expert-parallel size (MoE); experts split over ep ranks of the TP group"),
        click.option("--dp-attention/--no-dp-attention", default=False,
                     help="wide EP: attention data-parallel, experts over tp x dp ranks"),
        click.option("--layers-per-stage", default=None, metavar="N,N,...",
                     help="layers on each pipeline stage (default: even split)"),
        click.option("--weight-dtype", type=click.Choice(["bf16", "fp16", "fp8", "int8", "int4", "fp4"]), default="bf16",
                     show_default=True),
        click.option("--kv-dtype", type=click.Choice(["bf16", "fp16", "fp8"]), default="bf16", show_default=True),
        click.option("--engine", default="vllm-0.6", show_default=True, help="vllm-0.6 | vllm-v1 | sglang-0.4, or an engine YAML file"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise SpecError(f"--layers-per-stage '{value}' must be comma-separated integers, e.g. 40,40") from None


class SpeculativeType(ParsedType):
    """``--speculative eagle:k=3,acceptance=0.7`` (``k=auto``: the settings ``solve`` searches)."""

    name = "METHOD:k=N,acceptance=RATE"
    parsed = tuple

    def parse(self, value: str) -> tuple[SpeculativeConfig, ...]:
        return parse_speculative_option(value)


def speculative_option(*, search: bool) -> Callable[[Callable], Callable]:
    """``--speculative``: speculative decoding for every plan (``solve`` also takes ``k=auto``)."""
    more = (" With k=auto, solve simulates each plan without speculation and with k = 1..5 and keeps the best."
            if search else "")
    return click.option(
        "--speculative", type=SpeculativeType(), default=None,
        help="speculative decoding, METHOD:k=N,acceptance=RATE with METHOD ngram, eagle, mtp or draft; RATE is the "
             "mean acceptance per drafted position or one rate per position (0.9/0.7/0.5); optional "
             "draft_cost=FRACTION (a draft pass / a target decode step) and draft_model=NAME." + more)


def limit_options(func: Callable) -> Callable:
    """The engine's batching and memory limits of one plan (``None``: the engine's default)."""
    options = [
        click.option("--chunked-prefill/--no-chunked-prefill", default=None, help="default: the engine's rule"),
        click.option("--max-num-batched-tokens", type=click.IntRange(min=1), default=None),
        click.option("--max-num-seqs", type=click.IntRange(min=1), default=None),
        click.option("--gpu-memory-utilization", type=click.FloatRange(min=0.05, max=1.0), default=None),
        click.option("--max-model-len", type=click.IntRange(min=1), default=None),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def engine_options(func: Callable) -> Callable:
    """Engine settings that change the step cost, and where latencies are measured (simulate and solve)."""
    options = [
        click.option("--cuda-graphs/--no-cuda-graphs", default=None,
                     help="CUDA graphs (vLLM --enforce-eager and SGLang --disable-cuda-graph turn them off); "
                          "default: the engine's"),
        click.option("--attention-backend", default=None, metavar="NAME",
                     help="attention kernels, e.g. triton or flashinfer for SGLang (--attention-backend); default: "
                          "the engine's"),
        click.option("--prefix-caching/--no-prefix-caching", default=None,
                     help="automatic prefix caching (vLLM --enable-prefix-caching, SGLang's radix cache); used "
                          "with workloads that describe shared prompt prefixes; default: the engine's (on for "
                          "vllm-v1 and sglang-0.4, off for vllm-0.6)"),
        click.option("--measured-at", type=click.Choice(["engine", "client"]), default="engine", show_default=True,
                     help="report latencies as the engine logs them, or as a benchmark client (vllm bench serve, "
                          "inference-perf) measures them: API server, tokenisation and streaming included"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


class RayAddressType(click.ParamType):
    """``--ray-address HOST:PORT`` (or ``ray://HOST:PORT``, ``auto``); a malformed one is a usage error (exit 2)."""

    name = "ADDR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            parse_ray_address(value)
        except SpecError as exc:
            self.fail(exc.render("cli"), param, ctx)
        return value


def executor_options(func: Callable) -> Callable:
    """--executor local|ray and --ray-address: where the simulations run (results do not depend on it)."""
    options = [
        click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local", show_default=True,
                     help="where simulations run: local worker processes, or ray tasks (pip install "
                          "'apex-opt[ray]'); results do not depend on it"),
        click.option("--ray-address", type=RayAddressType(), default=None, metavar="ADDR",
                     help="with --executor ray: the cluster's HOST:PORT (ray start --head) or auto  "
                          "[default: start Ray on this machine, --workers CPUs]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def calibration_option(func: Callable) -> Callable:
    """``--calibration FILE``: a profile of ``apex-opt calibrate`` applied over the built-in constants."""
    return click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        metavar="FILE", help="calibration profile of your cluster (written by apex-opt calibrate "
                                             "--out FILE), applied over the built-in constants")(func)


def check_output_file(option: str, path: Path) -> None:
    """Refuse an output file that cannot be written, before any work: its folder must exist and be writable."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SpecError(f"{option} {shorten(str(path))}: the folder {shorten(str(folder))} does not exist; create it "
                        f"first (mkdir -p {shorten(str(folder))}) or write the file elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError(f"{option} {shorten(str(path))}: the folder {shorten(str(folder))} is not writable; write the "
                        "file to a folder you own")
    if path.is_dir():
        raise SpecError(f"{option} {shorten(str(path))}: is a folder; give a file name, e.g. {path / 'requests.jsonl'}")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """Write a text file under a temporary name in its folder and rename it into place at the end, so an
    interrupted run leaves no partial file (and any earlier file stays whole)."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        if path.exists():  # keep the mode of the file being replaced; a new file gets the usual umask
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
