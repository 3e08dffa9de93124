"""The scheduler: one engine step is admit + one forward + sample + retire (continuous batching).

Waiting requests take free slots (a finished sequence frees its slot at once and the next waiting request
takes it in the next step); the rest of their prompts is encoded in the same forward that decodes one
token for every active sequence. A request with only its last prompt token to encode (in a search,
nearly all: see `_admit`) is a decode row from the start, so most steps are pure decode steps. Requests
that share a prompt in one admission copy the KV to their siblings (and with more than one token to
encode, encode it once). Finished sequences retire into the prefix cache.
"""
from __future__ import annotations

import threading

import torch

from rl.models.engine.forward import Forward
from rl.models.engine.prefix_cache import PrefixCache, _Node
from rl.models.engine.requests import _Prefill, _Seq, finish
from rl.models.engine.sampling import sample_tokens
from rl.models.engine.slots import Slots


class Scheduler:
    """Admission, one decode step and retirement over the slots; the engine's driving caller calls `step`.

    Args:
        slots: the KV buffer and slot state.
        forward: computes the logits of a step.
        cache: the prefix cache admitted requests copy from and retired ones go into.
        counters: the engine's counters (generated and prefilled tokens, steps, max batch, shared prompts).
        lock: the engine's lock, held while requests are finished (their callers wake).
    """

    def __init__(self, slots: Slots, forward: Forward, cache: PrefixCache, counters: dict[str, int],
                 lock: threading.Lock):
        self.slots, self.forward, self.cache, self.counters, self._lock = slots, forward, cache, counters, lock

    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still counts versions and tracks views)
    def step(self, admitted: list[_Seq]) -> None:
        """Seat admitted requests in free slots, decode one token for every active sequence, retire the finished."""
        sl = self.slots
        pre = self._admit(admitted) if admitted else None
        n_dec = len(sl.rows)   # rows that feed one token: the active ones and admitted ones with one to encode
        dec_logits, pre_logits = self.forward.compute(n_dec, pre)
        parts = []
        if n_dec:
            sl.lens[:n_dec] += 1
            parts.append(dec_logits)
        if pre is not None:
            first = self._settle(pre, pre_logits)
            if first is not None:
                parts.append(first)
        rows = sl.rows
        n = len(rows)
        if not n:
            return
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)                    # [n, V]
        if sl.mode is None:   # recomputed only when the rows change
            greedy = [s.temperature <= 0 for s in rows]
            sl.mode = any(greedy), all(greedy), any(s.top_k > 0 or s.top_p < 1 for s in rows)
        u = None
        if not sl.mode[1]:
            u = torch.tensor([0.0 if s.uniforms is None else s.uniforms[len(s.tokens)] for s in rows],
                             device=sl.device)                                            # [n]
        tok, lp = sample_tokens(logits.float(), sl.temp[:n], sl.top_p[:n], sl.top_k[:n], u, mode=sl.mode)
        sl.next[:n] = tok
        done = []
        for i, (s, t, logp) in enumerate(zip(rows, tok.tolist(), lp.tolist())):
            s.tokens.append(t)
            s.logprob += logp   # Python floats: float64 sums of the float32 log-probs
            if t in s.stop or len(s.tokens) >= s.max_new:
                done.append(i)
        self.counters["steps"] += 1
        self.counters["generated_tokens"] += n
        self.counters["max_batch"] = max(self.counters["max_batch"], n)
        if done:
            self._retire(done)

    def _admit(self, seqs: list[_Seq]) -> _Prefill | None:
        """Give admitted seqs slots and the KV of their longest cached prefix; say what is left to encode.

        A generating prompt cached up to its last token (the usual case in a search: a child's prompt is
        its parent's retired sequence, cached, plus the stop token sampled last) has one token to encode,
        which is what a decode step does: its seqs join the active rows at once (siblings copy the KV) and
        decode that token with them, no prefill. The other generating prompts become prefill rows, one per
        distinct prompt (its siblings copy the leader's KV after the prefill), and so do scoring seqs.
        Slots: the active rows, the direct rows, prefill leaders, their siblings; scoring seqs borrow slots
        past those.

        Returns:
            The prefill rows, or None when there are none.
        """
        gen = [s for s in seqs if s.score_from == 0]
        scores = [s for s in seqs if s.score_from > 0]
        groups: dict[tuple[int, ...], list[_Seq]] = {}
        for s in gen:
            groups.setdefault(tuple(s.prompt), []).append(s)
        self.slots.ensure_capacity(max([len(s.prompt) + s.max_new for s in gen] + [len(s.prompt) for s in scores]))
        direct, prefill = [], []
        for group in groups.values():
            p = group[0].prompt
            path, m = self.cache.match(p, len(p) - 1)   # the last token is always encoded: its logits are needed
            (direct if m == len(p) - 1 else prefill).append((group, path, m))
        slot = len(self.slots.rows)
        seated = []
        for group, path, m in direct:
            self._copy_path(slice(slot, slot + len(group)), path)   # into the slots of the whole group at once
            self.counters["shared_prompt_copies"] += len(group) - 1
            seated += group
            slot += len(group)
        if seated:
            self._seat(seated, [len(s.prompt) - 1 for s in seated], [s.prompt[-1] for s in seated])
            self.counters["prefill_tokens"] += len(seated)
        if not prefill and not scores:
            return None

        leaders = {tuple(group[0].prompt): group[0] for group, _, _ in prefill}
        members = [s for group, _, _ in prefill for s in group[1:]]
        rows = list(leaders.values()) + scores          # rows of the prefill
        order = list(leaders.values()) + members        # slot order of the generating seqs
        slots = {id(s): slot + k for k, s in enumerate(order + scores)}
        lens, first = [], []
        for group, path, m in prefill:
            at = slots[id(group[0])]
            self._copy_path(slice(at, at + 1), path)
            lens.append(m)
            first.append(len(group[0].prompt) - 1 - m)
        for s in scores:
            need = s.score_from - 1                     # first position whose logits we need
            path, m = self.cache.match(s.prompt, need)  # so at least that one is recomputed
            at = slots[id(s)]
            self._copy_path(slice(at, at + 1), path)
            lens.append(m)
            first.append(need - m)
        return _Prefill(rows=rows, slots=[slots[id(s)] for s in rows], lens=lens, first=first, leaders=leaders,
                        members=members, order=order, scores=scores, slot_of=slots)

    def _copy_path(self, slots: slice, path: list[tuple[_Node, int]]) -> None:
        """Copy the KV of a matched prefix-cache path into positions 0.. of each of a run of slots."""
        off = 0
        for node, used in path:
            self.slots.kv[:, :, slots, :, off:off + used] = node.kv[:, :, None, :, :used]   # [L, 2, 1, Hkv, used, D]
            off += used

    def _seat(self, seqs: list[_Seq], lens: list[int], nexts: list[int]) -> None:
        """Append seqs to the active rows (the next slots) with their KV lengths and next input tokens."""
        n0 = len(self.slots.rows)
        sl = slice(n0, n0 + len(seqs))
        self.slots.ints[:, sl] = torch.tensor([lens, nexts, [s.top_k for s in seqs]])
        self.slots.floats[:, sl] = torch.tensor([[s.temperature for s in seqs], [s.top_p for s in seqs]])
        self.slots.rows.extend(seqs)
        self.slots.mode = None

    def _settle(self, pre: _Prefill, logits: torch.Tensor) -> torch.Tensor | None:
        """After the prefill: cache the prompts, answer scoring seqs, seat the generating ones.

        Args:
            logits: [P, V] at the needed positions of the prefill rows, row after row.
        Returns:
            [g, V] first-token logits of the generating seqs (the last g active slots), or None.
        """
        spans, at = [], 0
        for r, s in enumerate(pre.rows):
            count = len(s.prompt) - pre.lens[r] - pre.first[r]
            spans.append((at, count))
            at += count
            self._cache_prefix(pre.slots[r], s.prompt)
        self.counters["prefill_tokens"] += sum(len(s.prompt) - m for s, m in zip(pre.rows, pre.lens))
        n_lead = len(pre.leaders)
        for r, s in enumerate(pre.scores):
            a, count = spans[n_lead + r]
            s.logits = logits[a:a + count].float().cpu()
        if pre.scores:
            with self._lock:
                finish(pre.scores)
        order = pre.order
        if not order:
            return None
        # siblings with the same prompt share the leader's KV and first-token logits
        if pre.members:
            dst = torch.tensor([pre.slot_of[id(s)] for s in pre.members], device=self.slots.device)
            frm = torch.tensor([pre.slot_of[id(pre.leaders[tuple(s.prompt)])] for s in pre.members],
                               device=self.slots.device)
            t = max(len(s.prompt) for s in pre.members)
            self.slots.kv[:, :, dst, :, :t] = self.slots.kv[:, :, frm, :, :t]
            self.counters["shared_prompt_copies"] += len(pre.members)
        leader_row = {key: r for r, key in enumerate(pre.leaders)}
        first_logits = logits[torch.tensor([spans[leader_row[tuple(s.prompt)]][0] for s in order],
                                           device=self.slots.device)]                               # [g, V]
        self._seat(order, [len(s.prompt) for s in order], [0] * len(order))   # next input: set once sampled
        return first_logits

    def _retire(self, done: list[int]) -> None:
        """Finish the sequences in rows `done` (ascending), cache their KV, and refill the holes from the end."""
        rows = self.slots.rows
        for i in done:
            s = rows[i]
            s.finished = s.tokens[-1] in s.stop
            # KV exists for the prompt and every generated token but the last (sampled, never fed back)
            self._cache_prefix(i, s.prompt + s.tokens[:-1])
        n = len(rows)
        keep = n - len(done)
        gone = set(done)
        holes = [i for i in done if i < keep]
        movers = [j for j in range(keep, n) if j not in gone]
        with self._lock:
            finish([rows[i] for i in done])
            for h, m in zip(holes, movers):
                rows[h] = rows[m]
            del rows[keep:]
        self.slots.mode = None
        if holes:
            h = torch.tensor(holes, device=self.slots.device)
            m = torch.tensor(movers, device=self.slots.device)
            self.slots.ints[:, h] = self.slots.ints[:, m]
            self.slots.floats[:, h] = self.slots.floats[:, m]
            tm = max(len(rows[i].prompt) + len(rows[i].tokens) - 1 for i in holes)   # KV length of the movers
            self.slots.kv[:, :, h, :, :tm] = self.slots.kv[:, :, m, :, :tm]

    def _cache_prefix(self, slot: int, ids: list[int]) -> None:
        self.cache.insert(ids, lambda a, b: self.slots.kv[:, :, slot, :, a:b].clone())
