"""The packaged data folders are found one way: wheel layout, then checkout layout, then an error that says
to reinstall; APEX_OPT_CALIBRATION_DIR still overrides the calibration folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_opt import catalog, resources
from apex_opt.errors import SpecError
from apex_opt.perf import gemm
from apex_opt.planner.solve import solvers_dir
from apex_opt.resources import find_resource, resource_dir


def make_checkout(root: Path) -> Path:
    """A fake source checkout: <root>/apex_opt next to specs/ (with calibration/) and solvers/."""
    (root / "apex_opt").mkdir(parents=True)
    (root / "specs" / "gpus").mkdir(parents=True)
    (root / "specs" / "calibration").mkdir()
    (root / "solvers").mkdir()
    (root / "solvers" / "cpsat.py").write_text("")
    return root / "apex_opt"


def test_checkout_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APEX_OPT_CALIBRATION_DIR", raising=False)
    package = make_checkout(tmp_path)
    assert resource_dir("specs", package) == tmp_path / "specs"
    assert resource_dir("calibration", package) == tmp_path / "specs" / "calibration"
    assert resource_dir("solvers", package) == tmp_path / "solvers"


def test_wheel_layout_wins_over_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APEX_OPT_CALIBRATION_DIR", raising=False)
    package = make_checkout(tmp_path)
    (package / "_specs" / "gpus").mkdir(parents=True)
    (package / "_specs" / "calibration").mkdir()
    assert resource_dir("specs", package) == package / "_specs"
    assert resource_dir("calibration", package) == package / "_specs" / "calibration"
    assert resource_dir("solvers", package) == tmp_path / "solvers"  # no _solvers: the checkout's


def test_the_thin_wrappers_agree_with_the_resolver() -> None:
    assert catalog.specs_dir() == resource_dir("specs")
    assert solvers_dir() == find_resource("solvers")
    assert (catalog.specs_dir() / "gpus").is_dir()


def test_env_override_of_the_calibration_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APEX_OPT_CALIBRATION_DIR", str(tmp_path))
    assert gemm.calibration_dir() == tmp_path
    assert resource_dir("calibration", make_checkout(tmp_path / "repo")) == tmp_path
    assert gemm.choose_calibration("h100-sxm-80gb").path == tmp_path / "h100-sxm-80gb.json"


def test_env_override_naming_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APEX_OPT_CALIBRATION_DIR", str(tmp_path / "gone"))
    with pytest.raises(SpecError, match=r"^APEX_OPT_CALIBRATION_DIR=.*gone: not a folder.*unset it"):
        gemm.calibration_dir()


def test_a_missing_folder_says_what_and_to_reinstall(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "apex_opt"
    package.mkdir(parents=True)
    (package / "_specs").mkdir()  # half-installed: no gpus/ inside, so it does not count
    assert find_resource("specs", package) is None
    with pytest.raises(SpecError) as info:
        resource_dir("specs", package)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the built-in catalog (models, GPUs, clusters, engines, workloads) (specs/) is missing")
    assert str(package / "_specs") in message and str(tmp_path / "site-packages" / "specs") in message
    assert "with gpus inside" in message
    assert "reinstall apex-opt" in message


def test_an_unknown_resource_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match="use one of calibration, solvers, specs"):
        resource_dir("model-weights")
    assert set(resources.RESOURCES) == {"specs", "calibration", "solvers"}
