"""Workloads whose requests share prompt prefixes, as a specification.

A workload may describe its prompts' content as chains of (content_id, tokens) segments; Mooncake
traces carry it as block hash ids; the synthetic grammar generates inference-perf's shared-prefix
data set; derived workloads keep the content; the older synthetic expressions are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from apex_opt.errors import SpecError, TraceError
from apex_opt.workload import (
    SyntheticSpec,
    Workload,
    concat_workloads,
    load_workload,
    parse_synthetic,
    read_apex_jsonl,
    read_csv,
    read_mooncake_jsonl,
    read_trace,
    shared_prefix_workload,
    synthetic_workload,
)

SPECS = Path(__file__).resolve().parents[1] / "specs"


def chat() -> Workload:
    """Two system prompts (ids 0 and 5); requests 0, 1 and 3 share system prompt 0."""
    return Workload.from_arrays(
        "chat",
        [0.0, 1.0, 2.0, 3.0],
        [150, 130, 80, 100],
        [20, 20, 20, 20],
        segments=[((0, 100), (1, 50)), ((0, 100), (2, 30)), ((5, 80),), ((0, 100),)],
    )


def mooncake_line(t: int = 0, length: int = 600, output: int = 10, ids: list | None = None, **extra: object) -> str:
    return json.dumps(
        {"timestamp": t, "input_length": length, "output_length": output, "hash_ids": [0, 1] if ids is None else ids}
        | extra
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def trace_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(TraceError) as info:
        read_trace(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# ============================================================================ the data model


class TestSegments:
    def test_segments_cover_each_prompt_exactly(self) -> None:
        w = chat()
        assert w.shares_prefixes and w.output_ids is None
        assert w.segments == (((0, 100), (1, 50)), ((0, 100), (2, 30)), ((5, 80),), ((0, 100),))
        assert [sum(t for _, t in s) for s in w.segments] == w.prompt_tokens.tolist()
        with pytest.raises(SpecError, match=r"segments of request 1 \(id '1'\) cover 120 tokens but prompt_tokens"):
            Workload.from_arrays("w", [0.0, 1.0], [150, 130], [1, 1], segments=[((0, 100), (1, 50)), ((0, 120),)])

    @pytest.mark.parametrize(
        ("segments", "message"),
        [
            ([((0, 10),)], "segments has 1 entries for 2 requests"),
            ([((0, 10),), ((0, 0), (1, 10))], r"segment \(0, 0\) has 0 tokens; each segment needs >= 1"),
            ([((0, 10),), (("a", 10),)], "is not a sequence of \\(content_id, tokens\\) pairs of integers"),
            ([((0, 10),), ((0, 10.0),)], "is not a sequence of \\(content_id, tokens\\) pairs of integers"),
            ("abc", "segments must be a sequence"),
        ],
    )
    def test_malformed_segments_are_named(self, segments: object, message: str) -> None:
        with pytest.raises(SpecError, match=message):
            Workload.from_arrays("w", [0.0, 1.0], [10, 10], [1, 1], segments=segments)

    def test_output_ids_need_segments_and_one_id_per_request(self) -> None:
        with pytest.raises(SpecError, match="output_ids given without segments"):
            Workload.from_arrays("w", [0.0], [10], [1], output_ids=[7])
        with pytest.raises(SpecError, match="output_ids has 2 entries for 1 requests"):
            Workload.from_arrays("w", [0.0], [10], [1], segments=[((0, 10),)], output_ids=[7, 8])

    def test_traces_without_content_share_nothing(self) -> None:
        w = Workload.from_arrays("w", [0.0, 1.0], [10, 10], [1, 1])
        assert not w.shares_prefixes and w.segments is None
        assert w.reusable_prefix_tokens().tolist() == [0, 0]
        assert w.prefix_summary() == {"distinct_segments": 2, "distinct_prompt_tokens": 20, "max_prefix_reuse": 0.0}
        assert "max_prefix_reuse" not in w.summary()

    def test_sharing_is_found_along_whole_chains(self) -> None:
        w = chat()
        assert w.reusable_prefix_tokens().tolist() == [0, 100, 0, 100]
        s = w.summary()
        assert s["distinct_segments"] == 4  # (0,100), (0,100)->(1,50), (0,100)->(2,30), (5,80)
        assert s["distinct_prompt_tokens"] == 260
        assert s["max_prefix_reuse"] == pytest.approx(200 / 460)
        json.dumps(s)

    def test_same_id_with_another_length_or_under_another_prefix_is_not_shared(self) -> None:
        w = Workload.from_arrays(
            "w",
            [0.0, 1.0, 2.0],
            [150, 140, 60],
            [1, 1, 1],
            segments=[((0, 100), (1, 50)), ((0, 90), (1, 50)), ((2, 10), (1, 50))],
        )
        assert w.reusable_prefix_tokens().tolist() == [0, 0, 0]

    def test_a_follow_up_turn_reuses_the_previous_answer(self) -> None:
        w = Workload.from_arrays(
            "conv",
            [0.0, 5.0],
            [150, 150 + 20 + 30],
            [20, 10],
            segments=[((0, 100), (1, 50)), ((0, 100), (1, 50), (9, 20), (2, 30))],
            output_ids=[9, 10],
        )
        assert w.reusable_prefix_tokens().tolist() == [0, 170]
        assert w.prefix_summary()["max_prefix_reuse"] == pytest.approx(170 / 350)
        no_answers = dataclasses.replace(w, output_ids=None)
        assert no_answers.reusable_prefix_tokens().tolist() == [0, 150]

    def test_derived_workloads_keep_the_content(self) -> None:
        w = chat()
        head = w.head(2)
        assert head.segments == w.segments[:2] and head.prefix_summary()["max_prefix_reuse"] == pytest.approx(100 / 280)
        assert w.scaled(2.0).segments == w.segments and w.with_rate(3.0).segments == w.segments
        assert dataclasses.replace(w, source="x").segments == w.segments
        with pytest.raises(SpecError, match="cover 150 tokens but prompt_tokens"):
            dataclasses.replace(w, prompt_tokens=np.array([1, 130, 80, 100]))  # content no longer fits

    def test_concatenation_in_time(self) -> None:
        a = Workload.from_arrays(
            "a", [0.0, 1.0], [10, 15], [5, 5], segments=[((0, 10),), ((0, 10), (7, 5))], output_ids=[7, 8]
        )
        later = dataclasses.replace(a, name="b", arrival_s=a.arrival_s + 10)
        plain = Workload.from_arrays("c", [20.0], [4], [1])
        both = concat_workloads([a, later, plain])
        assert both.request_ids == ("0:0", "0:1", "1:0", "1:1", "2:0")  # duplicates prefixed by part
        assert both.arrival_s.tolist() == [0.0, 1.0, 10.0, 11.0, 20.0] and both.name == "a+b+c"
        seg = both.segments
        assert seg is not None and both.output_ids is not None
        assert seg[0] == seg[2] == ((0, 10),)  # prompts keep their ids: parts of one data set share them
        assert seg[1][1][0] == both.output_ids[0] and seg[3][1][0] == both.output_ids[2] != both.output_ids[0]
        assert len(set(both.output_ids)) == 5 and seg[4][0][0] not in {0, *both.output_ids}
        with pytest.raises(SpecError, match="part 1 \\('a'\\) starts at 0.0s, before part 0 \\('b'\\) ends at 11.0s"):
            concat_workloads([later, a])


# ============================================================================ Mooncake traces


class TestMooncake:
    def test_detected_by_its_keys_and_read_into_block_segments(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "mc.jsonl",
            mooncake_line(0, 1100, 50, [0, 1, 2]) + "\n\n" + mooncake_line(2500, 1024, 20, [0, 1]) + "\n",
        )
        for w in (read_trace(path), load_workload(str(path), specs_dir=SPECS), read_mooncake_jsonl(path)):
            assert w.request_ids == ("0", "1") and w.arrival_s.tolist() == [0.0, 2.5]
            assert w.prompt_tokens.tolist() == [1100, 1024] and w.output_tokens.tolist() == [50, 20]
            assert w.segments == (((0, 512), (1, 512), (2, 76)), ((0, 512), (1, 512)))  # partial last block
            assert w.reusable_prefix_tokens().tolist() == [0, 1024]
            assert (w.name, w.source) == ("mc", str(path))

    def test_a_prompt_longer_than_its_blocks_gets_a_unique_tail(self, tmp_path: Path) -> None:
        path = write(tmp_path, "mc.jsonl", mooncake_line(0, 1100, 1, [4, 9]) + "\n" + mooncake_line(1, 3, 1, []))
        w = read_trace(path)
        assert w.segments == (((4, 512), (9, 512), (10, 76)), ((11, 3),))

    def test_the_block_size_is_a_keyword_or_a_path_suffix(self, tmp_path: Path) -> None:
        path = write(tmp_path, "mc.jsonl", mooncake_line(0, 600, 1, [0, 1, 2]) + "\n")
        assert read_trace(path, block_tokens=256).segments == (((0, 256), (1, 256), (2, 88)),)
        w = load_workload(f"{path}#block=256", specs_dir=SPECS)
        assert w.segments == (((0, 256), (1, 256), (2, 88)),) and w.source == f"{path}#block=256"
        assert load_workload(path, specs_dir=SPECS, block_tokens=256).segments == w.segments
        assert load_workload("mooncake-sample#block=512", specs_dir=SPECS).source == "mooncake-sample#block=512"

    @pytest.mark.parametrize(
        ("suffix", "message"),
        [
            ("#blocks=256", "unknown suffix '#blocks=256'; the only option is #block=N"),
            ("#block=0", "block='0' must be a whole number of tokens >= 1"),
            ("#block=big", "block='big' must be a whole number of tokens >= 1"),
        ],
    )
    def test_a_bad_suffix_is_named(self, tmp_path: Path, suffix: str, message: str) -> None:
        path = write(tmp_path, "mc.jsonl", mooncake_line() + "\n")
        with pytest.raises(SpecError, match=message):
            load_workload(f"{path}{suffix}", specs_dir=SPECS)

    def test_a_block_size_for_another_format_is_an_error(self, tmp_path: Path) -> None:
        apex = write(
            tmp_path,
            "a.jsonl",
            json.dumps({"RequestID": "r", "StartTimeOffset": 0, "ContextTokens": 3, "GeneratedTokens": 1}) + "\n",
        )
        assert "applies only to Mooncake traces (lines with hash_ids), and this is an APEX trace" in trace_error(
            apex, block_tokens=256
        )
        with pytest.raises(SpecError, match="the suffix says block=128 but block_tokens=256"):
            load_workload(f"{apex}#block=128", specs_dir=SPECS, block_tokens=256)

    @pytest.mark.parametrize(
        ("lines", "message"),
        [
            (
                [mooncake_line(), mooncake_line(1, 512, 1, [0, 1])],
                (
                    "{path}:2: field 'input_length' is 512, but field 'hash_ids' lists 2 blocks of 512 tokens, "
                    "which need at least 513 prompt tokens"
                ),
            ),
            (
                [mooncake_line(), json.dumps({"timestamp": 1, "input_length": 5, "output_length": 1})],
                "{path}:2: missing field 'hash_ids'",
            ),
            (
                [mooncake_line(), mooncake_line(1, ids=[0, "1"])],
                '{path}:2: field \'hash_ids\' is [0, "1"] (a list): element "1" (a string) is not a list of integers',
            ),
            ([mooncake_line(), mooncake_line(1, output=0)], "{path}:2: field 'output_length' is 0"),
            ([mooncake_line(5), mooncake_line(1)], "{path}:2: field 'timestamp' is 1, earlier than 5 on line 1"),
            ([mooncake_line(-1)], "{path}:1: field 'timestamp' is -1 (int); it must be a number of milliseconds"),
            ([mooncake_line(), '{"timestamp": 1, "hash_ids": [0,]}'], "{path}:2: not valid JSON"),
        ],
    )
    def test_errors_name_line_field_and_fix(self, tmp_path: Path, lines: list[str], message: str) -> None:
        path = write(tmp_path, "mc.jsonl", "\n".join(lines) + "\n")
        text = trace_error(path)
        assert message.format(path=path) in text, text
        if "not valid JSON" in message:
            assert "hash_ids (one integer per block of the prompt" in text  # the Mooncake format is explained

    def test_the_apex_reader_points_a_mooncake_file_to_the_right_reader(self, tmp_path: Path) -> None:
        path = write(tmp_path, "mc.jsonl", mooncake_line() + "\n")
        with pytest.raises(TraceError, match="looks like a Mooncake trace .* read it with read_trace"):
            read_apex_jsonl(path)

    def test_the_catalog_sample(self) -> None:
        w = load_workload("mooncake-sample", specs_dir=SPECS)
        assert (w.name, w.source, len(w)) == ("mooncake-sample", "mooncake-sample", 40)
        assert w.shares_prefixes and w.output_ids is None
        s = w.prefix_summary()
        assert 0.3 < s["max_prefix_reuse"] < 0.6 and s["distinct_segments"] == 80


# ============================================================================ CSV shared prefixes


class TestCsvPrefix:
    def test_prefix_columns_make_a_shared_prefix_and_a_unique_rest(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "p.csv",
            "arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n"
            "0,150,5,sys-a,100\n1,100,5,sys-a,100\n2,70,5,,0\n3,120,5,sys-b,100\n",
        )
        w = read_csv(path)
        assert w.segments == (((0, 100), (2, 50)), ((0, 100),), ((3, 70),), ((1, 100), (4, 20)))
        assert w.reusable_prefix_tokens().tolist() == [0, 100, 0, 0]
        plain = write(tmp_path, "q.csv", "arrival_s,prompt_tokens,output_tokens\n0,3,4\n")
        assert read_csv(plain).segments is None

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (
                "arrival_s,prompt_tokens,output_tokens,prefix_id\n0,3,4,a\n",
                "column 'prefix_id' without 'prefix_tokens'",
            ),
            (
                "arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n0,3,4,a,9\n",
                ":2: field 'prefix_tokens' is '9'; it must be a whole number of shared prefix tokens between 0 and",
            ),
            (
                "arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n0,30,4,a,9\n1,30,4,a,8\n",
                ":3: field 'prefix_tokens' is 8 but line 2 gives prefix_id 'a' 9 tokens",
            ),
        ],
    )
    def test_prefix_column_errors(self, tmp_path: Path, text: str, message: str) -> None:
        with pytest.raises(TraceError, match=message):
            read_csv(write(tmp_path, "p.csv", text))


# ============================================================================ inference-perf's shared prefixes


class TestSharedPrefixSynthetic:
    EXPR = "synthetic:rate=10rps,duration=600s,shared_prefix=11x4,system_len=100,question_len=466,output=247,seed=0"

    def test_expression_parses_with_fixed_lengths_by_default(self) -> None:
        spec = parse_synthetic(self.EXPR)
        assert spec.shared_prefix == (11, 4) and spec.system_len == 100 and spec.question_len == 466
        assert spec.lengths == "fixed" and spec.turns == 1 and spec.template == 0.0 and spec.prompt is None
        assert parse_synthetic(spec.expression()) == spec
        assert spec.expression() == (
            "synthetic:rate=10rps,duration=600s,shared_prefix=11x4,system_len=100,question_len=466,output=247,"
            "arrival=poisson,lengths=fixed,seed=0"
        )

    def test_g_times_u_distinct_prompts_recur_in_a_fixed_cycle(self) -> None:
        w = synthetic_workload(self.EXPR)
        segs = w.segments
        assert segs is not None and len(w) == pytest.approx(6000, rel=0.05)
        assert len(set(segs)) == 44 and len(set(segs[:44])) == 44  # every prompt once, then again
        assert all(segs[i] == segs[i + 44] for i in range(len(w) - 44))  # request i sends order[i mod G*U]
        systems = {s[0] for s in segs}
        assert systems == {(g, 100) for g in range(11)}
        assert sum(1 for s in set(segs) if s[0] == (0, 100)) == 4  # U users per system prompt

    def test_fixed_lengths_are_exact(self) -> None:
        w = synthetic_workload(self.EXPR)
        assert set(w.prompt_tokens.tolist()) == {566} and set(w.output_tokens.tolist()) == {247}
        assert w.output_ids is None

    def test_max_prefix_reuse_is_all_but_the_first_appearances(self) -> None:
        w = synthetic_workload(self.EXPR)
        s = w.prefix_summary()
        distinct = 11 * 100 + 44 * 466
        assert s["distinct_prompt_tokens"] == distinct and s["distinct_segments"] == 55
        assert s["max_prefix_reuse"] == pytest.approx(1 - distinct / (566 * len(w)))
        assert s["max_prefix_reuse"] > 0.99

    def test_deterministic_in_the_seed_and_the_data_set_in_data_seed(self) -> None:
        a, b = synthetic_workload(self.EXPR), synthetic_workload(self.EXPR)
        assert np.array_equal(a.arrival_s, b.arrival_s) and a.segments == b.segments
        c = synthetic_workload(self.EXPR.replace("seed=0", "seed=1"))
        assert not np.array_equal(a.arrival_s[:100], c.arrival_s[:100]) and a.segments[:44] != c.segments[:44]
        d = synthetic_workload(self.EXPR.replace("seed=0", "seed=1,data_seed=0"))
        assert np.array_equal(c.arrival_s, d.arrival_s) and d.segments[:44] == a.segments[:44]

    def test_random_lengths_are_drawn_per_distinct_prompt(self) -> None:
        w = synthetic_workload(self.EXPR + ",lengths=lognormal")
        pairs = set(zip(w.segments, w.output_tokens.tolist(), strict=True))
        assert len(pairs) == 44 and len({p for p in w.prompt_tokens.tolist()}) > 20

    def test_template_tokens_match_a_measured_mean_min_and_max(self) -> None:
        w = synthetic_workload(self.EXPR + ",template=25.6,template_min=14,template_max=38")
        first = w.prompt_tokens[:44]
        assert (first.min(), first.max()) == (580, 604) and first.mean() == pytest.approx(591.6, abs=0.05)
        assert {s[1][1] - 466 for s in w.segments[:44]} == {int(t) - 566 for t in first}  # in the question segment

    def test_multi_turn_prompts_grow_by_the_previous_answer_and_question(self) -> None:
        w = synthetic_workload(
            "synthetic:rate=1,requests=20,shared_prefix=2x2,system_len=10,question_len=5,output=3,turns=3"
        )
        assert w.output_ids == tuple(range(6, 26))  # answers after 2 system prompts and 4 questions
        s = w.segments
        assert s[4] == s[0] + ((w.output_ids[0], 3), s[0][1])
        assert s[8] == s[4] + ((w.output_ids[4], 3), s[0][1])
        assert s[12] == s[0]  # after 3 turns the conversation starts over
        assert w.prompt_tokens[:12].tolist() == [15] * 4 + [23] * 4 + [31] * 4
        assert w.reusable_prefix_tokens()[4] == 18  # the whole previous prompt and its answer

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("synthetic:rate=1,requests=9,shared_prefix=11,system_len=1,question_len=1,output=1", "is not GxU"),
            (
                "synthetic:rate=1,requests=9,shared_prefix=2x2,system_len=1,question_len=1,output=1,prompt=9",
                "prompt=9 does not apply to shared_prefix",
            ),
            ("synthetic:rate=1,requests=9,shared_prefix=2x2,system_len=1,output=1", "missing question_len=<tokens>"),
            (
                "synthetic:rate=1,requests=9,prompt=5,output=1,system_len=4",
                "system_len=4 only applies to shared-prefix",
            ),
            (
                (
                    "synthetic:rate=1,requests=9,shared_prefix=2x2,system_len=1,question_len=9,output=1,template=2,"
                    "template_min=3,template_max=5"
                ),
                "template=2 must lie within template_min=3 and template_max=5",
            ),
            (
                "synthetic:rate=1,requests=9,shared_prefix=2x2,system_len=1,question_len=9,output=1,template_min=3",
                "give template_min and template_max together",
            ),
            (
                (
                    "synthetic:rate=1,requests=9,shared_prefix=2x2,system_len=1,question_len=9,output=1,"
                    "lengths=empirical:lmsys"
                ),
                "lengths=empirical does not apply to shared_prefix",
            ),
            (
                "synthetic:rat=1,requests=9",
                (
                    "Valid keys: rate, requests, duration, prompt, output, arrival, cv, lengths, sigma, prompt_max, "
                    "output_max, seed, start, shared_prefix, system_len, question_len, template"
                ),
            ),
        ],
    )
    def test_bad_expressions_name_key_value_and_fix(self, expression: str, message: str) -> None:
        with pytest.raises(SpecError) as info:
            parse_synthetic(expression)
        assert message in str(info.value), str(info.value)

    def test_start_shifts_every_arrival(self) -> None:
        base = synthetic_workload("synthetic:rate=5,requests=50,prompt=10,output=10")
        later = synthetic_workload("synthetic:rate=5,requests=50,prompt=10,output=10,start=10min")
        assert np.allclose(later.arrival_s, base.arrival_s + 600.0) and later.source.endswith("start=600s,seed=0")
        assert SyntheticSpec(rate=5, requests=50, prompt=10, output=10, start_s=600.0) == parse_synthetic(later.source)


class TestReplayOfBenchmarkRuns:
    """The columns of data/vllm_v1/dev_runs.csv are enough to rebuild each run's traffic."""

    RUN: ClassVar[dict[str, float]] = {  # 20260217-155451-llama-2-7b-tp1-codegen
        "system_prompts": 11,
        "users_per_system_prompt": 4,
        "system_prompt_len": 100,
        "question_len": 466,
        "output_tokens": 247,
        "prompt_tokens_mean": 591.6,
        "prompt_tokens_min": 580.0,
        "prompt_tokens_max": 604.0,
    }

    def test_one_stage_sends_rate_times_duration_requests_with_the_servers_prompt_lengths(self) -> None:
        w = shared_prefix_workload(rate=5, duration_s=600, **self.RUN)
        assert len(w) == 3000 and w.rate == pytest.approx(5, rel=0.05)
        assert (int(w.prompt_tokens.min()), int(w.prompt_tokens.max())) == (580, 604)
        assert w.mean_prompt == pytest.approx(591.6, abs=0.1) and set(w.output_tokens.tolist()) == {247}
        assert w.source == parse_synthetic(w.source).expression() and "template=25.6," in w.source
        again = synthetic_workload(w.source)
        assert np.array_equal(again.arrival_s, w.arrival_s) and again.segments == w.segments

    def test_two_stages_join_into_one_trace_on_one_data_set(self) -> None:
        s0 = shared_prefix_workload(rate=5, duration_s=600, **self.RUN)
        s1 = shared_prefix_workload(rate=10, duration_s=600, start_s=600, seed=1, data_seed=0, **self.RUN)
        both = concat_workloads([s0, s1])
        assert len(both) == 9000 and both.arrival_s[2999] < 600 < both.arrival_s[3000]
        assert both.segments is not None and both.segments[3000:3044] == both.segments[:44]  # the cycle restarts
        assert both.prefix_summary()["distinct_segments"] == 55


# ============================================================================ the older expressions


# sha256 (first 16 hex digits) of arrivals, prompts, outputs, name, source and ids, from before shared prefixes
FINGERPRINTS = {
    "synthetic:rate=20rps,requests=20000,prompt=1024,output=256,seed=0": "7cec964088d46d7f",
    "synthetic:rate=5rps,duration=10min,prompt=2048,output=128,arrival=gamma,cv=3": "763226b99791cc86",
    "synthetic:rate=1rps,requests=500,lengths=empirical:lmsys,output_max=512": "0b7418fc3372a41d",
    "synthetic:rate=1,requests=50,prompt=300,output=20,lengths=fixed": "4db5e5cff4d41207",
    "synthetic:rate=1,requests=2000,prompt=100,output=8,lengths=uniform,seed=7": "f5d6aa246b475399",
    "synthetic:rate=50rps,duration=2min,prompt=100,output=10,arrival=constant": "f3eb9ad0e2aff433",
    "synthetic:rate=1,requests=2000,prompt=1000,output=100,sigma=1,prompt_max=1500": "5bb646098baabd9e",
}


@pytest.mark.parametrize("expression", sorted(FINGERPRINTS))
def test_older_synthetic_expressions_generate_the_same_bytes(expression: str) -> None:
    w = load_workload(expression, specs_dir=SPECS)
    digest = hashlib.sha256()
    for array in (w.arrival_s, w.prompt_tokens, w.output_tokens):
        digest.update(array.tobytes())
    digest.update(repr((w.name, w.source, w.request_ids)).encode())
    assert digest.hexdigest()[:16] == FINGERPRINTS[expression]
    assert w.segments is None and w.output_ids is None
