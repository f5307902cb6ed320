"""Calibrate on one load stage of a vLLM V1 server and predict its other stage (data/vllm_v1/dev_runs.csv).

Each server of the development runs was measured at two request rates (stage 0 and stage 1, on the same running
server). For every server and both directions this writes each stage as the README's measurement CSV, runs
``apex-opt calibrate`` on one stage (through the library, with the same code path as the command) and compares
both stages before and after: the stage it was fitted on (in sample) and the other (out of sample). The errors are
those of the V1 rows' own metrics: mean TTFT, TPOT and mean end-to-end latency, measured at the client.

    python benchmarks/calibrate_cross_stage.py                   # every server, both directions
    python benchmarks/calibrate_cross_stage.py --markdown out.md # also write the table
    python benchmarks/calibrate_cross_stage.py --keep DIR        # keep the CSVs and profiles in DIR

The built-in constants were fitted on all six rows, so "before" is already close; what this shows is how much
a single stage pins down (the profile's 'left at default' list), and that a fit on one stage does not make the
other stage worse. Each stage is replayed on its own, so its prefix cache starts cold (fidelity.py replays the
two stages back to back).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import V1_DATA, read_v1_runs, stage_expression

from apex_opt.calibrate import calibrate
from apex_opt.validate import validate

COMPARED = ("ttft_ms_mean", "tpot_ms", "e2e_ms_mean")
CSV_METRICS = ("ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "tpot_ms", "e2e_ms_mean", "e2e_ms_p50",
               "e2e_ms_p90", "e2e_ms_p99", "throughput_req_s")
PLAN_COLUMNS = ("gpu", "tp", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization")


def write_stage_csv(row: dict[str, str], path: Path) -> Path:
    """One development row as the README's measurement CSV (the plan, the workload from its columns, metrics)."""
    fields = ["name", "model", "engine", *PLAN_COLUMNS, "prefix_caching", "measured_at", "workload", *CSV_METRICS]
    out = {"name": row["run"], "model": str(V1_DATA.parent / "apex" / row["model_config"]), "engine": "vllm-v1",
           "prefix_caching": "on", "measured_at": "client", "workload": stage_expression(row, 0.0)}
    out.update({k: row[k] for k in PLAN_COLUMNS})
    out.update({k: row[k] for k in CSV_METRICS})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerow(out)
    return path


def mean_abs_error(path: Path, profile: Path | None) -> tuple[float, dict[str, float]]:
    """Mean |relative error| over the compared metrics of the run in ``path``, and each error."""
    report = validate([path], tolerance=1.0, calibration=profile)
    errors = {c.metric: c.error for c in report.runs[0].comparisons if c.metric in COMPARED}
    return sum(abs(e) for e in errors.values()) / len(errors), errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="write the CSVs and profiles here")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="apex-opt-cross-stage-"))
    folder.mkdir(parents=True, exist_ok=True)
    header = ("| server | fitted on | fitted constants | left at default | in sample: before -> after | "
              "other stage: before -> after |")
    lines = [header, "|---|---|---|---|---|---|"]
    for server, rows in read_v1_runs().items():
        files = [write_stage_csv(row, folder / f"{row['run']}.csv") for row in rows]
        for fit_on, other in ((0, 1), (1, 0)):
            t0 = time.perf_counter()
            report = calibrate([files[fit_on]], name=f"{server}-stage{fit_on}")
            profile = folder / f"{server}-stage{fit_on}.yaml"
            report.profile.write(profile)
            before_in, _ = mean_abs_error(files[fit_on], None)
            after_in, _ = mean_abs_error(files[fit_on], profile)
            before_out, _ = mean_abs_error(files[other], None)
            after_out, errors_out = mean_abs_error(files[other], profile)
            fitted = ", ".join(f"{f.key.split('.', 2)[-1]} {f.before:.3g}->{f.after:.3g}" for f in report.fitted)
            left = ", ".join(c.key.split(".", 2)[-1] for c in report.left)
            wall = time.perf_counter() - t0
            print(f"{server} fitted on stage {fit_on} ({wall:.0f} s, {report.simulations} simulations): {fitted}")
            print(f"  in sample {before_in * 100:.1f}% -> {after_in * 100:.1f}%; stage {other} "
                  f"{before_out * 100:.1f}% -> {after_out * 100:.1f}% (" +
                  ", ".join(f"{k} {v * 100:+.1f}%" for k, v in errors_out.items() if math.isfinite(v)) + ")")
            lines.append(f"| {server} | stage {fit_on} | {fitted or 'none'} | {left} | {before_in * 100:.1f}% -> "
                         f"{after_in * 100:.1f}% | {before_out * 100:.1f}% -> {after_out * 100:.1f}% |")
        # both stages at once: two loads separate the constants that grow with load from those that do not
        t0 = time.perf_counter()
        report = calibrate(files, name=f"{server}-both")
        profile = folder / f"{server}-both.yaml"
        report.profile.write(profile)
        before = [mean_abs_error(f, None)[0] for f in files]
        after = [mean_abs_error(f, profile)[0] for f in files]
        fitted = ", ".join(f"{f.key.split('.', 2)[-1]} {f.before:.3g}->{f.after:.3g}" for f in report.fitted)
        left = ", ".join(c.key.split(".", 2)[-1] for c in report.left)
        print(f"{server} fitted on both stages ({time.perf_counter() - t0:.0f} s): {fitted}; stage 0 "
              f"{before[0] * 100:.1f}% -> {after[0] * 100:.1f}%, stage 1 {before[1] * 100:.1f}% -> "
              f"{after[1] * 100:.1f}%")
        lines.append(f"| {server} | both | {fitted or 'none'} | {left} | stage 0 {before[0] * 100:.1f}% -> "
                     f"{after[0] * 100:.1f}%, stage 1 {before[1] * 100:.1f}% -> {after[1] * 100:.1f}% | (none) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    print(f"CSVs and profiles in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
