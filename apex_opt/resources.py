"""Where the data apex-opt ships with lives: one resolver for an installed wheel and a source checkout.

The wheel packs the repository's ``specs/`` as ``apex_opt/_specs`` and ``solvers/`` as ``apex_opt/_solvers``
(``[tool.hatch.build.targets.wheel.force-include]`` in pyproject.toml); a source checkout keeps them next to
the package, at ``<repo>/specs`` and ``<repo>/solvers``. :func:`resource_dir` looks in that order, so an
installed copy wins over a checkout it was built from. A resource with an environment variable (the fitted
calibration files: ``APEX_OPT_CALIBRATION_DIR``) is taken from it when the variable is set.

>>> resource_dir("specs").joinpath("gpus").is_dir()
True
>>> resource_dir("nothing")
Traceback (most recent call last):
...
apex_opt.errors.SpecError: unknown packaged resource 'nothing'; use one of calibration, solvers, specs
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError

#: the apex_opt package folder; the checkout's root is its parent
PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Resource:
    """One packaged data folder: where the wheel and a checkout keep it, and how to recognise it."""

    name: str
    #: what the folder holds, for messages
    what: str
    #: path inside the apex_opt package of an installed wheel
    wheel: str
    #: path from the root of a source checkout
    checkout: str
    #: an entry that must exist inside the folder for it to count (a half-copied folder does not)
    marker: str = ""
    #: environment variable naming the folder instead (used as given, checked to exist)
    env: str = ""


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("specs", "the built-in catalog (models, GPUs, clusters, engines, workloads)", "_specs", "specs",
                 marker="gpus"),
        Resource("calibration", "the fitted calibration files", "_specs/calibration", "specs/calibration",
                 env="APEX_OPT_CALIBRATION_DIR"),
        Resource("solvers", "the bundled search strategies", "_solvers", "solvers", marker="cpsat.py"),
    )
}


def _resource(name: str) -> Resource:
    if name not in RESOURCES:
        raise SpecError(f"unknown packaged resource '{name}'; use one of {', '.join(sorted(RESOURCES))}")
    return RESOURCES[name]


def candidates(name: str, package: Path | None = None) -> tuple[Path, ...]:
    """The folders :func:`resource_dir` tries for ``name``, in order (wheel, then checkout).

    ``package`` is the apex_opt folder to look from (tests point it at a fake layout).
    """
    r = _resource(name)
    here = PACKAGE if package is None else Path(package)
    return here / r.wheel, here.parent / r.checkout


def find_resource(name: str, package: Path | None = None) -> Path | None:
    """The folder of packaged resource ``name``, or ``None`` when it is not installed (see :func:`resource_dir`)."""
    r = _resource(name)
    if r.env and os.environ.get(r.env):
        return Path(os.environ[r.env])
    for folder in candidates(name, package):
        if folder.is_dir() and (not r.marker or (folder / r.marker).exists()):
            return folder
    return None


def resource_dir(name: str, package: Path | None = None) -> Path:
    """The folder of packaged resource ``name`` (``specs``, ``calibration`` or ``solvers``).

    Parameters
    ----------
    name:
        A key of :data:`RESOURCES`.
    package:
        The apex_opt folder to look from; the installed package by default.

    Returns
    -------
    Path
        ``$<env>`` when the resource has an environment variable and it is set, else the wheel's folder
        (``apex_opt/_specs``, ...), else the checkout's (``<repo>/specs``, ...).

    Raises
    ------
    SpecError
        For an unknown name, an environment variable naming no folder, or a resource found in neither place.
    """
    r = _resource(name)
    if r.env and os.environ.get(r.env):
        folder = Path(os.environ[r.env])
        if not folder.is_dir():
            raise SpecError(f"{r.env}={folder}: not a folder, so {r.what} cannot be read; point {r.env} at a "
                            f"folder of calibration files, or unset it to use the ones apex-opt ships")
        return folder
    found = find_resource(name, package)
    if found is None:
        wheel, checkout = candidates(name, package)
        inside = f" with {r.marker} inside" if r.marker else ""
        raise SpecError(f"{r.what} ({name}/) is missing: looked for {wheel} (installed) and {checkout} (source "
                        f"checkout){inside}; reinstall apex-opt (pip install --force-reinstall apex-opt, or "
                        "pip install . from a full checkout)")
    return found


__all__ = ["RESOURCES", "Resource", "candidates", "find_resource", "resource_dir"]
