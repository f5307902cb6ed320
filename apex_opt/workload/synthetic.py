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
``start``       a time offset (``600s``, ``10min``) added to every arrival, default 0: a later load stage of the
                same run, to join with :func:`~apex_opt.workload.model.concat_workloads`.

Generation uses ``numpy.random.default_rng(seed)`` split into three independent streams (arrivals,
prompt lengths, output lengths), so the same seed always gives the same workload and changing, say,
only the rate keeps the same token lengths (common random numbers for comparisons).

Shared prefixes: inference-perf's ``shared_prefix`` data set (kubernetes-sigs/inference-perf,
``inference_perf/datagen/shared_prefix_datagen.py``), with the prompts' content in
:attr:`~apex_opt.workload.model.Workload.segments` for prefix-caching simulation::

    synthetic:rate=10rps,duration=600s,shared_prefix=11x4,system_len=100,question_len=466,output=247,seed=0

``shared_prefix`` ``GxU``: G system prompts, each shared by U users with their own question: ``G*U`` distinct
                prompts, each the system prompt then the question. As in inference-perf, the ``G*U`` prompts
                are put in a seeded random order once and requests cycle through that order (request ``i``
                sends prompt ``order[i mod G*U]``), so every prompt recurs every ``G*U`` requests.
``system_len``  tokens of each system prompt (integer >= 0); required with ``shared_prefix``.
``question_len`` mean tokens of each question (integer >= 1); required with ``shared_prefix``. ``output`` is the
                mean output length (required); ``prompt`` and ``prompt_max`` do not apply. ``lengths`` defaults to
                ``fixed`` here (inference-perf's integer lengths): every question exactly ``question_len``
                tokens and every output exactly ``output``; ``lognormal`` or ``uniform`` draw one question and
                one output length per distinct prompt (inference-perf's distributions are per prompt too).
``template``    extra tokens per prompt beyond system + question, as the server counts them (chat template,
                special tokens, re-tokenisation), default 0; may be fractional: a mean over the distinct prompts.
                They belong to the question's (unshared) segment.
``template_min``, ``template_max``
                optional range of the extra tokens (integers, both or neither): the distinct prompts get
                extras spread over the range (a triangular distribution whose mean is ``template``, as far as
                the range allows); without a range every prompt gets ``template`` rounded (fractions spread).
``turns``       multi-turn conversations of up to this many turns (default 1: single turn). As inference-perf's
                ``enable_multi_turn_chat``: user ``u``'s next request (``G*U`` requests later) sends the
                previous prompt + the previous answer + the question again; after ``turns`` turns the
                conversation starts over from the system prompt. Answers get content ids
                (:attr:`~apex_opt.workload.model.Workload.output_ids`).
``data_seed``   seed of the data set (question/output lengths, template extras, the prompts' order), default
                ``seed``: give two load stages different ``seed`` (arrivals) and the same ``data_seed``.

Content ids of a shared-prefix workload: system prompt ``g`` is ``g``, the question of prompt ``p`` is
``G + p``, the answer of request ``i`` is ``G + G*U + i``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bounds import MAX_ARRIVAL_SPAN_S
from ..errors import SpecError
from ..units import parse_rate, parse_time
from .model import Workload

PREFIX = "synthetic:"
SHARED_PREFIX_KEYS: tuple[str, ...] = (
    "system_len",
    "question_len",
    "template",
    "template_min",
    "template_max",
    "turns",
    "data_seed",
)
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
    "start",
    "shared_prefix",
    *SHARED_PREFIX_KEYS,
)
ARRIVALS: tuple[str, ...] = ("poisson", "gamma", "constant")
LENGTHS: tuple[str, ...] = ("lognormal", "fixed", "uniform", "empirical")
DEFAULT_SIGMA = 0.5
MAX_SIGMA = 4.0
MAX_REQUESTS = 50_000_000
MAX_PROMPTS = 10_000_000  # distinct prompts of a shared-prefix data set
_EXAMPLE = "synthetic:rate=20rps,requests=10000,prompt=1024,output=256,seed=0"
_SP_EXAMPLE = "synthetic:rate=10rps,duration=600s,shared_prefix=11x4,system_len=100,question_len=466,output=247"


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
    ``prompt``/``output`` when ``lengths == "empirical"``, ``prompt`` with ``shared_prefix``, the
    shared-prefix fields without it. ``lengths`` None means the default: ``fixed`` with
    ``shared_prefix``, ``lognormal`` otherwise.
    """

    rate: float
    requests: int | None = None
    duration_s: float | None = None
    prompt: int | None = None
    output: int | None = None
    arrival: str = "poisson"
    cv: float | None = None
    lengths: str | None = None  # None: "fixed" with shared_prefix, "lognormal" otherwise
    sigma: float | None = None
    empirical: str | None = None  # catalog workload name or trace path, with lengths == "empirical"
    prompt_max: int | None = None
    output_max: int | None = None
    seed: int = 0
    start_s: float = 0.0
    shared_prefix: tuple[int, int] | None = None  # (G system prompts, U users each)
    system_len: int | None = None
    question_len: int | None = None
    template: float | None = None  # None: 0 with shared_prefix
    template_min: int | None = None
    template_max: int | None = None
    turns: int | None = None  # None: 1 with shared_prefix
    data_seed: int | None = None

    def __post_init__(self) -> None:
        if self.lengths is None:
            object.__setattr__(self, "lengths", "fixed" if self.shared_prefix is not None else "lognormal")
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

        if self.shared_prefix is not None:
            self._check_shared_prefix()
        elif self.lengths == "empirical":
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
        start = self.start_s
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not (math.isfinite(start) and start >= 0):
            raise _err(f"start={start!r} must be a time >= 0; write e.g. start=600s")
        object.__setattr__(self, "start_s", float(start))
        self._check_span()
        if self.shared_prefix is None:
            for key in SHARED_PREFIX_KEYS:
                if getattr(self, key) is not None:
                    raise _err(
                        f"{key}={getattr(self, key)} only applies to shared-prefix workloads; add shared_prefix=GxU "
                        f"(e.g. {_SP_EXAMPLE}) or drop {key}"
                    )

    def _check_span(self) -> None:
        """Arrivals must end within MAX_ARRIVAL_SPAN_S: beyond, simulated time loses its precision (and a rate
        like 1e-300rps puts arrivals ages away)."""
        limit = MAX_ARRIVAL_SPAN_S
        year = f"one year ({limit:,.0f} s)"
        if self.start_s >= limit:
            raise _err(f"start={_fmt(self.start_s)}s is beyond the {year} of arrivals supported; use a start of at "
                       f"most {limit:.0f}s, e.g. start=600s")
        room = limit - self.start_s
        if self.duration_s is not None:
            if self.duration_s > room:
                after = f" (after start={_fmt(self.start_s)}s)" if self.start_s else ""
                raise _err(f"duration={_fmt(self.duration_s)}s{after} spans more than the {year} of arrivals "
                           f"supported; shorten it to at most {room:.0f}s")
            return
        requests = int(self.requests or 0)
        span = requests / self.rate
        if span > room:
            low = requests / room if room > 0 else math.inf
            raise _err(f"rate={_fmt(self.rate)}rps with requests={requests} spreads the arrivals over about "
                       f"{span:.3g} s, more than the {year} supported; raise the rate to at least {low:.3g}rps "
                       "or send fewer requests")

    def _check_shared_prefix(self) -> None:
        sp = self.shared_prefix
        if (
            not isinstance(sp, tuple)
            or len(sp) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in sp)
        ):
            raise _err(
                f"shared_prefix={sp!r} must be GxU: G system prompts times U users each, e.g. shared_prefix=11x4"
            )
        object.__setattr__(self, "shared_prefix", (int(sp[0]), int(sp[1])))
        if sp[0] * sp[1] > MAX_PROMPTS:
            raise _err(f"shared_prefix={sp[0]}x{sp[1]} makes more than {MAX_PROMPTS} distinct prompts; use fewer")
        if self.lengths == "empirical":
            raise _err(
                "lengths=empirical does not apply to shared_prefix (lengths come from system_len, question_len and "
                "output); use lengths=fixed, lognormal or uniform"
            )
        for key in ("prompt", "prompt_max"):
            if getattr(self, key) is not None:
                raise _err(
                    f"{key}={getattr(self, key)} does not apply to shared_prefix: a prompt is system_len + "
                    f"question_len (+ template) tokens; drop {key}"
                )
        for key, low in (("system_len", 0), ("question_len", 1), ("output", 1)):
            if getattr(self, key) is None:
                raise _err(f"missing {key}=<tokens> for shared_prefix; write e.g. {_SP_EXAMPLE}")
            _check_int(key, getattr(self, key), low)
        template = 0.0 if self.template is None else self.template
        if isinstance(template, bool) or not isinstance(template, (int, float)) or not math.isfinite(template):
            raise _err(f"template={template!r} must be a number of extra tokens per prompt, e.g. template=25.6")
        object.__setattr__(self, "template", float(template))
        lo, hi = self.template_min, self.template_max
        if (lo is None) != (hi is None):
            raise _err("give template_min and template_max together (the range of the extra tokens), or neither")
        if lo is not None and hi is not None:
            for key, value in (("template_min", lo), ("template_max", hi)):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise _err(f"{key}={value!r} must be a whole number of tokens")
            if not lo <= template <= hi:
                raise _err(
                    f"template={_fmt(template)} must lie within template_min={lo} and template_max={hi}; "
                    "template is the mean extra tokens"
                )
        least = lo if lo is not None else math.floor(template)
        assert self.question_len is not None
        if self.question_len + least < 1:
            raise _err(
                f"question_len={self.question_len} with {least} template tokens leaves a question of < 1 token; "
                "raise question_len or the template"
            )
        turns = 1 if self.turns is None else self.turns
        _check_int("turns", turns, 1)
        object.__setattr__(self, "turns", int(turns))
        if self.data_seed is not None:
            _check_int("data_seed", self.data_seed, 0)

    @property
    def lengths_text(self) -> str:
        return f"empirical:{self.empirical}" if self.lengths == "empirical" else str(self.lengths)

    def expression(self) -> str:
        """The canonical expression; ``parse_synthetic(spec.expression()) == spec``."""
        parts = [f"rate={_fmt(self.rate)}rps"]
        if self.requests is not None:
            parts.append(f"requests={self.requests}")
        else:
            parts.append(f"duration={_fmt(self.duration_s or 0.0)}s")
        if self.shared_prefix is not None:
            parts.append(f"shared_prefix={self.shared_prefix[0]}x{self.shared_prefix[1]}")
            parts.append(f"system_len={self.system_len}")
            parts.append(f"question_len={self.question_len}")
            if self.template or self.template_min is not None:
                parts.append(f"template={_fmt(self.template or 0.0)}")
            if self.template_min is not None:
                parts.append(f"template_min={self.template_min}")
                parts.append(f"template_max={self.template_max}")
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
        if self.turns is not None and self.turns > 1:
            parts.append(f"turns={self.turns}")
        if self.start_s:
            parts.append(f"start={_fmt(self.start_s)}s")
        parts.append(f"seed={self.seed}")
        if self.data_seed is not None:
            parts.append(f"data_seed={self.data_seed}")
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
    if "start" in raw:
        try:
            kwargs["start_s"] = parse_time(raw["start"])
        except SpecError as exc:
            raise _err(f"start={raw['start']}: {exc}") from None
    if "shared_prefix" in raw:
        match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", raw["shared_prefix"])
        if match is None:
            raise _err(
                f"shared_prefix={raw['shared_prefix']!r} is not GxU (G system prompts times U users each); "
                "write e.g. shared_prefix=11x4"
            )
        kwargs["shared_prefix"] = (int(match.group(1)), int(match.group(2)))
    for key, low, example in (
        ("system_len", 0, "100"),
        ("question_len", 1, "466"),
        ("turns", 1, "3"),
        ("data_seed", 0, "0"),
        ("template_min", -(2**62), "14"),
        ("template_max", -(2**62), "38"),
    ):
        if key in raw:
            kwargs[key] = _parse_int(key, raw[key], low, example)
    if "template" in raw:
        kwargs["template"] = _parse_float("template", raw["template"], "25.6")
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
    if spec.start_s:
        arrival = arrival + spec.start_s
    n = int(arrival.shape[0])
    if n == 0:
        raise _err(
            f"no request arrives within duration={_fmt(spec.duration_s or 0.0)}s at rate={_fmt(spec.rate)}rps "
            f"(seed {spec.seed}); lengthen the duration or raise the rate"
        )
    if spec.shared_prefix is not None:
        return _shared_prefix(spec, arrival, name)
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
        assert spec.prompt is not None and spec.output is not None and spec.lengths is not None
        prompt = _lengths(spec.lengths, spec.prompt, spec.sigma, spec.prompt_max, prompt_rng, n)
        output = _lengths(spec.lengths, spec.output, spec.sigma, spec.output_max, output_rng, n)
    expression = spec.expression()
    ids = tuple(str(i) for i in range(n))
    return Workload(name or expression, arrival, prompt, output, ids, expression)


def _template_tokens(spec: SyntheticSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """Extra tokens of each of ``n`` distinct prompts: evenly spaced quantiles of the template distribution
    (both ends of the range included, as a measured min and max are), rounded so that their total is
    ``template * n`` as far as the range allows, in a seeded random order."""
    mean = float(spec.template or 0.0)
    if spec.template_min is None or spec.template_max is None or spec.template_min == spec.template_max:
        values = np.full(n, mean)
    else:
        lo, hi = float(spec.template_min), float(spec.template_max)
        mode = min(max(3.0 * mean - lo - hi, lo), hi)  # triangular(lo, mode, hi) has mean (lo + mode + hi) / 3
        u = np.arange(n) / (n - 1) if n > 1 else np.full(1, 0.5)  # the ends of the range included
        cut = (mode - lo) / (hi - lo)
        values = np.where(
            u < cut,
            lo + np.sqrt(u * (hi - lo) * (mode - lo)),
            hi - np.sqrt((1.0 - u) * (hi - lo) * (hi - mode)),
        )
    floor = np.floor(values)
    extra = values - floor
    target = round(mean * n)
    add = min(max(target - int(floor.sum()), 0), int(np.count_nonzero(extra > 0)))
    rounded = floor.astype(np.int64)
    rounded[np.argsort(-extra, kind="stable")[:add]] += 1
    return rounded[rng.permutation(n)]


def _shared_prefix(spec: SyntheticSpec, arrival: np.ndarray, name: str | None) -> Workload:
    """The shared-prefix data set replayed at ``arrival`` (see the module docstring)."""
    assert spec.shared_prefix is not None and spec.question_len is not None and spec.output is not None
    groups, users = spec.shared_prefix
    prompts = groups * users
    system = int(spec.system_len or 0)
    turns = int(spec.turns or 1)
    kind = str(spec.lengths)
    data_seed = spec.seed if spec.data_seed is None else spec.data_seed
    _, question_rng, output_rng, order_rng, template_rng = np.random.default_rng(data_seed).spawn(5)
    # per distinct prompt p = g * users + u (group-major, as inference-perf builds them)
    question = _lengths(kind, spec.question_len, spec.sigma, None, question_rng, prompts)
    output = _lengths(kind, spec.output, spec.sigma, spec.output_max, output_rng, prompts)
    question = np.maximum(question + _template_tokens(spec, template_rng, prompts), 1)
    order = order_rng.permutation(prompts)  # cycle position -> prompt

    n = int(arrival.shape[0])
    index = np.arange(n)
    prompt_of = order[index % prompts]
    turn_of = (index // prompts) % turns
    q_len = question.tolist()
    o_len = output.tolist()
    answer0 = groups + prompts
    segments: list[tuple[tuple[int, int], ...]] = []
    for i, (p, t) in enumerate(zip(prompt_of.tolist(), turn_of.tolist(), strict=True)):
        q = (groups + p, q_len[p])
        pairs = [(p // users, system), q] if system else [q]
        for back in range(t, 0, -1):  # earlier turns of this conversation, oldest first
            pairs += [(answer0 + i - back * prompts, o_len[p]), q]
        segments.append(tuple(pairs))
    prompt_tokens = np.array([sum(tok for _, tok in pairs) for pairs in segments], dtype=np.int64)
    output_tokens = output[prompt_of]
    expression = spec.expression()
    return Workload(
        name or expression,
        arrival,
        prompt_tokens,
        output_tokens,
        tuple(str(i) for i in range(n)),
        expression,
        tuple(segments),
        tuple(range(answer0, answer0 + n)) if turns > 1 else None,
    )


def shared_prefix_workload(
    *,
    system_prompts: int,
    users_per_system_prompt: int,
    system_prompt_len: int,
    question_len: int,
    output_tokens: int,
    rate: float,
    duration_s: float | None = None,
    requests: int | None = None,
    prompt_tokens_mean: float | None = None,
    prompt_tokens_min: float | None = None,
    prompt_tokens_max: float | None = None,
    turns: int = 1,
    lengths: str = "fixed",
    arrival: str = "poisson",
    start_s: float = 0.0,
    seed: int = 0,
    data_seed: int | None = None,
    name: str | None = None,
) -> Workload:
    """One load stage of inference-perf's shared-prefix data set, from the values a benchmark run records.

    The arguments are named like the columns of ``data/vllm_v1/dev_runs.csv``. A stage sends
    ``int(rate * duration_s)`` requests (as inference-perf's load generator does; or give ``requests``),
    Poisson arrivals from ``start_s``. ``prompt_tokens_mean`` / ``_min`` / ``_max``: the prompt lengths the
    server counted (first turn), which exceed ``system_prompt_len + question_len`` by the chat template and
    re-tokenisation; they set the ``template`` keys. ``seed`` drives the arrivals, ``data_seed`` (default
    ``seed``) the data set. The workload's source is the equivalent ``synthetic:`` expression.

    ``turns`` > 1 replays inference-perf's multi-turn chat (prompts grow by the previous answer and the
    question each turn). The runs of ``dev_runs.csv`` record ``multi_turn=True`` but their prompts did not
    grow (``prompt_tokens_max`` is below system + question + output), so replay them with ``turns=1``.

    inference-perf restarts its prompt cycle at every stage on the same data set, so a later stage takes
    the same ``data_seed``, another ``seed`` and a ``start_s``; join the stages with
    :func:`~apex_opt.workload.model.concat_workloads`:

    >>> from apex_opt.workload import concat_workloads
    >>> run = dict(system_prompts=11, users_per_system_prompt=4, system_prompt_len=100, question_len=466,
    ...            output_tokens=247, prompt_tokens_mean=591.6, prompt_tokens_min=580, prompt_tokens_max=604)
    >>> stage0 = shared_prefix_workload(rate=5, duration_s=600, **run)
    >>> stage1 = shared_prefix_workload(rate=10, duration_s=600, start_s=600, seed=1, data_seed=0, **run)
    >>> both = concat_workloads([stage0, stage1])
    >>> len(both), float(both.arrival_s[3000]) > 600, int(both.prompt_tokens.min()), int(both.prompt_tokens.max())
    (9000, True, 580, 604)
    >>> round(both.prefix_summary()["max_prefix_reuse"], 3)
    0.996
    """
    base = int(system_prompt_len) + int(question_len)

    def extra(key: str, value: float | None) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _err(f"{key}={value!r} is not a number of tokens")
        return round(float(value) - base, 6)  # 591.6 - 566 is 25.600000000000023 in binary

    if (prompt_tokens_min is None) != (prompt_tokens_max is None):
        raise _err("give prompt_tokens_min and prompt_tokens_max together, or neither")
    template = extra("prompt_tokens_mean", prompt_tokens_mean)
    lo, hi = extra("prompt_tokens_min", prompt_tokens_min), extra("prompt_tokens_max", prompt_tokens_max)
    if lo is not None and hi is not None:
        if not (float(lo).is_integer() and float(hi).is_integer()):
            raise _err(f"prompt_tokens_min/max = {prompt_tokens_min}/{prompt_tokens_max} must be whole numbers")
        if template is None:
            template = (lo + hi) / 2
    if duration_s is not None and requests is None:
        requests = int(float(rate) * float(duration_s))
        if requests < 1:
            raise _err(f"rate={_fmt(rate)}rps x duration={_fmt(duration_s)}s sends no request; lengthen the stage")
    elif duration_s is not None:
        raise _err("give duration_s (the stage sends int(rate * duration_s) requests) or requests, not both")
    spec = SyntheticSpec(
        rate=rate,
        requests=requests,
        output=int(output_tokens),
        arrival=arrival,
        lengths=lengths,
        seed=seed,
        start_s=start_s,
        shared_prefix=(int(system_prompts), int(users_per_system_prompt)),
        system_len=int(system_prompt_len),
        question_len=int(question_len),
        template=template,
        template_min=None if lo is None else int(lo),
        template_max=None if hi is None else int(hi),
        turns=turns,
        data_seed=data_seed,
    )
    return generate_synthetic(spec, name=name)


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
    "shared_prefix_workload",
    "synthetic_workload",
]
