"""Packages extend apex-opt through the ``apex_opt.plugins`` entry point and the ``register_*`` facade.

Each test installs a small distribution into a temporary folder on ``sys.path`` (a ``.dist-info`` with its
``entry_points.txt``, which is all ``importlib.metadata`` reads), as ``pip install`` of a plug-in package would.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt import plugins
from apex_opt.catalog import ENGINES
from apex_opt.cli.main import cli
from apex_opt.planner.solve import _STRATEGIES
from apex_opt.sim.policies import POLICIES

SITE_PLUGIN = '''
import apex_opt as ax
from apex_opt.catalog import get_engine
from apex_opt.sim.policies import VllmV1Policy

CALLS = []


def register():
    CALLS.append("register")
    ax.register_engine(get_engine("vllm-v1").model_copy(update={"name": "site-engine"}))

    @ax.register_policy("site-v1")
    class SiteV1(VllmV1Policy):
        pass

    def first_fit(problem):
        entries = problem.verify([problem.proposal(tp=1)])
        return problem.result([e for e in entries if e.verified], [e for e in entries if not e.verified])

    ax.register_solver("site-first-fit", first_fit)
'''


def install(folder: Path, package: str, module: str, code: str, entry: str) -> None:
    """A distribution ``package`` with module ``module`` and one ``apex_opt.plugins`` entry point ``entry``."""
    (folder / f"{module}.py").write_text(textwrap.dedent(code))
    info = folder / f"{package.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[apex_opt.plugins]\n{entry}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The site plug-in installed, nothing loaded yet; what it registers is removed afterwards."""
    install(tmp_path, "apex-site-plugin", "apex_site_plugin", SITE_PLUGIN, "site = apex_site_plugin:register")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", None)
    yield tmp_path
    ENGINES.unregister("site-engine")
    _STRATEGIES.pop("site-first-fit", None)
    POLICIES.pop("site-v1", None)
    sys.modules.pop("apex_site_plugin", None)


def test_a_plugins_engine_is_found_by_name_and_listed_in_the_catalog(site):
    specs = ax.load_specs("llama-3.1-8b", "h100x8", engine="site-engine")
    assert specs.engine.name == "site-engine" and specs.engine.family == "vllm-v1"
    assert plugins.load_plugins() == ["site"]
    result = CliRunner().invoke(cli, ["catalog", "engines"])
    assert result.exit_code == 0 and "site-engine" in result.output


def test_a_plugins_solver_and_policy_run_like_built_in_ones(site):
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=2rps,requests=30,prompt=256,output=32",
                          slo="ttft=1s,tpot=100ms")
    result = ax.solve(specs, solver="site-first-fit", workers=1, disaggregation="off")
    assert result.solver == "site-first-fit" and [p.plan.label for p in result.plans] == ["dp1 tp1 pp1"]
    assert "site-v1" in POLICIES


def test_plugins_run_once_and_only_when_a_name_is_missing(site):
    ax.simulate(ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=2rps,requests=10,prompt=64,output=8"),
                ax.Plan(gpu="h100-sxm-80gb", tp=1))
    assert plugins._loaded is None  # the built-in catalog had every name: no plug-in was imported
    assert "apex_site_plugin" not in sys.modules
    ax.load_specs("llama-3.1-8b", "h100x8", engine="site-engine")
    ax.load_specs("llama-3.1-8b", "h100x8", engine="site-engine")
    assert sys.modules["apex_site_plugin"].CALLS == ["register"]


def test_a_plugin_that_fails_is_named_with_its_entry_point_and_package(tmp_path, monkeypatch):
    install(tmp_path, "apex-broken-plugin", "apex_broken_plugin", "def register():\n    raise RuntimeError('boom')\n",
            "broken = apex_broken_plugin:register")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", None)
    with pytest.raises(ax.SpecError) as err:
        ax.load_specs("llama-3.1-8b", "h100x8", engine="no-such-engine")
    text = str(err.value)
    assert "plug-in 'broken' (apex_broken_plugin:register" in text and "package apex-broken-plugin" in text
    assert "RuntimeError: boom" in text and "fix or uninstall its package" in text
    sys.modules.pop("apex_broken_plugin", None)


def test_a_plugin_that_cannot_be_imported_is_named_too(tmp_path, monkeypatch):
    install(tmp_path, "apex-missing-plugin", "apex_missing_plugin", "import no_such_module_anywhere\n",
            "missing = apex_missing_plugin:register")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", None)
    with pytest.raises(ax.SpecError, match=r"plug-in 'missing' .* could not be imported: ModuleNotFoundError"):
        plugins.load_plugins()


def test_the_facade_refuses_what_is_not_a_spec():
    with pytest.raises(ax.SpecError, match=r"register_engine\('vllm-v1'\): give an EngineSpec"):
        ax.register_engine("vllm-v1")  # type: ignore[arg-type]


def test_a_registered_name_cannot_be_taken_twice():
    engine = ax.load_specs().engine
    with pytest.raises(ax.SpecError, match="an engine named 'vllm-0.6' is already registered"):
        ax.register_engine(engine)
