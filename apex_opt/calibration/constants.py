"""The constants a calibration may set: what each means, its physical range and when measurements determine it.

Engine constants are keyed by the engine's calibration entry (``engines.<engine>.<constant>``: the engine spec's
``overhead_profile``, e.g. ``vllm-v1``); hardware constants by GPU (``hardware.<gpu>.compute_scale``).

>>> CONSTANTS["step_s"].meaning
'host time of one engine iteration: scheduling, input preparation, the TP broadcast (s)'
>>> constant_key("step_s", engine="vllm-v1"), constant_key("compute_scale", gpu="h100-sxm-80gb")
('engines.vllm-v1.step_s', 'hardware.h100-sxm-80gb.compute_scale')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import SpecError, shorten


@dataclass(frozen=True)
class Constant:
    """One calibratable constant.

    ``lower``/``upper`` bound the fit (and a hand-set value); ``typical`` is the size of a change that matters,
    the unit in which the fit moves it when its value is near zero (else the unit is its value); ``spread`` is how
    far, in those units, the fit may move it from its default as readily as a prediction may be off by 5%
    (:data:`apex_opt.calibration.fit.MODEL_ERROR`): tight for datasheet figures, loose for host costs that differ
    from machine to machine; ``needs`` says which runs determine it (``client``: runs measured at a benchmark
    client; ``eager``: runs without CUDA graphs; empty: any run).
    """

    name: str
    scope: Literal["engine", "hardware"]
    meaning: str
    lower: float
    upper: float
    typical: float
    spread: float
    needs: Literal["", "client", "eager"] = ""


#: by name; an engine constant under ``client.`` lives in the engine's client-path entry
CONSTANTS: dict[str, Constant] = {c.name: c for c in (
    Constant("step_s", "engine", "host time of one engine iteration: scheduling, input preparation, the TP "
             "broadcast (s)", 1e-5, 0.05, 1e-3, 4.0),
    Constant("per_seq_s", "engine", "host time per running sequence in an iteration (s)", 0.0, 1e-3, 5e-5, 4.0),
    Constant("prefill_step_s", "engine", "extra host time of an iteration that prefills (s)", 0.0, 0.05, 1e-3, 4.0),
    Constant("eager_launch_s", "engine", "CPU cost of launching one kernel in an eager pass (s)", 1e-6, 2e-4, 2e-5,
             4.0, "eager"),
    Constant("triton_launch_s", "engine", "CPU cost of launching one Triton kernel in an eager pass (s)", 1e-6,
             5e-4, 1e-4, 4.0, "eager"),
    Constant("client.request_s", "engine", "API server round trip of a request: HTTP, chat template, hand-off to "
             "the engine (s)", 0.0, 0.2, 5e-3, 4.0, "client"),
    Constant("client.output_lag_steps", "engine", "decode steps the streamed output lags the engine", 0.0, 4.0,
             1.0, 1.0, "client"),
    Constant("client.per_stream_s", "engine", "API-server work per open stream per engine step: detokenise, "
             "send a chunk (s)", 0.0, 1e-3, 5e-5, 4.0, "client"),
    Constant("compute_scale", "hardware", "sustained tensor-core throughput relative to the datasheet peak "
             "(clocks, power cap)", 0.2, 1.5, 0.1, 0.1),
    # HBM clocks are rarely capped, unlike SM clocks under a power limit: a tighter prior than compute's
    Constant("memory_scale", "hardware", "sustained HBM bandwidth relative to the datasheet", 0.2, 1.5, 0.1, 0.05),
)}

#: the hardware constants (``hardware.<gpu>.<name>``)
HARDWARE_SCALES = tuple(c.name for c in CONSTANTS.values() if c.scope == "hardware")


def constant_key(name: str, *, engine: str | None = None, gpu: str | None = None) -> str:
    """The dotted key of constant ``name`` for an engine's calibration entry or a GPU."""
    c = CONSTANTS[name]
    if c.scope == "hardware":
        if gpu is None:
            raise ValueError(f"{name} is a hardware constant: give gpu=")
        return f"hardware.{gpu}.{name}"
    if engine is None:
        raise ValueError(f"{name} is an engine constant: give engine=")
    return f"engines.{engine}.{name}"


def parse_key(key: str) -> tuple[Constant, str] | None:
    """``(constant, engine or gpu)`` of a registered key, ``None`` for any other key (engine and GPU names may hold
    dots, as ``sglang-0.4`` does: the constant's name is matched at the end)."""
    for scope, prefix in (("engine", "engines."), ("hardware", "hardware.")):
        if key.startswith(prefix):
            for c in CONSTANTS.values():
                owner = key[len(prefix):-len(c.name) - 1]
                if c.scope == scope and key.endswith("." + c.name) and owner:
                    return c, owner
    return None


def key_path(key: str) -> list[str]:
    """The nested keys of ``key`` in serving.yaml's layout (``engines.sglang-0.4.client.request_s`` ->
    ``['engines', 'sglang-0.4', 'client', 'request_s']``)."""
    parsed = parse_key(key)
    if parsed is None:
        if key.startswith("engines."):  # another number of an engine's entry: the engine named in serving.yaml
            from .profile import builtin_constants

            names = sorted(builtin_constants().get("engines", {}), key=len, reverse=True)
            for name in names:
                if key.startswith(f"engines.{name}."):
                    return ["engines", name, *key[len(f"engines.{name}."):].split(".")]
        return key.split(".")
    c, owner = parsed
    return ["engines" if c.scope == "engine" else "hardware", owner, *c.name.split(".")]


def _builtin_leaf(key: str) -> Any:
    from .profile import builtin_constants

    node: Any = builtin_constants()
    for part in key_path(key):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def default_value(key: str, serving: Mapping[str, Any] | None = None) -> float:
    """The value ``key`` has without a profile: the built-in fit as the model reads it (an engine without an entry
    of its own uses ``engines.default``), 1.0 for a hardware scale."""
    from .profile import builtin_constants

    cal = serving if serving is not None else builtin_constants()
    parsed = parse_key(key)
    if parsed is not None:
        c, owner = parsed
        if c.scope == "hardware":
            return 1.0
        engines = cal.get("engines", {})
        entry = engines.get(owner, engines.get("default", {}))
        if c.name.startswith("client."):
            client = entry.get("client") or engines.get("default", {}).get("client", {})
            return float(client.get(c.name.split(".", 1)[1], 0.0))
        return float(entry.get(c.name, engines.get("default", {}).get(c.name, 0.0)))
    node: Any = cal
    for part in key_path(key):
        node = node.get(part) if isinstance(node, Mapping) else None
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node)
    raise KeyError(key)


def check_key(key: str, value: Any, where: str) -> None:
    """Refuse a key that is not a calibratable constant, or a value outside its physical range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where}: constants.{key} = {shorten(value)}: must be a finite number")
    parsed = parse_key(key)
    if parsed is not None:
        c, _ = parsed
        if not c.lower <= value <= c.upper:
            raise SpecError(f"{where}: constants.{key} = {value:g} is outside the physical range of "
                            f"{c.name} ({c.meaning}): {c.lower:g} to {c.upper:g}; fix the value or recalibrate")
        return
    leaf = _builtin_leaf(key)
    if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
        if value < 0:
            raise SpecError(f"{where}: constants.{key} = {value:g}: must be at least 0")
        return
    engines = ", ".join(c.name for c in CONSTANTS.values() if c.scope == "engine")
    raise SpecError(f"{where}: constants.{shorten(key)} is not a constant apex-opt knows; use "
                    f"engines.<engine>.<name> with a name among {engines}; hardware.<gpu>.compute_scale or "
                    "memory_scale; or the dotted path of a number in specs/calibration/serving.yaml")


__all__ = ["CONSTANTS", "HARDWARE_SCALES", "Constant", "check_key", "constant_key", "default_value", "key_path",
           "parse_key"]
