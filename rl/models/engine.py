"""A batched step-generation engine for small causal LMs: continuous batching and prefix reuse.

The backend interface
---------------------
Search code (rl/search) sees a policy only through these methods, so any backend with them can
replace another: the plain `Policy` (one `model.generate` per call), this `Engine`, or a vLLM backend.

    sample_steps(prefixes, n, *, temperature, max_new_tokens, seed) -> list[list[StepSample]]
        generate: n next steps per prefix; a step ends at a newline or EOS.
    complete(prefixes, *, max_new_tokens, temperature, seed) -> list[StepSample]
        generate: one completion to EOS per prefix (greedy at temperature 0).
    score(prefixes, continuations) -> np.ndarray
        score sequences: [B] summed log-probabilities of each continuation given its prefix.
    load_weights(version, weights) / weights() / version
        load weights (a dict of numpy arrays) tagged with a version; every cached state is dropped.

StepSample.logprob is the sum of the generated tokens' log-probabilities under the distribution they
were sampled from (temperature-scaled, top-k/top-p filtered and renormalised; the raw softmax when
greedy), as in `Policy`.

How this engine works
---------------------
* Slots. The KV cache is one preallocated buffer `kv` [L, 2, S, Hkv, T, D] with S = max_batch_size
  slots. A sequence owns one slot; its token at position p sits at column p of its slot, so positions
  are plain indices and no row is ever padded on the left. Active sequences occupy slots 0..n-1
  (kept compact), so the decode step reads views, not copies.
* One step = admit + decode + sample. Waiting requests take free slots (continuous batching: a finished
  sequence frees its slot at once and the next request takes it); their prompts are prefilled in one
  right-padded forward (queries past a row's length are masked and never written to the cache), then
  all other active sequences decode one token in one forward; every row is sampled at once.
  Attention uses an explicit mask [B, 1, Q, T] (key j visible to the query at position p iff j <= p)
  and explicit position ids, so each row computes exactly what a full recompute of that row would.
* Prefix reuse. `PrefixCache` is a radix tree over token ids whose nodes hold the KV of their tokens,
  bounded by total cached tokens with LRU eviction of leaves. A new request copies the KV of its
  longest cached prefix into its slot and only encodes the rest (at least its last token, whose logits
  it needs). Prompts are inserted after prefill, finished sequences (prompt + step) when they retire,
  so the children and rollouts of a search node start from the node's KV. Requests that share a
  prompt in one admission are prefilled once and the KV copied to their siblings.
* Sampling. Each sequence draws its uniforms up front from its own torch.Generator, seeded from
  (call seed, prefix index, sample index); tokens are sampled by inverse CDF. The samples therefore do
  not depend on what else is in the batch: same seed, same samples.
* Threads. The engine is thread-safe and batches across callers: searches running in several threads
  share one decode batch. The first caller with unfinished work drives the decode loop until its own
  requests are done, then hands the loop to a waiting caller.
* Forward. For Llama-family models (llama, mistral without a sliding window, qwen2, qwen3) a lean
  forward calls the model's own modules (norms, MLPs, rotary embedding) but does the cache writes and
  attention itself, avoiding most of the per-call overhead of the HF forward; `fast_path=False` (or any
  other architecture) runs the HF forward with the slot cache passed as `past_key_values`.
"""
from __future__ import annotations

import heapq
import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import Cache

from rl.models.device import pick_device
from rl.models.policy import StepSample
from rl.models.weights import Weights, load_numpy, to_numpy

FAST_PATH_MODELS = ("llama", "mistral", "qwen2", "qwen3")  # decoder layers with q/k/v/o projections and RoPE


class GenerationBackend(Protocol):
    """What searches and rollout workers call; see the module docstring."""
    version: int

    def sample_steps(self, prefixes: list[str], n: int, *, temperature: float = 1.0, max_new_tokens: int = 24,
                     seed: int | None = None) -> list[list[StepSample]]: ...

    def complete(self, prefixes: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int | None = None) -> list[StepSample]: ...

    def score(self, prefixes: list[str], continuations: list[str]) -> np.ndarray: ...

    def load_weights(self, version: int, weights: Weights) -> None: ...

    def weights(self) -> Weights: ...


# ---- sampling ----------------------------------------------------------------------------------
def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                  uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row by inverse-CDF sampling, and its log-probability.

    Args:
        logits: [B, V] raw next-token logits.
        temperature: [B]; rows at <= 0 are greedy (argmax, log-prob under the raw softmax).
        top_p: [B] nucleus mass (1 = off): keep the most likely tokens until their mass reaches top_p.
        top_k: [B] long, keep the k most likely tokens (0 = off).
        uniform: [B] in [0, 1), one draw per row.
    Returns:
        tokens [B] long and log-probs [B] under the (scaled, filtered, renormalised) distribution.
    """
    greedy = temperature <= 0
    if bool(greedy.all()):
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]   # [B, V]
    if bool(((top_k > 0) | (top_p < 1)).any()):
        ranked, order = scaled.sort(-1, descending=True)                                        # [B, V]
        rank = torch.arange(ranked.shape[1], device=logits.device)
        drop = (top_k[:, None] > 0) & (rank[None] >= top_k[:, None])
        probs = ranked.softmax(-1)
        mass_before = probs.cumsum(-1) - probs                                                  # [B, V]
        drop |= (top_p[:, None] < 1) & (mass_before >= top_p[:, None])
        drop[:, 0] = False                                                                      # never drop the argmax
        scaled = torch.full_like(scaled, float("-inf")).scatter(1, order, ranked.masked_fill(drop, float("-inf")))
    logp = scaled.log_softmax(-1)                                                               # [B, V]
    cdf = logp.exp().cumsum(-1)                                                                 # [B, V]
    # right=True: the first token whose cdf exceeds u * total, so zero-probability tokens are never drawn
    sampled = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).squeeze(1)
    sampled = sampled.clamp_(max=logits.shape[1] - 1)
    tokens = torch.where(greedy, logits.argmax(-1), sampled)
    lp_sampled = logp.gather(1, tokens[:, None]).squeeze(1)
    if bool(greedy.any()):
        lp_greedy = logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
        return tokens, torch.where(greedy, lp_greedy, lp_sampled)
    return tokens, lp_sampled


def sequence_seed(seed: int, prefix_index: int, sample_index: int) -> int:
    """A 63-bit seed for one sequence from the call's seed and its place in the call."""
    return int(np.random.SeedSequence([seed, prefix_index, sample_index]).generate_state(1, np.uint64)[0] >> 1)


# ---- prefix cache ------------------------------------------------------------------------------
class _Node:
    __slots__ = ("tokens", "kv", "children", "parent", "tick", "alive")

    def __init__(self, tokens: tuple[int, ...], kv: torch.Tensor | None, parent: "_Node | None"):
        self.tokens = tokens       # the edge from the parent: token ids
        self.kv = kv               # [L, 2, Hkv, len(tokens), D]; None at the root
        self.children: dict[int, _Node] = {}   # first token of the child's edge -> child
        self.parent = parent
        self.tick = 0              # last use, for LRU
        self.alive = True


def _common_prefix(edge: tuple[int, ...], ids: list[int], start: int, stop: int) -> int:
    """Number of leading tokens that edge shares with ids[start:stop]."""
    n = min(len(edge), stop - start)
    i = 0
    while i < n and edge[i] == ids[start + i]:
        i += 1
    return i


class PrefixCache:
    """Radix tree from token-id prefixes to their KV, bounded by total cached tokens (LRU over leaves).

    A node's KV covers only its own edge; the KV of a prefix is the concatenation along its path, and
    any prefix of a cached sequence (not only whole entries) can be reused. Only leaves are evicted, so
    a cached path never has a hole.
    """

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.root = _Node((), None, None)
        self.tokens = 0                      # tokens held by the tree
        self.nodes = 0
        self._tick = itertools.count(1)
        self._order = itertools.count()      # heap tie-breaker
        self._heap: list[tuple[int, int, _Node]] = []   # (tick, order, leaf); stale entries skipped on pop
        self.lookups = self.hits = self.reused_tokens = self.evictions = self.evicted_tokens = 0

    def match(self, ids: list[int], limit: int) -> tuple[list[tuple[_Node, int]], int]:
        """Longest cached prefix of ids[:limit]: the path as (node, tokens used) pairs and its length."""
        self.lookups += 1
        if self.max_tokens <= 0:
            return [], 0
        tick = next(self._tick)
        node, i, path = self.root, 0, []
        while i < limit:
            child = node.children.get(ids[i])
            if child is None:
                break
            n = _common_prefix(child.tokens, ids, i, limit)
            path.append((child, n))
            self._touch(child, tick)
            i += n
            if n < len(child.tokens):
                break
            node = child
        if i:
            self.hits += 1
            self.reused_tokens += i
        return path, i

    def insert(self, ids: list[int], kv_of: Callable[[int, int], torch.Tensor]) -> None:
        """Cache ids; kv_of(a, b) returns a copy of the KV of ids[a:b] ([L, 2, Hkv, b - a, D])."""
        if self.max_tokens <= 0 or not ids:
            return
        tick = next(self._tick)
        node, i = self.root, 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                leaf = _Node(tuple(ids[i:]), kv_of(i, len(ids)), node)
                node.children[ids[i]] = leaf
                self.tokens += len(leaf.tokens)
                self.nodes += 1
                self._touch(leaf, tick)
                break
            n = _common_prefix(child.tokens, ids, i, len(ids))
            if n < len(child.tokens):
                child = self._split(child, n)
            self._touch(child, tick)
            node, i = child, i + n
        self._evict()

    def clear(self) -> None:
        self.root = _Node((), None, None)
        self.tokens = self.nodes = 0
        self._heap.clear()

    def _split(self, node: _Node, n: int) -> _Node:
        """Cut node's edge after n tokens; return the new upper node (clones keep memory accounting exact)."""
        upper = _Node(node.tokens[:n], node.kv[:, :, :, :n].clone(), node.parent)
        upper.tick = node.tick
        node.parent.children[node.tokens[0]] = upper
        node.tokens, node.kv, node.parent = node.tokens[n:], node.kv[:, :, :, n:].clone(), upper
        upper.children[node.tokens[0]] = node
        self.nodes += 1
        return upper

    def _touch(self, node: _Node, tick: int) -> None:
        node.tick = tick
        if not node.children:
            heapq.heappush(self._heap, (tick, next(self._order), node))

    def _evict(self) -> None:
        while self.tokens > self.max_tokens and self._heap:
            tick, _, node = heapq.heappop(self._heap)
            if not node.alive or node.children or node.tick != tick:
                continue  # stale entry: evicted, grew children, or used again since
            parent = node.parent
            del parent.children[node.tokens[0]]
            node.alive, node.kv = False, None
            self.tokens -= len(node.tokens)
            self.nodes -= 1
            self.evictions += 1
            self.evicted_tokens += len(node.tokens)
            if parent is not self.root and not parent.children:
                heapq.heappush(self._heap, (parent.tick, next(self._order), parent))
        if len(self._heap) > 4 * self.nodes + 64:  # drop stale entries now and then
            self._heap = [e for e in self._heap if e[2].alive and not e[2].children and e[2].tick == e[0]]
            heapq.heapify(self._heap)


# ---- requests ----------------------------------------------------------------------------------
@dataclass(eq=False)
class _Seq:
    """One sequence to generate (or, with score_from >= 1, to score) and, once done, its result."""
    prompt: list[int]
    max_new: int = 0
    stop: tuple[int, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    uniforms: torch.Tensor | None = None    # [max_new] draws for inverse-CDF sampling
    score_from: int = 0                     # >= 1: return logits predicting prompt[score_from:] and one more
    # results
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finished: bool = False
    logits: torch.Tensor | None = None      # score requests: [len(prompt) - score_from + 1, V]
    done: bool = False
    error: BaseException | None = None


class _SlotView(Cache):
    """The slot buffer seen by an HF forward as `past_key_values` (fallback path): update writes, then reads."""

    def __init__(self, engine: "Engine", slots, rows: torch.Tensor, cols: torch.Tensor, keep: torch.Tensor, tk: int):
        super().__init__(layers=[])
        self.engine, self.slots, self.rows, self.cols, self.keep, self.tk = engine, slots, rows, cols, keep, tk

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.engine._write_read(layer_idx, key_states, value_states, self.slots, self.rows, self.cols,
                                       self.keep, self.tk)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


# ---- the engine --------------------------------------------------------------------------------
class Engine:
    """Batched step generation with a slot KV cache, continuous batching and prefix reuse.

    Args:
        model, tokenizer, device, version: as for `Policy`.
        max_batch_size: slots, i.e. sequences decoded together; further requests wait for a free slot.
        cache_tokens: budget of the prefix cache in tokens (0 = no prefix reuse).
        top_p, top_k: default nucleus mass (1 = off) and top-k (0 = off) for sampling.
        fast_path: use the lean forward for Llama-family models (else, or for other models, the HF forward).
    """

    def __init__(self, model, tokenizer, device: torch.device, version: int = 0, *, max_batch_size: int = 64,
                 cache_tokens: int = 32768, top_p: float = 1.0, top_k: int = 0, fast_path: bool = True):
        if max_batch_size < 1:
            raise ValueError(f"engine max_batch_size = {max_batch_size}: need at least 1")
        cfg = model.config
        if getattr(cfg, "sliding_window", None) is not None:
            raise ValueError(f"the engine supports full causal attention only; model has sliding_window = "
                             f"{cfg.sliding_window}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.version = version
        self.newline_id = tokenizer.convert_tokens_to_ids("\n")
        if self.newline_id == tokenizer.unk_token_id:
            raise ValueError("the engine's tokenizer has no single newline token; steps end at newlines")
        self.eos_id = tokenizer.eos_token_id
        self.max_batch_size = max_batch_size
        self.top_p, self.top_k = top_p, top_k
        self.fast_path = fast_path and cfg.model_type in FAST_PATH_MODELS
        self.cache = PrefixCache(cache_tokens)

        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.num_layers = text_cfg.num_hidden_layers
        self.kv_heads = getattr(text_cfg, "num_key_value_heads", None) or text_cfg.num_attention_heads
        self.head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        self.dtype = next(model.parameters()).dtype

        # slot state; active sequences are in slots 0..n-1
        S = max_batch_size
        self._kv: torch.Tensor | None = None       # [L, 2, S, Hkv, T, D]
        self._rows: list[_Seq] = []                # the sequence in each active slot
        z = dict(device=self.device)
        self._lens = torch.zeros(S, dtype=torch.long, **z)       # tokens whose KV is in the slot
        self._next = torch.zeros(S, dtype=torch.long, **z)       # last sampled token, input of the next decode
        self._steps = torch.zeros(S, dtype=torch.long, **z)      # tokens generated so far
        self._max_new = torch.zeros(S, dtype=torch.long, **z)
        self._temp = torch.zeros(S, **z)
        self._top_p = torch.ones(S, **z)
        self._top_k = torch.zeros(S, dtype=torch.long, **z)
        self._logprob = torch.zeros(S, dtype=torch.float64, **z)
        self._stop = torch.full((S, 2), -1, dtype=torch.long, **z)   # up to two stop ids per slot, -1 = none
        self._unif = torch.zeros(S, 0, **z)                      # [S, U] per-step uniforms
        self._out = torch.zeros(S, 0, dtype=torch.long, **z)     # [S, U] generated tokens
        self._slot_ids = torch.arange(S, **z)

        # callers and the decode loop
        self._cond = threading.Condition()
        self._waiting: list[_Seq] = []
        self._driving = False
        self._tok_lock = threading.Lock()   # HF fast tokenizers are not safe to share across threads
        self.counters = dict(requests=0, generated_tokens=0, prefill_tokens=0, forward_passes=0, steps=0,
                             max_batch=0, shared_prompt_copies=0)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", **engine_options) -> "Engine":
        tok = AutoTokenizer.from_pretrained(str(path))
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, tok, pick_device(device), **engine_options)

    # ---- public API ----------------------------------------------------------------------------
    def sample_steps(self, prefixes: list[str], n: int, *, temperature: float = 1.0, max_new_tokens: int = 24,
                     seed: int | None = None, top_p: float | None = None,
                     top_k: int | None = None) -> list[list[StepSample]]:
        """n next steps for each prefix, in order; a step ends at a newline or EOS."""
        return self._generate(prefixes, n, (self.newline_id, self.eos_id), temperature, max_new_tokens, seed,
                              top_p, top_k)

    def complete(self, prefixes: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int | None = None, top_p: float | None = None, top_k: int | None = None) -> list[StepSample]:
        """One completion to EOS per prefix (greedy when temperature is 0)."""
        res = self._generate(prefixes, 1, (self.eos_id,), temperature, max_new_tokens, seed, top_p, top_k)
        return [r[0] for r in res]

    def score(self, prefixes: list[str], continuations: list[str]) -> np.ndarray:
        """[B] summed log-probabilities (temperature 1, no filtering) of each continuation given its prefix."""
        if len(prefixes) != len(continuations):
            raise ValueError("score needs one continuation per prefix")
        heads, tails = self._encode(prefixes), self._encode(continuations)
        seqs = [_Seq(prompt=h + t, score_from=max(len(h), 1)) for h, t in zip(heads, tails)]
        self._run(seqs)
        out = np.zeros(len(seqs))
        for i, s in enumerate(seqs):
            targets = torch.tensor(s.prompt[s.score_from:], dtype=torch.long)
            lp = s.logits[:-1].log_softmax(-1)                                   # [len(tail), V]
            out[i] = float(lp.gather(1, targets[:, None]).sum()) if len(targets) else 0.0
        return out

    def next_token_logits(self, prefixes: list[str]) -> torch.Tensor:
        """[B, V] raw logits of the token after each prefix (through the prefix cache)."""
        seqs = [_Seq(prompt=p, score_from=len(p)) for p in self._encode(prefixes)]
        self._run(seqs)
        return torch.stack([s.logits[-1] for s in seqs])

    def load_weights(self, version: int, weights: Weights) -> None:
        """Copy weights into the model and drop every cached KV (it belongs to the old weights)."""
        with self._exclusive():
            load_numpy(self.model, weights)
            self.cache.clear()
            self.version = version

    def weights(self) -> Weights:
        return to_numpy(self.model)

    def clear_cache(self) -> None:
        with self._exclusive():
            self.cache.clear()

    def stats(self) -> dict[str, int]:
        """Counters: requests, tokens generated and prefilled, prefix-cache hits, reuse and evictions."""
        c = self.cache
        return {**self.counters, "cache_lookups": c.lookups, "cache_hits": c.hits, "reused_tokens": c.reused_tokens,
                "evictions": c.evictions, "evicted_tokens": c.evicted_tokens, "cached_tokens": c.tokens,
                "cache_nodes": c.nodes}

    # ---- requests ------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> list[list[int]]:
        with self._tok_lock:
            return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def _generate(self, prefixes, n, stop, temperature, max_new_tokens, seed, top_p, top_k) -> list[list[StepSample]]:
        top_p = self.top_p if top_p is None else top_p
        top_k = self.top_k if top_k is None else top_k
        if seed is None:  # from torch's global generator, so torch.manual_seed makes unseeded calls repeatable
            seed = int(torch.randint(0, 2**62, (1,)).item())
        greedy = temperature <= 0
        grid: list[list[_Seq]] = []
        for i, ids in enumerate(self._encode(prefixes)):
            if not ids:
                if self.tokenizer.bos_token_id is None:
                    raise ValueError("the engine cannot start from an empty prefix without a BOS token")
                ids = [self.tokenizer.bos_token_id]
            row = []
            for j in range(n):
                u = None
                if not greedy and max_new_tokens > 0:
                    g = torch.Generator().manual_seed(sequence_seed(seed, i, j))
                    u = torch.rand(max_new_tokens, generator=g)
                row.append(_Seq(prompt=ids, max_new=max_new_tokens, stop=stop, temperature=float(temperature),
                                top_p=float(top_p), top_k=int(top_k), uniforms=u))
            grid.append(row)
        self._run([s for row in grid if row for s in row])
        with self._tok_lock:
            return [[StepSample(text=self.tokenizer.decode([t for t in s.tokens if t != self.eos_id]),
                                num_tokens=len(s.tokens), logprob=s.logprob, finished=s.finished) for s in row]
                    for row in grid]

    def _run(self, seqs: list[_Seq]) -> None:
        """Queue seqs and return once all are done, driving the decode loop when no other caller does."""
        for s in seqs:
            if s.score_from == 0 and s.max_new <= 0:
                s.done = True
        todo = [s for s in seqs if not s.done]
        with self._cond:
            self._waiting.extend(todo)
            self.counters["requests"] += len(seqs)
        while True:
            with self._cond:
                while self._driving and not all(s.done for s in todo):
                    self._cond.wait()
                if all(s.done for s in todo):
                    break
                self._driving = True
            try:
                while not all(s.done for s in todo):
                    self._step()
            except BaseException as exc:  # fail every queued request so no caller waits forever
                self._fail_all(exc)
            finally:
                with self._cond:
                    self._driving = False
                    self._cond.notify_all()
        for s in todo:
            if s.error is not None:
                raise RuntimeError("engine step failed") from s.error

    class _Exclusive:
        def __init__(self, engine: "Engine"):
            self.engine = engine

        def __enter__(self):
            e = self.engine
            with e._cond:
                while e._driving:
                    e._cond.wait()
                e._driving = True

        def __exit__(self, *exc):
            e = self.engine
            with e._cond:
                e._driving = False
                e._cond.notify_all()

    def _exclusive(self) -> "_Exclusive":
        """Hold the decode loop (no step runs meanwhile)."""
        return Engine._Exclusive(self)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            for s in self._rows + self._waiting:
                s.error, s.done = exc, True
            self._rows, self._waiting = [], []
            self._cond.notify_all()

    # ---- the decode loop ---------------------------------------------------------------------------
    @torch.no_grad()
    def _step(self) -> None:
        """Admit waiting requests into free slots, decode one token for every active sequence, retire the finished."""
        n_old = len(self._rows)
        with self._cond:
            free = self.max_batch_size - n_old
            admitted, self._waiting = self._waiting[:free], self._waiting[free:]
        parts = []
        if n_old:  # one token for every sequence already decoding
            ids = self._next[:n_old, None]                                          # [n_old, 1]
            lens = self._lens[:n_old]
            parts.append(self._forward(ids, slice(0, n_old), lens, torch.ones_like(lens), None))
            self._lens[:n_old] += 1
        if admitted:
            first = self._admit(admitted)
            if first is not None:
                parts.append(first)
        n = len(self._rows)
        if not n:
            return
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)                    # [n, V]
        steps = self._steps[:n]
        u = self._unif[self._slot_ids[:n], steps]                                     # [n]
        tok, lp = sample_tokens(logits.float(), self._temp[:n], self._top_p[:n], self._top_k[:n], u)
        self._out[self._slot_ids[:n], steps] = tok
        self._logprob[:n] += lp.double()
        self._steps[:n] += 1
        self._next[:n] = tok
        stopped = (tok[:, None] == self._stop[:n]).any(1)                               # [n]
        done = stopped | (self._steps[:n] >= self._max_new[:n])
        self.counters["steps"] += 1
        self.counters["generated_tokens"] += n
        self.counters["max_batch"] = max(self.counters["max_batch"], n)
        if bool(done.any()):
            self._retire(done.nonzero().flatten().tolist(), stopped)

    def _admit(self, seqs: list[_Seq]) -> torch.Tensor | None:
        """Place seqs in slots, reuse cached prefixes, prefill the rest; return [g, V] first-token logits
        of the generating ones (now the last g active slots). Scoring requests finish here."""
        gen = [s for s in seqs if s.score_from == 0]
        scores = [s for s in seqs if s.score_from > 0]
        leaders: dict[tuple[int, ...], _Seq] = {}
        members: list[_Seq] = []
        for s in gen:
            key = tuple(s.prompt)
            if key in leaders:
                members.append(s)
            else:
                leaders[key] = s
        pre = list(leaders.values()) + scores           # rows of the prefill forward
        order = list(leaders.values()) + members       # slot order of the generating ones
        n0 = len(self._rows)
        need_t = max([len(s.prompt) + s.max_new for s in gen] + [len(s.prompt) for s in scores])
        self._ensure_capacity(need_t, max([s.max_new for s in gen], default=0))
        slot_of: dict[int, int] = {}
        for k, s in enumerate(order):
            slot_of[id(s)] = n0 + k
        for k, s in enumerate(scores):
            slot_of[id(s)] = n0 + len(order) + k       # borrowed past the active range, free after this call

        # reuse the longest cached prefix (at least the last needed position is recomputed)
        lens, qlens = [], []
        for s in pre:
            limit = (s.score_from if s.score_from else len(s.prompt)) - 1
            path, m = self.cache.match(s.prompt, limit)
            slot, off = slot_of[id(s)], 0
            for node, used in path:
                self._kv[:, :, slot, :, off:off + used] = node.kv[:, :, :, :used]
                off += used
            lens.append(m)
            qlens.append(len(s.prompt) - m)
        q = max(qlens)
        ids = torch.zeros(len(pre), q, dtype=torch.long)
        pick_rows, pick_cols, spans = [], [], []
        for r, s in enumerate(pre):
            ids[r, :qlens[r]] = torch.tensor(s.prompt[lens[r]:], dtype=torch.long)
            first = (s.score_from - 1 if s.score_from else len(s.prompt) - 1) - lens[r]
            spans.append((len(pick_rows), qlens[r] - first))
            pick_rows += [r] * (qlens[r] - first)
            pick_cols += list(range(first, qlens[r]))
        slots = torch.tensor([slot_of[id(s)] for s in pre], device=self.device)
        dev = dict(dtype=torch.long, device=self.device)
        logits = self._forward(ids.to(self.device), slots, torch.tensor(lens, **dev), torch.tensor(qlens, **dev),
                               (torch.tensor(pick_rows, **dev), torch.tensor(pick_cols, **dev)))   # [picked, V]
        self.counters["prefill_tokens"] += sum(qlens)
        for r, s in enumerate(pre):
            self._cache_prefix(slot_of[id(s)], s.prompt)
        for r, s in enumerate(scores):
            a, b = spans[len(leaders) + r]
            s.logits = logits[a:a + b].float().cpu()
        if scores:
            with self._cond:
                for s in scores:
                    s.done = True
                self._cond.notify_all()
        if not gen:
            return None

        # siblings with the same prompt share the leader's KV and first-token logits
        leader_row = {key: r for r, key in enumerate(leaders)}
        src = [leader_row[tuple(s.prompt)] for s in order]                 # prefill row of each generating seq
        if members:
            dst = torch.tensor([slot_of[id(s)] for s in members], device=self.device)
            frm = torch.tensor([slot_of[id(leaders[tuple(s.prompt)])] for s in members], device=self.device)
            t = max(len(s.prompt) for s in members)
            self._kv[:, :, dst, :, :t] = self._kv[:, :, frm, :, :t]
            self.counters["shared_prompt_copies"] += len(members)
        first_logits = logits[torch.tensor([spans[r][0] for r in src], device=self.device)]   # [g, V]

        sl = slice(n0, n0 + len(order))
        self._lens[sl] = torch.tensor([len(s.prompt) for s in order])
        self._steps[sl] = 0
        self._max_new[sl] = torch.tensor([s.max_new for s in order])
        self._temp[sl] = torch.tensor([s.temperature for s in order])
        self._top_p[sl] = torch.tensor([s.top_p for s in order])
        self._top_k[sl] = torch.tensor([s.top_k for s in order])
        self._logprob[sl] = 0
        self._stop[sl] = torch.tensor([(list(s.stop) + [-1, -1])[:2] for s in order])
        for k, s in enumerate(order):
            if s.uniforms is not None:
                self._unif[n0 + k, :s.max_new] = s.uniforms.to(self.device)
        self._rows.extend(order)
        return first_logits

    def _retire(self, done: list[int], stopped: torch.Tensor) -> None:
        """Finish the sequences in rows `done`, cache their KV, and refill the holes from the end."""
        steps = self._steps.tolist()
        for i in done:
            s = self._rows[i]
            s.tokens = self._out[i, :steps[i]].tolist()
            s.logprob = float(self._logprob[i])
            s.finished = bool(stopped[i])
            # KV exists for the prompt and every generated token but the last (sampled, never fed back)
            self._cache_prefix(i, s.prompt + s.tokens[:-1])
        n = len(self._rows)
        keep = n - len(done)
        gone = set(done)
        holes = [i for i in done if i < keep]
        movers = [j for j in range(keep, n) if j not in gone]
        with self._cond:
            for i in done:
                self._rows[i].done = True
            if holes:
                for h, m in zip(holes, movers):
                    self._rows[h] = self._rows[m]
            self._rows = self._rows[:keep]
            self._cond.notify_all()
        if holes:
            h = torch.tensor(holes, device=self.device)
            m = torch.tensor(movers, device=self.device)
            for t in (self._lens, self._next, self._steps, self._max_new, self._temp, self._top_p, self._top_k,
                      self._logprob, self._stop, self._unif, self._out):
                t[h] = t[m]
            tm = int(self._lens[h].max())
            self._kv[:, :, h, :, :tm] = self._kv[:, :, m, :, :tm]

    def _cache_prefix(self, slot: int, ids: list[int]) -> None:
        self.cache.insert(ids, lambda a, b: self._kv[:, :, slot, :, a:b].clone())

    def _ensure_capacity(self, t: int, u: int) -> None:
        """Grow the KV buffer to at least t positions and the per-slot step buffers to u steps."""
        S, dev = self.max_batch_size, self.device
        if self._kv is None or self._kv.shape[4] < t:
            cap = max(t, 64, 0 if self._kv is None else 2 * self._kv.shape[4])
            # zeros, not empty: masked positions still enter q @ k (times a -inf mask), and NaN * 0 is NaN
            kv = torch.zeros(self.num_layers, 2, S, self.kv_heads, cap, self.head_dim, dtype=self.dtype, device=dev)
            if self._kv is not None:
                kv[:, :, :, :, :self._kv.shape[4]] = self._kv
            self._kv = kv
        if self._unif.shape[1] < u:
            cap = max(u, 2 * self._unif.shape[1])
            unif = torch.zeros(S, cap, device=dev)
            out = torch.zeros(S, cap, dtype=torch.long, device=dev)
            unif[:, :self._unif.shape[1]] = self._unif
            out[:, :self._out.shape[1]] = self._out
            self._unif, self._out = unif, out

    # ---- the forward pass ------------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, slots, lens: torch.Tensor, qlens: torch.Tensor,
                 pick: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Run ids through the model, writing their KV into the slots; return logits at the picked positions.

        Args:
            ids: [B, Q] input tokens, right-padded; row b has qlens[b] real tokens.
            slots: slice (contiguous active slots) or [B] long slot indices.
            lens: [B] tokens already cached in each slot; row b's tokens sit at positions lens[b]..
            pick: (rows, cols) of the query positions whose logits are wanted; None = the last of each row.
        Returns:
            [P, V] logits.
        """
        B, Q = ids.shape
        dev = self.device
        steps = torch.arange(Q, device=dev)
        pos = lens[:, None] + steps                                                  # [B, Q]
        ends = lens + qlens                                                          # [B] cached after this call
        tk = int(ends.max())
        # a padded query sees only its row's real keys (its output is discarded; this keeps it finite)
        last = torch.minimum(pos, (ends - 1)[:, None])                               # [B, Q]
        visible = torch.arange(tk, device=dev) <= last[:, :, None]                   # [B, Q, tk]
        mask = torch.zeros(B, 1, Q, tk, dtype=self.dtype, device=dev).masked_fill_(~visible[:, None], float("-inf"))
        slot_idx = self._slot_ids[slots] if isinstance(slots, slice) else slots      # [B]
        if Q == 1:
            keep, rows, cols = None, slot_idx, lens
        else:
            keep = steps[None] < qlens[:, None]                                      # [B, Q] real tokens
            rows, cols = slot_idx[:, None].expand(B, Q)[keep], pos[keep]             # [N]
        self.counters["forward_passes"] += 1
        if pick is None:
            pick = (torch.arange(B, device=dev), qlens - 1)
        if self.fast_path:
            hidden = self._lean_forward(ids, pos, mask, slots, rows, cols, keep, tk)  # [B, Q, H]
            mm = self.model.model
            return self.model.lm_head(mm.norm(hidden[pick]))
        view = _SlotView(self, slots, rows, cols, keep, tk)
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=view, use_cache=True)
        return out.logits[pick]

    def _write_read(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots, rows, cols, keep, tk):
        """Write k, v ([B, Hkv, Q, D]) of real tokens into the slots; return the slots' [B, Hkv, tk, D] K and V."""
        kv = self._kv[layer]                                                          # [2, S, Hkv, T, D]
        if keep is None:
            kv[0][rows, :, cols] = k[:, :, 0]
            kv[1][rows, :, cols] = v[:, :, 0]
        else:
            kv[0][rows, :, cols] = k.transpose(1, 2)[keep]                            # [N, Hkv, D]
            kv[1][rows, :, cols] = v.transpose(1, 2)[keep]
        return kv[0][slots, :, :tk], kv[1][slots, :, :tk]

    def _lean_forward(self, ids, pos, mask, slots, rows, cols, keep, tk) -> torch.Tensor:
        """The decoder stack of a Llama-family model with the slot cache: [B, Q] ids -> [B, Q, H] hidden."""
        mm = self.model.model
        B, Q = ids.shape
        x = mm.embed_tokens(ids)                                                      # [B, Q, H]
        cos, sin = mm.rotary_emb(x, pos)                                              # [B, Q, D]
        cos, sin = cos[:, None], sin[:, None]                                         # [B, 1, Q, D]
        for i, layer in enumerate(mm.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, Q, -1, self.head_dim)                          # [B, Q, Hq, D]
            k = attn.k_proj(h).view(B, Q, -1, self.head_dim)                          # [B, Q, Hkv, D]
            v = attn.v_proj(h).view(B, Q, -1, self.head_dim).transpose(1, 2)          # [B, Hkv, Q, D]
            if hasattr(attn, "q_norm"):  # qwen3: RMSNorm over each head
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            keys, values = self._write_read(i, k, v, slots, rows, cols, keep, tk)    # [B, Hkv, tk, D]
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling,
                                               enable_gqa=q.shape[1] != keys.shape[1])  # [B, Hq, Q, D]
            x = x + attn.o_proj(o.transpose(1, 2).reshape(B, Q, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
