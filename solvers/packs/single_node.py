"""Keep every replica inside one node: its tensor- and pipeline-parallel GPUs share one NVLink domain.

    apex-opt solve --constraints solvers/packs/single_node.py
"""

import apex_opt as ax


@ax.constraint("single-node")
def replica_in_one_node(v, s):
    """each replica (tp x pp GPUs) fits in one node"""
    return v.product("tp", "pp") <= s.cluster.gpus_per_node
