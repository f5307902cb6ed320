"""notebooks/slo_tradeoffs.ipynb runs headless through the public API (import apex_opt as ax)."""

from __future__ import annotations

from pathlib import Path

import pytest

import apex_opt

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "slo_tradeoffs.ipynb"


@pytest.mark.skipif(not hasattr(apex_opt, "solve"), reason="apex_opt does not re-export the planner (solve) yet")
def test_slo_tradeoffs_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "goodput/GPU" in text and "J/token" in text
