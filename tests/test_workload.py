"""The workload package, as a specification.

A Workload is a request trace as numpy arrays; traces are read strictly (every error names the file,
the line, the field, the value and a fix); synthetic workloads are seeded and deterministic; the
catalog names the APEX artifact's traces.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex_opt.errors import SpecError, TraceError, UnknownNameError
from apex_opt.workload import (
    SyntheticSpec,
    Workload,
    generate_synthetic,
    list_workloads,
    load_workload,
    parse_synthetic,
    read_apex_jsonl,
    read_csv,
    read_trace,
    synthetic_workload,
    workload_names,
    write_apex_jsonl,
    write_csv,
)

SPECS = Path(__file__).resolve().parents[1] / "specs"


def apex_line(rid: str = "r", t: int = 0, prompt: int = 10, output: int = 5, **extra: object) -> str:
    return json.dumps(
        {"RequestID": rid, "StartTimeOffset": t, "ContextTokens": prompt, "GeneratedTokens": output, **extra}
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def small() -> Workload:
    return Workload.from_arrays("w", [1.0, 2.0, 4.0, 5.0], [10, 20, 30, 40], [1, 2, 3, 4])


# ============================================================================ the Workload


class TestWorkload:
    def test_arrays_are_typed_and_read_only(self) -> None:
        w = small()
        assert (
            w.arrival_s.dtype == np.float64 and w.prompt_tokens.dtype == np.int64 and w.output_tokens.dtype == np.int64
        )
        assert w.request_ids == ("0", "1", "2", "3") and w.source == "w"
        with pytest.raises(ValueError):
            w.arrival_s[0] = 3.0

    def test_size_span_rate_and_means(self) -> None:
        w = small()
        assert len(w) == 4
        assert w.duration_s == 4.0  # last arrival minus first arrival
        assert w.rate == pytest.approx(3 / 4.0)  # (n - 1) gaps over the span: one over the mean gap
        assert w.mean_prompt == 25.0 and w.mean_output == 2.5
        assert w.total_tokens == 110

    def test_rate_of_degenerate_workloads(self) -> None:
        assert Workload.from_arrays("one", [3.0], [1], [1]).rate == 0.0
        assert Workload.from_arrays("burst", [1.0, 1.0], [1, 1], [1, 1]).rate == math.inf

    def test_percentiles(self) -> None:
        w = small()
        assert w.percentile("prompt", 50) == 25.0
        assert w.percentile("output", 100) == 4.0
        assert w.percentile("total", 0) == 11.0
        assert w.percentile("interarrival", 50) == 1.0
        with pytest.raises(
            SpecError, match=r"unknown percentile kind 'ttft'; valid kinds: prompt, output, total, interarrival"
        ):
            w.percentile("ttft", 50)
        with pytest.raises(SpecError, match="between 0 and 100"):
            w.percentile("prompt", 101)

    def test_head_keeps_absolute_offsets(self) -> None:
        h = small().head(2)
        assert h.arrival_s.tolist() == [1.0, 2.0] and h.request_ids == ("0", "1")
        assert len(small().head(10)) == 4

    def test_scaled_compresses_arrivals(self) -> None:
        w = small()
        fast = w.scaled(2.0)
        assert fast.arrival_s.tolist() == [0.5, 1.0, 2.0, 2.5]
        assert fast.rate == pytest.approx(2 * w.rate)
        assert fast.prompt_tokens is w.prompt_tokens  # tokens untouched, shared
        assert w.with_rate(3.0).rate == pytest.approx(3.0)
        with pytest.raises(SpecError, match="must be a finite number > 0"):
            w.scaled(0)

    def test_summary_is_plain_python(self) -> None:
        s = small().summary()
        assert s["requests"] == 4 and s["rate_rps"] == pytest.approx(0.75) and s["max_prompt"] == 40
        json.dumps(s)

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (
                ([2.0, 1.0], [1, 1], [1, 1]),
                r"arrival_s is not sorted \(request 1 arrives at 1.0s, before request 0 at 2.0s\)",
            ),
            (([0.0], [0], [1]), r"prompt_tokens\[0\] = 0; token counts must be >= 1"),
            (([0.0], [1], [1.5]), "token counts must be whole numbers"),
            (([0.0, 1.0], [1], [1, 1]), "arrays differ in length"),
            (([-1.0], [1], [1]), "arrival_s must be finite seconds >= 0"),
        ],
    )
    def test_construction_is_checked(self, args: tuple, message: str) -> None:
        with pytest.raises(SpecError, match=message):
            Workload.from_arrays("bad", *args)


# ============================================================================ APEX jsonl traces


class TestApexTrace:
    def test_reads_the_apex_format_keeping_absolute_offsets(self, tmp_path: Path) -> None:
        text = "\n".join(
            [
                apex_line("a", 197_890_289, 156, 67, Extra="ignored"),
                "",
                apex_line("b", 1_500_203_480, 115, 390),
                "   ",
            ]
        )
        w = read_trace(write(tmp_path, "t.jsonl", text + "\n"))
        assert w.name == "t" and w.source == str(tmp_path / "t.jsonl")
        assert w.arrival_s.tolist() == [0.197890289, 1.50020348]  # nanoseconds -> seconds, not shifted to 0
        assert w.prompt_tokens.tolist() == [156, 115] and w.output_tokens.tolist() == [67, 390]
        assert w.request_ids == ("a", "b")

    def test_integer_request_ids_are_read_as_strings(self, tmp_path: Path) -> None:
        text = apex_line(7) + "\n" + apex_line(8, 1)  # type: ignore[arg-type]
        w = read_apex_jsonl(write(tmp_path, "t.json", text), name="x")
        assert w.request_ids == ("7", "8") and w.name == "x"

    @pytest.mark.parametrize(
        ("lines", "message"),
        [
            pytest.param(
                [apex_line("a"), '{"RequestID": "b", "StartTimeOffset": 1,'],
                "{path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 41) in "
                '\'{"RequestID": "b", "StartTimeOffset": 1,\'; each line must be one JSON object',
                id="malformed-json",
            ),
            pytest.param(
                [
                    apex_line("a"),
                    apex_line("b", 1),
                    '{"RequestID": "c", "StartTimeOffset": 2, "ContextTokens": 3, "GeneratedToken": 4}',
                ],
                "{path}:3: missing field 'GeneratedTokens' (found 'GeneratedToken': a misspelling?); each line must be",
                id="missing-field",
            ),
            pytest.param(
                [apex_line("a", prompt="12")],  # type: ignore[arg-type]
                "{path}:1: field 'ContextTokens' is \"12\" (a string); "
                "it must be a whole number of prompt tokens >= 1, e.g. 156",
                id="string-count",
            ),
            pytest.param(
                [apex_line("a"), apex_line("b", 1, 12.5)],  # type: ignore[arg-type]
                "{path}:2: field 'ContextTokens' is 12.5 (a decimal number); "
                "it must be a whole number of prompt tokens >= 1",
                id="fractional-count",
            ),
            pytest.param(
                [apex_line("a"), apex_line("b", 1, 10, 0)],
                "{path}:2: field 'GeneratedTokens' is 0; it must be a whole number of output tokens >= 1 "
                "(an engine rejects a request for 0 output tokens): fix the value or drop the line",
                id="zero-output",
            ),
            pytest.param(
                [apex_line("a", -5)],
                "{path}:1: field 'StartTimeOffset' is -5; "
                "it must be a whole number of nanoseconds >= 0 since the trace start",
                id="negative-offset",
            ),
            pytest.param(
                [apex_line("a", 100), apex_line("b", 200), apex_line("c", 150), apex_line("d", 120)],
                "{path}:3: field 'StartTimeOffset' is 150, earlier than 200 on line 2; the requests must be sorted by "
                "arrival time: sort the file by StartTimeOffset",
                id="unsorted",
            ),
            pytest.param(
                [apex_line("a", 1), apex_line("b", 2), apex_line("a", 3)],
                "{path}:3: field 'RequestID' is \"a\", which line 1 already uses; request ids must be unique",
                id="duplicate-id",
            ),
            pytest.param(
                [apex_line("a"), "[1, 2]"],
                "{path}:2: expected a JSON object, got a list [1, 2]; each line must be one JSON object",
                id="not-an-object",
            ),
            pytest.param(
                [apex_line(None)],  # type: ignore[arg-type]
                "{path}:1: field 'RequestID' is null; it must be a non-empty string (or integer)",
                id="null-id",
            ),
            pytest.param(
                [apex_line("a"), apex_line("b", 1, 0), apex_line("c", 0)],
                "{path}:2: field 'ContextTokens' is 0",
                id="first-of-several-bad-lines",
            ),
            pytest.param(["", "  "], "{path}: the trace has no requests (empty or only blank lines)", id="empty"),
        ],
    )
    def test_malformed_lines_are_named(self, tmp_path: Path, lines: list[str], message: str) -> None:
        path = write(tmp_path, "trace.jsonl", "\n".join(lines) + "\n")
        with pytest.raises(TraceError) as info:
            read_trace(path)
        assert str(info.value).startswith(message.replace("{path}", str(path))), str(info.value)
        assert "\n" not in str(info.value)  # one paragraph

    def test_100k_lines_load_in_well_under_a_second(self, tmp_path: Path) -> None:
        n = 100_000
        body = "".join(
            f'{{"RequestID": "{i:040x}", "StartTimeOffset": {i * 1_000_003}, "ContextTokens": {1 + i % 4000}, '
            f'"GeneratedTokens": {1 + i % 700}, "Model": "x"}}\n'
            for i in range(n)
        )
        path = write(tmp_path, "big.jsonl", body)
        start = time.perf_counter()
        w = read_trace(path)
        assert time.perf_counter() - start < 1.0
        assert len(w) == n and w.arrival_s[-1] == pytest.approx((n - 1) * 1_000_003 / 1e9)

    def test_writer_round_trips_at_nanosecond_resolution(self, tmp_path: Path) -> None:
        w = Workload.from_arrays("w", [0.25, 1.5], [3, 4], [5, 6], ["x", "y"])
        back = read_trace(write_apex_jsonl(w, tmp_path / "w.jsonl"))
        assert back.arrival_s.tolist() == [0.25, 1.5] and back.request_ids == ("x", "y")


# ============================================================================ CSV traces


class TestCsvTrace:
    def test_header_names_the_columns_in_any_order(self, tmp_path: Path) -> None:
        text = "request_id,output_tokens,arrival_s,prompt_tokens,note\nq1,7,0.5,100,hi\n\nq2,8,2.25,200,\n"
        w = read_trace(write(tmp_path, "t.csv", text))
        assert w.arrival_s.tolist() == [0.5, 2.25] and w.prompt_tokens.tolist() == [100, 200]
        assert w.output_tokens.tolist() == [7, 8] and w.request_ids == ("q1", "q2")

    def test_request_id_column_is_optional(self, tmp_path: Path) -> None:
        w = read_csv(write(tmp_path, "t.csv", "arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,2,2\n"))
        assert w.request_ids == ("0", "1")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            pytest.param(
                "arrival,prompt_tokens,output_tokens\n0,1,1\n",
                "{path}:1: missing column 'arrival_s' in the header (found 'arrival': a misspelling?); "
                "the first row must be",
                id="missing-column",
            ),
            pytest.param(
                "arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,2\n",
                "{path}:3: the row has 2 values but the header has 3 columns (arrival_s,prompt_tokens,output_tokens)",
                id="short-row",
            ),
            pytest.param(
                "arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,12.5,1\n",
                "{path}:3: field 'prompt_tokens' is '12.5'; it must be a whole number of prompt tokens >= 1, e.g. 156",
                id="fractional-count",
            ),
            pytest.param(
                "arrival_s,prompt_tokens,output_tokens\nsoon,1,1\n",
                "{path}:2: field 'arrival_s' is 'soon'; "
                "it must be a number of seconds >= 0 on the trace's clock, e.g. 0.25",
                id="bad-arrival",
            ),
            pytest.param(
                "arrival_s,prompt_tokens,output_tokens\n0,1,0\n",
                "{path}:2: field 'output_tokens' is '0'; "
                "it must be a whole number of output tokens >= 1 (an engine rejects",
                id="zero-output",
            ),
            pytest.param(
                "arrival_s,prompt_tokens,output_tokens\n0,1,1\n\n3,1,1\n2,1,1\n",
                "{path}:5: field 'arrival_s' is 2.0, earlier than 3.0 on line 4; "
                "the requests must be sorted by arrival time: sort the file by arrival_s",
                id="unsorted",
            ),
            pytest.param(
                "arrival_s,prompt_tokens,output_tokens,request_id\n0,1,1,a\n1,1,1,\n",
                "{path}:3: field 'request_id' is empty; give every row an id, or drop the column",
                id="empty-id",
            ),
        ],
    )
    def test_malformed_rows_are_named(self, tmp_path: Path, text: str, message: str) -> None:
        path = write(tmp_path, "trace.csv", text)
        with pytest.raises(TraceError) as info:
            read_trace(path)
        assert str(info.value).startswith(message.replace("{path}", str(path))), str(info.value)


@st.composite
def csv_traces(draw: st.DrawFn) -> tuple[list[float], list[int], list[int], list[str] | None]:
    n = draw(st.integers(1, 20))
    arrivals = sorted(draw(st.lists(st.floats(0, 1e7, allow_nan=False, allow_infinity=False), min_size=n, max_size=n)))
    prompts = draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 10**5), min_size=n, max_size=n))
    ids = draw(
        st.none()
        | st.lists(
            st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    return arrivals, prompts, outputs, ids


@settings(max_examples=60, deadline=None)
@given(trace=csv_traces(), order=st.permutations(["arrival_s", "prompt_tokens", "output_tokens", "request_id"]))
def test_any_valid_csv_round_trips(tmp_path_factory: pytest.TempPathFactory, trace: tuple, order: list[str]) -> None:
    arrivals, prompts, outputs, ids = trace
    columns = [c for c in order if c != "request_id" or ids is not None]
    values = {
        "arrival_s": [repr(a) for a in arrivals],
        "prompt_tokens": prompts,
        "output_tokens": outputs,
        "request_id": ids,
    }
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(zip(*(values[c] for c in columns), strict=True))
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")

    w = read_csv(path)
    assert w.arrival_s.tolist() == arrivals
    assert w.prompt_tokens.tolist() == prompts and w.output_tokens.tolist() == outputs
    assert w.request_ids == (tuple(ids) if ids is not None else tuple(str(i) for i in range(len(arrivals))))

    again = read_csv(write_csv(w, path.with_name("again.csv")))
    assert again.arrival_s.tolist() == arrivals and again.request_ids == w.request_ids


class TestDispatch:
    def test_unknown_extension_is_an_error(self, tmp_path: Path) -> None:
        path = write(tmp_path, "t.txt", "")
        with pytest.raises(TraceError, match=r"unknown format '\.txt'; use \.jsonl or \.json for the APEX format"):
            read_trace(path)

    def test_missing_file_says_so(self, tmp_path: Path) -> None:
        with pytest.raises(TraceError, match=r"trace file '.*nope\.jsonl' does not exist"):
            load_workload(str(tmp_path / "nope.jsonl"), specs_dir=SPECS)


# ============================================================================ synthetic workloads


class TestSynthetic:
    EXPR = "synthetic:rate=20rps,requests=20000,prompt=1024,output=256,seed=0"

    def test_expression_parses_into_a_spec(self) -> None:
        spec = parse_synthetic(self.EXPR)
        assert spec == SyntheticSpec(rate=20.0, requests=20000, prompt=1024, output=256)
        assert spec.arrival == "poisson" and spec.lengths == "lognormal" and spec.sigma == 0.5 and spec.seed == 0
        assert parse_synthetic(spec.expression()) == spec
        assert parse_synthetic("synthetic:rate=600rpm,duration=10min,prompt=8,output=8").duration_s == 600.0

    def test_hits_the_requested_means(self) -> None:
        w = synthetic_workload(self.EXPR)
        assert len(w) == 20000 and w.prompt_tokens.min() >= 1 and w.output_tokens.min() >= 1
        assert w.mean_prompt == pytest.approx(1024, rel=0.02)  # lognormal mu = ln(mean) - sigma^2 / 2
        assert w.mean_output == pytest.approx(256, rel=0.02)
        assert w.rate == pytest.approx(20, rel=0.03)
        assert w.name == w.source == parse_synthetic(self.EXPR).expression()

    def test_same_seed_same_workload_other_seed_differs(self) -> None:
        a, b = synthetic_workload(self.EXPR), synthetic_workload(self.EXPR)
        c = synthetic_workload(self.EXPR.replace("seed=0", "seed=1"))
        assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
        assert not np.array_equal(a.arrival_s, c.arrival_s) and not np.array_equal(a.prompt_tokens, c.prompt_tokens)

    def test_changing_the_rate_keeps_the_lengths(self) -> None:
        a = synthetic_workload(self.EXPR)
        b = synthetic_workload(self.EXPR.replace("rate=20rps", "rate=5rps"))
        assert np.array_equal(a.prompt_tokens, b.prompt_tokens) and np.array_equal(a.output_tokens, b.output_tokens)

    def test_gamma_with_cv_above_one_is_burstier_than_poisson(self) -> None:
        def gap_cv(expr: str) -> float:
            gaps = np.diff(synthetic_workload(expr).arrival_s)
            return float(gaps.std() / gaps.mean())

        base = "synthetic:rate=10rps,requests=20000,prompt=10,output=10"
        assert gap_cv(base) == pytest.approx(1.0, abs=0.05)
        assert gap_cv(base + ",arrival=gamma,cv=3") > 2.5
        assert gap_cv(base + ",arrival=gamma,cv=0.5") == pytest.approx(0.5, abs=0.05)
        assert gap_cv(base + ",arrival=constant") == pytest.approx(0.0, abs=1e-9)

    def test_duration_bounds_the_arrivals(self) -> None:
        w = synthetic_workload("synthetic:rate=50rps,duration=2min,prompt=100,output=10")
        assert w.arrival_s[-1] <= 120.0
        assert len(w) == pytest.approx(6000, rel=0.05)

    def test_fixed_and_uniform_lengths_and_caps(self) -> None:
        fixed = synthetic_workload("synthetic:rate=1,requests=50,prompt=300,output=20,lengths=fixed")
        assert set(fixed.prompt_tokens.tolist()) == {300} and set(fixed.output_tokens.tolist()) == {20}
        uni = synthetic_workload("synthetic:rate=1,requests=20000,prompt=100,output=8,lengths=uniform")
        assert uni.prompt_tokens.min() >= 1 and uni.prompt_tokens.max() <= 199
        assert uni.mean_prompt == pytest.approx(100, rel=0.02)
        capped = synthetic_workload("synthetic:rate=1,requests=2000,prompt=1000,output=100,sigma=1,prompt_max=1500")
        assert capped.prompt_tokens.max() == 1500

    def test_empirical_lengths_resample_a_catalog_trace(self) -> None:
        w = load_workload("synthetic:rate=2rps,requests=3000,lengths=empirical:lmsys,seed=3", specs_dir=SPECS)
        source = load_workload("lmsys", specs_dir=SPECS)
        pairs = set(zip(source.prompt_tokens.tolist(), source.output_tokens.tolist(), strict=True))
        assert set(zip(w.prompt_tokens.tolist(), w.output_tokens.tolist(), strict=True)) <= pairs
        assert w.mean_prompt == pytest.approx(source.mean_prompt, rel=0.1)

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            (
                "synthetic:rat=20rps,requests=10",
                (
                    "unknown key 'rat' in synthetic workload; did you mean 'rate'? "
                    "Valid keys: rate, requests, duration, "
                    "prompt, output, arrival, cv, lengths, sigma, prompt_max, output_max, seed"
                ),
            ),
            (
                "synthetic:rate=0rps,requests=10,prompt=1,output=1",
                "synthetic workload: rate=0rps must be a finite rate > 0",
            ),
            (
                "synthetic:rate=-2,requests=10,prompt=1,output=1",
                "synthetic workload: rate=-2rps must be a finite rate > 0",
            ),
            (
                "synthetic:rate=fast,requests=10",
                "synthetic workload: rate=fast: 'fast' is not a rate; write e.g. 0.5rps",
            ),
            ("synthetic:requests=10,prompt=1,output=1", "synthetic workload: missing rate=<requests per second>"),
            (
                "synthetic:rate=1,requests=10,duration=1min,prompt=1,output=1",
                "synthetic workload: both of requests and duration given; give exactly one",
            ),
            ("synthetic:rate=1,prompt=1,output=1", "synthetic workload: neither of requests and duration given"),
            (
                "synthetic:rate=1,requests=ten,prompt=1,output=1",
                "synthetic workload: requests='ten' is not a whole number",
            ),
            ("synthetic:rate=1,requests=10,prompt=1", "synthetic workload: missing output=<mean output tokens>"),
            ("synthetic:rate=1,requests=10,prompt=1,output=1,cv=2", "cv=2 only applies to arrival=gamma"),
            (
                "synthetic:rate=1,requests=10,prompt=1,output=1,lengths=fixed,sigma=1",
                "sigma=1 only applies to lengths=lognormal",
            ),
            (
                "synthetic:rate=1,requests=10,prompt=1,output=1,arrival=bursty",
                "arrival='bursty' is not known; valid values: poisson, gamma, constant",
            ),
            ("synthetic:rate=1,requests=10,prompt=1,output=1,lengths=zipf", "lengths='zipf' is not known"),
            ("synthetic:rate=1,requests=10,prompt=1,output=1,seed=1,seed=2", "key 'seed' is given twice"),
            (
                "synthetic:rate=1,requests=10,prompt=9,lengths=empirical:lmsys",
                "prompt=9 does not apply to lengths=empirical:lmsys",
            ),
        ],
    )
    def test_bad_expressions_name_key_value_and_fix(self, expression: str, message: str) -> None:
        with pytest.raises(SpecError) as info:
            parse_synthetic(expression)
        assert message in str(info.value), str(info.value)

    def test_empirical_lengths_need_the_catalog(self) -> None:
        with pytest.raises(SpecError, match="lengths=empirical:lmsys needs the workload catalog"):
            generate_synthetic(parse_synthetic("synthetic:rate=1,requests=10,lengths=empirical:lmsys"))
        with pytest.raises(UnknownNameError, match="unknown workload 'lmsy'; did you mean 'lmsys'"):
            load_workload("synthetic:rate=1,requests=10,lengths=empirical:lmsy", specs_dir=SPECS)


# ============================================================================ the catalog

EXPECTED = {  # name: (requests, nominal rate)
    "lmsys": (1024, 0.5),
    "creation": (512, 0.5),
    "summarization": (1302, 0.5),
    "lmsys-025": (1024, 0.25),
    "creation-025": (512, 0.25),
    "summarization-025": (1302, 0.25),
    "mistral-lmsys": (1024, 0.5),
    "mistral-creation": (725, 0.5),
    "mistral-summarization": (1039, 0.5),
    "mistral-lmsys-025": (1024, 0.25),
    "mistral-creation-025": (725, 0.25),
    "mistral-summarization-025": (1039, 0.25),
    "mooncake-sample": (40, 1.0),  # synthetic, in the Mooncake format (tests/test_workload_prefix.py)
}


class TestCatalog:
    def test_names(self) -> None:
        assert workload_names(SPECS) == sorted(EXPECTED)

    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_builtin_traces_load_with_their_counts_and_rates(self, name: str) -> None:
        requests, nominal = EXPECTED[name]
        w = load_workload(name, specs_dir=SPECS)
        assert (w.name, w.source, len(w)) == (name, name, requests)
        assert w.rate == pytest.approx(nominal, rel=0.1)  # Poisson draws: within 10% of the nominal rate
        assert w.arrival_s[0] > 0  # absolute offsets as in the trace

    def test_token_profiles_of_the_defaults(self) -> None:
        chat, creation, summ = (load_workload(n, specs_dir=SPECS) for n in ("lmsys", "creation", "summarization"))
        assert chat.mean_prompt == pytest.approx(61.67, abs=0.01) and chat.mean_output == pytest.approx(
            162.11, abs=0.01
        )
        assert creation.mean_output > 1000 > creation.mean_prompt
        assert summ.mean_prompt == pytest.approx(2753.06, abs=0.01) and summ.mean_output < 200

    def test_unknown_name_suggests_close_matches(self) -> None:
        with pytest.raises(UnknownNameError) as info:
            load_workload("lmsy", specs_dir=SPECS)
        assert str(info.value).startswith("unknown workload 'lmsy'; did you mean 'lmsys'")
        assert info.value.close_matches[0] == "lmsys"

    def test_a_path_is_read_as_a_trace(self, tmp_path: Path) -> None:
        path = write(tmp_path, "mine.csv", "arrival_s,prompt_tokens,output_tokens\n0.5,3,4\n")
        w = load_workload(str(path), specs_dir=SPECS)
        assert (w.name, len(w)) == ("mine", 1)

    def test_list_workloads_rows(self) -> None:
        rows = {r["name"]: r for r in list_workloads(SPECS)}
        assert set(rows) == set(EXPECTED)
        lmsys = rows["lmsys"]
        assert lmsys["requests"] == 1024 and lmsys["nominal_rate"] == 0.5 and lmsys["tokenizer_family"] == "llama"
        assert lmsys["mean_prompt"] == pytest.approx(61.67, abs=0.01) and lmsys["rate"] == pytest.approx(0.5, rel=0.1)
        assert lmsys["description"]
