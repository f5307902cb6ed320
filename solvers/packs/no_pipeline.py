"""No pipeline parallelism (pp = 1): lower latency per token, no pipeline bubbles, simpler deployment.

    apex-opt solve --constraints solvers/packs/no_pipeline.py
"""

import apex_opt as ax


@ax.constraint("no-pipeline")
def no_pipeline(v, s):
    """one pipeline stage per replica"""
    return v.pp == 1
