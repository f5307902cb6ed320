"""Speculative decoding settings (:class:`SpeculativeConfig`) and the ``METHOD:k=3,acceptance=0.7`` option syntax.

A speculating sequence drafts ``k`` tokens per step (n-gram lookup, EAGLE head, MTP module or a draft model), the
target model verifies the ``k + 1`` query tokens in one forward pass, and the longest accepted prefix plus one
token from the target (the bonus token) is emitted. With conditional per-position acceptance rates ``a_1..a_k``
(``a_i`` = P(draft i accepted | drafts 1..i-1 accepted)) the tokens emitted per verify step are
``E = 1 + sum_{i=1..k} prod_{j<=i} a_j``; a single mean rate ``alpha`` gives ``(1 - alpha**(k+1)) / (1 - alpha)``.

>>> s = parse_speculative("eagle:k=3,acceptance=0.7")
>>> s.method, s.num_tokens, round(s.expected_tokens(), 4)
('eagle', 3, 2.533)
>>> parse_speculative("mtp:k=2,acceptance=0.9/0.8").rates()
(0.9, 0.8)
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, model_validator

from ..errors import SpecError
from .base import Spec

Method = Literal["ngram", "eagle", "mtp", "draft"]
METHODS: tuple[str, ...] = ("ngram", "eagle", "mtp", "draft")
#: k values ``solve --speculative METHOD:auto`` tries (vLLM and SGLang examples use 1-5 speculative tokens)
SEARCH_K: tuple[int, ...] = (1, 2, 3, 4, 5)


class SpeculativeConfig(Spec):
    """How a replica speculates: method, drafted tokens per step, acceptance model and draft cost."""

    method: Method = Field(description="ngram (prompt lookup, no draft model), eagle (EAGLE head), mtp "
                                       "(the model's multi-token-prediction module, DeepSeek-V3/Kimi-K2) or draft "
                                       "(a separate small model)")
    num_tokens: int = Field(ge=1, le=16, description="k: tokens drafted per step (vLLM num_speculative_tokens; "
                                                     "SGLang speculative_num_steps)")
    acceptance: float | tuple[float, ...] = Field(
        description="conditional acceptance rate per drafted position: one mean rate for every position, or "
                    "one rate per position (k values)")
    draft_cost: float | None = Field(
        default=None, ge=0.0,
        description="time of one draft forward pass as a fraction of one target decode step of the same batch; "
                    "default: 0 for ngram, one target layer (1 / num_layers) for eagle and mtp; required for draft")
    draft_model: str | None = Field(default=None, description="draft model name for the launch line (method draft "
                                                             "and eagle)")

    @model_validator(mode="after")
    def _check(self) -> SpeculativeConfig:
        rates = self.acceptance if isinstance(self.acceptance, tuple) else (self.acceptance,)
        if any(not (0.0 <= a <= 1.0) or math.isnan(a) for a in rates):
            raise ValueError(f"acceptance rates must lie in [0, 1], got {self.acceptance!r}")
        if isinstance(self.acceptance, tuple) and len(self.acceptance) != self.num_tokens:
            raise ValueError(f"{len(self.acceptance)} per-position acceptance rates for k={self.num_tokens}; give "
                             "one rate per drafted position or a single mean rate")
        if self.method == "draft" and self.draft_cost is None:
            raise ValueError("method 'draft' needs draft_cost (draft step time / target step time, e.g. 0.1)")
        return self

    def rates(self) -> tuple[float, ...]:
        """Conditional acceptance rate of each drafted position ``1..k``."""
        if isinstance(self.acceptance, tuple):
            return self.acceptance
        return (float(self.acceptance),) * self.num_tokens

    def survival(self) -> tuple[float, ...]:
        """``P(at least i drafts accepted)`` for ``i = 1..k`` (cumulative products of the rates)."""
        out, p = [], 1.0
        for a in self.rates():
            p *= a
            out.append(p)
        return tuple(out)

    def expected_tokens(self) -> float:
        """Mean tokens emitted per verify step, bonus token included: ``1 + sum_i prod_{j<=i} a_j``."""
        return 1.0 + sum(self.survival())

    def draft_fraction(self, num_layers: int | None = None) -> float:
        """Draft pass time relative to one target decode step (``draft_cost``, else the method's default)."""
        if self.draft_cost is not None:
            return float(self.draft_cost)
        if self.method == "ngram":
            return 0.0
        return 1.0 / num_layers if num_layers else 0.02  # one target layer (EAGLE head, one MTP module)

    def with_k(self, k: int) -> SpeculativeConfig:
        """The same method and acceptance with ``k`` drafted tokens (a mean rate, or the per-position list cut
        or extended with its last rate)."""
        acc: float | tuple[float, ...] = self.acceptance
        if isinstance(acc, tuple):
            acc = tuple(acc[:k]) + (acc[-1],) * max(0, k - len(acc))
        return self.model_copy(update={"num_tokens": k, "acceptance": acc})

    @property
    def label(self) -> str:
        """Short tag for plan labels, e.g. ``eagle-k3``."""
        return f"{self.method}-k{self.num_tokens}"

    @property
    def option(self) -> str:
        """The ``--speculative`` value that parses back to these settings (:func:`parse_speculative`).

        >>> parse_speculative("mtp:k=2,acceptance=0.9/0.8,draft_cost=0.05").option
        'mtp:k=2,acceptance=0.9/0.8,draft_cost=0.05'
        """
        rates = "/".join(f"{r:g}" for r in self.rates()) if isinstance(self.acceptance, tuple) \
            else f"{self.acceptance:g}"
        parts = [f"k={self.num_tokens}", f"acceptance={rates}"]
        if self.draft_cost is not None:
            parts.append(f"draft_cost={self.draft_cost:g}")
        if self.draft_model:
            parts.append(f"draft_model={self.draft_model}")
        return f"{self.method}:" + ",".join(parts)


def parse_speculative(text: str) -> SpeculativeConfig:
    """Parse ``METHOD:k=3,acceptance=0.7`` (rates per position as ``0.9/0.8/0.6``; optional ``draft_cost=0.05``
    and ``draft_model=NAME``). ``k=auto`` is for ``solve`` (see :func:`parse_speculative_option`).

    >>> parse_speculative("ngram:k=4,acceptance=0.5").draft_fraction()
    0.0
    >>> parse_speculative("eagle:acceptance=0.7")
    Traceback (most recent call last):
    ...
    apex_opt.errors.SpecError: speculative 'eagle:acceptance=0.7': give k=N (tokens drafted per step)
    """
    method, _, rest = text.strip().partition(":")
    method = method.strip().lower()
    if method not in METHODS:
        raise SpecError(f"speculative {text!r}: unknown method {method!r}; use one of {', '.join(METHODS)}")
    fields: dict[str, object] = {"method": method}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = {"k": "num_tokens", "num_speculative_tokens": "num_tokens"}.get(key.strip(), key.strip())
        if not eq:
            raise SpecError(f"speculative {text!r}: {part!r} is not KEY=VALUE")
        try:
            if key == "num_tokens":
                fields[key] = int(value)
            elif key == "acceptance":
                rates = tuple(float(v) for v in value.split("/"))
                fields[key] = rates[0] if len(rates) == 1 else rates
            elif key == "draft_cost":
                fields[key] = float(value)
            elif key == "draft_model":
                fields[key] = value.strip()
            else:
                raise SpecError(f"speculative {text!r}: unknown key {key!r}; use k, acceptance, draft_cost, "
                                "draft_model")
        except ValueError:
            raise SpecError(f"speculative {text!r}: {part!r} has a malformed value") from None
    if "num_tokens" not in fields:
        raise SpecError(f"speculative {text!r}: give k=N (tokens drafted per step)")
    if "acceptance" not in fields:
        raise SpecError(f"speculative {text!r}: give acceptance=RATE (e.g. 0.7, or 0.9/0.8/0.6 per position)")
    try:
        return SpeculativeConfig.parse(fields, source="{speculative}", kind="speculative")
    except SpecError as exc:  # the option as the caller spells it: speculative in Python, --speculative on the CLI
        raise SpecError(str(exc), option="speculative") from None


def parse_speculative_option(text: str) -> tuple[SpeculativeConfig, ...]:
    """``solve``'s option: one config, or with ``k=auto`` one per k in :data:`SEARCH_K`.

    >>> [s.num_tokens for s in parse_speculative_option("eagle:k=auto,acceptance=0.7")]
    [1, 2, 3, 4, 5]
    """
    pattern = r"\b(k|num_speculative_tokens)\s*=\s*auto\b"
    if not re.search(pattern, text):
        return (parse_speculative(text),)
    base = parse_speculative(re.sub(pattern, "k=1", text))
    return tuple(base.with_k(k) for k in SEARCH_K)


__all__ = ["METHODS", "SEARCH_K", "SpeculativeConfig", "parse_speculative", "parse_speculative_option"]
