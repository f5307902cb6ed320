"""What the attention sinks of gpt-oss cost: one engine iteration with and without them (run by hand; the figures
are quoted in docs/memory.md, "Attention sinks (gpt-oss)").

    python benchmarks/attention_sinks.py

Each line: the extra time of one iteration on one H100 (vLLM V1, tp 1) and its share of the iteration, and the
extra FLOPs (2 per query token, head and layer).
"""

from __future__ import annotations

from apex_opt.catalog import get_cluster, get_engine, get_gpu, get_model
from apex_opt.perf.replica import build_replica
from apex_opt.perf.step import BatchShape
from apex_opt.schema.plan import Plan
from apex_opt.topology import Topology

DECODE = BatchShape(num_tokens=64, num_seqs=64, num_decodes=64, decode_ctx_sum=64 * 2048, prefill_pairs=0.0,
                    has_prefill=False, max_ctx=2048)
PREFILL = BatchShape(num_tokens=2048, num_seqs=1, num_decodes=0, decode_ctx_sum=0, prefill_pairs=2048 * 2049 / 2,
                     has_prefill=True, max_ctx=2048)


def main() -> None:
    gpu, engine = get_gpu("h100-sxm-80gb"), get_engine("vllm-v1")
    topology = Topology.build(get_cluster("h100x8"))
    for name in ("gpt-oss-20b", "gpt-oss-120b"):
        model = get_model(name)
        with_sinks, without = (build_replica(m, gpu, Plan(gpu=gpu.name, tp=1), engine, topology=topology).cost.stages[0]
                               for m in (model, model.model_copy(update={"attention_sinks": False})))
        for label, batch in (("decode, 64 sequences at 2k context", DECODE), ("prefill of one 2k prompt", PREFILL)):
            a, b = with_sinks.iteration_time(batch), without.iteration_time(batch)
            extra = with_sinks.flops(batch) - without.flops(batch)
            print(f"{name}, {label}: +{(a - b) * 1e9:.1f} ns ({(a - b) / b:.1e} of {b * 1e3:.2f} ms), "
                  f"+{extra:.3g} FLOPs")


if __name__ == "__main__":
    main()
