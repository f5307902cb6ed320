"""Fit the engine's host overhead and the attention efficiency on the measured dev runs.

The operator and collective models are fitted on kernel profiles (benchmarks/fit_calibration.py). What those
profiles cannot show is the serving engine itself: the host time of an iteration (scheduling, input
preparation, the TP broadcast, sampling glue), the extra host work of an iteration that carries a prefill,
the CPU launch cost of eager (non-CUDA-graph) kernels, and the efficiency of the attention kernels. These few
engine- and hardware-level constants are fitted here, by simulating the dev experiments
(data/apex/fidelity_dev.csv) and minimising the squared log error of mean TTFT and TPOT. They are shared by
every plan of the engine: nothing is fitted per experiment.

    python benchmarks/fit_serving.py            # fit, print, write specs/calibration/serving.yaml
    python benchmarks/fit_serving.py --dry-run  # fit and print only
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares

import apex_opt.perf.step as step
from apex_opt.catalog import load_calibration, specs_dir
from apex_opt.experiments import read_experiments, read_measured

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import DATA, predict  # noqa: E402

ENGINE = "vllm-0.6"
GPU = "h100-sxm-80gb"
#: (section, key, lower, upper): the fitted parameters
PARAMS = [
    ("engines", "step_s", 1e-4, 2e-2),
    ("engines", "per_seq_s", 0.0, 5e-4),
    ("engines", "prefill_step_s", 0.0, 2e-2),
    ("engines", "eager_launch_s", 1e-6, 3e-5),
    ("attention", "prefill_efficiency", 0.2, 0.8),
]


def with_params(base: dict, x: np.ndarray) -> dict:
    cal = copy.deepcopy(base)
    for (section, key, _, _), value in zip(PARAMS, x):
        if section == "engines":
            cal["engines"][ENGINE][key] = float(value)
        else:
            cal["attention"].setdefault(GPU, {})[key] = float(value)
    return cal


def current(base: dict) -> np.ndarray:
    out = []
    for section, key, _, _ in PARAMS:
        if section == "engines":
            out.append(base["engines"][ENGINE][key])
        else:
            out.append({**base["attention"]["default"], **base["attention"].get(GPU, {})}[key])
    return np.array(out, dtype=float)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    base = load_calibration("serving")
    measured = read_measured(DATA / "fidelity_dev.csv")
    experiments = [e for e in read_experiments(DATA / "experiments.csv") if e.name in measured]
    original = step.serving_calibration

    def residuals(x: np.ndarray) -> np.ndarray:
        cal = with_params(base, x)
        step.serving_calibration = lambda: cal  # type: ignore[assignment]
        try:
            res = []
            for exp in experiments:
                p = predict(exp)
                m = measured[exp.name]
                res += [math.log(p["ttft_ms_mean"] / m["ttft_ms_mean"]), math.log(p["tpot_ms"] / m["tpot_ms"])]
            return np.array(res)
        finally:
            step.serving_calibration = original  # type: ignore[assignment]

    x0 = current(base)
    lo = np.array([p[2] for p in PARAMS])
    hi = np.array([p[3] for p in PARAMS])
    t0 = time.perf_counter()
    fit = least_squares(residuals, np.clip(x0, lo, hi), bounds=(lo, hi), x_scale=np.maximum(np.abs(x0), 1e-6),
                        diff_step=0.05, max_nfev=60)
    wall = time.perf_counter() - t0
    print(f"fitted on {len(experiments)} dev runs in {wall:.0f} s ({fit.nfev} evaluations)")
    for (section, key, _, _), a, b in zip(PARAMS, x0, fit.x):
        print(f"  {section}.{key}: {a:.4g} -> {b:.4g}")
    for exp, (r_ttft, r_tpot) in zip(experiments, fit.fun.reshape(-1, 2)):
        print(f"  {exp.name:36s} TTFT {math.expm1(r_ttft) * 100:+.1f}%  TPOT {math.expm1(r_tpot) * 100:+.1f}%")
    if not args.dry_run:
        path = specs_dir() / "calibration" / "serving.yaml"
        text = path.read_text()
        fitted = np.array([float(f"{v:.4g}") for v in fit.x])
        cal = with_params(base, fitted)
        for (section, key, _, _), value in zip(PARAMS, fitted):
            text = _set(text, section, ENGINE if section == "engines" else GPU, key, value)
        path.write_text(text)
        assert yaml.safe_load(text) == cal, "serving.yaml was not updated as intended"
        print(f"wrote {path}")
    return 0


def _set(text: str, section: str, entry: str, key: str, value: float) -> str:
    """Replace ``key: ...`` inside ``section.entry`` of the YAML text, keeping its comments."""
    lines = text.splitlines()
    in_section = in_entry = False
    for i, line in enumerate(lines):
        if not line.startswith(" ") and line.strip():
            in_section = line.split(":")[0] == section
            in_entry = False
            continue
        if in_section and line.startswith("  ") and not line.startswith("    ") and line.strip():
            in_entry = line.strip().split(":")[0] == entry
            if in_entry and "{" in line:  # flow mapping: rewrite it as a block
                inner = yaml.safe_load(line.split(":", 1)[1])
                inner[key] = float(f"{value:.4g}")
                lines[i] = f"  {entry}:"
                lines[i + 1:i + 1] = [f"    {k}: {v}" for k, v in inner.items()]
                return "\n".join(lines) + "\n"
            continue
        if in_section and in_entry and line.strip().startswith(f"{key}:"):
            comment = line.split("#", 1)[1] if "#" in line else ""
            indent = line[: len(line) - len(line.lstrip())]
            lines[i] = f"{indent}{key}: {value:.4g}" + (f"  # {comment.strip()}" if comment else "")
            return "\n".join(lines) + "\n"
        if in_section and in_entry and (not line.startswith("    ")) and line.strip():
            in_entry = False
    # key not present in the entry: append it at the end of the entry
    out = []
    in_section = in_entry = False
    added = False
    for line in lines:
        if in_entry and not added and (not line.startswith("    ") or not line.strip()):
            out.append(f"    {key}: {value:.4g}")
            added = True
            in_entry = False
        if not line.startswith(" ") and line.strip():
            in_section = line.split(":")[0] == section
        elif in_section and line.startswith("  ") and not line.startswith("    "):
            in_entry = line.strip().split(":")[0] == entry
        out.append(line)
    if not added:
        out.append(f"    {key}: {value:.4g}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
