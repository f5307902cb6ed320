"""Errors about a parameter carry the fix in both spellings: Python shows the keyword, the CLI the flag.

An error raised with ``option="top_k"`` writes its message with placeholders (``{top_k=}0``); ``str(exc)`` reads
``top_k=0`` and the CLI's one error handler prints ``exc.render("cli")``, ``--top-k 0`` (apex_opt/errors.py).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.cli.main import cli
from apex_opt.errors import ApexOptError, SpecError, spell_option

TINY = "synthetic:rate=1rps,requests=3,prompt=64,output=8"
PLAN = {"gpu": "h100-sxm-80gb"}


@pytest.fixture(scope="module")
def specs() -> ax.Specs:
    return ax.load_specs("llama-3.1-8b", "h100x8", workload=TINY)


CASES: list[tuple[str, Callable[[ax.Specs], object], str, str]] = [
    ("solve-top-k", lambda s: ax.solve(s, top_k=0), "top_k=0", "--top-k 0"),
    ("solve-top-k-string", lambda s: ax.solve(s, top_k="3"), "top_k='3'", "--top-k '3'"),
    ("solve-seed", lambda s: ax.solve(s, seed=-1), "seed=-1", "--seed -1"),
    ("solve-max-requests", lambda s: ax.solve(s, max_requests=0), "max_requests=0", "--max-requests 0"),
    ("solve-workers", lambda s: ax.solve(s, workers=0), "workers=0", "--workers 0"),
    ("solve-time-limit", lambda s: ax.solve(s, time_limit=0), "time_limit=0", "--time-limit 0"),
    ("simulate-seed", lambda s: ax.simulate(s, ax.Plan(**PLAN), seed=-1), "seed=-1", "--seed -1"),
    ("simulate-max-requests", lambda s: ax.simulate(s, ax.Plan(**PLAN), max_requests=0), "max_requests=0",
     "--max-requests 0"),
    ("simulate-measured-at", lambda s: ax.simulate(s, ax.Plan(**PLAN), measured_at="moon"), "measured_at='moon'",
     "--measured-at 'moon'"),
    ("capacity-seed", lambda s: ax.capacity(s, ax.Plan(**PLAN), seed=-1), "seed=-1", "--seed -1"),
    ("load_specs-nodes", lambda s: ax.load_specs(gpu="h100-sxm-80gb", nodes=0), "nodes=0", "--nodes 0"),
    ("load_specs-gpus-per-node", lambda s: ax.load_specs(gpu="h100-sxm-80gb", gpus_per_node=0),
     "gpus_per_node=0", "--gpus-per-node 0"),
    ("load_specs-empty-cluster", lambda s: ax.load_specs(cluster=""), "cluster=''", "--cluster ''"),
]


@pytest.mark.parametrize(("call", "python", "flag"), [pytest.param(c, p, f, id=i) for i, c, p, f in CASES])
def test_a_library_error_names_the_keyword_and_the_cli_the_flag(specs, call, python, flag):
    with pytest.raises(SpecError) as err:
        call(specs)
    exc = err.value
    keyword = python.split("=")[0]
    assert exc.option == keyword
    assert str(exc).startswith(python), str(exc)
    assert "--" not in str(exc), str(exc)
    assert exc.render("cli").startswith(flag), exc.render("cli")
    assert "{" not in str(exc) and "{" not in exc.render("cli")


def test_the_fix_in_a_message_is_spelled_the_same_way_as_its_subject(specs):
    with pytest.raises(SpecError) as err:
        ax.solve(specs, workers=0)
    assert str(err.value).endswith("write e.g. workers=2")
    assert err.value.render("cli").endswith("write e.g. --workers 2")


def test_a_message_about_several_options_spells_each():
    with pytest.raises(SpecError) as err:
        ax.load_specs(cluster="h100x8", gpu="h100-sxm-80gb")
    assert str(err.value) == "give either cluster or gpu (with nodes/gpus_per_node), not both"
    assert err.value.render("cli") == "give either --cluster or --gpu (with --nodes/--gpus-per-node), not both"
    assert err.value.options == ("cluster", "gpu", "nodes", "gpus_per_node") and err.value.option == "cluster"


def test_the_cli_prints_the_flag_form_unchanged():
    args = ["solve", "--model", "llama-3.1-8b", "--cluster", "h100x8", "--gpu", "h100-sxm-80gb", "--workload", TINY]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.output.strip() == \
        "Error: give either --cluster or --gpu (with --nodes/--gpus-per-node), not both"


def test_a_keyword_maps_to_its_flag_with_a_table_for_the_few_that_differ():
    assert spell_option("gpus_per_node", "cli") == "--gpus-per-node"
    assert spell_option("target_rate", "cli", value=True) == "--rate "  # capacity(target_rate=) is --rate
    assert spell_option("target_rate") == "target_rate" and spell_option("top_k", value=True) == "top_k="


def test_only_the_errors_own_options_are_filled_in_so_an_echoed_brace_stays():
    exc = SpecError("{top_k=}'{x}{seed}': bad", option="top_k")
    assert str(exc) == "top_k='{x}{seed}': bad"  # braces in an echoed value that name no option stay ...
    plain = SpecError("value '{seed=}' is odd")  # ... and an error without options is printed as written
    assert str(plain) == plain.render("cli") == "value '{seed=}' is odd" and plain.option is None


def test_an_error_keeps_its_option_across_processes():
    exc = SpecError("{seed=}-1: must be at least 0", option="seed")
    back = pickle.loads(pickle.dumps(exc))
    assert back.option == "seed" and str(back) == "seed=-1: must be at least 0"
    assert back.render("cli") == "--seed -1: must be at least 0"


def test_errors_without_an_option_read_as_before():
    assert str(ax.InfeasibleError("no plan", ("memory",))) == "no plan"
    assert isinstance(SpecError("x", option="seed"), (ApexOptError, ValueError))
