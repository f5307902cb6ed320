"""Fit the serving engines' host constants and the attention efficiencies on the measured development runs.

The operator and collective models are fitted on kernel profiles (benchmarks/fit_calibration.py). What those
profiles cannot show is the serving engine itself: the host time of an iteration (scheduling, input preparation,
the TP broadcast, sampling glue), the CPU cost of launching a kernel in an eager pass (an ATen/CUDA op, a Triton
kernel), the API-server path a benchmark client sees, and the efficiency of the attention kernels. These engine-
and hardware-level constants are fitted here, one engine at a time, by simulating that engine's development runs
and minimising the squared log error of the measured means, with the library's fitter
(:func:`apex_opt.calibration.fit.fit_constants`, the one ``apex-opt calibrate`` uses; here without a prior, since
this fit is the prior). They are shared by every plan of the engine: nothing is fitted per experiment.

    python benchmarks/fit_serving.py                    # fit every group, print, write serving.yaml
    python benchmarks/fit_serving.py --group vllm-v1    # one group (vllm-v1-client: the client path alone)
    python benchmarks/fit_serving.py --dry-run          # fit and print only

Groups (docs/calibration.md section 5):
    vllm-0.6    vLLM 0.6 host step, per-sequence and prefill-step costs, the eager (ATen) launch cost and the H100
                FlashAttention-2 prefill efficiency, on the five vLLM 0.6 rows of data/apex/fidelity_dev.csv
                (mean TTFT and TPOT, engine side)
    sglang-0.4  the Triton launch cost, on the SGLang row (mean end-to-end latency: its TTFT and TPOT are
                back-computed estimates, data/apex/README.md)
    vllm-v1     V1 host step and per-sequence costs and the H100 FlashAttention-3 decode bandwidth efficiency
                (at most 0.95 of HBM peak) on the mean TPOT of the six rows of data/vllm_v1/dev_runs.csv; then
                the client path (API server, output lag) on their mean TTFT (a linear minimax fit)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from experiments import read_experiments, read_measured
from scipy.optimize import linprog

from apex_opt.calibration import CalibrationProfile, active
from apex_opt.calibration.fit import Unknown, fit_constants
from apex_opt.catalog import load_calibration, specs_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import DATA, predict, predict_v1, read_v1_runs

#: a parameter: (key path in serving.yaml, lower, upper)
Param = tuple[tuple[str, ...], float, float]
H100 = "h100-sxm-80gb"


def _apex_rows(engine: str, keys: tuple[str, ...]) -> Callable[[], list[tuple[float, float]]]:
    measured = read_measured(DATA / "fidelity_dev.csv")
    rows = [e for e in read_experiments(DATA / "experiments.csv") if e.name in measured and e.engine == engine]

    def pairs() -> list[tuple[float, float]]:
        out = []
        for exp in rows:
            p = predict(exp)
            out += [(p[k], measured[exp.name][k]) for k in keys]
        return out
    return pairs


def _v1_tpot() -> list[tuple[float, float]]:
    out = []
    for rows in read_v1_runs().values():
        predicted = predict_v1(rows)
        out += [(predicted[row["run"]]["tpot_ms"], float(row["tpot_ms"])) for row in rows]
    return out


def fit_client(base: dict) -> dict:
    """The vLLM V1 client path (``request_s``, ``output_lag_steps``) from the TTFT rows, given the engine fit.

    A client's TTFT is the engine's plus ``request_s + per_prompt_token_s * prompt + response_s + output_lag_steps
    * TPOT`` (apex_opt/sim/client.py): linear in the two constants, so one engine-side replay of each server and a
    linear programme give them exactly: the two constants that minimise the largest relative TTFT error (few rows,
    a per-row acceptance bound), with no negative delay.
    """
    cal = copy.deepcopy(base)
    entry = cal["engines"]["vllm-v1"]["client"]
    with active(_profile(base, cal)):
        rows_a, rhs = [], []
        for rows in read_v1_runs().values():
            engine_side = predict_v1(rows, measured_at="engine")
            for row in rows:
                p = engine_side[row["run"]]
                prompt = float(row["prompt_tokens_mean"])
                fixed = entry["per_prompt_token_s"] * prompt * 1e3 + entry["response_s"] * 1e3
                measured = float(row["ttft_ms_mean"])
                rows_a.append([1e3 / measured, p["tpot_engine_ms"] / measured, 1e3 * p["open_streams"] / measured])
                rhs.append(1.0 - (p["ttft_ms_mean"] + fixed) / measured)
    # minimise the largest relative error (the rows are few and the acceptance bound is per row): variables
    # (request_s, output_lag_steps, per_stream_s, t), minimise t subject to |A x - b| <= t, no negative delay
    keys = ("request_s", "output_lag_steps", "per_stream_s")
    a, b = np.array(rows_a), np.array(rhs)
    ones = np.ones((len(b), 1))
    solved = linprog(c=[0.0, 0.0, 0.0, 1.0], A_ub=np.vstack([np.hstack([a, -ones]), np.hstack([-a, -ones])]),
                     b_ub=np.concatenate([b, -b]), bounds=[(0.0, 0.05), (0.0, 4.0), (0.0, 1e-3), (0.0, None)])
    x = solved.x[:3]
    residuals = a @ x - b
    print(f"[vllm-v1 client] minimax fit on {len(rhs)} TTFT means: " +
          ", ".join(f"{k} {entry.get(k, 0.0):.4g} -> {v:.4g}" for k, v in zip(keys, x, strict=True)))
    print("  residuals: " + ", ".join(f"{r * 100:+.1f}%" for r in residuals))
    for k, v in zip(keys, x, strict=True):
        entry[k] = float(f"{v:.4g}")
    return cal


GROUPS: dict[str, tuple[list[Param], Callable[[], list[tuple[float, float]]]]] = {
    "vllm-0.6": ([(("engines", "vllm-0.6", "step_s"), 1e-4, 2e-2),
                  (("engines", "vllm-0.6", "per_seq_s"), 0.0, 5e-4),
                  (("engines", "vllm-0.6", "prefill_step_s"), 0.0, 2e-2),
                  (("engines", "vllm-0.6", "eager_launch_s"), 1e-6, 3e-5),
                  (("attention", H100, "prefill_efficiency"), 0.2, 0.8)],
                 _apex_rows("vllm-0.6", ("ttft_ms_mean", "tpot_ms"))),
    "sglang-0.4": ([(("engines", "sglang-0.4", "triton_launch_s"), 1e-6, 5e-4)],
                   _apex_rows("sglang-0.4", ("e2e_s_mean",))),
    "vllm-v1": ([(("engines", "vllm-v1", "step_s"), 1e-4, 1e-2),
                 (("engines", "vllm-v1", "per_seq_s"), 0.0, 2e-4),
                 (("attention", H100, "backends", "flash-attn-3", "decode_bw_efficiency"), 0.4, 0.95)],
                _v1_tpot),
}
#: constants that follow a fitted one (the eager launch cost is a PyTorch/CUDA property shared by the engines)
FOLLOW = {("engines", "vllm-0.6", "eager_launch_s"): [("engines", e, "eager_launch_s")
                                                       for e in ("vllm-v1", "sglang-0.4")]}


def _get(cal: dict, path: tuple[str, ...]) -> float:
    node = cal
    for key in path[:-1]:
        node = node.get(key, {})
    if path[0] == "attention" and path[-1] not in node:
        return float(cal["attention"]["default"].get(path[-1], 0.5))
    return float(node.get(path[-1], 0.0))


def _set(cal: dict, path: tuple[str, ...], value: float) -> None:
    node = cal
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = float(value)
    for follower in FOLLOW.get(path, []):
        _set(cal, follower, value)


def _profile(base: dict, cal: dict) -> CalibrationProfile:
    """``cal`` as a profile over the built-in constants: every number of ``cal`` that differs from the file's."""
    builtin = load_calibration("serving")
    constants: dict[str, float] = {}

    def walk(node: dict, ref: dict, path: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, ref.get(key, {}) if isinstance(ref, dict) else {}, path + (key,))
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and \
                    (not isinstance(ref, dict) or ref.get(key) != value):
                constants[".".join(path + (key,))] = float(value)
    walk(cal, builtin, ())
    return CalibrationProfile(name="fit_serving", constants=constants)


def fit_group(name: str, base: dict) -> tuple[dict, float]:
    params, pairs = GROUPS[name]

    def calibrated(values: dict[str, float]) -> dict:
        cal = copy.deepcopy(base)
        for path, _, _ in params:
            _set(cal, path, values[".".join(path)])
        return cal

    def residuals(values: dict[str, float]) -> np.ndarray:
        with active(_profile(base, calibrated(values))):
            return np.array([math.log(p / m) for p, m in pairs()])

    unknowns = []
    for path, lo, hi in params:
        x0 = min(max(_get(base, path), lo), hi)
        unknowns.append(Unknown(".".join(path), x0, lo, hi, typical=max(abs(x0), (hi - lo) * 0.01)))
    t0 = time.perf_counter()
    fit = fit_constants(unknowns, residuals, max_iterations=20)
    wall = time.perf_counter() - t0
    r0, r1 = fit.residuals_before, fit.residuals_after
    print(f"[{name}] fitted on {len(r1)} measured means in {wall:.0f} s ({fit.evaluations} evaluations); "
          f"rms log error {np.sqrt(np.mean(r0 ** 2)):.3f} -> {np.sqrt(np.mean(r1 ** 2)):.3f}")
    values = {u.key: u.start for u in unknowns} | fit.values
    for u in unknowns:
        print(f"  {u.key}: {u.start:.4g} -> {values[u.key]:.4g}" +
              (f" (left: {fit.left[u.key]})" if u.key in fit.left else ""))
    print("  residuals: " + ", ".join(f"{math.expm1(r) * 100:+.1f}%" for r in r1))
    return calibrated({k: float(f"{v:.4g}") for k, v in values.items()}), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--group", choices=[*GROUPS, "vllm-v1-client"], action="append")
    args = parser.parse_args(argv)
    cal = load_calibration("serving")
    for name in args.group or [*GROUPS, "vllm-v1-client"]:
        cal = fit_client(cal) if name == "vllm-v1-client" else fit_group(name, cal)[0]
    if not args.dry_run:
        path = specs_dir() / "calibration" / "serving.yaml"
        path.write_text(_dump(path.read_text(), cal))
        assert yaml.safe_load(path.read_text()) == cal, "serving.yaml was not updated as intended"
        print(f"wrote {path}")
    return 0


def _dump(text: str, cal: dict) -> str:
    """``text`` (serving.yaml) with every number that changed replaced in place, comments kept; keys that are new
    are written as a YAML block after the header comment."""
    old = yaml.safe_load(text)
    missing: list[tuple[str, ...]] = []

    def walk(new: dict, prev: dict, path: tuple[str, ...]) -> None:
        for key, value in new.items():
            if isinstance(value, dict):
                walk(value, prev.get(key, {}) if isinstance(prev, dict) else {}, path + (key,))
            elif not isinstance(prev, dict) or key not in prev:
                missing.append(path + (key,))
            elif prev[key] != value:
                nonlocal text
                text = _replace(text, path + (key,), value)
    walk(cal, old, ())
    if missing:
        raise SystemExit("serving.yaml lacks keys " + ", ".join(".".join(p) for p in missing) +
                         ": add them (with a comment saying what they mean) before fitting")
    return text


def _replace(text: str, path: tuple[str, ...], value: float) -> str:
    """Replace the scalar at ``path`` in YAML ``text`` (block or one-line flow mappings), keeping comments."""
    lines = text.splitlines()
    depth, i = 0, 0
    indent = -1
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        ind = len(line) - len(line.lstrip())
        if ind <= indent:
            raise SystemExit(f"serving.yaml: {'.'.join(path)} not found")
        key = stripped.split(":", 1)[0]
        if ind > indent and key == path[depth]:
            rest = stripped.split(":", 1)[1]
            if depth == len(path) - 1:
                comment = "  #" + line.split("#", 1)[1] if "#" in line else ""
                lines[i] = f"{' ' * ind}{key}: {value:.4g}{comment}"
                return "\n".join(lines) + "\n"
            if rest.strip().startswith("{"):  # a flow mapping on one line
                inner = yaml.safe_load(rest.split("#", 1)[0])
                sub = path[depth + 1:]
                node = inner
                for k in sub[:-1]:
                    node = node[k]
                node[sub[-1]] = float(f"{value:.4g}")
                comment = "  #" + line.split("#", 1)[1] if "#" in line else ""
                flow = yaml.safe_dump(inner, default_flow_style=True, width=1000).strip()
                lines[i] = f"{' ' * ind}{key}: {flow}{comment}"
                return "\n".join(lines) + "\n"
            depth += 1
            indent = ind
    raise SystemExit(f"serving.yaml: {'.'.join(path)} not found")


if __name__ == "__main__":
    sys.exit(main())
