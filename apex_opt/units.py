"""Every unit string apex-opt accepts is parsed here, into SI floats.

Internally apex-opt uses seconds, bytes, bytes per second, FLOP per second, events per second,
watts and fractions in [0, 1]. Numbers given without a unit are taken as already in SI.

>>> parse_time("200ms")
0.2
>>> parse_bytes("80GiB") == 80 * 2**30
True
>>> parse_bandwidth("400Gb/s")   # bits: 400e9 / 8 bytes per second
50000000000.0
>>> parse_bandwidth("3.35TB/s")
3350000000000.0
>>> parse_flops("989TFLOPS")
989000000000000.0
>>> parse_rate("0.5rps")
0.5
>>> parse_fraction("90%")
0.9
>>> parse_power("700W")
700.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from .errors import SpecError

_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_SPLIT = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-z%/µ]*)\s*$")

_TIME = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
_DEC = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_RATE = {"": 1.0, "rps": 1.0, "/s": 1.0, "req/s": 1.0, "rpm": 1 / 60.0, "/min": 1 / 60.0, "rph": 1 / 3600.0}


def _split(text: str, what: str, example: str) -> tuple[float, str]:
    match = _SPLIT.match(text)
    if not match:
        raise SpecError(f"'{text}' is not a {what}; write e.g. {example}")
    value = float(match.group(1))
    if not math.isfinite(value):
        raise SpecError(f"'{text}' is not a finite {what}; write e.g. {example}")
    return value, match.group(2)


def _prefixed(text: str, unit: str, base: str, what: str, example: str, binary: bool = True) -> float:
    """Parse units of the form <prefix><base>, e.g. GiB, TB/s, TFLOPS."""
    value, suffix = _split(text, what, example)
    if suffix == "":
        return value
    if not suffix.endswith(base):
        raise SpecError(f"'{text}' is not a {what} (unknown unit '{suffix}'); write e.g. {example}")
    prefix = suffix[: -len(base)]
    if binary and prefix in _BIN:
        return value * _BIN[prefix]
    if prefix in _DEC:
        return value * _DEC[prefix]
    raise SpecError(f"'{text}' is not a {what} (unknown prefix '{prefix}' in '{suffix}'); write e.g. {example}")


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def parse_time(value: str | float) -> float:
    """Seconds from ``200ms``, ``0.2s``, ``50us``, ``2min`` or a plain number of seconds."""
    number = _as_number(value)
    if number is not None:
        return number
    amount, unit = _split(str(value), "duration", "200ms or 0.2s")
    if unit not in _TIME:
        raise SpecError(f"'{value}' is not a duration (unknown unit '{unit}'); write e.g. 200ms, 0.2s or 50us")
    return amount * _TIME[unit]


def parse_bytes(value: str | float) -> float:
    """Bytes from ``80GiB`` (binary), ``80GB`` (decimal), ``512MiB`` or a plain number of bytes."""
    number = _as_number(value)
    if number is not None:
        return number
    return _prefixed(str(value), "B", "B", "size", "80GiB or 80GB")


def parse_bandwidth(value: str | float) -> float:
    """Bytes per second from ``3.35TB/s`` (bytes) or ``400Gb/s`` / ``400Gbps`` (bits)."""
    number = _as_number(value)
    if number is not None:
        return number
    text = str(value).strip()
    if text.endswith("bps"):
        text = text[:-3] + "b/s"
    try:
        return _prefixed(text, "B/s", "B/s", "bandwidth", "3.35TB/s or 400Gb/s")
    except SpecError:
        pass
    return _prefixed(text, "b/s", "b/s", "bandwidth", "3.35TB/s or 400Gb/s", binary=False) / 8.0


def parse_flops(value: str | float) -> float:
    """FLOP per second from ``989TFLOPS``, ``1.98PFLOPS`` or ``989T`` or a plain number."""
    number = _as_number(value)
    if number is not None:
        return number
    text = str(value).strip()
    for base in ("FLOPS", "FLOP/s", "flops", "OPS", "TOPS"):
        if text.endswith(base) and base != "TOPS":
            return _prefixed(text, base, base, "FLOP rate", "989TFLOPS", binary=False)
    return _prefixed(text, "", "", "FLOP rate", "989TFLOPS", binary=False)


def parse_rate(value: str | float) -> float:
    """Events per second from ``0.5rps``, ``20req/s``, ``600rpm`` or a plain number per second."""
    number = _as_number(value)
    if number is not None:
        return number
    amount, unit = _split(str(value), "rate", "0.5rps or 30rpm")
    if unit not in _RATE:
        raise SpecError(f"'{value}' is not a rate (unknown unit '{unit}'); write e.g. 0.5rps, 20req/s or 30rpm")
    return amount * _RATE[unit]


def parse_fraction(value: str | float) -> float:
    """A fraction in [0, 1] from ``90%`` or ``0.9``."""
    number = _as_number(value)
    if number is None:
        amount, unit = _split(str(value), "fraction", "90% or 0.9")
        if unit == "%":
            number = amount / 100.0
        elif unit == "":
            number = amount
        else:
            raise SpecError(f"'{value}' is not a fraction; write e.g. 90% or 0.9")
    if not 0.0 <= number <= 1.0:
        raise SpecError(f"'{value}' is not a fraction between 0 and 1; write e.g. 90% or 0.9")
    return number


def parse_power(value: str | float) -> float:
    """Watts from ``700W``, ``1.2kW`` or a plain number of watts."""
    number = _as_number(value)
    if number is not None:
        return number
    return _prefixed(str(value), "W", "W", "power", "700W", binary=False)


def _validator(parse: Callable[[Any], float], what: str) -> BeforeValidator:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            # not TypeError: pydantic turns only ValueError into a ValidationError (with the field's location)
            raise ValueError(f"expected a {what} as a number or a string with a unit, got {value!r}")  # noqa: TRY004
        try:
            return parse(value)
        except SpecError as exc:  # pydantic reports ValueError with its location
            raise ValueError(str(exc)) from None

    return BeforeValidator(check)


def _nonnegative(v: float) -> float:
    if v < 0:
        raise ValueError(f"must not be negative (got {v})")
    return v


Seconds = Annotated[float, _validator(parse_time, "duration"), PlainSerializer(float)]
Bytes = Annotated[float, _validator(parse_bytes, "size"), PlainSerializer(float)]
Bandwidth = Annotated[float, _validator(parse_bandwidth, "bandwidth"), PlainSerializer(float)]
Flops = Annotated[float, _validator(parse_flops, "FLOP rate"), PlainSerializer(float)]
Rate = Annotated[float, _validator(parse_rate, "rate"), PlainSerializer(float)]
Fraction = Annotated[float, _validator(parse_fraction, "fraction"), PlainSerializer(float)]
Watts = Annotated[float, _validator(parse_power, "power"), PlainSerializer(float)]


def format_time(seconds: float) -> str:
    """Human form of a duration: ``0.0123`` -> ``12.3ms``."""
    if math.isnan(seconds):
        return "-"
    if seconds >= 100:
        return f"{seconds:.0f}s"
    if seconds >= 1:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds * 1e6:.0f}us"


def format_bytes(n: float) -> str:
    """Human form of a size in binary units: ``85899345920`` -> ``80.0GiB``."""
    for unit, scale in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}B"


__all__ = [
    "Bandwidth",
    "Bytes",
    "Flops",
    "Fraction",
    "Rate",
    "Seconds",
    "Watts",
    "format_bytes",
    "format_time",
    "parse_bandwidth",
    "parse_bytes",
    "parse_flops",
    "parse_fraction",
    "parse_power",
    "parse_rate",
    "parse_time",
]
