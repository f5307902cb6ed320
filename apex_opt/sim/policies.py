"""Scheduler policies: one class per engine family, one hook ``schedule(state) -> Iteration | None``.

Each policy reproduces its engine's rules (``docs/engines.md``):

* :class:`VllmV0Policy` - vLLM 0.6.0 V0, default scheduler (1.2) and chunked prefill (1.3), BlockSpaceManagerV1
  (whole-prompt reservation at admission with the watermark, >= 1 free block per running group to append),
  recompute preemption of the last running group (1.4).
* :class:`VllmV1Policy` - vLLM V1: one token budget for running then waiting requests, incremental block
  allocation, recompute preemption of the last running request, no admission in a step that preempted (3).
* :class:`SglangPolicy` - SGLang 0.4: separate prefill (extend) and decode batches, at most one chunked request,
  ``PrefillAdder`` admission with the ``new_token_ratio`` reservation and ``batch_is_full``, retraction (4).

``schedule`` mutates the engine state (admissions, preemptions, KV allocation for the step) and returns what
the iteration computes. ``decode_stable`` and ``arrival_blocked`` tell the engine when a pure decode step will
repeat unchanged (used by the closed-form skip-ahead); ``kv_reserve`` is the number of free blocks that must
remain after a decode step's allocations for the next step to need no preemption check.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ..errors import SpecError
from ..plugins import load_plugins
from .config import SchedulerConfig
from .state import Request

if TYPE_CHECKING:
    from .engine_state import EngineState


class Iteration:
    """What one engine iteration runs: prefill chunks ``(request, tokens, computed_before)`` and whether the
    decode pool takes a step; ``preempted`` lists the requests preempted while scheduling it."""

    __slots__ = ("chunks", "preempted", "run_pool")

    def __init__(self, chunks: list[tuple[Request, int, int]], run_pool: bool, preempted: list[Request]) -> None:
        self.chunks = chunks
        self.run_pool = run_pool
        self.preempted = preempted


class SchedulerPolicy(ABC):
    """Base class: engine-specific length rules, admission and preemption."""

    family: ClassVar[str] = ""
    kv_reserve: ClassVar[int] = 0

    def __init__(self, cfg: SchedulerConfig, num_blocks: int) -> None:
        self.cfg = cfg
        self.num_blocks = num_blocks

    # --------------------------------------------------------------------------------------- the hook
    @abstractmethod
    def schedule(self, st: EngineState) -> Iteration | None:
        """Choose the next iteration (``None``: nothing to run)."""

    def decode_stable(self, st: EngineState) -> bool:
        """After a pure decode step was scheduled: will the decision repeat while nothing arrives or finishes
        and free blocks only decrease?"""
        return True

    def arrival_blocked(self, st: EngineState) -> bool:
        """Whether a newly arriving request certainly could not be admitted before the decode batch changes."""
        return bool(st.waiting)

    def on_idle(self, st: EngineState) -> None:
        """Called when the engine has nothing to run."""

    def on_removed(self, st: EngineState) -> None:
        """Called when a member leaves the decode batch (finish or preemption)."""

    def on_prefill_finished(self, st: EngineState) -> None:
        """Called when a request finishes with its prefill (it never joins the decode batch)."""

    def on_kv_released(self, st: EngineState) -> None:
        """Called when blocks held outside the batch come back (disaggregation: a KV transfer finished)."""

    def hit_sensitive(self, st: EngineState) -> bool:
        """Whether evicting cached blocks during a run of decode steps could change the next admission (the
        skip-ahead then stops before any eviction)."""
        return False

    # --------------------------------------------------------------------------------------- length rules
    def prompt_limit(self) -> int:
        return self.cfg.max_model_len

    def output_limit(self, prompt: int) -> int:
        """Most tokens a request with this prompt can generate before the engine stops it at the context limit."""
        return max(1, self.cfg.max_model_len - prompt)

    def kv_token_limit(self) -> int:
        """Most tokens one sequence can ever hold in this engine's KV cache."""
        return self.num_blocks * self.cfg.block_size


#: scheduling policies by name: an engine spec names one (``scheduler.policy``, default: its family's)
POLICIES: dict[str, type[SchedulerPolicy]] = {}

P = TypeVar("P", bound=type[SchedulerPolicy])


def register_policy(name: str) -> Callable[[P], P]:
    """Class decorator: make a :class:`SchedulerPolicy` subclass available as ``name`` (a duplicate raises).

    >>> @register_policy("doc-example")
    ... class Example(VllmV1Policy):
    ...     pass
    >>> POLICIES.pop("doc-example").__name__
    'Example'
    """

    def add(cls: P) -> P:
        if name in POLICIES and POLICIES[name] is not cls:
            raise SpecError(f"a scheduling policy named '{name}' is already registered "
                            f"({POLICIES[name].__qualname__}); choose another name")
        POLICIES[name] = cls
        return cls

    return add


# ============================================================================================ vLLM 0.6 V0
@register_policy("vllm-v0")
class VllmV0Policy(SchedulerPolicy):
    """vLLM 0.6.0 V0 (``vllm/core/scheduler.py``)."""

    family = "vllm-v0"
    kv_reserve = 1  # can_append_slots: >= 1 free block per running group, checked before each group appends

    def __init__(self, cfg: SchedulerConfig, num_blocks: int) -> None:
        super().__init__(cfg, num_blocks)
        self.watermark_blocks = int(cfg.watermark * num_blocks)
        self.limit = cfg.max_model_len if cfg.chunked_prefill else min(cfg.max_model_len,
                                                                       cfg.max_num_batched_tokens)

    def prompt_limit(self) -> int:
        return self.limit

    def output_limit(self, prompt: int) -> int:
        # StopChecker: FINISHED_LENGTH_CAPPED once seq.get_len() > max_model_len
        return max(1, self.cfg.max_model_len + 1 - prompt)

    def kv_token_limit(self) -> int:
        # admission needs the watermark; a lone sequence must keep one block free to append (else it preempts
        # itself and is recomputed forever): keep prompt + output within all blocks but max(watermark, 1)
        return (self.num_blocks - max(self.watermark_blocks, 1)) * self.cfg.block_size

    def schedule(self, st: EngineState) -> Iteration | None:
        if self.cfg.chunked_prefill:
            return self._chunked(st)
        return self._default(st)

    # ------------------------------------------------------------------------- running groups (1 token each)
    def _run_groups(self, st: EngineState, budget: int, chunking: bool) -> tuple[bool, list, list, int]:
        """``_schedule_running``: decodes then partial prefills, preempting the last group when no block is
        free. Returns (pool ran, prefill chunks, preempted, remaining budget)."""
        pool, kv = st.pool, st.kv
        B = len(pool)
        partials = list(st.prefilling.values())
        chunks: list[tuple[Request, int, int]] = []
        preempted: list[Request] = []
        if kv.free - pool.allocs_next() >= 1:  # fast path: every group finds a free block
            if B:
                kv.take(pool.allocs_next())
                pool.E += 1
                budget -= B
            for p in partials:
                c = min(p.target - p.computed, budget) if chunking else p.target - p.computed
                if c <= 0:
                    break
                chunks.append((p, c, p.computed))
                budget -= c
            return B > 0, chunks, preempted, budget
        # slow path: walk the running queue in order; vLLM rebuilds it as decodes first, then prefill chunks
        members = pool.members
        queue = deque([r for r in st.running.values() if r.idx in members] + partials)
        free = kv.free
        ran = 0
        while queue:
            r = queue[0]
            member = r.idx in pool.members
            if member:
                tok = 1
            else:
                tok = min(r.target - r.computed, budget) if chunking else r.target - r.computed
            if tok <= 0 or (chunking and budget <= 0):
                break
            queue.popleft()
            gone = False
            while free < 1:
                victim = queue.pop() if queue else r
                free += st.preempt(victim)
                preempted.append(victim)
                if victim is r:
                    gone = True
                    break
            if gone:
                break
            if member:
                if pool.crosses(r):
                    free -= 1
                ran += 1
            else:
                chunks.append((r, tok, r.computed))
            budget -= tok
        if ran:
            kv.take(pool.allocs_next())
            pool.E += 1
        if kv.free != free:  # pragma: no cover - internal consistency
            raise RuntimeError(f"vllm-v0 walk: free blocks {kv.free} != {free}")
        return ran > 0, chunks, preempted, budget

    def _admit(self, st: EngineState, chunking: bool, budget: int, seqs: int,
               chunks: list[tuple[Request, int, int]]) -> int:
        """``_schedule_prefills``: FCFS, stop at the first request that does not fit (head-of-line)."""
        kv, cfg, waiting = st.kv, self.cfg, st.waiting
        tokens = 0
        while waiting:
            req = waiting[0]
            length = req.target
            c = min(length, budget) if chunking else length
            if c > self.limit:
                waiting.popleft()
                st.ignore(req, "prompt_limit")
                continue
            need = kv.blocks_for(length)
            if self.num_blocks - need < self.watermark_blocks:  # AllocStatus.NEVER
                waiting.popleft()
                st.ignore(req, "kv")
                continue
            if kv.free - need < self.watermark_blocks:  # AllocStatus.LATER
                break
            # prefix caching: can_allocate still counts every block of the prompt (evictable cached blocks are
            # free); the cached tokens are not computed again
            hit = st.cache.lookup(req)[0] if st.cache is not None else 0
            if hit:
                c = min(length - hit, budget) if chunking else length - hit
            if c <= 0 or (not chunking and tokens + c > budget) or seqs + 1 > cfg.max_num_seqs:
                break
            waiting.popleft()
            st.admit(req, need, hit)
            kv.take(need - req.shared)
            chunks.append((req, c, hit))
            seqs += 1
            tokens += c
            if chunking:
                budget -= c
        return budget

    def _chunked(self, st: EngineState) -> Iteration | None:
        budget = self.cfg.max_num_batched_tokens
        ran, chunks, preempted, budget = self._run_groups(st, budget, chunking=True)
        seqs = len(st.pool) + len(chunks) if ran else len(chunks)
        if budget > 0:
            self._admit(st, True, budget, seqs, chunks)
        st.waiting.extendleft(preempted)
        if not ran and not chunks:
            return None
        return Iteration(chunks, ran, preempted)

    def _default(self, st: EngineState) -> Iteration | None:
        chunks: list[tuple[Request, int, int]] = []
        if st.waiting:
            self._admit(st, False, self.cfg.max_num_batched_tokens, len(st.running), chunks)
        if chunks:
            return Iteration(chunks, False, [])
        if not len(st.pool):
            return None
        ran, _, preempted, _ = self._run_groups(st, self.cfg.max_num_batched_tokens, chunking=False)
        st.waiting.extendleft(preempted)
        if not ran:
            return None
        return Iteration([], True, preempted)


# ============================================================================================ vLLM V1
@register_policy("vllm-v1")
class VllmV1Policy(SchedulerPolicy):
    """vLLM V1 (``vllm/v1/core/sched/scheduler.py``, ``v1/core/kv_cache_manager.py``), with automatic prefix
    caching when the engine has a prefix cache."""

    family = "vllm-v1"
    kv_reserve = 0

    def output_limit(self, prompt: int) -> int:
        # check_stop: FINISHED_LENGTH_CAPPED once num_tokens >= max_model_len
        return max(1, self.cfg.max_model_len - prompt)

    def schedule(self, st: EngineState) -> Iteration | None:
        cfg, pool, kv, cache = self.cfg, st.pool, st.kv, st.cache
        budget = cfg.max_num_batched_tokens
        chunks: list[tuple[Request, int, int]] = []
        preempted: list[Request] = []
        B = len(pool)
        ran = False
        if kv.free - pool.allocs_next() >= 0:
            if B:
                kv.take(pool.allocs_next())
                pool.E += 1
                budget -= B
                ran = True
            for p in list(st.prefilling.values()):
                if budget <= 0:
                    break
                c = min(p.target - p.computed, budget)
                need = kv.blocks_for(p.computed + c) - p.blocks
                if need > kv.free:  # the partial request is the last running one: it preempts itself
                    st.preempt(p)
                    st.waiting.appendleft(p)
                    preempted.append(p)
                    break
                kv.take(need)
                p.blocks += need
                chunks.append((p, c, p.computed))
                budget -= c
                if cache is not None:  # allocate_slots caches the full blocks it schedules
                    cache.advance(p, p.computed + c)
        else:
            ran, budget = self._walk(st, budget, chunks, preempted)
        if not preempted:
            waiting, running = st.waiting, st.running
            while waiting and budget > 0:
                if len(running) >= cfg.max_num_seqs:
                    break
                req = waiting[0]
                if cache is None:
                    hit = extra = 0
                else:  # get_computed_blocks; its evictable blocks stop being free once locked
                    hit, extra = cache.lookup(req)
                c = min(req.target - hit, budget)
                need = kv.blocks_for(hit + c) - hit // kv.block_size
                if need + extra > kv.free:
                    break
                waiting.popleft()
                st.admit(req, need + hit // kv.block_size, hit)
                kv.take(need)
                chunks.append((req, c, hit))
                budget -= c
                if cache is not None:
                    cache.advance(req, hit + c)
        if not ran and not chunks:
            return None
        return Iteration(chunks, ran, preempted)

    def _walk(self, st: EngineState, budget: int, chunks: list, preempted: list) -> tuple[bool, int]:
        pool, kv = st.pool, st.kv
        order = list(st.running.values())
        free = kv.free
        i = 0
        ran = 0
        pending_chunks: list[tuple[Request, int, int]] = []
        while i < len(order) and budget > 0:
            r = order[i]
            member = r.idx in pool.members
            if member:
                tok = 1
                need = 1 if pool.crosses(r) else 0
            else:
                tok = min(r.target - r.computed, budget)
                need = kv.blocks_for(r.computed + tok) - r.blocks
            ok = True
            while need > free:
                victim = order.pop()
                free += st.preempt(victim)
                st.waiting.appendleft(victim)
                preempted.append(victim)
                if victim is r:
                    ok = False
                    break
            if not ok:
                break
            free -= need
            budget -= tok
            if member:
                ran += 1
            else:
                pending_chunks.append((r, tok, r.computed))
            i += 1
        if ran:
            kv.take(pool.allocs_next())
            pool.E += 1
        for r, tok, before in pending_chunks:
            need = kv.blocks_for(before + tok) - r.blocks
            kv.take(need)
            r.blocks += need
            chunks.append((r, tok, before))
        if kv.free != free:  # pragma: no cover - internal consistency
            raise RuntimeError(f"vllm-v1 walk: free blocks {kv.free} != {free}")
        if st.cache is not None:
            for r, tok, before in pending_chunks:
                st.cache.advance(r, before + tok)
        return ran > 0, budget

    def hit_sensitive(self, st: EngineState) -> bool:
        # the waiting head counts the evictable blocks of its hit against the free ones: evicting them while
        # a budget-limited chunk waits could let it in
        return bool(st.waiting) and st.cache is not None and st.cache.lookup(st.waiting[0])[1] > 0


# ============================================================================================ SGLang 0.4
@register_policy("sglang")
class SglangPolicy(SchedulerPolicy):
    """SGLang 0.4.x (``managers/scheduler.py``, ``schedule_policy.py``, ``schedule_batch.py``), FCFS policy, radix
    cache (``mem_cache/radix_cache.py``) when the engine has a prefix cache (evictable tokens count as free)."""

    family = "sglang"
    kv_reserve = 0

    def __init__(self, cfg: SchedulerConfig, num_blocks: int) -> None:
        super().__init__(cfg, num_blocks)
        c = cfg.schedule_conservativeness
        self.init_ratio = min(cfg.new_token_ratio_init * c, 1.0)
        self.min_ratio = min(cfg.new_token_ratio_min * c, 1.0)
        self.decay = (self.init_ratio - self.min_ratio) / cfg.new_token_ratio_decay_steps
        self.ratio_base = self.init_ratio
        self.ratio_e = 0  # pool step at which ratio_base was set; the ratio decays once per decode step after it
        self.batch_is_full = False
        self.pending_shrink = False
        self.chunk_pending = False  # the last iteration was an extend batch that left a chunked request
        self.max_running = cfg.sglang_max_running(num_blocks)
        self.chunk_size = cfg.chunked_prefill_size if cfg.chunked_prefill and cfg.chunked_prefill_size > 0 else None
        self.clip = cfg.clip_max_new_tokens
        tokens = num_blocks * cfg.block_size
        self.max_req_len = min(cfg.max_model_len - 1, tokens - 1)

    def prompt_limit(self) -> int:
        return self.cfg.max_model_len - 1  # tokenizer_manager: input >= context_len is an error

    def output_limit(self, prompt: int) -> int:
        return self.max_req_len - prompt - 1  # max_new_tokens = min(requested, max_req_len - input - 1)

    def kv_token_limit(self) -> int:
        return self.max_req_len

    def ratio(self, st: EngineState) -> float:
        return max(self.ratio_base - (st.pool.E - self.ratio_e) * self.decay, self.min_ratio)

    def on_idle(self, st: EngineState) -> None:
        self.ratio_base = self.init_ratio
        self.ratio_e = st.pool.E

    def on_removed(self, st: EngineState) -> None:
        self.pending_shrink = True

    def on_prefill_finished(self, st: EngineState) -> None:
        # the finished request is filtered out when the extend batch is merged into the running batch: a
        # shrunken merge frees the batch (without it an engine with no decodes would never admit again)
        self.batch_is_full = False

    def on_kv_released(self, st: EngineState) -> None:
        # memory came back: the prefill adder may fit the waiting requests again
        self.batch_is_full = False

    def decode_stable(self, st: EngineState) -> bool:
        return (not st.waiting or self.batch_is_full) and not st.prefilling and not self.pending_shrink

    def arrival_blocked(self, st: EngineState) -> bool:
        return self.batch_is_full and not st.prefilling

    def schedule(self, st: EngineState) -> Iteration | None:
        if self.chunk_pending:  # get_next_batch_to_run: the chunked request is moved out of the last extend batch
            self.batch_is_full = False
            self.chunk_pending = False
        it = self._prefill(st)
        if it is not None:
            return it
        # update_running_batch: finished requests were filtered out -> the batch shrank
        if self.pending_shrink:
            self.batch_is_full = False
            self.pending_shrink = False
            if not len(st.pool):
                return self._prefill(st)
        if not len(st.pool):
            return None
        return self._decode(st)

    # ------------------------------------------------------------------------------------------- prefill
    def _prefill(self, st: EngineState) -> Iteration | None:
        chunked = next(iter(st.prefilling.values()), None)
        if (self.batch_is_full or not st.waiting) and chunked is None:
            return None
        pool, kv = st.pool, st.kv
        running_bs = len(pool)
        if running_bs >= self.max_running:
            self.batch_is_full = True
            return None
        ratio = self.ratio(st)
        clip = self.clip
        rem_total = kv.free - pool.reserve_sum() * ratio
        rem_input = self.cfg.max_prefill_tokens
        rem_chunk = self.chunk_size
        cur_rem = kv.free
        can_run: list[tuple[Request, int, int]] = []
        if chunked is not None:  # add_being_chunked_req
            ext = chunked.target - chunked.computed
            truncated = rem_chunk is not None and ext > rem_chunk
            if rem_chunk is not None:
                ext = min(ext, rem_chunk)
            can_run.append((chunked, ext, chunked.computed))
            rem_total -= ext + (0 if truncated else min(max(chunked.cap - chunked.gen, 0), clip))
            rem_input -= ext
            cur_rem -= ext
            if rem_chunk is not None:
                rem_chunk -= ext
        admitted = 0
        cache = st.cache
        hit = extra = 0
        for req in st.waiting:
            if running_bs + len(can_run) >= self.max_running:
                self.batch_is_full = True
                break
            if cache is not None:  # init_next_round_input: match_prefix (at least one token left to compute)
                hit, extra = cache.lookup(req)
            ext = req.target - hit
            # newer 0.4.x: min(max(max_new_tokens - len(output_ids), 0), CLIP); the older min(max_new_tokens, CLIP)
            # double-counts the outputs of a retracted request and can block it forever
            total = ext + min(max(req.cap - req.gen, 0), clip)
            if total >= rem_total:
                self.batch_is_full = True  # NO_TOKEN
                break
            if extra and total > rem_total - extra:
                self.batch_is_full = True  # NO_TOKEN with the matched nodes locked (_lock_node)
                break
            if ext > rem_input and can_run:
                break  # OTHER
            if rem_chunk is None or ext <= rem_chunk:
                c = ext
                rem_total -= total
            else:
                if rem_chunk == 0:
                    break  # OTHER
                c = rem_chunk
                rem_total -= c
            can_run.append((req, c, hit))
            admitted += 1
            st.admit(req, hit, hit)  # inc_lock_ref(last_node)
            rem_total -= extra
            rem_input -= c
            cur_rem -= c
            if rem_chunk is not None:
                rem_chunk -= c  # a chunked request leaves rem_chunk == 0: budget_state stops the loop
            if rem_total <= 0 or cur_rem <= 0:
                self.batch_is_full = True  # budget_state NO_TOKEN
                break
            if rem_input <= 0 or (rem_chunk is not None and rem_chunk <= 0):
                break  # budget_state OTHER
        if not can_run:
            return None
        for _ in range(admitted):
            st.waiting.popleft()
        for req, c, before in can_run:
            kv.take(c)
            req.blocks += c
            if before + c < req.target:
                self.chunk_pending = True
        return Iteration(can_run, False, [])

    # ------------------------------------------------------------------------------------------- decode
    def _decode(self, st: EngineState) -> Iteration:
        pool, kv = st.pool, st.kv
        preempted: list[Request] = []
        if kv.free < pool.allocs_next():  # check_decode_mem failed: retract_decode
            e_done = pool.E_done
            members = list(pool.members.values())
            members.sort(key=lambda m: (m.g0 + e_done - m.ejoin, -m.prompt), reverse=True)
            steps = self.cfg.retract_decode_steps
            first = True
            while kv.free < len(members) * steps or first:
                if len(members) == 1:
                    break
                first = False
                victim = members.pop()
                st.preempt(victim)
                preempted.append(victim)
            decoded = sum(m.g0 + e_done - m.ejoin for m in members)
            max_new = sum(m.cap for m in members)
            self.ratio_base = min(1.0, (decoded + steps * len(members)) / max_new)
            self.ratio_e = pool.E + 1
            st.waiting.extend(preempted)
            self.batch_is_full = False
            if kv.free < pool.allocs_next():
                from ..errors import SimulationError

                raise SimulationError("SGLang retraction left one request without KV space: the KV pool is too "
                                      "small for a single request; raise num_kv_blocks or lower max_model_len")
        kv.take(pool.allocs_next())
        pool.E += 1
        return Iteration([], True, preempted)


def make_policy(cfg: SchedulerConfig, num_blocks: int) -> SchedulerPolicy:
    """The scheduling policy ``cfg`` names (``cfg.policy``, else the one registered under ``cfg.family``).

    Raises
    ------
    SpecError
        When no policy is registered under that name; the message lists the registered ones.
    """
    name = cfg.policy or cfg.family
    if name not in POLICIES:
        load_plugins()  # installed plug-ins may register it (apex_opt.plugins)
    if name not in POLICIES:
        raise SpecError(f"scheduling policy '{name}' is not registered; use one of {', '.join(sorted(POLICIES))}, "
                        "or register a SchedulerPolicy subclass with @register_policy('<name>')")
    return POLICIES[name](cfg, num_blocks)


__all__ = ["POLICIES", "Iteration", "SchedulerPolicy", "SglangPolicy", "VllmV0Policy", "VllmV1Policy",
           "make_policy", "register_policy"]
