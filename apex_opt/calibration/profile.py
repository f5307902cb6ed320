"""Calibration profiles: engine and hardware constants of one cluster, applied over the built-in fit.

The built-in constants (``specs/calibration/serving.yaml``) were fitted on the project's development runs. A
profile replaces some of them with values fitted on a user's own measurements (``apex-opt calibrate``) or set by
hand. It is a YAML file::

    apex_opt_calibration: 1
    name: my-cluster
    constants:                                  # what is applied, by dotted key
      engines.vllm-v1.step_s: 0.00061           # host time of an engine iteration (s)
      hardware.h100-sxm-80gb.compute_scale: 0.93
    report: {...}                               # how they were fitted (informational, never applied)

Keys are those of :mod:`apex_opt.calibration.constants` (``engines.<engine>.<constant>``,
``engines.<engine>.client.<constant>``, ``hardware.<gpu>.compute_scale|memory_scale``) or any numeric entry of
``serving.yaml`` by its path. A profile is applied while it is *active* (:func:`active`): :func:`serving_constants`
then returns the built-in fit with the profile's constants in place, and :func:`calibrated_gpu` a GPU whose peak
FLOP/s and HBM bandwidth are scaled by the profile's hardware constants. ``Specs.calibration`` carries a profile
with a problem, and :func:`apex_opt.simulate`, :func:`apex_opt.solve` and :func:`apex_opt.estimate` activate it.

>>> p = CalibrationProfile(name="demo", constants={"engines.vllm-v1.step_s": 0.001})
>>> with active(p):
...     serving_constants()["engines"]["vllm-v1"]["step_s"]
0.001
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..errors import SpecError, shorten
from ..schema.gpu import GPUSpec
from .constants import HARDWARE_SCALES, check_key, key_path

F = TypeVar("F", bound=Callable[..., Any])

#: the format version a profile file declares
FORMAT_VERSION = 1

_ACTIVE: contextvars.ContextVar[CalibrationProfile | None] = contextvars.ContextVar("apex_opt_calibration",
                                                                                       default=None)


@dataclass(frozen=True)
class CalibrationProfile:
    """Constants that replace the built-in calibration's, by dotted key, and how they were obtained."""

    name: str = "profile"
    constants: Mapping[str, float] = field(default_factory=dict)
    #: informational: what was fitted, what was left and why, the errors before and after (``apex-opt calibrate``)
    report: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or f"calibration profile {self.name!r}"
        for key, value in self.constants.items():
            check_key(key, value, where)

    def hardware_scale(self, gpu: str, what: str) -> float:
        """The ``compute`` or ``memory`` scale of ``gpu`` (1.0 when the profile has none)."""
        return float(self.constants.get(f"hardware.{gpu}.{what}_scale", 1.0))

    def with_constants(self, constants: Mapping[str, float]) -> CalibrationProfile:
        """This profile with ``constants`` set on top of its own."""
        return CalibrationProfile(self.name, {**self.constants, **constants}, self.report, self.source)

    def to_yaml(self) -> str:
        head = ("# apex-opt calibration profile. 'constants' are applied (with --calibration FILE) over the built-in\n"
                "# fit; 'report' says how they were fitted and is never applied. See docs/calibration.md.\n")
        body = {"apex_opt_calibration": FORMAT_VERSION, "name": self.name,
                "constants": {k: float(f"{v:.6g}") for k, v in self.constants.items()}}
        if self.report:
            body["report"] = _plain(self.report)
        return head + yaml.safe_dump(body, sort_keys=False, width=110)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and floats rounded, for a readable YAML dump."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.5g}")
    return value


def load_profile(path: str | Path) -> CalibrationProfile:
    """Read a profile file; a malformed one raises a :class:`SpecError` naming the file, the entry and a fix."""
    from ..catalog import read_structured

    p = Path(path)
    where = f"--calibration {shorten(str(path))}"  # the profile's source, as reports name it
    named = f"{{calibration=}}{shorten(str(path))}"  # the same in messages: calibration= in Python, --calibration
    if not p.is_file():
        raise SpecError(f"{named}: no such file; give the YAML file apex-opt calibrate --out wrote",
                        option="calibration")
    raw = read_structured(p)
    if not isinstance(raw, dict) or "constants" not in raw:
        raise SpecError(f"{named}: not a calibration profile (a YAML mapping with 'apex_opt_calibration: "
                        f"{FORMAT_VERSION}' and 'constants'); write one with apex-opt calibrate --out FILE",
                        option="calibration")
    version = raw.get("apex_opt_calibration", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SpecError(f"{named}: apex_opt_calibration {shorten(version)} is not a format this apex-opt reads "
                        f"({FORMAT_VERSION}); recalibrate with this version's apex-opt calibrate",
                        option="calibration")
    constants = raw.get("constants") or {}
    if not isinstance(constants, dict):
        raise SpecError(f"{named}: 'constants' must map dotted keys to numbers, e.g. "
                        "'engines.vllm-v1.step_s: 0.0006'", option="calibration")
    unknown = sorted(set(raw) - {"apex_opt_calibration", "name", "constants", "report"})
    if unknown:
        raise SpecError(f"{named}: unknown entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; a "
                        "profile has name, constants and report", option="calibration")
    return CalibrationProfile(str(raw.get("name") or p.stem), {str(k): v for k, v in constants.items()},
                              raw.get("report") or {}, source=where)


def resolve_profile(value: str | Path | CalibrationProfile | None) -> CalibrationProfile | None:
    """A profile from a path or a profile object (``None`` stays ``None``)."""
    if value is None or isinstance(value, CalibrationProfile):
        return value
    if isinstance(value, (str, Path)):
        return load_profile(value)
    raise SpecError(f"calibration={shorten(value)}: give the path of a calibration profile (apex-opt calibrate "
                    "--out FILE) or a CalibrationProfile")


@contextlib.contextmanager
def active(profile: CalibrationProfile | None) -> Iterator[CalibrationProfile | None]:
    """Apply ``profile`` within the block (``None``: the built-in fit alone)."""
    token = _ACTIVE.set(profile)
    try:
        yield profile
    finally:
        _ACTIVE.reset(token)


def applying_calibration(fn: F) -> F:
    """Decorate a function whose first argument is a ``Specs``: it runs with ``specs.calibration`` active (when it
    has one; otherwise the profile active around the call, if any, stays in force)."""

    @functools.wraps(fn)
    def wrapper(specs: Any, *args: Any, **kwargs: Any) -> Any:
        profile = getattr(specs, "calibration", None)
        if profile is None:
            return fn(specs, *args, **kwargs)
        with active(profile):
            return fn(specs, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def current() -> CalibrationProfile | None:
    """The profile applied now, if any."""
    return _ACTIVE.get()


def builtin_constants() -> dict[str, Any]:
    """The built-in fit (``specs/calibration/serving.yaml``)."""
    from ..catalog import load_calibration

    return load_calibration("serving")


def serving_constants() -> dict[str, Any]:
    """The attention, engine-host, client, collective and energy constants in force: the built-in fit with the
    active profile's constants in place."""
    base = builtin_constants()
    profile = current()
    if profile is None or not profile.constants:
        return base
    return apply_constants(base, profile.constants)


def apply_constants(serving: Mapping[str, Any], constants: Mapping[str, float]) -> dict[str, Any]:
    """A copy of ``serving`` (the layout of serving.yaml) with ``constants`` set. An engine without an entry of
    its own starts from ``engines.default`` (and its client path from the default's), as the model would use it."""
    out = copy.deepcopy(dict(serving))
    engines = out.setdefault("engines", {})
    for key, value in constants.items():
        path = key_path(key)
        if path[0] == "hardware":
            continue  # applied to the GPU spec (calibrated_gpu)
        if path[0] == "engines" and len(path) >= 3:
            entry = engines.setdefault(path[1], {k: copy.deepcopy(v) for k, v in engines.get("default", {}).items()
                                                 if k != "client"})
            if path[2] == "client" and "client" not in entry:
                entry["client"] = dict(engines.get("default", {}).get("client", {}))
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = float(value)
    return out


def calibrated_gpu(gpu: GPUSpec) -> GPUSpec:
    """``gpu`` with its peak FLOP/s and HBM bandwidth scaled by the active profile (sustained clocks, power caps)."""
    profile = current()
    if profile is None:
        return gpu
    compute, memory = profile.hardware_scale(gpu.name, "compute"), profile.hardware_scale(gpu.name, "memory")
    if compute == 1.0 and memory == 1.0:
        return gpu
    return gpu.model_copy(update={"peak_flops": {k: v * compute for k, v in gpu.peak_flops.items()},
                                  "memory_bandwidth": gpu.memory_bandwidth * memory})


__all__ = ["FORMAT_VERSION", "HARDWARE_SCALES", "CalibrationProfile", "active", "apply_constants", "applying_calibration",
           "builtin_constants", "calibrated_gpu", "current", "load_profile", "resolve_profile", "serving_constants"]
