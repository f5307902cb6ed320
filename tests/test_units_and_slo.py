"""Units are parsed in one place; the SLO grammar of --slo."""

import pytest

from apex_opt.errors import SpecError
from apex_opt.schema.slo import parse_slo
from apex_opt.units import (
    parse_bandwidth,
    parse_bytes,
    parse_flops,
    parse_fraction,
    parse_power,
    parse_rate,
    parse_time,
)


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (parse_time, "200ms", 0.2),
        (parse_time, "0.2s", 0.2),
        (parse_time, "50us", 50e-6),
        (parse_bytes, "80GiB", 80 * 2**30),
        (parse_bytes, "80GB", 80e9),
        (parse_bandwidth, "3.35TB/s", 3.35e12),
        (parse_bandwidth, "400Gb/s", 50e9),
        (parse_bandwidth, "400Gbps", 50e9),
        (parse_flops, "989TFLOPS", 989e12),
        (parse_flops, "1.98PFLOPS", 1.98e15),
        (parse_rate, "0.5rps", 0.5),
        (parse_rate, "30rpm", 0.5),
        (parse_fraction, "90%", 0.9),
        (parse_fraction, "0.9", 0.9),
        (parse_power, "700W", 700.0),
        (parse_power, "1.2kW", 1200.0),
    ],
)
def test_unit_strings_parse_to_si(parse, text, expected):
    assert parse(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_time, "200 parsecs", "'200 parsecs' is not a duration (unknown unit 'parsecs'); write e.g. 200ms"),
        (parse_bytes, "eighty GiB", "'eighty GiB' is not a size; write e.g. 80GiB or 80GB"),
        (parse_fraction, "150%", "'150%' is not a fraction between 0 and 1; write e.g. 90% or 0.9"),
        (parse_rate, "5 per hour", "'5 per hour' is not a rate"),
    ],
)
def test_bad_unit_strings_name_the_value_and_a_fix(parse, text, message):
    with pytest.raises(SpecError) as err:
        parse(text)
    assert str(err.value).startswith(message)


def test_slo_defaults_to_means_and_90_percent_attainment():
    slo = parse_slo("ttft=200ms,tpot=50ms")
    assert (slo.ttft, slo.ttft_stat, slo.tpot, slo.tpot_stat, slo.attainment) == (0.2, "mean", 0.05, "mean", 0.9)


def test_slo_percentiles_and_attainment():
    slo = parse_slo("ttft.p99=1s,tpot.p90=60ms,attainment=95%")
    assert (slo.ttft, slo.ttft_stat, slo.tpot, slo.tpot_stat, slo.attainment) == (1.0, "p99", 0.06, "p90", 0.95)
    assert slo.describe() == "ttft.p99<=1s, tpot.p90<=60.0ms, attainment>=95%"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft=-200ms", "--slo value 'ttft=-200ms' must be positive; write e.g. ttft=200ms"),
        ("tpot=50", "--slo value 'tpot=50' has no unit; write e.g. tpot=50ms"),
        ("latency=1s", "--slo metric 'latency' is unknown; use ttft, tpot, e2e or attainment"),
        ("ttft.p42=1s", "--slo statistic 'ttft.p42' is unknown; use one of mean, p50, p90, p95, p99"),
        ("ttft", "--slo item 'ttft' is not of the form metric[.stat]=value"),
        ("attainment=120%", "'120%' is not a fraction between 0 and 1"),
    ],
)
def test_bad_slos_are_refused_with_the_item_and_a_fix(text, message):
    with pytest.raises(SpecError) as err:
        parse_slo(text)
    assert err.value.render("cli").startswith(message)  # the CLI's spelling; Python's says slo, not --slo
    assert str(err.value).startswith(message.replace("--slo", "slo"))
