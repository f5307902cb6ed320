"""Which calibration each GPU of a problem used, so no fallback is silent.

Every GPU kind is priced by one fitted calibration file (GEMM, elementwise and collective efficiencies)
chosen by the rule in :func:`apex_opt.perf.gemm.choose_calibration`:

* ``measured``: the GPU's own fit in ``specs/calibration/<gpu>.json``;
* ``borrowed from <gpu> (<why>)``: the fit of a measured GPU of the same architecture;
* ``roofline (<why>)``: no GPU of its architecture was measured; the roofline of the GPU's own peaks with a
  stand-in's efficiencies.

Results carry the answer twice: a note per GPU kind (:func:`calibration_notes`) and a ``calibration`` entry
in the JSON of simulate, solve and estimate (:func:`calibration_sources`). A calibration profile of the user's
cluster (``--calibration FILE``, :mod:`apex_opt.calibration`) applied on top is named too: its constants in a
note, and each GPU's hardware scales under ``profile`` in its entry.

>>> from apex_opt.catalog import get_gpu
>>> calibration_sources([get_gpu("h100-sxm-80gb")])["h100-sxm-80gb"]["source"]
'measured'
>>> calibration_notes([get_gpu("l40s")])[0].startswith("calibration of l40s: roofline (")
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..calibration.profile import CalibrationProfile, current
from ..catalog import load_calibration
from ..schema.gpu import GPUSpec
from .gemm import choose_calibration

__all__ = ["calibration_notes", "calibration_source", "calibration_sources"]


def _attention_entry(gpu: GPUSpec) -> str:
    """Where the serving model's attention efficiencies come from (``specs/calibration/serving.yaml``)."""
    table = load_calibration("serving").get("attention", {})
    if gpu.name in table:
        return "measured"
    for name, entry in table.items():
        if name != "default" and isinstance(entry, dict) and entry.get("architecture") == gpu.architecture:
            return f"borrowed from {name} (same architecture, {gpu.architecture})"
    return "default priors (no attention fit for this GPU or its architecture)"


def calibration_source(gpu: GPUSpec, profile: CalibrationProfile | None = None) -> dict[str, Any]:
    """The calibration ``gpu`` is priced with, as a JSON-ready dict.

    Keys: ``source`` (``measured``, ``borrowed`` or ``roofline``), ``fit`` (the GPU whose fitted file is used),
    ``reason`` ('' when measured), ``describe`` (the one-line form the notes print), ``architecture``,
    ``file`` (the file's name) and ``attention`` (where the attention-kernel efficiencies come from); with a
    calibration profile (``profile``, else the one applied now), ``profile``: its name and this GPU's constants.
    """
    choice = choose_calibration(gpu.name, gpu.architecture)
    profile = profile or current()
    extra: dict[str, Any] = {}
    if profile is not None:
        prefix = f"hardware.{gpu.name}."
        extra["profile"] = {"name": profile.name, "constants": {k[len(prefix):]: v for k, v in
                                                                profile.constants.items() if k.startswith(prefix)}}
    return {
        "source": choice.kind,
        "fit": choice.fit,
        "reason": choice.reason,
        "describe": choice.describe(),
        "architecture": gpu.architecture,
        "file": choice.path.name,
        "attention": _attention_entry(gpu),
        **extra,
    }


def calibration_sources(gpus: Iterable[GPUSpec], profile: CalibrationProfile | None = None) -> dict[str, dict[str, Any]]:
    """``{gpu name: calibration_source(gpu)}`` for each GPU kind, e.g. ``Specs.gpus.values()``."""
    return {g.name: calibration_source(g, profile) for g in gpus}


def calibration_notes(gpus: Iterable[GPUSpec], profile: CalibrationProfile | None = None) -> list[str]:
    """One note per GPU kind: ``calibration of <gpu>: measured`` (or borrowed / roofline, with why), and one for a
    calibration profile applied over them."""
    notes = [f"calibration of {name}: {entry['describe']}" for name, entry in calibration_sources(gpus).items()]
    profile = profile or current()
    if profile is not None:
        values = ", ".join(f"{k} = {v:.4g}" for k, v in profile.constants.items()) or "no constants"
        notes.append(f"calibration profile '{profile.name}' applied over the built-in constants: {values}")
    return notes
