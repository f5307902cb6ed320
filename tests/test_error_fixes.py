"""Errors about a parameter carry the fix in both spellings: Python shows the keyword, the CLI the flag.

An error raised with ``option="top_k"`` writes its message with placeholders (``{top_k=}0``); ``str(exc)`` reads
``top_k=0`` and the CLI's one error handler prints ``exc.render("cli")``, ``--top-k 0`` (apex_opt/errors.py).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

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


# ------------------------------------------------------------------ library messages that spoke CLI flags
# Each was written with the flag (--solver, --slo, ...); the library now names the keyword and the CLI still
# prints the flag, word for word as before.
FILES = {
    "noconstraint.py": "x = 1\n", "nosearch.py": "x = 1\n", "syntax.py": "def search(:\n",
    "loadfail.py": "raise RuntimeError('bad')\n", "boom.py": "def search(problem):\n    raise ValueError('boom')\n",
    "three.py": "def search(problem):\n    return 3\n", "notes.txt": "x\n", "notprofile.yaml": "a: 1\n",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("error-fixes")
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return {name: str(folder / name) for name in FILES}


def _validate(*args: object, **kwargs: object) -> object:
    from apex_opt.validate import validate

    return validate(*args, **kwargs)  # type: ignore[arg-type]


def _calibrate(*args: object, **kwargs: object) -> object:
    from apex_opt.calibrate import calibrate

    return calibrate(*args, **kwargs)  # type: ignore[arg-type]


RUNS = str(Path(__file__).parent / "fixtures" / "measurements" / "runs.csv")
A100 = {"gpu": "a100-sxm-80gb", "nodes": 1, "gpus_per_node": 8, "workload": TINY}

#: (id, call, the start of str(exc), the start of exc.render("cli"), what the message goes on to say)
FLAG_CASES: list[tuple[str, Callable[[ax.Specs, dict[str, str]], object], str, str, str]] = [
    ("constraints-type", lambda s, f: ax.load_constraints(42), "constraints='42'", "--constraints '42'",
     ": got a value of type int"),
    ("constraints-no-file", lambda s, f: ax.solve(s, constraints=["dp >= 4"]), "constraints=dp >= 4",
     "--constraints dp >= 4", ": no such file; check the path"),
    ("constraints-not-python", lambda s, f: ax.solve(s, constraints=[f["notes.txt"]]), "constraints=",
     "--constraints ", "notes.txt: not a Python file"),
    ("constraints-none-defined", lambda s, f: ax.solve(s, constraints=[f["noconstraint.py"]]), "constraints=",
     "--constraints ", "noconstraint.py: no function decorated with @constraint(...)"),
    ("solver-unknown", lambda s, f: ax.solve(s, solver="magic"), "solver='magic'", "--solver 'magic'",
     " is unknown; use one of cpsat, exhaustive, heuristic or a .py file"),
    ("solver-type", lambda s, f: ax.solve(s, solver=42), "solver=42", "--solver 42", ": got a value of type int"),
    ("solver-no-file", lambda s, f: ax.solve(s, solver="/no/such/plugin.py"), "solver=/no/such/plugin.py",
     "--solver /no/such/plugin.py", ": no such file"),
    ("solver-syntax", lambda s, f: ax.solve(s, solver=f["syntax.py"]), "solver=", "--solver ",
     "syntax.py:1: syntax error"),
    ("solver-load-fails", lambda s, f: ax.solve(s, solver=f["loadfail.py"]), "solver=", "--solver ",
     "loadfail.py: loading the plug-in failed at loadfail.py:1: RuntimeError: bad; fix the file"),
    ("solver-no-search", lambda s, f: ax.solve(s, solver=f["nosearch.py"]), "solver=", "--solver ",
     "nosearch.py: the file defines no function search(problem)"),
    ("solver-search-fails", lambda s, f: ax.solve(s, solver=f["boom.py"], workers=1), "solver=boom",
     "--solver boom", ": search(problem) failed at boom.py:2: ValueError: boom; fix the plug-in, or use "),
    ("solver-returns-no-planset", lambda s, f: ax.solve(s, solver=f["three.py"], workers=1), "solver=three",
     "--solver three", ": search(problem) returned int 3, not a PlanSet"),
    ("quantization-unknown", lambda s, f: ax.solve(s, quantization="nf4"), "quantization='nf4'",
     "--quantization 'nf4'", " is unknown; use one of none, fp8, int8, int4, fp4, any"),
    ("kv-dtype-unknown", lambda s, f: ax.solve(s, kv_dtype="fp4"), "kv_dtype='fp4'", "--kv-dtype 'fp4'",
     " is unknown; use one of bf16, fp8, any"),
    ("disaggregation-unknown", lambda s, f: ax.solve(s, disaggregation="maybe"), "disaggregation='maybe'",
     "--disaggregation 'maybe'", " is unknown; use off (aggregated plans only)"),
    ("quantization-no-fp4-cores", lambda s, f: ax.solve(s, quantization="fp4"), "quantization=fp4",
     "--quantization fp4", ": h100-sxm-80gb has no fp4 tensor cores"),
    ("quantization-no-fp8-cores", lambda s, f: ax.solve(ax.load_specs(**A100), quantization="fp8"),
     "quantization=fp8", "--quantization fp8", ": a100-sxm-80gb has no fp8 tensor cores; use int4 or none"),
    ("objective-unknown", lambda s, f: ax.solve(s, objective="speed"), "objective='speed'", "--objective 'speed'",
     " is unknown; use one of goodput-per-gpu"),
    ("slo-item", lambda s, f: ax.load_specs(slo="ttft"), "slo item", "--slo item",
     " 'ttft' is not of the form metric[.stat]=value"),
    ("slo-twice", lambda s, f: ax.parse_slo("ttft=1s,ttft=2s"), "slo bounds", "--slo bounds",
     " 'ttft' twice ('ttft=1s' and 'ttft=2s')"),
    ("slo-attainment-statistic", lambda s, f: ax.parse_slo("attainment.p90=90%"), "slo 'attainment'",
     "--slo 'attainment'", " takes no statistic"),
    ("slo-metric", lambda s, f: ax.parse_slo("latency=1s"), "slo metric", "--slo metric", " 'latency' is unknown"),
    ("slo-statistic", lambda s, f: ax.parse_slo("ttft.p42=1s"), "slo statistic", "--slo statistic",
     " 'ttft.p42' is unknown"),
    ("slo-unit", lambda s, f: ax.parse_slo("tpot=50"), "slo value", "--slo value",
     " 'tpot=50' has no unit; write e.g. tpot=50ms"),
    ("slo-duration", lambda s, f: ax.parse_slo("tpot=5parsecs"), "slo value", "--slo value",
     " 'tpot=5parsecs': '5parsecs' is not a duration"),
    ("slo-positive", lambda s, f: ax.parse_slo("ttft=-200ms"), "slo value", "--slo value",
     " 'ttft=-200ms' must be positive"),
    ("slo-attainment-alone", lambda s, f: ax.parse_slo("attainment=95%"), "slo='attainment=95%'",
     "--slo 'attainment=95%'", " sets an attainment target with no latency bound"),
    ("estimate-batch-bound", lambda s, f: ax.estimate(s, ax.Plan(**PLAN), batch=10**9), "batch 1,000,000,000",
     "--batch 1,000,000,000", " is more than the 65,536 apex-opt supports; use "),
    ("estimate-context", lambda s, f: ax.estimate(s, ax.Plan(**PLAN), context=10**7), "context=10,000,000",
     "--context 10,000,000", " is beyond llama-3.1-8b's context window"),
    ("estimate-tokens", lambda s, f: ax.estimate(s, ax.Plan(**PLAN), batch=4096, context=100_000),
     "batch=4,096 x context=100,000", "--batch 4,096 x --context 100,000", " = 409,600,000 prompt tokens"),
    ("max-model-len", lambda s, f: ax.simulate(s, ax.Plan(**PLAN, max_model_len=10**7)), "max_model_len=10000000",
     "--max-model-len 10000000", " exceeds the context limit of llama-3.1-8b"),
    ("max-num-seqs", lambda s, f: ax.simulate(s, ax.Plan(**PLAN, max_num_seqs=10**6)), "max_num_seqs=1000000",
     "--max-num-seqs 1000000", ": sampling that many sequences"),
    ("budget-below-block", lambda s, f: ax.simulate(s, ax.Plan(**PLAN, max_num_batched_tokens=8)),
     "max_num_batched_tokens=8", "--max-num-batched-tokens 8", " is below the engine's KV block size"),
    ("budget-below-seqs", lambda s, f: ax.simulate(s, ax.Plan(**PLAN, max_num_batched_tokens=100)),
     "max_num_batched_tokens=100", "--max-num-batched-tokens 100", " is below max_num_seqs 256"),
    ("budget-below-len", lambda s, f: ax.simulate(s, ax.Plan(**PLAN, max_num_batched_tokens=4096,
                                                             chunked_prefill=False, max_model_len=8192)),
     "max_num_batched_tokens=4096", "--max-num-batched-tokens 4096", " is below max_model_len 8192"),
    ("layers-per-stage", lambda s, f: ax.simulate(s, ax.Plan(**PLAN, pp=2, layers_per_stage=(10, 10))),
     "layers_per_stage=10,10", "--layers-per-stage 10,10", " sums to 20 layers"),
    ("model-file", lambda s, f: ax.load_specs(model="nope/config.json"), "model='nope/config.json'",
     "--model 'nope/config.json'", ": no such file; give a catalog name"),
    ("cluster-file", lambda s, f: ax.load_specs(cluster="nope.yaml"), "cluster='nope.yaml'",
     "--cluster 'nope.yaml'", ": no such file; give a catalog name"),
    ("gpu-file", lambda s, f: ax.load_specs(gpu="nope.yaml"), "gpu='nope.yaml'", "--gpu 'nope.yaml'",
     ": no such file; give a catalog GPU name"),
    ("calibration-file", lambda s, f: ax.load_specs(calibration="nope.yaml"), "calibration='nope.yaml'",
     "--calibration 'nope.yaml'", ": no such file; give the YAML file apex-opt calibrate --out wrote"),
    ("calibration-not-a-profile", lambda s, f: ax.load_specs(calibration=f["notprofile.yaml"]), "calibration=",
     "--calibration ", "notprofile.yaml': not a calibration profile"),
    ("measurements-file", lambda s, f: _validate(["nope.json"]), "measurements='nope.json'",
     "--measurements 'nope.json'", ": no such file"),
    ("measurements-none", lambda s, f: _validate([]), "no measurements to validate; give measurements=FILE",
     "no measurements to validate; give --measurements FILE", ""),
    ("calibrate-constants", lambda s, f: _calibrate([RUNS], constants=["eager_launch_s"]),
     "constants='eager_launch_s'", "--fit 'eager_launch_s'", ": not a constant these runs can determine"),
    ("attention-backend-unknown", lambda s, f: ax.simulate(s, ax.Plan(**PLAN, attention_backend="magic")),
     "attention_backend='magic'", "--attention-backend 'magic'", " has kernels for; use one of "),
]


@pytest.mark.parametrize(("call", "python", "flag", "rest"),
                         [pytest.param(c, p, f, r, id=i) for i, c, p, f, r in FLAG_CASES])
def test_a_message_that_named_a_flag_names_the_keyword_in_python_and_the_flag_on_the_cli(specs, files, call, python,
                                                                                        flag, rest):
    with pytest.raises(ApexOptError) as err:
        call(specs, files)
    exc = err.value
    assert exc.option is not None
    assert str(exc).startswith(python) and rest in str(exc), str(exc)
    assert exc.render("cli").startswith(flag) and rest in exc.render("cli"), exc.render("cli")
    for name in exc.options:  # Python never sees the flag of the option the message is about
        assert spell_option(name, "cli") + " " not in str(exc), str(exc)
    assert "{" not in str(exc) and "{" not in exc.render("cli")


def test_the_disaggregation_only_refusal_names_the_keyword_in_python(specs):
    def fewest_tp(v, s):  # a function objective is defined on one plan
        return v.tp

    with pytest.raises(ax.InfeasibleError) as err:
        ax.solve(specs, objective=ax.Minimize(fewest_tp), disaggregation="only", workers=1)
    assert str(err.value).startswith("disaggregation=only: a function objective")
    assert str(err.value).endswith("Use disaggregation=auto or off.") and err.value.conflict == ("disaggregation",)
    assert err.value.render("cli").startswith("--disaggregation only: a function objective")
    assert err.value.render("cli").endswith("Use --disaggregation auto or off.")


SOLVE = ["solve", "--model", "llama-3.1-8b", "--cluster", "h100x8", "--workload", TINY, "--workers", "1"]
SIMULATE = ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--workload", TINY]

#: (id, arguments, what the CLI prints: the message as it was when the library spelled the flag itself)
CLI_CASES: list[tuple[str, Callable[[dict[str, str]], list[str]], str]] = [
    ("constraints-no-file", lambda f: [*SOLVE, "--constraints", "dp >= 4"],
     "Error: --constraints dp >= 4: no such file; check the path"),
    ("constraints-none-defined", lambda f: [*SOLVE, "--constraints", f["noconstraint.py"]],
     "noconstraint.py: no function decorated with @constraint(...)"),
    ("solver-unknown", lambda f: [*SOLVE, "--solver", "magic"],
     "Error: --solver 'magic' is unknown; use one of cpsat, exhaustive, heuristic or a .py file"),
    ("solver-search-fails", lambda f: [*SOLVE, "--solver", f["boom.py"]],
     ("Error: --solver boom: search(problem) failed at boom.py:2: ValueError: boom; fix the plug-in, or use "
      "--solver cpsat")),
    ("quantization-no-fp4-cores", lambda f: [*SOLVE, "--quantization", "fp4"],
     ("Error: --quantization fp4: h100-sxm-80gb has no fp4 tensor cores (no fp4 peak in its spec); use fp8, "
      "int4 or none")),
    ("slo-positive", lambda f: [*SIMULATE, "--slo", "ttft=-200ms"],
     "--slo value 'ttft=-200ms' must be positive; write e.g. ttft=200ms"),
    ("max-model-len", lambda f: [*SIMULATE, "--max-model-len", "10000000"],
     "Error: --max-model-len 10000000 exceeds the context limit of llama-3.1-8b"),
    ("budget-below-len", lambda f: [*SIMULATE, "--max-num-batched-tokens", "4096", "--no-chunked-prefill",
                                    "--max-model-len", "8192"],
     "turn on --chunked-prefill, raise the budget to 8192, or lower --max-model-len"),
    ("layers-per-stage", lambda f: [*SIMULATE, "--pp", "2", "--layers-per-stage", "10,10"],
     ("Error: --layers-per-stage 10,10 sums to 20 layers, but llama-3.1-8b has 32; give pp=2 counts that add up "
      "to 32, e.g. --layers-per-stage 16,16, or leave it out")),
    ("model-file", lambda f: ["simulate", "--model", "nope/config.json", "--gpu", "h100-sxm-80gb"],
     "Error: --model 'nope/config.json': no such file"),
    ("gpu-file", lambda f: ["simulate", "--model", "llama-3.1-8b", "--gpu", "nope.yaml"],
     "Error: --gpu 'nope.yaml': no such file"),
    ("calibration-file", lambda f: [*SIMULATE, "--calibration", "nope.yaml"],
     "Error: --calibration 'nope.yaml': no such file; give the YAML file apex-opt calibrate --out wrote"),
    ("measurements-file", lambda f: ["validate", "--measurements", "nope.json"],
     "Error: --measurements 'nope.json': no such file"),
    ("cluster-unknown", lambda f: ["solve", "--cluster", "h100y8", "--workload", TINY],
     "Or pass a cluster YAML file, or the quick form --gpu NAME --nodes N --gpus-per-node M."),
    ("attention-backend-unknown", lambda f: [*SIMULATE, "--attention-backend", "magic"],
     "Error: --attention-backend 'magic' is not one vllm-0.6 has kernels for; use one of"),
]


@pytest.mark.parametrize(("args", "says"), [pytest.param(a, s, id=i) for i, a, s in CLI_CASES])
def test_the_cli_still_prints_those_messages_with_the_flag(files, args, says):
    result = CliRunner().invoke(cli, args(files))
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split()), result.output


def test_the_quick_cluster_form_and_speculative_specs_name_their_keywords(specs):
    with pytest.raises(SpecError) as err:
        ax.load_specs(gpu="h100-sxm-80gb", nodes=10**7)
    assert str(err.value).startswith("gpu/nodes/gpus_per_node: 1 problem in the cluster spec")
    assert err.value.render("cli").startswith("--gpu/--nodes/--gpus-per-node: 1 problem in the cluster spec")
    with pytest.raises(SpecError) as err:
        ax.solve(specs, speculative="eagle:k=3,acceptance=1.5")
    assert str(err.value).startswith("speculative: 1 problem in the speculative spec")
    assert err.value.render("cli").startswith("--speculative: 1 problem in the speculative spec")
    result = CliRunner().invoke(cli, [*SIMULATE, "--speculative", "eagle:k=3,acceptance=1.5"])
    assert result.exit_code == 2 and "--speculative: 1 problem in the speculative spec" in result.output


def test_a_search_cut_by_the_time_limit_says_to_raise_the_keyword(specs, monkeypatch):
    from ortools.sat.python import cp_model

    import apex_opt.planner.model as planner_model

    monkeypatch.setattr(planner_model, "interruptible_solve", lambda solver, model: cp_model.UNKNOWN)
    with pytest.raises(ax.SolverError) as err:
        ax.solve(specs, workers=1)
    assert str(err.value).startswith("CP-SAT ") and str(err.value).endswith("; raise time_limit")
    assert err.value.render("cli").endswith("; raise --time-limit") and err.value.option == "time_limit"


# ------------------------------------------------------------------ infeasibility: the fix in the caller's spelling
# Problem.infeasible composes the message from the built-in constraints' texts and relaxations; they name options
# with placeholders ({slo=}tpot=20ms), and the text (an errors.Message) brings those options to the InfeasibleError.
def _infeasible(specs: ax.Specs, **kwargs: object) -> ax.InfeasibleError:
    with pytest.raises(ax.InfeasibleError) as err:
        ax.solve(specs, workers=1, **kwargs)
    return err.value


def test_an_infeasible_solve_with_a_tight_slo_suggests_slo_as_a_keyword_in_python():
    exc = _infeasible(ax.load_specs("llama-3.1-8b", "h100x8", workload=TINY, slo="tpot=1ms"))
    assert exc.conflict == ("slo.tpot",) and exc.option == "slo"
    assert "Try relaxing it (e.g. slo=tpot=" in str(exc) and "--" not in str(exc), str(exc)
    assert "Try relaxing it (e.g. --slo tpot=" in exc.render("cli")
    assert "{" not in str(exc) and "{" not in exc.render("cli")


def test_the_cli_suggests_the_slo_flag_for_the_same_infeasible_solve():
    result = CliRunner().invoke(cli, [*SOLVE, "--slo", "tpot=1ms"])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Error: no plan for llama-3.1-8b on 8 x h100-sxm-80gb satisfies all constraints."
    assert lines[-1].startswith("Try relaxing it (e.g. --slo tpot=") and lines[-1].endswith("ms) or adding GPUs.")
    assert "slo=" not in result.output and "{" not in result.output and "Traceback" not in result.output


def test_use_all_gpus_in_an_explanation_reads_as_a_keyword_set_to_true_in_python_and_the_flag_on_the_cli(specs):
    from apex_opt.planner import constraint

    @constraint("four")
    def four(v, s):
        return v.gpus <= 4

    exc = _infeasible(specs, use_all_gpus=True, constraints=[four])
    assert exc.conflict == ("gpus", "four") and exc.options == ("use_all_gpus",)
    assert "[gpus]            use all 8 GPUs of the cluster (use_all_gpus=True)" in str(exc)
    assert "(e.g. drop use_all_gpus=True)" in str(exc) and "--" not in str(exc)
    assert "[gpus]            use all 8 GPUs of the cluster (--use-all-gpus)" in exc.render("cli")
    assert "(e.g. drop --use-all-gpus)" in exc.render("cli")


def test_every_built_in_constraint_names_its_options_with_placeholders():
    from apex_opt.errors import fill_options
    from apex_opt.planner.constraints import OPTIONS, builtin_constraints
    from apex_opt.planner.space import SearchOptions, build_space

    slo = "ttft=1ms,tpot=1ms,e2e=1ms"
    for options in (SearchOptions(use_all_gpus=True), SearchOptions(kv_dtype="fp8", quantization="fp8")):
        space = build_space(ax.load_specs("llama-3.1-8b", "h100x8", workload=TINY, slo=slo), options)
        for c in builtin_constraints(space):
            relax = c.relax(space) if callable(c.relax) else c.relax
            for text in (c.describe(space), relax or ""):
                python, flags = fill_options(text, OPTIONS), fill_options(text, OPTIONS, "cli")
                assert "--" not in python and "{" not in python and "{" not in flags, (c.label, text)


def test_a_memory_fix_names_quantization_and_kv_dtype_in_the_callers_spelling():
    from types import SimpleNamespace as NS

    from apex_opt.errors import fill_options
    from apex_opt.planner.constraints import OPTIONS, memory_fix

    h100 = NS(name="h100", memory=80 * 2**30)
    fix = memory_fix(405_000_000_000, h100, 4, "none", "bf16")
    assert fill_options(fix, OPTIONS).startswith("quantization=int4: the weights then need")
    assert fill_options(fix, OPTIONS, "cli").startswith("--quantization int4: the weights then need")
    assert fill_options(memory_fix(8_000_000_000, h100, 1, "fp8", "bf16"), OPTIONS, "cli") == "--kv-dtype fp8"


def test_a_switch_reads_name_equals_true_in_python_and_the_bare_flag_on_the_cli():
    exc = ax.InfeasibleError("relax {tp_across_nodes=True} or {slo=}tpot=20ms", option=("tp_across_nodes", "slo"))
    assert str(exc) == "relax tp_across_nodes=True or slo=tpot=20ms"
    assert exc.render("cli") == "relax --tp-across-nodes or --slo tpot=20ms"


def test_a_message_composed_elsewhere_brings_its_options_to_the_error_and_across_processes():
    from apex_opt.errors import Message

    exc = ax.InfeasibleError(Message("e.g. {slo=}tpot=20ms", ("slo",)), ("slo.tpot",))
    assert exc.option == "slo" and str(exc) == "e.g. slo=tpot=20ms" and exc.render("cli") == "e.g. --slo tpot=20ms"
    back = pickle.loads(pickle.dumps(exc))
    assert back.options == ("slo",) and back.render("cli") == "e.g. --slo tpot=20ms" and back.conflict == ("slo.tpot",)
    given = ax.InfeasibleError(Message("{slo=}x {seed=}1", ("slo",)), option="seed")  # option= wins
    assert str(given) == "{slo=}x seed=1"


def test_capacity_without_an_slo_says_load_specs_in_python_and_the_flag_on_the_cli(specs):
    import dataclasses

    from apex_opt.schema.slo import SLO

    with pytest.raises(SpecError) as err:
        ax.capacity(dataclasses.replace(specs, slo=SLO()), ax.Plan(**PLAN))
    assert str(err.value).endswith("give one, e.g. load_specs(..., slo='ttft=200ms,tpot=50ms')")
    assert "--" not in str(err.value) and err.value.option == "slo"
    result = CliRunner().invoke(cli, ["capacity", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb",
                                      "--workload", TINY])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert said.endswith("give one, e.g. --slo ttft=200ms,tpot=50ms") and "load_specs" not in said


def test_an_unknown_cluster_offers_the_quick_form_as_keywords_in_python():
    with pytest.raises(ax.UnknownNameError) as err:
        ax.load_specs(cluster="h100y8")
    assert str(err.value).endswith("Or pass a cluster YAML file, or the quick form gpu=NAME nodes=N gpus_per_node=M.")
    assert err.value.render("cli").endswith("the quick form --gpu NAME --nodes N --gpus-per-node M.")
    assert err.value.option == "cluster" and err.value.close_matches[0] == "h100x8"
