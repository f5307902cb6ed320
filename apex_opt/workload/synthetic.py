"""Seeded synthetic workloads from a one-line expression.

::

    synthetic:rate=20rps,requests=10000,prompt=1024,output=256,seed=0
    synthetic:rate=5rps,duration=10min,prompt=2048,output=128,arrival=gamma,cv=3
    synthetic:rate=1rps,requests=500,lengths=empirical:lmsys,output_max=512

Keys (``key=value``, comma separated, any order):

``rate``        required; mean arrival rate, any unit :func:`~apex_opt.units.parse_rate` accepts
                (``20rps``, ``20req/s``, ``600rpm``, or a bare number per second); must be > 0.
``requests``    number of requests, or
``duration``    a span of time (``10min``, ``600s``): every arrival up to that time. Exactly one of the two.
``prompt``      mean prompt length in tokens (integer >= 1).
``output``      mean output length in tokens (integer >= 1). Both are required unless ``lengths=empirical:...``.
``arrival``     ``poisson`` (default: exponential gaps), ``gamma`` (gamma gaps with coefficient of variation
                ``cv``; cv > 1 is burstier than Poisson, cv < 1 smoother, cv = 1 is Poisson) or ``constant``
                (evenly spaced, 1/rate apart).
``cv``          only with ``arrival=gamma``; default 1.
``lengths``     ``lognormal`` (default), ``fixed`` (every request exactly ``prompt``/``output`` tokens),
                ``uniform`` (integers uniform on [1, 2*mean - 1], whose mean is ``mean``) or
                ``empirical:<workload>``: (prompt, output) pairs resampled with replacement from a catalog
                workload (e.g. ``lmsys``) or a trace file.
``sigma``       only with ``lengths=lognormal``: the standard deviation of log(length); default 0.5. The
                lognormal's location is ``mu = ln(mean) - sigma**2 / 2`` so that its mean equals the requested
                mean; draws are rounded to whole tokens and clipped to >= 1.
``prompt_max``, ``output_max``
                optional caps (integers >= 1) applied after drawing (a cap below the mean lowers the mean).
``seed``        integer >= 0, default 0.

Generation uses ``numpy.random.default_rng(seed)`` split into three independent streams (arrivals,
prompt lengths, output lengths), so the same seed always gives the same workload and changing, say,
only the rate keeps the same token lengths (common random numbers for comparisons).
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..units import parse_rate, parse_time
from .model import Workload

PREFIX = "synthetic:"
SYNTHETIC_KEYS: tuple[str, ...] = (
    "rate",
    "requests",
    "duration",
    "prompt",
    "output",
    "arrival",
    "cv",
    "lengths",
    "sigma",
    "prompt_max",
    "output_max",
    "seed",
)
ARRIVALS: tuple[str, ...] = ("poisson", "gamma", "constant")
LENGTHS: tuple[str, ...] = ("lognormal", "fixed", "uniform", "empirical")
DEFAULT_SIGMA = 0.5
MAX_SIGMA = 4.0
MAX_REQUESTS = 50_000_000
_EXAMPLE = "synthetic:rate=20rps,requests=10000,prompt=1024,output=256,seed=0"


def _err(message: str) -> SpecError:
    return SpecError(f"synthetic workload: {message}")


def _fmt(x: float) -> str:
    """Shortest exact text of a number (``20.0`` -> ``20``)."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


@dataclass(frozen=True)
class SyntheticSpec:
    """A parsed synthetic workload; see the module docstring for the meaning of each field.

    Construct it with :func:`parse_synthetic` or directly (the same checks run). Fields that do not
    apply are None: ``cv`` unless ``arrival == "gamma"``, ``sigma`` unless ``lengths == "lognormal"``,
    ``prompt``/``output`` when ``lengths == "empirical"``.
    """

    rate: float
    requests: int | None = None
    duration_s: float | None = None
    prompt: int | None = None
    output: int | None = None
    arrival: str = "poisson"
    cv: float | None = None
    lengths: str = "lognormal"
    sigma: float | None = None
    empirical: str | None = None  # catalog workload name or trace path, with lengths == "empirical"
    prompt_max: int | None = None
    output_max: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)):
            raise _err(f"rate={self.rate!r} is not a number of requests/s; write e.g. rate=20rps")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise _err(f"rate={_fmt(self.rate)}rps must be a finite rate > 0; write e.g. rate=20rps or rate=0.5rps")
        object.__setattr__(self, "rate", float(self.rate))
        if (self.requests is None) == (self.duration_s is None):
            both = "both" if self.requests is not None else "neither"
            raise _err(
                f"{both} of requests and duration given; give exactly one, e.g. requests=10000 or duration=10min"
            )
        if self.requests is not None:
            _check_int("requests", self.requests, 1)
            if self.requests > MAX_REQUESTS:
                raise _err(f"requests={self.requests} is more than the {MAX_REQUESTS} supported; use fewer requests")
        if self.duration_s is not None:
            if isinstance(self.duration_s, bool) or not isinstance(self.duration_s, (int, float)):
                raise _err(
                    f"duration={self.duration_s!r} is not a duration; write e.g. duration=10min or duration=600s"
                )
            if not (math.isfinite(self.duration_s) and self.duration_s > 0):
                raise _err(f"duration={_fmt(self.duration_s)}s must be > 0; write e.g. duration=10min or duration=600s")
            object.__setattr__(self, "duration_s", float(self.duration_s))
            expected = self.rate * self.duration_s
            if expected > MAX_REQUESTS:
                raise _err(
                    f"rate x duration = {expected:.3g} requests, more than the {MAX_REQUESTS} supported; "
                    "shorten the duration or lower the rate"
                )

        if self.arrival not in ARRIVALS:
            raise _err(f"arrival={self.arrival!r} is not known; valid values: {', '.join(ARRIVALS)}")
        if self.arrival == "gamma":
            cv = 1.0 if self.cv is None else self.cv
            if isinstance(cv, bool) or not isinstance(cv, (int, float)) or not (math.isfinite(cv) and 0 < cv <= 100):
                raise _err(f"cv={cv!r} must be a number > 0 (and <= 100); cv=1 is Poisson, cv=3 bursty, cv=0.5 smooth")
            object.__setattr__(self, "cv", float(cv))
        elif self.cv is not None:
            raise _err(
                f"cv={_fmt(self.cv)} only applies to arrival=gamma (arrival is {self.arrival}); "
                "add arrival=gamma or drop cv"
            )

        if self.lengths not in LENGTHS:
            raise _err(
                f"lengths={self.lengths!r} is not known; valid values: lognormal, fixed, uniform, empirical:<workload>"
            )
        if self.lengths == "lognormal":
            sigma = DEFAULT_SIGMA if self.sigma is None else self.sigma
            if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 <= sigma <= MAX_SIGMA):
                raise _err(
                    f"sigma={sigma!r} must be a number between 0 and {_fmt(MAX_SIGMA)}; the default is {DEFAULT_SIGMA}"
                )
            object.__setattr__(self, "sigma", float(sigma))
        elif self.sigma is not None:
            raise _err(
                f"sigma={_fmt(self.sigma)} only applies to lengths=lognormal (lengths is {self.lengths}); drop sigma"
            )

        if self.lengths == "empirical":
            if not self.empirical or not isinstance(self.empirical, str):
                raise _err("lengths=empirical needs a source workload: write e.g. lengths=empirical:lmsys")
            if self.empirical.startswith(PREFIX) or self.empirical == "synthetic":
                raise _err(
                    f"lengths=empirical:{self.empirical}: resample from a catalog workload or a trace file, "
                    "not a synthetic one"
                )
            for key in ("prompt", "output"):
                if getattr(self, key) is not None:
                    raise _err(
                        f"{key}={getattr(self, key)} does not apply to lengths=empirical:{self.empirical} "
                        f"(lengths come from that trace); drop {key}, or cap lengths with {key}_max"
                    )
        else:
            if self.empirical is not None:
                raise _err(f"empirical={self.empirical!r} only applies to lengths=empirical")
            for key in ("prompt", "output"):
                if getattr(self, key) is None:
                    raise _err(
                        f"missing {key}=<mean {key} tokens>; write e.g. {_EXAMPLE}, or lengths=empirical:<workload> "
                        "to resample a catalog trace"
                    )
                _check_int(key, getattr(self, key), 1)
        for key in ("prompt_max", "output_max"):
            if getattr(self, key) is not None:
                _check_int(key, getattr(self, key), 1)
        _check_int("seed", self.seed, 0)

    @property
    def lengths_text(self) -> str:
        return f"empirical:{self.empirical}" if self.lengths == "empirical" else self.lengths

    def expression(self) -> str:
        """The canonical expression; ``parse_synthetic(spec.expression()) == spec``."""
        parts = [f"rate={_fmt(self.rate)}rps"]
        if self.requests is not None:
            parts.append(f"requests={self.requests}")
        else:
            parts.append(f"duration={_fmt(self.duration_s or 0.0)}s")
        if self.prompt is not None:
            parts.append(f"prompt={self.prompt}")
        if self.output is not None:
            parts.append(f"output={self.output}")
        if self.prompt_max is not None:
            parts.append(f"prompt_max={self.prompt_max}")
        if self.output_max is not None:
            parts.append(f"output_max={self.output_max}")
        parts.append(f"arrival={self.arrival}")
        if self.cv is not None:
            parts.append(f"cv={_fmt(self.cv)}")
        parts.append(f"lengths={self.lengths_text}")
        if self.sigma is not None:
            parts.append(f"sigma={_fmt(self.sigma)}")
        parts.append(f"seed={self.seed}")
        return PREFIX + ",".join(parts)


def _check_int(key: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise _err(f"{key}={value!r} must be a whole number >= {low}")


def _parse_int(key: str, text: str, low: int, example: str) -> int:
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number.is_integer()):
            raise _err(f"{key}={text!r} is not a whole number; write e.g. {key}={example}") from None
        value = int(number)
    if value < low:
        raise _err(f"{key}={text} must be >= {low}; write e.g. {key}={example}")
    return value


def _parse_float(key: str, text: str, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _err(f"{key}={text!r} is not a number; write e.g. {key}={example}") from None
    if not math.isfinite(value):
        raise _err(f"{key}={text!r} is not a finite number; write e.g. {key}={example}")
    return value


def is_synthetic(ref: str) -> bool:
    """True if ``ref`` is a ``synthetic:`` expression."""
    return isinstance(ref, str) and ref.strip().lower().startswith(PREFIX)


def parse_synthetic(expression: str) -> SyntheticSpec:
    """Parse ``synthetic:key=value,...`` into a :class:`SyntheticSpec` (SpecError on any bad key or value)."""
    text = expression.strip()
    if not text.lower().startswith(PREFIX):
        raise SpecError(f"'{expression}' is not a synthetic workload expression; write e.g. {_EXAMPLE}")
    body = text[len(PREFIX) :]
    raw: dict[str, str] = {}
    for part in body.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep:
            raise _err(f"'{part}' is not key=value; write e.g. {_EXAMPLE}")
        if key not in SYNTHETIC_KEYS:
            close = difflib.get_close_matches(key, SYNTHETIC_KEYS, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ";"
            raise SpecError(f"unknown key '{key}' in synthetic workload{hint} Valid keys: {', '.join(SYNTHETIC_KEYS)}")
        if key in raw:
            raise _err(f"key '{key}' is given twice ({key}={raw[key]} and {key}={value}); keep one")
        if not value:
            raise _err(f"key '{key}' has no value; write e.g. {_EXAMPLE}")
        raw[key] = value
    if "rate" not in raw:
        raise _err(f"missing rate=<requests per second>; write e.g. {_EXAMPLE}")

    kwargs: dict[str, object] = {}
    try:
        kwargs["rate"] = parse_rate(raw["rate"])
    except SpecError as exc:
        raise _err(f"rate={raw['rate']}: {exc}") from None
    if "requests" in raw:
        kwargs["requests"] = _parse_int("requests", raw["requests"], 1, "10000")
    if "duration" in raw:
        try:
            kwargs["duration_s"] = parse_time(raw["duration"])
        except SpecError as exc:
            raise _err(f"duration={raw['duration']}: {exc}") from None
    for key, example in (("prompt", "1024"), ("output", "256"), ("prompt_max", "8192"), ("output_max", "2048")):
        if key in raw:
            kwargs[key] = _parse_int(key, raw[key], 1, example)
    if "seed" in raw:
        kwargs["seed"] = _parse_int("seed", raw["seed"], 0, "0")
    if "arrival" in raw:
        kwargs["arrival"] = raw["arrival"].lower()
    if "cv" in raw:
        kwargs["cv"] = _parse_float("cv", raw["cv"], "2")
    if "sigma" in raw:
        kwargs["sigma"] = _parse_float("sigma", raw["sigma"], "0.5")
    if "lengths" in raw:
        kind, _, source = raw["lengths"].partition(":")
        kind = kind.strip().lower()
        kwargs["lengths"] = kind
        if kind == "empirical":
            kwargs["empirical"] = source.strip() or None
        elif source:
            raise _err(f"lengths={raw['lengths']}: only lengths=empirical takes a ':<workload>' source")
    return SyntheticSpec(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- generation


def _gaps(spec: SyntheticSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    mean_gap = 1.0 / spec.rate
    if spec.arrival == "poisson":
        return rng.exponential(mean_gap, n)
    if spec.arrival == "gamma":
        shape = 1.0 / (spec.cv or 1.0) ** 2
        return rng.gamma(shape, mean_gap / shape, n)
    return np.full(n, mean_gap)


def _arrivals(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.requests is not None:
        return np.cumsum(_gaps(spec, rng, spec.requests))
    duration = float(spec.duration_s or 0.0)
    expected = spec.rate * duration
    spread = (spec.cv or 1.0) if spec.arrival != "constant" else 0.0
    chunk = int(expected + 6.0 * spread * math.sqrt(expected) + 64)
    pieces: list[np.ndarray] = []
    last = 0.0
    while last <= duration:
        piece = last + np.cumsum(_gaps(spec, rng, chunk))
        pieces.append(piece)
        last = float(piece[-1])
    arrival = np.concatenate(pieces)
    return arrival[: int(np.searchsorted(arrival, duration, side="right"))]


def _lengths(
    kind: str, mean: int, sigma: float | None, cap: int | None, rng: np.random.Generator, n: int
) -> np.ndarray:
    if kind == "fixed":
        values = np.full(n, mean, dtype=np.int64)
    elif kind == "uniform":
        values = rng.integers(1, 2 * mean, size=n, endpoint=False, dtype=np.int64) if mean > 1 else np.ones(n, np.int64)
    else:
        s = float(sigma if sigma is not None else DEFAULT_SIGMA)
        mu = math.log(mean) - s * s / 2.0
        draws = np.rint(rng.lognormal(mu, s, n))
        values = np.clip(draws, 1, 2.0**62).astype(np.int64)
    if cap is not None:
        values = np.minimum(values, cap)
    return values


def generate_synthetic(
    spec: SyntheticSpec,
    *,
    specs_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> Workload:
    """Generate the workload ``spec`` describes (deterministic in ``spec.seed``).

    ``specs_dir`` (the catalog's specs/ folder) is needed only for ``lengths=empirical:<catalog name>``.
    The workload's name and source default to the canonical expression.
    """
    root = np.random.default_rng(spec.seed)
    arrival_rng, prompt_rng, output_rng = root.spawn(3)
    arrival = _arrivals(spec, arrival_rng)
    n = int(arrival.shape[0])
    if n == 0:
        raise _err(
            f"no request arrives within duration={_fmt(spec.duration_s or 0.0)}s at rate={_fmt(spec.rate)}rps "
            f"(seed {spec.seed}); lengthen the duration or raise the rate"
        )
    if spec.lengths == "empirical":
        source = _empirical_source(spec, specs_dir)
        idx = prompt_rng.integers(0, len(source), size=n)
        prompt = source.prompt_tokens[idx]
        output = source.output_tokens[idx]
        if spec.prompt_max is not None:
            prompt = np.minimum(prompt, spec.prompt_max)
        if spec.output_max is not None:
            output = np.minimum(output, spec.output_max)
    else:
        assert spec.prompt is not None and spec.output is not None
        prompt = _lengths(spec.lengths, spec.prompt, spec.sigma, spec.prompt_max, prompt_rng, n)
        output = _lengths(spec.lengths, spec.output, spec.sigma, spec.output_max, output_rng, n)
    expression = spec.expression()
    ids = tuple(str(i) for i in range(n))
    return Workload(name or expression, arrival, prompt, output, ids, expression)


def _empirical_source(spec: SyntheticSpec, specs_dir: str | os.PathLike[str] | None) -> Workload:
    from .catalog import load_workload  # late import: catalog imports this module
    from .traces import TRACE_EXTENSIONS

    ref = spec.empirical or ""
    looks_like_path = ref.lower().endswith(TRACE_EXTENSIONS) or "/" in ref or os.sep in ref
    if specs_dir is None and not looks_like_path:
        raise _err(
            f"lengths=empirical:{ref} needs the workload catalog to find '{ref}'; pass specs_dir (the specs/ folder) "
            "or give a trace path, e.g. lengths=empirical:traces/my.jsonl"
        )
    if specs_dir is None:
        from .traces import read_trace

        return read_trace(Path(ref))
    return load_workload(ref, specs_dir=Path(specs_dir))


def synthetic_workload(
    expression: str, *, specs_dir: str | os.PathLike[str] | None = None, name: str | None = None
) -> Workload:
    """``generate_synthetic(parse_synthetic(expression))``."""
    return generate_synthetic(parse_synthetic(expression), specs_dir=specs_dir, name=name)


__all__ = [
    "ARRIVALS",
    "LENGTHS",
    "SYNTHETIC_KEYS",
    "SyntheticSpec",
    "generate_synthetic",
    "is_synthetic",
    "parse_synthetic",
    "synthetic_workload",
]
