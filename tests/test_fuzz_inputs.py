"""A fuzz corpus of bad and edge inputs: every one is refused with exit code 2 (or the project's own error from
Python), no traceback, and a message that names the offending field or value.

The surfaces: the options of every command (simulate, solve, estimate, catalog), SLO strings, synthetic workload
expressions, trace files, Hugging Face model configs and cluster YAML written into a temporary folder, solver and
constraint plug-ins, and the Python API. Every case fails at validation, before any simulation or search runs, so
the corpus stays fast; the larger variant (``--runslow``) crosses more values with more options.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.cli.main import cli
from apex_opt.errors import ApexOptError, shorten

TINY = "synthetic:rate=1rps,requests=3,prompt=64,output=8"
SIM = ["simulate", "--model", "llama-3.1-8b", "--workload", TINY]
SOLVE = ["solve", "--model", "llama-3.1-8b", "--cluster", "h100x8", "--workers", "1", "--max-requests", "3",
         "--workload", TINY]
EST = ["estimate", "--model", "llama-3.1-8b"]
HUGE = "x" * 5000


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args!r} raised {type(result.exception).__name__}: {result.exception}") \
            from result.exception
    return result.exit_code, result.output


def assert_refused(args: list[str], names: str | tuple[str, ...]) -> str:
    code, out = invoke(args)
    assert code == 2, f"exit {code} for {args!r}:\n{out[-1500:]}"
    assert "Traceback" not in out
    wanted = (names,) if isinstance(names, str) else names
    assert any(n.lower() in out.lower() for n in wanted), f"{wanted!r} not named for {args!r}:\n{out[-1500:]}"
    assert len(out) < 4000, f"message of {len(out)} characters for {args!r}"
    assert HUGE[:200] not in out
    return out


# ---------------------------------------------------------------------------------------------------- options
INT_BAD = ["0", "-1", "abc", "1.5", "", "nan", "1e3", "0x10", " "]
INT_OPTIONS = {
    "simulate": ["--tp", "--pp", "--dp", "--ep", "--nodes", "--gpus-per-node", "--max-num-batched-tokens",
                 "--max-num-seqs", "--max-model-len", "--max-requests"],
    "solve": ["--nodes", "--gpus-per-node", "--top-k", "--max-requests", "--workers", "--max-simulations"],
    "estimate": ["--tp", "--pp", "--dp", "--ep", "--batch", "--context"],
}
BASE = {"simulate": SIM, "solve": SOLVE, "estimate": EST}


def _int_cases() -> list:
    cases = []
    for command, options in INT_OPTIONS.items():
        for option in options:
            for value in INT_BAD:
                if command == "solve" and option in ("--nodes", "--gpus-per-node"):
                    base = [a for a in SOLVE if a not in ("--cluster", "h100x8")] + ["--gpu", "h100-sxm-80gb"]
                else:
                    base = BASE[command]
                cases.append(pytest.param(base, option, value, id=f"{command}{option}={value!r}"))
    return cases


@pytest.mark.parametrize(("base", "option", "value"), _int_cases())
def test_a_bad_whole_number_option_is_refused_naming_the_option(base, option, value):
    assert_refused([*base, option, value], option)


SEED_BAD = ["-1", "-100", "abc", "1.5", ""]


@pytest.mark.parametrize("value", SEED_BAD)
@pytest.mark.parametrize("base", [SIM, SOLVE], ids=["simulate", "solve"])
def test_a_negative_or_malformed_seed_is_refused_naming_seed(base, value):
    assert_refused([*base, "--seed", value], "--seed")


CHOICES = {
    "simulate": ["--weight-dtype", "--kv-dtype", "--router", "--decode-router", "--format", "--measured-at"],
    "solve": ["--objective", "--quantization", "--kv-dtype", "--disaggregation", "--format", "--measured-at"],
    "estimate": ["--weight-dtype", "--kv-dtype", "--format"],
}


@pytest.mark.parametrize(("base", "option", "value"), [
    pytest.param(BASE[cmd], opt, value, id=f"{cmd}{opt}={value[:20]!r}")
    for cmd, opts in CHOICES.items() for opt in opts for value in ("nope", "", "BF16 ", "x" * 300)
])
def test_a_value_outside_a_choice_is_refused_naming_the_option(base, option, value):
    assert_refused([*base, option, value], option)


NAME_BAD = ["nope", "", "x" * 300, "../../etc/passwd", "/nonexistent/config.json", "llama 3.1"]


@pytest.mark.parametrize(("base", "option", "value", "names"), [
    *(pytest.param(BASE[cmd], "--model", v, ("model", "--model", "no such file"), id=f"{cmd}--model={v[:20]!r}")
      for cmd in ("simulate", "solve", "estimate") for v in NAME_BAD),
    *(pytest.param(BASE[cmd], "--engine", v, ("engine",), id=f"{cmd}--engine={v[:20]!r}")
      for cmd in ("simulate", "solve", "estimate") for v in NAME_BAD),
    *(pytest.param(BASE[cmd], "--workload", v, ("workload", "trace"), id=f"{cmd}--workload={v[:20]!r}")
      for cmd in ("simulate", "solve") for v in NAME_BAD),
    *(pytest.param(SIM, "--cluster", v, ("cluster",), id=f"simulate--cluster={v[:20]!r}") for v in NAME_BAD),
    *(pytest.param([a for a in SOLVE if a not in ("--cluster", "h100x8")], "--cluster", v, ("cluster",),
                   id=f"solve--cluster={v[:20]!r}") for v in NAME_BAD),
    *(pytest.param(BASE[cmd], "--gpu", v, ("gpu",), id=f"{cmd}--gpu={v[:20]!r}")
      for cmd in ("simulate", "estimate") for v in NAME_BAD),
    *(pytest.param(BASE[cmd], "--attention-backend", v, ("attention_backend", "attention-backend"),
                   id=f"{cmd}--attention-backend={v[:20]!r}") for cmd in ("simulate",) for v in ("nope", "x" * 300)),
])
def test_an_unknown_name_or_missing_file_is_refused_naming_what_was_asked(base, option, value, names):
    out = assert_refused([*base, option, value], names)
    if len(value) > 100:
        assert value not in out


@pytest.mark.parametrize(("args", "names"), [
    pytest.param([*SIM, "--gpu-memory-utilization", v], "--gpu-memory-utilization", id=f"gmu={v}")
    for v in ("0", "1.5", "-0.5", "abc", "", "2")
] + [
    pytest.param([*SOLVE, "--time-limit", v], "--time-limit", id=f"time-limit={v}")
    for v in ("nan", "inf", "-1", "0", "abc", "", "-inf")
] + [
    pytest.param([*SIM, "--layers-per-stage", v, "--pp", "2"], ("--layers-per-stage", "layers_per_stage"),
                 id=f"lps={v}")
    for v in ("10,10", "a,b", "16", "16,16,0", "0,32", "-1,33", "1.5,30.5")
] + [
    pytest.param([*EST, "--layers-per-stage", v, "--pp", "2"], "--layers-per-stage", id=f"est-lps={v}")
    for v in ("10,10", "x", "100,100")
] + [
    pytest.param([*SIM, "--tp", v], ("tp",), id=f"tp-not-a-divisor={v}") for v in ("3", "5", "7", "64")
] + [
    pytest.param([*SIM, "--ep", "2"], ("ep",), id="ep-on-a-dense-model"),
    pytest.param([*SIM, "--pp", "33"], ("pp",), id="pp-above-layers"),
    pytest.param([*SIM, "--max-num-batched-tokens", "1"], "--max-num-batched-tokens", id="budget-1"),
    pytest.param([*SIM, "--max-num-batched-tokens", "8"], "--max-num-batched-tokens", id="budget-below-block"),
    pytest.param([*SIM, "--max-num-batched-tokens", "100"], "--max-num-batched-tokens", id="budget-below-seqs"),
    pytest.param([*SIM, "--max-num-batched-tokens", "1000", "--no-chunked-prefill"], "--max-num-batched-tokens",
                 id="budget-below-context-unchunked"),
    pytest.param([*SIM, "--max-num-seqs", "1000000000"], "--max-num-seqs", id="max-num-seqs-1e9"),
    pytest.param([*SIM, "--max-model-len", "10000000"], "--max-model-len", id="max-model-len-beyond-model"),
    pytest.param([*SIM, "--max-model-len", "131073"], "--max-model-len", id="max-model-len-one-beyond"),
    pytest.param([*SIM, "--gpu", "a100-sxm-80gb", "--cluster", "h100x8"], ("--gpu", "--cluster"),
                 id="gpu-not-in-cluster"),
    pytest.param([*SIM, "--cluster", "h100x8", "--prefill", "tp=1,gpu=a100-sxm-80gb", "--decode", "tp=1"],
                 ("--prefill", "a100-sxm-80gb"), id="prefill-gpu-not-in-cluster"),
    pytest.param([*SIM, "--cluster", "h100x8", "--nodes", "2"], "--nodes", id="nodes-with-cluster"),
    pytest.param([*SIM, "--tp", "16", "--cluster", "h100x8"], ("16 GPUs", "tp"), id="plan-bigger-than-cluster"),
    pytest.param([*SIM, "--prefill", "tp=2"], ("--decode",), id="prefill-without-decode"),
    pytest.param([*SIM, "--decode", "tp=2"], ("--prefill",), id="decode-without-prefill"),
    pytest.param([*SIM, "--prefill", "tp=x", "--decode", "tp=1"], ("--prefill", "tp"), id="prefill-tp-x"),
    pytest.param([*SIM, "--prefill", "foo=1", "--decode", "tp=1"], ("foo",), id="prefill-unknown-key"),
    pytest.param([*SIM, "--prefill", "tp=1,tp=2", "--decode", "tp=1"], ("twice",), id="prefill-twice"),
    pytest.param([*SIM, "--prefill", "", "--decode", "tp=1"], ("--prefill",), id="prefill-empty"),
    pytest.param([*SIM, "--prefill", "tp=1", "--decode", "tp=1", "--tp", "2"], ("--tp",), id="prefill-with-tp"),
    pytest.param([*SIM, "--prefill", "tp=1,gpu=nope", "--decode", "tp=1"], ("nope",), id="prefill-gpu-unknown"),
    pytest.param([*SIM, "--unknown-flag"], ("--unknown-flag",), id="simulate-unknown-flag"),
    pytest.param([*SOLVE, "--unknown-flag"], ("--unknown-flag",), id="solve-unknown-flag"),
    pytest.param([*EST, "--unknown-flag"], ("--unknown-flag",), id="estimate-unknown-flag"),
    pytest.param([*SOLVE, "--solver", "nope"], ("nope",), id="solver-unknown"),
    pytest.param([*SOLVE, "--solver", "/nonexistent/s.py"], ("s.py",), id="solver-missing-file"),
    pytest.param([*SOLVE, "--constraints", "/nonexistent/c.py"], ("c.py",), id="constraints-missing-file"),
    pytest.param([*SOLVE, "--gpu", "h100-sxm-80gb"], ("--cluster", "--gpu"), id="solve-cluster-and-gpu"),
    pytest.param(["catalog"], ("models|gpus",), id="catalog-no-kind"),
    pytest.param(["catalog", "--format", "json"], ("models|gpus",), id="catalog-no-kind-json"),
    pytest.param(["nope"], ("nope",), id="unknown-command"),
])
def test_an_out_of_range_or_inconsistent_option_is_refused_naming_it(args, names):
    assert_refused(args, names)


@pytest.mark.parametrize("kind", ["model", "", "foo", "GPUS", "x" * 300, "clusters,gpus"])
def test_catalog_refuses_an_unknown_kind_naming_it(kind):
    assert_refused(["catalog", kind], ("is not one of 'models', 'gpus'",))


@pytest.mark.parametrize("fmt", ["xml", "", "JSON"])
def test_catalog_refuses_an_unknown_format(fmt):
    assert_refused(["catalog", "models", "--format", fmt], "--format")


# ---------------------------------------------------------------------------------------------------- SLOs
SLO_BAD = [
    ("ttft", "ttft"), ("ttft=", "ttft"), ("=1s", "=1s"), ("ttft=abc", "abc"), ("ttft=1", "ttft=1"),
    ("ttft=-1s", "ttft=-1s"), ("ttft=0s", "ttft=0s"), ("latency=1s", "latency"), ("ttft.p42=1s", "ttft.p42"),
    ("attainment=120%", "120%"), ("attainment=-5%", "-5%"), ("attainment=99%", "attainment"),
    ("ttft.p99=1s,ttft=2s", "ttft"), ("tpot=50ms,tpot=60ms", "tpot"), ("e2e=1s,e2e.p99=2s", "e2e"),
    ("attainment=90%,attainment=95%", "attainment"), ("attainment.p99=90%", "attainment"),
    ("ttft=1s,attainment=abc", "abc"), ("tpot=50", "tpot=50"), ("ttft=1 parsec", "parsec"),
    ("ttft=200ms;tpot=50ms", "ttft"), ("TTFT=1s", "ttft"), ("ttft=1s,,foo", "foo"), ("ttft:1s", "ttft:1s"),
    ("ttft=nan s", "nan"), ("x" * 300, "slo"), ("ttft=1s,tpot", "tpot"), ("ttft.mean.p99=1s", "ttft"),
    ("tpot.p100=1s", "tpot.p100"), ("ttft=1e400s", "ttft"),
]


@pytest.mark.parametrize(("text", "names"), SLO_BAD, ids=[t[:30] for t, _ in SLO_BAD])
def test_a_bad_slo_is_refused_by_simulate_naming_the_item(text, names):
    assert_refused([*SIM, "--slo", text], (names, "--slo"))


@pytest.mark.parametrize(("text", "names"), SLO_BAD[:15], ids=[t[:30] for t, _ in SLO_BAD[:15]])
def test_a_bad_slo_is_refused_by_solve_naming_the_item(text, names):
    assert_refused([*SOLVE, "--slo", text], (names, "--slo"))


@pytest.mark.parametrize(("text", "names"), SLO_BAD, ids=[t[:30] for t, _ in SLO_BAD])
def test_a_bad_slo_raises_spec_error_from_python(text, names):
    with pytest.raises(ax.SpecError) as err:
        ax.parse_slo(text)
    assert names.lower() in str(err.value).lower() or "slo" in str(err.value).lower()
    assert len(str(err.value)) < 600


# ---------------------------------------------------------------------------------------------------- synthetic
SYNTH_BAD = [
    "synthetic:", "synthetic:rate=1rps", "synthetic:rate=0rps,requests=3,prompt=64,output=8",
    "synthetic:rate=-1rps,requests=3,prompt=64,output=8", "synthetic:rate=abc,requests=3,prompt=64,output=8",
    "synthetic:rate=1rps,requests=0,prompt=64,output=8", "synthetic:rate=1rps,requests=-3,prompt=64,output=8",
    "synthetic:rate=1rps,requests=abc,prompt=64,output=8", "synthetic:rate=1rps,requests=3,prompt=0,output=8",
    "synthetic:rate=1rps,requests=3,prompt=-5,output=8", "synthetic:rate=1rps,requests=3,prompt=64,output=0",
    "synthetic:rate=1rps,requests=3,prompt=64,output=x", "synthetic:rate=1rps,requests=3,prompt=64,output=8,foo=1",
    "synthetic:rate=1rps,requests=3,duration=10s,prompt=64,output=8", "synthetic:rate=1rps,requests=3,prompt=64",
    "synthetic:rate=1rps,rate=2rps,requests=3,prompt=64,output=8", "synthetic:rate=1rps;requests=3",
    "synthetic:rate=1rps,requests=3,prompt=64,output=8,seed=-1",
    "synthetic:rate=1rps,requests=3,prompt=64,output=8,seed=abc",
    "synthetic:rate=1rps,requests=3,prompt=64,output=8,arrival=nope", "synthetic:=,=,=",
    "synthetic:rate,requests,prompt,output", "synthetic:" + "x" * 300,
    "synthetic:rate=1rps,requests=1.5,prompt=64,output=8",
    "synthetic:rate=1rps,requests=3,prompt=64,output=8,duration=abc",
]


@pytest.mark.parametrize("expr", SYNTH_BAD, ids=[e[10:40] or "empty" for e in SYNTH_BAD])
def test_a_bad_synthetic_expression_is_refused_naming_the_key_or_value(expr):
    assert_refused([*SIM[:3], "--workload", expr], ("synthetic", "workload", "rate", "requests", "prompt", "output",
                                                    "seed", "arrival", "duration"))


# ---------------------------------------------------------------------------------------------------- trace files
APEX_OK = {"RequestID": "a", "StartTimeOffset": 0, "ContextTokens": 64, "GeneratedTokens": 8}


def _jsonl(*rows: object) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


TRACES: list[tuple[str, str, bytes, tuple[str, ...]]] = [
    ("empty", "t.jsonl", b"", ("empty", "no request", "t.jsonl")),
    ("not-json", "t.jsonl", b"{not json}\n", ("t.jsonl",)),
    ("missing-field", "t.jsonl", _jsonl({"RequestID": "a", "StartTimeOffset": 0, "ContextTokens": 64}),
     ("GeneratedTokens",)),
    ("zero-prompt", "t.jsonl", _jsonl({**APEX_OK, "ContextTokens": 0}), ("ContextTokens",)),
    ("negative-output", "t.jsonl", _jsonl({**APEX_OK, "GeneratedTokens": -1}), ("GeneratedTokens",)),
    ("string-tokens", "t.jsonl", _jsonl({**APEX_OK, "ContextTokens": "many"}), ("ContextTokens",)),
    ("float-tokens", "t.jsonl", _jsonl({**APEX_OK, "ContextTokens": 1.5}), ("ContextTokens",)),
    ("bool-tokens", "t.jsonl", _jsonl({**APEX_OK, "GeneratedTokens": True}), ("GeneratedTokens",)),
    ("negative-time", "t.jsonl", _jsonl({**APEX_OK, "StartTimeOffset": -5}), ("StartTimeOffset",)),
    ("unsorted", "t.jsonl", _jsonl({**APEX_OK, "StartTimeOffset": 5}, {**APEX_OK, "RequestID": "b"}),
     ("StartTimeOffset", "sorted", "order")),
    ("duplicate-id", "t.jsonl", _jsonl(APEX_OK, APEX_OK), ("RequestID", "a")),
    ("array-line", "t.jsonl", _jsonl([1, 2, 3]), ("t.jsonl",)),
    ("non-utf8", "t.jsonl", b'{"RequestID": "\xff\xfe"}\n', ("UTF-8",)),
    ("second-line-bad", "t.jsonl", _jsonl(APEX_OK, "{oops"), ("t.jsonl:2", "line 2")),
    ("huge-value", "t.jsonl", _jsonl({**APEX_OK, "ContextTokens": HUGE}), ("ContextTokens",)),
    ("csv-empty", "t.csv", b"", ("t.csv",)),
    ("csv-no-header", "t.csv", b"0,64,8\n", ("arrival_s", "header")),
    ("csv-missing-column", "t.csv", b"arrival_s,prompt_tokens\n0,64\n", ("output_tokens",)),
    ("csv-text", "t.csv", b"arrival_s,prompt_tokens,output_tokens\n0,many,8\n", ("prompt_tokens",)),
    ("csv-zero-output", "t.csv", b"arrival_s,prompt_tokens,output_tokens\n0,64,0\n", ("output_tokens",)),
    ("csv-negative-arrival", "t.csv", b"arrival_s,prompt_tokens,output_tokens\n-1,64,8\n", ("arrival_s",)),
    ("csv-nan-arrival", "t.csv", b"arrival_s,prompt_tokens,output_tokens\nnan,64,8\n", ("arrival_s",)),
    ("csv-non-utf8", "t.csv", b"arrival_s,prompt_tokens,output_tokens\n0,64,\xff\n", ("UTF-8",)),
    ("csv-prefix-half", "t.csv", b"arrival_s,prompt_tokens,output_tokens,prefix_id\n0,64,8,a\n", ("prefix",)),
    ("unknown-extension", "t.parquet", b"PAR1", ("format", "t.parquet")),
    ("mooncake-bad-hash", "t.jsonl", _jsonl({"timestamp": 0, "input_length": 64, "output_length": 8,
                                             "hash_ids": "nope"}), ("hash_ids",)),
]


@pytest.mark.parametrize(("name", "content", "names"), [pytest.param(f, c, n, id=i) for i, f, c, n in TRACES])
def test_a_bad_trace_file_is_refused_naming_file_and_field(tmp_path, name, content, names):
    path = tmp_path / name
    path.write_bytes(content)
    assert_refused([*SIM[:3], "--workload", str(path)], names)


def test_a_directory_given_as_trace_is_refused(tmp_path):
    assert_refused([*SIM[:3], "--workload", str(tmp_path)], ("directory",))


def test_a_missing_trace_file_is_refused(tmp_path):
    assert_refused([*SIM[:3], "--workload", str(tmp_path / "none.jsonl")], ("none.jsonl",))


# ---------------------------------------------------------------------------------------------------- HF configs
HF_OK = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
         "num_key_value_heads": 8, "vocab_size": 128256, "intermediate_size": 14336, "max_position_embeddings": 8192}
MOE_OK = {**HF_OK, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}
DROP = object()


def _hf(base: dict, **changes: object) -> bytes:
    cfg = {**base, **changes}
    return json.dumps({k: v for k, v in cfg.items() if v is not DROP}).encode()


HF_CASES: list[tuple[str, bytes, tuple[str, ...]]] = [
    *((f"{field}-{label}", _hf(HF_OK, **{field: value}), (field,))
      for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
      for label, value in (("zero", 0), ("negative", -8), ("string", "4096"), ("bool", True), ("float", 1e12),
                           ("huge", 10**12), ("list", [1]), ("missing", DROP))),
    *((f"{field}-{label}", _hf(HF_OK, **{field: value}), (field,))
      for field in ("num_key_value_heads", "intermediate_size", "head_dim", "max_position_embeddings")
      for label, value in (("zero", 0), ("negative", -8), ("string", "x"), ("bool", True), ("float", 2.5))),
    ("hidden-not-divisible", _hf(HF_OK, hidden_size=4097), ("hidden_size",)),
    ("kv-heads-not-dividing", _hf(HF_OK, num_key_value_heads=5), ("num_key_value_heads",)),
    ("kv-heads-above-heads", _hf(HF_OK, num_key_value_heads=64), ("num_key_value_heads",)),
    ("experts-zero", _hf(HF_OK, num_local_experts=0), ("num_local_experts",)),
    ("experts-one", _hf(HF_OK, num_local_experts=1), ("num_local_experts",)),
    ("experts-bool", _hf(HF_OK, num_local_experts=True), ("num_local_experts",)),
    ("experts-string", _hf(HF_OK, num_experts="8"), ("num_experts",)),
    ("routed-experts-zero", _hf(HF_OK, n_routed_experts=0), ("n_routed_experts",)),
    ("moe-top-k-missing", _hf(MOE_OK, num_experts_per_tok=DROP), ("num_experts_per_tok",)),
    ("moe-top-k-zero", _hf(MOE_OK, num_experts_per_tok=0), ("num_experts_per_tok",)),
    ("moe-top-k-above-experts", _hf(MOE_OK, num_experts_per_tok=9), ("top_k", "num_experts")),
    ("moe-width-string", _hf(MOE_OK, moe_intermediate_size="wide"), ("moe_intermediate_size",)),
    ("shared-experts-negative", _hf(MOE_OK, n_shared_experts=-1), ("n_shared_experts",)),
    ("mlp-only-layers-string", _hf(MOE_OK, mlp_only_layers="0,1"), ("mlp_only_layers",)),
    ("mla-missing-dims", _hf(HF_OK, kv_lora_rank=512), ("qk_nope_head_dim",)),
    ("top-level-list", b"[1, 2, 3]", ("JSON object", "list")),
    ("top-level-string", b'"config"', ("JSON object", "str")),
    ("invalid-json", b'{"hidden_size": 4096,', ("invalid JSON",)),
    ("empty-file", b"", ("invalid JSON", "empty")),
    ("non-utf8", b'{"model_type": "\xff"}', ("UTF-8",)),
    ("text-config-not-object", b'{"text_config": 5}', ("text_config",)),
]


@pytest.mark.parametrize(("content", "names"), [pytest.param(c, n, id=i) for i, c, n in HF_CASES])
def test_a_bad_hf_config_is_refused_naming_the_field(tmp_path, content, names):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    assert_refused([*SIM, "--model", str(path)], names)


@pytest.mark.parametrize(("content", "names"), [pytest.param(c, n, id=i) for i, c, n in HF_CASES[::4]])
def test_a_bad_hf_config_is_refused_by_estimate_too(tmp_path, content, names):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    assert_refused([*EST, "--model", str(path)], names)


def test_a_string_hidden_size_blames_hidden_size_not_head_dim(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(_hf(HF_OK, hidden_size="4096"))
    out = assert_refused([*SIM, "--model", str(path)], "hidden_size")
    assert "head_dim" not in out


# ---------------------------------------------------------------------------------------------------- cluster YAML
CLUSTER_OK = "name: c\nnodes:\n  - gpu: h100-sxm-80gb\n    count: 1\n    gpus_per_node: 8\n"
CLUSTER_CASES: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("not-a-mapping", b"- 1\n- 2\n", ("mapping", "dictionary")),
    ("plain-text", b"hello world\n", ("mapping", "dictionary")),
    ("empty", b"", ("mapping", "dictionary", "cluster")),
    ("missing-nodes", b"name: c\n", ("nodes",)),
    ("missing-name", b"nodes:\n  - {gpu: h100-sxm-80gb, count: 1, gpus_per_node: 8}\n", ("name",)),
    ("empty-nodes", b"name: c\nnodes: []\n", ("nodes",)),
    ("count-zero", CLUSTER_OK.replace("count: 1", "count: 0").encode(), ("count",)),
    ("count-negative", CLUSTER_OK.replace("count: 1", "count: -2").encode(), ("count",)),
    ("count-string", CLUSTER_OK.replace("count: 1", "count: many").encode(), ("count",)),
    ("count-float", CLUSTER_OK.replace("count: 1", "count: 1.5").encode(), ("count",)),
    ("gpn-zero", CLUSTER_OK.replace("gpus_per_node: 8", "gpus_per_node: 0").encode(), ("gpus_per_node",)),
    ("gpn-100", CLUSTER_OK.replace("gpus_per_node: 8", "gpus_per_node: 100").encode(), ("gpus_per_node",)),
    ("gpu-unknown", CLUSTER_OK.replace("h100-sxm-80gb", "h999").encode(), ("h999",)),
    ("gpu-number", CLUSTER_OK.replace("h100-sxm-80gb", "42").encode(), ("gpu",)),
    ("fabric-unknown", (CLUSTER_OK + "    fabric: carrier-pigeon\n").encode(), ("fabric",)),
    ("extra-field", (CLUSTER_OK + "colour: blue\n").encode(), ("colour",)),
    ("node-extra-field", (CLUSTER_OK + "    speed: fast\n").encode(), ("speed",)),
    ("network-bad-bandwidth", (CLUSTER_OK + "network:\n  bandwidth_per_gpu: fast\n").encode(),
     ("bandwidth_per_gpu",)),
    ("network-zero-bandwidth", (CLUSTER_OK + "network:\n  bandwidth_per_gpu: 0\n").encode(), ("bandwidth_per_gpu",)),
    ("network-negative-latency", (CLUSTER_OK + "network:\n  bandwidth_per_gpu: 400Gb/s\n  latency: -1us\n").encode(),
     ("latency",)),
    ("duplicate-gpu-groups", (CLUSTER_OK + "  - gpu: h100-sxm-80gb\n    count: 1\n    gpus_per_node: 8\n").encode(),
     ("merge", "gpu")),
    ("invalid-yaml", b"name: c\nnodes: [\n", ("invalid YAML",)),
    ("tab-indent", b"name: c\nnodes:\n\t- gpu: x\n", ("invalid YAML", "line")),
    ("non-utf8", b"name: \xff\xfe\n", ("UTF-8",)),
    ("huge-scalar", f"name: {HUGE}\n".encode(), ("nodes",)),
]


@pytest.mark.parametrize(("content", "names"), [pytest.param(c, n, id=i) for i, c, n in CLUSTER_CASES])
def test_a_bad_cluster_yaml_is_refused_naming_the_field(tmp_path, content, names):
    path = tmp_path / "cluster.yaml"
    path.write_bytes(content)
    assert_refused([*SIM, "--cluster", str(path)], names)


@pytest.mark.parametrize(("content", "names"), [pytest.param(c, n, id=i) for i, c, n in CLUSTER_CASES[::3]])
def test_a_bad_cluster_yaml_is_refused_by_solve_too(tmp_path, content, names):
    path = tmp_path / "cluster.yaml"
    path.write_bytes(content)
    base = [a for a in SOLVE if a not in ("--cluster", "h100x8")]
    assert_refused([*base, "--cluster", str(path)], names)


def test_a_cluster_path_to_a_text_file_does_not_print_the_file(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("\n".join(f"user{i}:x:{i}:{i}::/home/user{i}:/bin/bash" for i in range(50)))
    out = assert_refused([*SIM, "--cluster", str(secret)], ("passwd",))
    assert "user0:x" not in out and "/bin/bash" not in out


# ---------------------------------------------------------------------------------------------------- plug-ins
PLUGINS = {
    "raises": ("def search(problem):\n    raise RuntimeError('boom')\n", ("RuntimeError", "boom")),
    "returns-none": ("def search(problem):\n    return None\n", ("NoneType", "PlanSet")),
    "returns-int": ("def search(problem):\n    return 42\n", ("int", "PlanSet")),
    "exits-0": ("import sys\ndef search(problem):\n    sys.exit(0)\n", ("sys.exit",)),
    "exits-3": ("import sys\ndef search(problem):\n    sys.exit(3)\n", ("sys.exit",)),
    "no-search": ("def find(problem):\n    return None\n", ("search(problem)",)),
    "syntax-error": ("def search(problem)\n    return None\n", ("syntax",)),
    "import-error": ("import no_such_module_xyz\n", ("no_such_module_xyz",)),
    "exits-on-import": ("import sys\nsys.exit(0)\n", ("sys.exit",)),
    "search-not-callable": ("search = 5\n", ("search(problem)",)),
}


@pytest.mark.parametrize(("code", "names"), [pytest.param(c, n, id=i) for i, (c, n) in PLUGINS.items()])
def test_a_broken_solver_plugin_is_reported_as_an_error(tmp_path, code, names):
    path = tmp_path / "strategy.py"
    path.write_text(code)
    assert_refused([*SOLVE, "--solver", str(path)], names)


CONSTRAINTS = {
    "exits": ("import sys\nimport apex_opt as ax\n@ax.constraint('x')\ndef x(v, s):\n    sys.exit(0)\n",
              ("sys.exit", "'x'")),
    "raises": ("import apex_opt as ax\n@ax.constraint('x')\ndef x(v, s):\n    raise KeyError('k')\n", ("'x'",)),
    "returns-bool": ("import apex_opt as ax\n@ax.constraint('x')\ndef x(v, s):\n    return True\n", ("'x'",)),
    "returns-none": ("import apex_opt as ax\n@ax.constraint('x')\ndef x(v, s):\n    return None\n", ("None",)),
    "exits-on-import": ("import sys\nsys.exit(2)\n", ("SystemExit", "sys.exit")),
    "no-constraint": ("def x(v, s):\n    return []\n", ("@constraint",)),
    "syntax-error": ("def x(v, s)\n", ("syntax",)),
    "simulated-exits": (("import sys\nimport apex_opt as ax\n@ax.constraint('y', on='simulated')\n"
                         "def y(r, s):\n    sys.exit(0)\n"), ("sys.exit", "'y'")),
}


@pytest.mark.parametrize(("code", "names"), [pytest.param(c, n, id=i) for i, (c, n) in CONSTRAINTS.items()])
def test_a_broken_constraint_file_is_reported_as_an_error(tmp_path, code, names):
    path = tmp_path / "rules.py"
    path.write_text(code)
    assert_refused([*SOLVE, "--constraints", str(path)], names)


# ---------------------------------------------------------------------------------------------------- Python API
@pytest.fixture(scope="module")
def specs() -> ax.Specs:
    return ax.load_specs("llama-3.1-8b", "h100x8", workload=TINY)


PLAN = {"gpu": "h100-sxm-80gb"}
API: list[tuple[str, Callable[[ax.Specs], object], tuple[str, ...]]] = [
    ("load_specs-int-model", lambda s: ax.load_specs(123), ("model",)),
    ("load_specs-none-model", lambda s: ax.load_specs(None), ("model",)),
    ("load_specs-int-cluster", lambda s: ax.load_specs("llama-3.1-8b", 5), ("cluster",)),
    ("load_specs-int-engine", lambda s: ax.load_specs(engine=5), ("engine",)),
    ("load_specs-int-workload", lambda s: ax.load_specs(workload=5), ("workload",)),
    ("load_specs-int-slo", lambda s: ax.load_specs(slo=5), ("slo",)),
    ("load_specs-float-nodes", lambda s: ax.load_specs(gpu="h100-sxm-80gb", nodes=2.5), ("nodes",)),
    ("load_specs-zero-nodes", lambda s: ax.load_specs(gpu="h100-sxm-80gb", nodes=0), ("nodes",)),
    ("load_specs-cluster-and-gpu", lambda s: ax.load_specs(cluster="h100x8", gpu="h100-sxm-80gb"), ("gpu",)),
    ("load_specs-unknown-model", lambda s: ax.load_specs("nope"), ("nope",)),
    ("load_specs-bad-slo", lambda s: ax.load_specs(slo="ttft=1"), ("ttft",)),
    ("simulate-string-plan", lambda s: ax.simulate(s, "tp=2"), ("plan",)),
    ("simulate-dict-plan", lambda s: ax.simulate(s, {"tp": 2}), ("plan",)),
    ("simulate-string-specs", lambda s: ax.simulate("llama-3.1-8b", ax.Plan(**PLAN)), ("specs",)),
    ("simulate-negative-seed", lambda s: ax.simulate(s, ax.Plan(**PLAN), seed=-1), ("seed",)),
    ("simulate-float-seed", lambda s: ax.simulate(s, ax.Plan(**PLAN), seed=1.5), ("seed",)),
    ("simulate-zero-max-requests", lambda s: ax.simulate(s, ax.Plan(**PLAN), max_requests=0), ("max_requests",)),
    ("simulate-string-max-requests", lambda s: ax.simulate(s, ax.Plan(**PLAN), max_requests="3"),
     ("max_requests",)),
    ("simulate-unknown-router", lambda s: ax.simulate(s, ax.Plan(**PLAN), router="nope"), ("router",)),
    ("simulate-measured-at", lambda s: ax.simulate(s, ax.Plan(**PLAN), measured_at="moon"), ("measured_at",)),
    ("simulate-gpu-not-in-cluster", lambda s: ax.simulate(s, ax.Plan(gpu="a100-sxm-80gb")), ("a100-sxm-80gb",)),
    ("simulate-tp-3", lambda s: ax.simulate(s, ax.Plan(gpu="h100-sxm-80gb", tp=3)), ("tp",)),
    ("simulate-layers-sum", lambda s: ax.simulate(s, ax.Plan(gpu="h100-sxm-80gb", pp=2, layers_per_stage=(1, 1))),
     ("layers-per-stage", "layers_per_stage")),
    ("simulate-max-model-len", lambda s: ax.simulate(s, ax.Plan(**PLAN, max_model_len=10**7)), ("max_model_len",)),
    ("simulate-budget-1", lambda s: ax.simulate(s, ax.Plan(**PLAN, max_num_batched_tokens=1)),
     ("max_num_batched_tokens",)),
    ("solve-string-specs", lambda s: ax.solve("llama-3.1-8b"), ("specs",)),
    ("solve-negative-seed", lambda s: ax.solve(s, seed=-1), ("seed",)),
    ("solve-nan-time-limit", lambda s: ax.solve(s, time_limit=math.nan), ("time_limit",)),
    ("solve-inf-time-limit", lambda s: ax.solve(s, time_limit=math.inf), ("time_limit",)),
    ("solve-zero-top-k", lambda s: ax.solve(s, top_k=0), ("top_k",)),
    ("solve-unknown-objective", lambda s: ax.solve(s, objective="nope"), ("objective",)),
    ("solve-unknown-solver", lambda s: ax.solve(s, solver="nope"), ("solver",)),
    ("solve-int-solver", lambda s: ax.solve(s, solver=5), ("solver",)),
    ("solve-int-constraint", lambda s: ax.solve(s, constraints=[5]), ("constraints",)),
    ("solve-unlabelled-constraint", lambda s: ax.solve(s, constraints=[lambda v, sp: []]), ("constraint",)),
    ("solve-plugin-returns-none", lambda s: ax.solve(s, solver=lambda problem: None), ("PlanSet",)),
    ("solve-plugin-exits", lambda s: ax.solve(s, solver=lambda problem: sys.exit(0)), ("sys.exit",)),
    ("solve-quantization", lambda s: ax.solve(s, quantization="fp3"), ("quantization",)),
    ("estimate-string-plan", lambda s: ax.estimate(s, "x"), ("plan",)),
    ("estimate-string-specs", lambda s: ax.estimate("x", ax.Plan(**PLAN)), ("specs",)),
    ("estimate-zero-batch", lambda s: ax.estimate(s, ax.Plan(**PLAN), batch=0), ("batch",)),
    ("estimate-float-context", lambda s: ax.estimate(s, ax.Plan(**PLAN), context=1.5), ("context",)),
    ("plan-tp-zero", lambda s: ax.Plan(gpu="h100-sxm-80gb", tp=0), ("tp",)),
    ("plan-tp-string", lambda s: ax.Plan(gpu="h100-sxm-80gb", tp="x"), ("tp",)),
    ("plan-missing-gpu", lambda s: ax.Plan(tp=2), ("gpu",)),
    ("plan-unknown-field", lambda s: ax.Plan(gpu="h100-sxm-80gb", colour="red"), ("colour",)),
    ("plan-positional", lambda s: ax.Plan("h100-sxm-80gb"), ("by name",)),
    ("plan-bad-dtype", lambda s: ax.Plan(gpu="h100-sxm-80gb", weight_dtype="fp3"), ("weight_dtype",)),
    ("plan-layers-count", lambda s: ax.Plan(gpu="h100-sxm-80gb", pp=2, layers_per_stage=(32,)),
     ("layers_per_stage",)),
    ("plan-moe-shape", lambda s: ax.Plan(gpu="h100-sxm-80gb", tp=4, ep=3), ("moe_tp", "ep")),
    ("plan-gmu-above-one", lambda s: ax.Plan(gpu="h100-sxm-80gb", gpu_memory_utilization=1.5),
     ("gpu_memory_utilization",)),
    ("plan-huge-string-gpu", lambda s: ax.Plan(gpu=5), ("gpu",)),
    ("deployment-empty", lambda s: ax.Deployment(plans=()), ("plans",)),
    ("deployment-roles", lambda s: ax.Deployment(plans=(ax.Plan(gpu="a", role="prefill"),)), ("plans", "prefill")),
    ("slo-negative", lambda s: ax.SLO(ttft=-1), ("ttft",)),
    ("slo-attainment", lambda s: ax.SLO(ttft=1, attainment=2), ("attainment",)),
    ("parse_slo-int", lambda s: ax.parse_slo(5), ("slo",)),
    ("parse_slo-list", lambda s: ax.parse_slo(["ttft=1s"]), ("slo",)),
    ("load_workload-int", lambda s: ax.load_workload(5), ("load_workload",)),
    ("load_workload-unknown", lambda s: ax.load_workload("nope"), ("nope",)),
    ("load_workload-bad-synthetic", lambda s: ax.load_workload("synthetic:rate=1rps"), ("synthetic",)),
    ("load_constraints-int", lambda s: ax.load_constraints(5), ("constraints",)),
    ("load_constraints-missing", lambda s: ax.load_constraints("/nonexistent/rules.py"), ("rules.py",)),
    ("constraint-bad-label", lambda s: ax.constraint(5), ("label",)),
    ("huge-model-name", lambda s: ax.load_specs(HUGE), ("model",)),
]


@pytest.mark.parametrize(("call", "names"), [pytest.param(c, n, id=i) for i, c, n in API])
def test_a_bad_python_call_raises_the_projects_own_error_naming_the_value(specs, call, names):
    with pytest.raises(ApexOptError) as err:
        call(specs)
    text = str(err.value)
    assert any(n.lower() in text.lower() for n in names), text
    assert len(text) < 2000 and HUGE[:200] not in text


# ---------------------------------------------------------------------------------------------------- outcomes
def test_a_simulation_in_which_every_request_was_rejected_exits_1_with_the_reason_in_table_and_json():
    args = [*SIM[:3], "--max-model-len", "64", "--workload", "synthetic:rate=1rps,requests=3,prompt=512,output=8"]
    code, out = invoke(args)
    assert code == 1 and "no request completed" in out and "rejected 3 of 3" in out and "nan" not in out
    code, out = invoke([*args, "--format", "json"])
    assert code == 1
    data = json.loads(out[: out.rindex("}") + 1])
    assert "no request completed" in data["error"] and data["num_completed"] == 0 and "NaN" not in out


def test_a_gpu_that_matches_the_cluster_is_accepted_with_it():
    code, out = invoke([*SIM, "--gpu", "h100-sxm-80gb", "--cluster", "h100x8", "--format", "json"])
    assert code == 0 and json.loads(out)["num_completed"] == 3


def test_the_echo_helper_caps_any_value_near_80_characters():
    assert len(shorten("x" * 10_000)) < 110 and "10000 characters" in shorten("x" * 10_000)
    assert shorten("ttft") == "'ttft'" and len(shorten(list(range(1000)))) <= 80


# ---------------------------------------------------------------------------------------------------- slow variant
@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "", "nan", "inf", "-inf", "1e3", "0x10", "0b1", "１",
                                   "-0", "+-1", "NaN", "None", "null", "[]"])
@pytest.mark.parametrize("option", ["--tp", "--pp", "--dp", "--ep", "--nodes", "--gpus-per-node", "--seed",
                                    "--max-num-batched-tokens", "--max-num-seqs", "--max-model-len", "--max-requests",
                                    "--gpu-memory-utilization"])
def test_slow_every_malformed_number_on_every_simulate_option_is_refused(option, value):
    code, out = invoke([*SIM, option, value])
    assert "Traceback" not in out
    if code == 0:  # a value this option may legitimately read (e.g. "-0" as a seed)
        return
    if code == 1:  # read as a legitimate value under which no request can complete (e.g. --max-model-len 1)
        assert "no request completed" in out
        return
    assert code == 2 and (option in out or option[2:].replace("-", "_") in out), out[-800:]
