"""``apex_opt.__version__``: the installed distribution's version, or pyproject.toml's in a source checkout.

>>> import apex_opt
>>> apex_opt.__version__.count(".") >= 1
True
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _source_version() -> str:
    """The ``version`` of ``[project]`` in the pyproject.toml next to this package (a checkout run without install)."""
    import tomllib

    try:
        with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as f:
            return str(tomllib.load(f)["project"]["version"]) + "+source"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"


try:
    __version__ = version("apex-opt")
except PackageNotFoundError:
    __version__ = _source_version()

__all__ = ["__version__"]
