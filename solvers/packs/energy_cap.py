"""Cap the energy per output token, first on the cost model's estimate, then on the simulated result.

The cap is ``ENERGY_CAP_J`` joules per output token (environment variable ``APEX_OPT_ENERGY_CAP_J`` overrides it).

    APEX_OPT_ENERGY_CAP_J=8 apex-opt solve --constraints solvers/packs/energy_cap.py
"""

import os

import apex_opt as ax

ENERGY_CAP_J = float(os.environ.get("APEX_OPT_ENERGY_CAP_J", "10"))


@ax.constraint("energy-cap")
def predicted_energy(v, s):
    """predicted energy per output token under the cap"""
    return v.energy_per_token <= int(ENERGY_CAP_J * 1e6)  # v.energy_per_token is in microjoules


@ax.constraint("energy-cap.simulated", on="simulated")
def simulated_energy(r, s):
    """simulated energy per output token under the cap"""
    return r.energy_per_output_token_j <= ENERGY_CAP_J
