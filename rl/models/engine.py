"""A batched step-generation engine for small causal LMs: continuous batching and prefix reuse.

The backend interface
---------------------
Search code (rl/search) sees a policy only through these methods, so any backend with them can
replace another: the plain `Policy` (one `model.generate` per call), this `Engine`, or a vLLM backend.

    sample_steps(prefixes, n, *, temperature, max_new_tokens, seed, termination=None) -> list[list[StepSample]]
        generate: n next steps per prefix; a step ends at a newline or EOS, or, given a termination
        (rl/tasks/termination.py), where `termination.ends` says at one of its stop strings.
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
* Slots. The KV cache is one preallocated buffer [L, 2, S, Hkv, T, D] with S = max_batch_size slots.
  A sequence owns one slot and its token at position p sits at column p, so positions are plain
  indices and nothing is padded on the left. Active sequences occupy slots 0..n-1 (a finished
  sequence's slot is refilled from the end), so decoding reads views of the buffer, not copies.
* One step = admit + one forward + sample. Waiting requests take free slots (continuous batching:
  a finished sequence frees its slot at once and the next waiting request takes it in the next step);
  the rest of their prompts is encoded in the same forward that decodes one token for every active
  sequence. A request with only its last prompt token to encode (in a search, nearly all: see below)
  is a decode row from the start, so most steps are pure decode steps. Each attention uses an explicit
  visibility mask (the query at position p sees keys 0..p of its own slot) and explicit positions, so
  every row computes what a full recompute of that row would.
* Per-step costs. With a tiny model a step costs framework calls, not arithmetic, so a step makes few:
  per-slot state the forward and the sampler read lives in two packed tensors (a slot moves in two
  copies); generated tokens, log-probs, stops and caps are kept in Python on each sequence, after one
  small device-to-host copy per step.
* Prefix reuse. `PrefixCache` is a radix tree over token ids whose nodes hold the KV of their tokens,
  bounded by total cached tokens with LRU eviction of leaves. An admitted request copies the KV of its
  longest cached prefix into its slot and only encodes the rest (at least its last token, whose logits
  it needs). Prompts are cached after their prefill and finished sequences (prompt + step) when they
  retire, so the children and rollouts of a search node start from the node's KV (all of it but the
  stop token). Requests that share a prompt in one admission copy the KV to their siblings (and with
  more than one token to encode, encode it once).
* Terminations. With a termination a step is generated in rounds: a round stops at a stop token, and a
  step whose text `termination.ends` rejects goes on as a new request whose prompt is the old prompt plus
  every token so far (its KV is in the prefix cache, so only the last token is encoded) and whose
  uniforms are the rest of the step's draws: a step comes out as one uninterrupted decode would give it.
* Sampling. Each sequence draws its uniforms up front from its own torch.Generator, seeded from
  (call seed, prefix index, sample index); tokens are sampled by inverse CDF. The samples therefore do
  not depend on what else is in the batch: same seed, same samples.
* Threads. The engine is thread-safe and batches across callers: searches running in several threads
  share one decode batch. The first caller with unfinished work drives the decode loop until its own
  requests are done, then hands the loop to a waiting caller; the others sleep until theirs are done.
* Forward. For Llama-family models (llama, mistral without a sliding window, qwen2, qwen3) a lean
  forward runs all tokens of a step as one flat batch ([N, H]: stacked q/k/v and gate/up weights,
  RoPE tables, in-place RoPE, residual adds fused into the matmuls, one KV write per layer) with
  attention in two parts (decode tokens against a view of their slots, prompt tokens regrouped into
  padded rows); at small sizes it costs about half the HF forward. `fast_path=False`
  (and any other architecture) runs the model's own forward with the slot buffer as `past_key_values`.
"""
from __future__ import annotations

import copy
import heapq
import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import Cache

from rl.models.device import pick_device
from rl.models.policy import StepSample
from rl.models.weights import Weights, load_numpy, to_numpy

if TYPE_CHECKING:
    from rl.tasks.termination import Termination

FAST_PATH_MODELS = ("llama", "mistral", "qwen2", "qwen3")  # decoder layers with q/k/v/o projections and RoPE


class GenerationBackend(Protocol):
    """What searches and rollout workers call; see the module docstring."""
    version: int

    def sample_steps(self, prefixes: list[str], n: int, *, temperature: float = 1.0, max_new_tokens: int = 24,
                     seed: int | None = None, termination: Termination | None = None) -> list[list[StepSample]]: ...

    def complete(self, prefixes: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int | None = None) -> list[StepSample]: ...

    def score(self, prefixes: list[str], continuations: list[str]) -> np.ndarray: ...

    def load_weights(self, version: int, weights: Weights) -> None: ...

    def weights(self) -> Weights: ...


@dataclass
class EngineSample(StepSample):
    """A StepSample that also carries its token ids (stop token included, as in num_tokens)."""
    token_ids: tuple[int, ...] = ()


# ---- sampling ----------------------------------------------------------------------------------
def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                  uniform: torch.Tensor | None, *, mode: tuple[bool, bool, bool] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row by inverse-CDF sampling, and its log-probability.

    Args:
        logits: [B, V] raw next-token logits.
        temperature: [B]; rows at <= 0 are greedy (argmax, log-prob under the raw softmax).
        top_p: [B] nucleus mass (1 = off): keep the most likely tokens until their mass reaches top_p.
        top_k: [B] long, keep the k most likely tokens (0 = off).
        uniform: [B] in [0, 1), one draw per row (unused, may be None, when every row is greedy).
        mode: (any row greedy, every row greedy, any row filtered by top-k/top-p) when the caller knows
            them; otherwise read from the tensors (three device syncs).
    Returns:
        tokens [B] long and log-probs [B] under the (scaled, filtered, renormalised) distribution.
    """
    if mode is None:
        greedy_rows = temperature <= 0
        mode = bool(greedy_rows.any()), bool(greedy_rows.all()), bool(((top_k > 0) | (top_p < 1)).any())
    any_greedy, all_greedy, any_filter = mode
    if all_greedy:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    greedy = temperature <= 0 if any_greedy else None                                         # [B]
    scale = torch.where(greedy, torch.ones_like(temperature), temperature) if any_greedy else temperature
    scaled = logits / scale[:, None]                                                          # [B, V]
    if any_filter:
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
    tokens = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).squeeze(1)
    tokens = tokens.clamp_(max=logits.shape[1] - 1)
    if not any_greedy:
        return tokens, logp.gather(1, tokens[:, None]).squeeze(1)
    tokens = torch.where(greedy, logits.argmax(-1), tokens)
    lp_sampled = logp.gather(1, tokens[:, None]).squeeze(1)
    lp_greedy = logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    return tokens, torch.where(greedy, lp_greedy, lp_sampled)


def sequence_seed(seed: int, prefix_index: int, sample_index: int) -> int:
    """A 63-bit seed for one sequence from the call's seed and its place in the call (splitmix64 mixing)."""
    x = (seed * 0x9E3779B97F4A7C15 + prefix_index * 0xBF58476D1CE4E5B9 + sample_index * 0x94D049BB133111EB) & _MASK64
    for mul in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB):
        x = ((x ^ (x >> 31)) * mul) & _MASK64
    return (x ^ (x >> 29)) >> 1


_MASK64 = (1 << 64) - 1


def _plain_rust_tokenizer(tokenizer):
    """A private copy of a fast tokenizer's Rust tokenizer, when calling it directly gives what the HF wrapper does.

    A search makes many small calls, and the wrapper's per-call work costs several times the encode of a
    short prefix. The wrapper also sets padding and truncation on its Rust tokenizer per call, so the copy
    (with neither) is what ours reads. None, and the wrapper is used, when the tokenizer class overrides
    encoding or decoding, splits special tokens, or cleans up decoded text.
    """
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    if not isinstance(tokenizer, TokenizersBackend) or tokenizer.clean_up_tokenization_spaces \
            or getattr(tokenizer, "split_special_tokens", False):
        return None
    overridden = [m for m in ("__call__", "_encode_plus", "decode", "_decode")
                  if getattr(type(tokenizer), m) is not getattr(TokenizersBackend, m)]
    if overridden:
        return None
    rust = copy.deepcopy(tokenizer.backend_tokenizer)
    rust.no_padding()
    rust.no_truncation()
    rust.encode_special_tokens = False
    return rust


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


def _common_prefix(edge: tuple[int, ...], ids: tuple[int, ...], start: int, stop: int) -> int:
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
        ids = tuple(ids[:limit])    # tuples, like the edges: a whole-edge match is one slice comparison
        node, i, path = self.root, 0, []
        while i < limit:
            child = node.children.get(ids[i])
            if child is None:
                break
            edge = child.tokens
            n = len(edge) if ids[i:i + len(edge)] == edge else _common_prefix(edge, ids, i, limit)
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
        ids = tuple(ids)            # tuples, like the edges: a whole-edge match is one slice comparison
        node, i, end = self.root, 0, len(ids)
        while i < end:
            child = node.children.get(ids[i])
            if child is None:
                leaf = _Node(ids[i:], kv_of(i, end), node)
                node.children[ids[i]] = leaf
                self.tokens += len(leaf.tokens)
                self.nodes += 1
                self._touch(leaf, tick)
                break
            edge = child.tokens
            n = len(edge)
            if ids[i:i + n] != edge:    # ids diverge from the edge or end inside it: split it there
                n = _common_prefix(edge, ids, i, end)
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
    uniforms: list[float] | None = None     # max_new draws for inverse-CDF sampling; None when greedy
    score_from: int = 0                     # >= 1: return logits predicting prompt[score_from:] and one more
    # results; tokens and logprob grow by one token per decode step
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finished: bool = False                  # stopped at a stop token (not at max_new)
    logits: torch.Tensor | None = None      # score requests: [len(prompt) - score_from + 1, V]
    done: bool = False
    error: BaseException | None = None
    call: "_Call | None" = None


@dataclass(eq=False)
class _Step:
    """One step generated over rounds (with a termination): its current request and what the rounds gave."""
    seq: _Seq                               # the current round's request
    prompt: list[int]                       # the step's prefix
    uniforms: list[float] | None            # max_new draws for the whole step; a round takes the rest
    tokens: list[int] = field(default_factory=list)       # every token of the step so far
    starts: list[int] = field(default_factory=list)       # index in tokens where each round starts
    logprobs: list[float] = field(default_factory=list)   # each round's summed log-prob


class _Call:
    """The sequences of one public call: its caller sleeps on `event` until `remaining` reaches 0."""

    def __init__(self, remaining: int):
        self.remaining = remaining
        self.event = threading.Event()


@dataclass(eq=False)
class _Prefill:
    """Requests admitted in one step and what is left to encode of their prompts."""
    rows: list[_Seq]                   # prefill rows: one per distinct generating prompt, then scoring requests
    slots: list[int]                   # slot of each row
    lens: list[int]                    # prompt tokens of each row already in its slot (from the prefix cache)
    first: list[int]                   # first encoded position (relative to lens) whose logits are needed
    leaders: dict[tuple[int, ...], _Seq]
    members: list[_Seq]                # generating seqs whose prompt a leader encodes for them
    order: list[_Seq]                  # generating seqs in slot order
    scores: list[_Seq]
    slot_of: dict[int, int]            # id(seq) -> slot


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
        self.fast_path = fast_path and _FastWeights.supports(model)
        self._fast = _FastWeights(self.model) if self.fast_path else None
        self.cache = PrefixCache(cache_tokens)

        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.num_layers = text_cfg.num_hidden_layers
        self.kv_heads = getattr(text_cfg, "num_key_value_heads", None) or text_cfg.num_attention_heads
        self.head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        self.dtype = next(model.parameters()).dtype

        # slot state; active sequences are in slots 0..n-1. What the forward and the sampler read lives in
        # two packed tensors (one copy each moves a slot); what only the bookkeeping reads (generated
        # tokens, log-prob, stops, caps, uniforms) lives on the _Seq, in Python: one small sync per step
        # instead of tensor ops per sequence.
        S = max_batch_size
        self._kv: torch.Tensor | None = None       # [L, 2, S, Hkv, T, D]
        self._rows: list[_Seq] = []                # the sequence in each active slot
        z = dict(device=self.device)
        self._ints = torch.zeros(3, S, dtype=torch.long, **z)
        self._lens, self._next, self._top_k = self._ints         # [S] views: tokens whose KV is in the slot (the
        #                                                          position of the next input), next input, top-k
        self._floats = torch.zeros(2, S, **z)
        self._temp, self._top_p = self._floats                   # [S] views
        self._mode: tuple[bool, bool, bool] | None = None        # sample_tokens mode of the rows; None = stale
        self._slot_ids = torch.arange(S, **z)
        self._positions = torch.arange(0, **z)                   # [T] 0..T-1, for visibility masks

        # callers and the decode loop
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)   # signalled when the decode loop is released
        self._calls: list[_Call] = []                  # public calls with unfinished sequences
        self._waiting: list[_Seq] = []
        self._driving = False
        self._tok_lock = threading.Lock()   # HF fast tokenizers are not safe to share across threads
        self._rust_tokenizer = _plain_rust_tokenizer(tokenizer)
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
                     seed: int | None = None, top_p: float | None = None, top_k: int | None = None,
                     termination: Termination | None = None) -> list[list[StepSample]]:
        """n next steps for each prefix, in order.

        Without a termination a step ends at a newline or EOS. With one, a step stops at the last token of a
        stop string or EOS; while `termination.ends` rejects the text so far, the same step goes on (see the
        module docstring), up to max_new_tokens in all.
        """
        if termination is None:
            return self._generate(prefixes, n, (self.newline_id, self.eos_id), temperature, max_new_tokens, seed,
                                  top_p, top_k)
        return self._generate_terminated(prefixes, n, termination, temperature, max_new_tokens, seed, top_p, top_k)

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
        if any(not h for h in heads):
            raise ValueError("score needs non-empty prefixes (the first token has no conditional probability)")
        seqs = [_Seq(prompt=h + t, score_from=len(h)) for h, t in zip(heads, tails)]
        self._run(seqs)
        out = np.zeros(len(seqs))
        for i, s in enumerate(seqs):
            targets = torch.tensor(s.prompt[s.score_from:], dtype=torch.long)
            lp = s.logits[:-1].log_softmax(-1)                                   # [len(tail), V]
            out[i] = float(lp.gather(1, targets[:, None]).sum()) if len(targets) else 0.0
        return out

    def next_token_logits(self, prefixes: list[str]) -> torch.Tensor:
        """[B, V] raw logits of the token after each prefix (through the prefix cache)."""
        ids = self._encode(prefixes)
        if any(not p for p in ids):
            raise ValueError("next_token_logits needs non-empty prefixes")
        seqs = [_Seq(prompt=p, score_from=len(p)) for p in ids]
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
            if self._rust_tokenizer is not None:
                return [self._rust_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
            return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def _text(self, ids: list[int]) -> str:
        """Decoded text of token ids, EOS dropped (lock held)."""
        ids = [t for t in ids if t != self.eos_id]
        if self._rust_tokenizer is not None:
            return self._rust_tokenizer.decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode(ids)

    def _requests(self, prefixes, n, stop, temperature, max_new_tokens, seed, top_p, top_k) -> list[list[_Seq]]:
        """n requests per prefix, each with its own uniforms drawn from (seed, prefix index, sample index)."""
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
                    u = torch.rand(max_new_tokens, generator=g).tolist()   # read one per step, in Python
                row.append(_Seq(prompt=ids, max_new=max_new_tokens, stop=stop, temperature=float(temperature),
                                top_p=float(top_p), top_k=int(top_k), uniforms=u))
            grid.append(row)
        return grid

    def _generate(self, prefixes, n, stop, temperature, max_new_tokens, seed, top_p, top_k) -> list[list[StepSample]]:
        grid = self._requests(prefixes, n, stop, temperature, max_new_tokens, seed, top_p, top_k)
        self._run([s for row in grid if row for s in row])
        with self._tok_lock:
            return [[EngineSample(text=self._text(s.tokens),
                                  num_tokens=len(s.tokens), logprob=s.logprob, finished=s.finished,
                                  token_ids=tuple(s.tokens)) for s in row]
                    for row in grid]

    def _stop_ids(self, termination: Termination) -> tuple[int, ...]:
        """Token ids that end a round: the last token of each stop string, then EOS.

        A one-token stop string stops on itself; a longer one ("\\n\\n" in a character vocabulary) stops on
        its last token, which only proposes a boundary: `termination.ends` reads the decoded text.
        """
        ids = []
        for stop in termination.stop_strings:
            toks = self._encode([stop])[0]
            if not toks:
                raise ValueError(f"the engine's tokenizer encodes stop string {stop!r} as no tokens")
            ids.append(toks[-1])
        return tuple(dict.fromkeys(ids + [self.eos_id]))

    def _generate_terminated(self, prefixes, n, termination: Termination, temperature, max_new_tokens, seed, top_p,
                             top_k) -> list[list[StepSample]]:
        """sample_steps with a termination: rounds of requests until `ends` accepts each step (or EOS, or max tokens).

        A round that stops where the step is not complete is followed by a request for the same step: the
        prompt plus every token so far, the step's remaining budget and the rest of its uniforms.
        """
        stop = self._stop_ids(termination)
        grid = self._requests(prefixes, n, stop, temperature, max_new_tokens, seed, top_p, top_k)
        steps = [_Step(seq=s, prompt=s.prompt, uniforms=s.uniforms) for row in grid for s in row]
        out: dict[int, EngineSample] = {}
        todo = list(range(len(steps)))
        while todo:
            self._run([steps[i].seq for i in todo])
            going = []
            for i in todo:
                st, seq = steps[i], steps[i].seq
                st.starts.append(len(st.tokens))
                st.logprobs.append(seq.logprob)
                st.tokens += seq.tokens
                with self._tok_lock:
                    text = self._text(st.tokens)
                stopped = seq.finished and seq.tokens[-1] != self.eos_id  # at a stop token, not EOS
                if stopped and termination.ends(text):
                    out[i] = self._cut(st, termination, text)
                elif stopped and len(st.tokens) < max_new_tokens:
                    used = len(st.tokens)
                    st.seq = _Seq(prompt=st.prompt + st.tokens, max_new=max_new_tokens - used, stop=stop,
                                  temperature=seq.temperature, top_p=seq.top_p, top_k=seq.top_k,
                                  uniforms=None if st.uniforms is None else st.uniforms[used:])
                    going.append(i)
                else:  # EOS (the solution ends here), or out of tokens inside the step
                    eos = seq.finished and seq.tokens[-1] == self.eos_id
                    out[i] = EngineSample(text=text, num_tokens=len(st.tokens), logprob=sum(st.logprobs),
                                          finished=eos, complete=False, token_ids=tuple(st.tokens))
            todo = going
        return [[out[k * n + j] for j in range(n)] for k in range(len(prefixes))]

    def _cut(self, st: _Step, termination: Termination, text: str) -> EngineSample:
        """The complete step `termination.split(text)[0]` of a step's rounds.

        It is all of the text except after a code block closed by a dedent, when the dedented line (the
        next step's start, a round of its own) was generated only to see the block end: that round leaves
        text, token_ids and logprob, and stays in num_tokens (its tokens were spent).
        """
        step = termination.split(text)[0]
        keep, logprob = len(st.tokens), 0.0
        with self._tok_lock:
            for r, start in enumerate(st.starts):
                if r and len(self._text(st.tokens[:start])) >= len(step):
                    keep = start
                    break
                logprob += st.logprobs[r]
        return EngineSample(text=step, num_tokens=len(st.tokens), logprob=logprob, finished=True, complete=True,
                            token_ids=tuple(st.tokens[:keep]))

    def _run(self, seqs: list[_Seq]) -> None:
        """Queue seqs and return once all are done, driving the decode loop when no other caller does."""
        for s in seqs:
            if s.score_from == 0 and s.max_new <= 0:
                s.done = True
        todo = [s for s in seqs if not s.done]
        call = _Call(len(todo))
        for s in todo:
            s.call = call
        with self._lock:
            self._waiting.extend(todo)
            self._calls.append(call)
            self.counters["requests"] += len(seqs)
        while True:
            with self._lock:
                if call.remaining == 0:
                    self._calls.remove(call)
                    break
                drive = not self._driving
                if drive:
                    self._driving = True
                else:
                    call.event.clear()  # under the lock: a set() from the driver cannot be lost
            if not drive:
                call.event.wait()
                continue
            try:
                if self._fast is not None:
                    self._fast.refresh()  # weights may have been changed in place since the last call
                while call.remaining:
                    self._step()
            except BaseException as exc:  # fail every queued request so no caller waits forever
                self._fail_all(exc)
            finally:
                with self._lock:
                    self._release_driver()
        for s in todo:
            if s.error is not None:
                raise s.error

    def _release_driver(self) -> None:
        """Give up the decode loop (lock held): wake one caller with unfinished work to take it over."""
        self._driving = False
        self._idle.notify_all()
        for c in self._calls:
            if c.remaining:
                c.event.set()
                break

    def _finish(self, seqs: list[_Seq]) -> None:
        """Mark seqs done (lock held) and wake each caller whose last sequence this was."""
        for s in seqs:
            s.done = True
            c = s.call
            if c is not None:
                c.remaining -= 1
                if c.remaining == 0:
                    c.event.set()

    @contextmanager
    def _exclusive(self):
        """Hold the decode loop: no step runs until the block ends."""
        with self._lock:
            while self._driving:
                self._idle.wait()
            self._driving = True
        try:
            yield
        finally:
            with self._lock:
                self._release_driver()

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            failed = self._rows + self._waiting
            for s in failed:
                s.error = exc
            self._finish(failed)
            self._rows, self._waiting = [], []

    # ---- the decode loop ---------------------------------------------------------------------------
    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still counts versions and tracks views)
    def _step(self) -> None:
        """Admit waiting requests into free slots, decode one token for every active sequence, retire the finished."""
        with self._lock:
            free = self.max_batch_size - len(self._rows)
            admitted, self._waiting = self._waiting[:free], self._waiting[free:]
        pre = self._admit(admitted) if admitted else None
        n_dec = len(self._rows)   # rows that feed one token: the active ones and admitted ones with one to encode
        dec_logits, pre_logits = self._compute(n_dec, pre)
        parts = []
        if n_dec:
            self._lens[:n_dec] += 1
            parts.append(dec_logits)
        if pre is not None:
            first = self._settle(pre, pre_logits)
            if first is not None:
                parts.append(first)
        rows = self._rows
        n = len(rows)
        if not n:
            return
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)                    # [n, V]
        if self._mode is None:   # recomputed only when the rows change
            greedy = [s.temperature <= 0 for s in rows]
            self._mode = any(greedy), all(greedy), any(s.top_k > 0 or s.top_p < 1 for s in rows)
        u = None
        if not self._mode[1]:
            u = torch.tensor([0.0 if s.uniforms is None else s.uniforms[len(s.tokens)] for s in rows],
                             device=self.device)                                          # [n]
        tok, lp = sample_tokens(logits.float(), self._temp[:n], self._top_p[:n], self._top_k[:n], u, mode=self._mode)
        self._next[:n] = tok
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
        self._ensure_capacity(max([len(s.prompt) + s.max_new for s in gen] + [len(s.prompt) for s in scores]))
        direct, prefill = [], []
        for group in groups.values():
            p = group[0].prompt
            path, m = self.cache.match(p, len(p) - 1)   # the last token is always encoded: its logits are needed
            (direct if m == len(p) - 1 else prefill).append((group, path, m))
        slot = len(self._rows)
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
            self._kv[:, :, slots, :, off:off + used] = node.kv[:, :, None, :, :used]   # [L, 2, 1, Hkv, used, D]
            off += used

    def _seat(self, seqs: list[_Seq], lens: list[int], nexts: list[int]) -> None:
        """Append seqs to the active rows (the next slots) with their KV lengths and next input tokens."""
        n0 = len(self._rows)
        sl = slice(n0, n0 + len(seqs))
        self._ints[:, sl] = torch.tensor([lens, nexts, [s.top_k for s in seqs]])
        self._floats[:, sl] = torch.tensor([[s.temperature for s in seqs], [s.top_p for s in seqs]])
        self._rows.extend(seqs)
        self._mode = None

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
                self._finish(pre.scores)
        order = pre.order
        if not order:
            return None
        # siblings with the same prompt share the leader's KV and first-token logits
        if pre.members:
            dst = torch.tensor([pre.slot_of[id(s)] for s in pre.members], device=self.device)
            frm = torch.tensor([pre.slot_of[id(pre.leaders[tuple(s.prompt)])] for s in pre.members], device=self.device)
            t = max(len(s.prompt) for s in pre.members)
            self._kv[:, :, dst, :, :t] = self._kv[:, :, frm, :, :t]
            self.counters["shared_prompt_copies"] += len(pre.members)
        leader_row = {key: r for r, key in enumerate(pre.leaders)}
        first_logits = logits[torch.tensor([spans[leader_row[tuple(s.prompt)]][0] for s in order],
                                           device=self.device)]                               # [g, V]
        self._seat(order, [len(s.prompt) for s in order], [0] * len(order))   # next input: set once sampled
        return first_logits

    def _retire(self, done: list[int]) -> None:
        """Finish the sequences in rows `done` (ascending), cache their KV, and refill the holes from the end."""
        rows = self._rows
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
            self._finish([rows[i] for i in done])
            for h, m in zip(holes, movers):
                rows[h] = rows[m]
            del rows[keep:]
        self._mode = None
        if holes:
            h = torch.tensor(holes, device=self.device)
            m = torch.tensor(movers, device=self.device)
            self._ints[:, h] = self._ints[:, m]
            self._floats[:, h] = self._floats[:, m]
            tm = max(len(rows[i].prompt) + len(rows[i].tokens) - 1 for i in holes)   # KV length of the movers
            self._kv[:, :, h, :, :tm] = self._kv[:, :, m, :, :tm]

    def _cache_prefix(self, slot: int, ids: list[int]) -> None:
        self.cache.insert(ids, lambda a, b: self._kv[:, :, slot, :, a:b].clone())

    def _ensure_capacity(self, t: int) -> None:
        """Grow the KV buffer to at least t positions."""
        if self._kv is None or self._kv.shape[4] < t:
            old = 0 if self._kv is None else self._kv.shape[4]
            cap = max(-(-t // 64) * 64, old + old // 4)   # whole blocks of 64; grow by >= 1/4 to limit copies
            # zeros, not empty: masked positions still enter q @ k (times a -inf mask), and NaN * 0 is NaN
            kv = torch.zeros(self.num_layers, 2, self.max_batch_size, self.kv_heads, cap, self.head_dim,
                             dtype=self.dtype, device=self.device)
            if self._kv is not None:
                kv[:, :, :, :, :self._kv.shape[4]] = self._kv
            self._kv = kv
            self._kv_layers = list(kv)   # [2, S, Hkv, T, D] views, one per layer
            self._positions = torch.arange(cap, device=self.device)

    # ---- the forward pass ------------------------------------------------------------------------
    def _compute(self, n_dec: int, pre: _Prefill | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One decode token for slots 0..n_dec-1 and the prefill rows of pre, in one pass where possible.

        Returns:
            [n_dec, V] next-token logits of the decoding slots, and [P, V] logits at the needed positions
            of the prefill rows (row after row), each None when that part is empty.
        """
        if n_dec == 0 and pre is None:
            return None, None
        self.counters["forward_passes"] += 1
        dev = dict(dtype=torch.long, device=self.device)
        if pre is not None:
            qlens = [len(s.prompt) - m for s, m in zip(pre.rows, pre.lens)]
            q = max(qlens)
            ids = torch.zeros(len(pre.rows), q, dtype=torch.long)
            picks_r, picks_c = [], []
            for r, s in enumerate(pre.rows):
                ids[r, :qlens[r]] = torch.tensor(s.prompt[pre.lens[r]:], dtype=torch.long)
                picks_r += [r] * (qlens[r] - pre.first[r])
                picks_c += list(range(pre.first[r], qlens[r]))
            slots, lens = torch.tensor(pre.slots, **dev), torch.tensor(pre.lens, **dev)
            qlens_t = torch.tensor(qlens, **dev)
            picks = (torch.tensor(picks_r, **dev), torch.tensor(picks_c, **dev))
        if self._fast is None:  # HF forward: the decode part and the prefill part separately
            dec = None
            if n_dec:
                lens_d = self._lens[:n_dec]
                dec = self._hf_forward(self._next[:n_dec, None], slice(0, n_dec), lens_d, torch.ones_like(lens_d),
                                       None)
            return dec, (self._hf_forward(ids.to(self.device), slots, lens, qlens_t, picks) if pre is not None
                         else None)
        return self._lean_forward(n_dec, None if pre is None else (ids.to(self.device), slots, lens, qlens_t, picks))

    def _masks(self, lens: torch.Tensor, qlens: torch.Tensor, q: int):
        """Positions [B, Q], visibility [B, 1, Q, tk] and tk for rows whose tokens start at position lens.

        A query at position p sees keys 0..p; a padded query (past qlens) sees only its row's real keys,
        which keeps its (discarded) output finite.
        """
        dev = self.device
        steps = torch.arange(q, device=dev)
        pos = lens[:, None] + steps                                                  # [B, Q]
        ends = lens + qlens                                                          # [B] cached after this call
        tk = int(ends.max())
        last = torch.minimum(pos, (ends - 1)[:, None])                               # [B, Q]
        visible = (torch.arange(tk, device=dev) <= last[:, :, None])[:, None]        # [B, 1, Q, tk]
        return pos, visible, tk

    def _hf_forward(self, ids: torch.Tensor, slots, lens: torch.Tensor, qlens: torch.Tensor,
                    pick: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The model's own forward with the slot buffer as its cache (any architecture).

        Args:
            ids: [B, Q] input tokens, right-padded; row b has qlens[b] real tokens.
            slots: slice (contiguous active slots) or [B] long slot indices.
            lens: [B] tokens already cached in each slot; row b's tokens sit at positions lens[b]..
            pick: (rows, cols) of the query positions whose logits are wanted; None = the last of each row.
        Returns:
            [P, V] logits.
        """
        B, Q = ids.shape
        pos, visible, tk = self._masks(lens, qlens, Q)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device).masked_fill_(~visible, float("-inf"))
        slot_idx = self._slot_ids[slots] if isinstance(slots, slice) else slots      # [B]
        keep = torch.arange(Q, device=self.device)[None] < qlens[:, None]            # [B, Q] real tokens
        view = _SlotView(self, slots, slot_idx[:, None].expand(B, Q)[keep], pos[keep], keep, tk)
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=view, use_cache=True)
        return out.logits[pick if pick is not None else (torch.arange(B, device=self.device), qlens - 1)]

    def _write_read(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots, rows, cols, keep, tk):
        """Write k, v ([B, Hkv, Q, D]) of real tokens into the slots; return the slots' [B, Hkv, tk, D] K and V."""
        kv = self._kv[layer]                                                          # [2, S, Hkv, T, D]
        kv[0][rows, :, cols] = k.transpose(1, 2)[keep]                                # [N, Hkv, D]
        kv[1][rows, :, cols] = v.transpose(1, 2)[keep]
        return kv[0][slots, :, :tk], kv[1][slots, :, :tk]

    def _lean_forward(self, n_dec: int, pre) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A Llama-family decoder over a flat batch of tokens: one per decoding slot, then the prefill tokens.

        Norms, projections and MLPs run once over all N tokens ([N, H]); attention runs in two parts:
        the decode tokens against their slots' contiguous KV view, and the prefill tokens, regrouped
        into right-padded rows [P, Q], against their slots' KV (gathered).
        """
        w = self._fast
        dev = self.device
        hq, hkv, d = w.q_heads, self.kv_heads, self.head_dim
        toks, poss, slot_of_tok = [], [], []
        if n_dec:
            lens_d = self._lens[:n_dec]                                                # [n_dec] input positions
            toks.append(self._next[:n_dec])
            poss.append(lens_d)
            slot_of_tok.append(self._slot_ids[:n_dec])
            tk_d = int(lens_d.max()) + 1
            mask_d = (self._positions[:tk_d] <= lens_d[:, None])[:, None, None]        # [n_dec, 1, 1, tk_d] bool
        if pre is not None:
            ids, slots_p, lens_p, qlens_p, (pick_r, pick_c) = pre
            P, Q = ids.shape
            pos_p, vis_p, tk_p = self._masks(lens_p, qlens_p, Q)                      # [P, Q], [P, 1, Q, tk_p]
            mask_p = torch.where(vis_p, 0.0, float("-inf")).to(self.dtype)
            real = torch.arange(Q, device=dev)[None] < qlens_p[:, None]               # [P, Q]
            toks.append(ids[real])
            poss.append(pos_p[real])
            slot_of_tok.append(slots_p[:, None].expand(P, Q)[real])
            # flat index of each padded prefill position (padding points at token 0; its output is dropped)
            flat = torch.zeros(P, Q, dtype=torch.long, device=dev)
            flat[real] = n_dec + torch.arange(int(real.sum()), device=dev)
            picked = flat[pick_r, pick_c]                                              # [picks] flat indices
        tok = torch.cat(toks) if len(toks) > 1 else toks[0]                            # [N]
        pos = torch.cat(poss) if len(poss) > 1 else poss[0]                            # [N]
        slot = torch.cat(slot_of_tok) if len(slot_of_tok) > 1 else slot_of_tok[0]      # [N]
        N = tok.shape[0]
        x = F.embedding(tok, w.embed)                                                  # [N, H]
        top = max(tk_d if n_dec else 0, tk_p + Q if pre is not None else 0)         # > every position
        cos, sin = w.rope(pos, top)                                                    # [N, 1, D], sin signed
        for i, lw in enumerate(w.layers):
            h = F.rms_norm(x, w.norm_shape, lw.ln1, lw.eps1)
            y = F.linear(h, lw.qkv, lw.qkv_b)                                          # [N, (Hq + 2Hkv) D]: q, k, v
            qk = y[:, :(hq + hkv) * d].view(N, hq + hkv, d)                            # q and k heads
            if lw.qk_norm is not None:  # qwen3: RMSNorm over each head of q and k before RoPE
                qk.copy_(F.rms_norm(qk, (d,), eps=lw.qk_eps) * lw.qk_norm)
            # RoPE in place, in 3 ops: rotate_half(x) = [-x2, x1] is [x2, x1] (the halves swapped) times a
            # sign that the sin table carries
            swapped = qk.view(N, hq + hkv, 2, d // 2).flip(2).view(N, hq + hkv, d)   # [N, Hq + Hkv, D]
            qk.mul_(cos).addcmul_(swapped, sin)
            q = y[:, :hq * d].view(N, hq, d)                                           # [N, Hq, D]
            kv = self._kv_layers[i]                                                    # [2, S, Hkv, T, D]
            # one write for k and v (adjacent in y); the indexed dims go first: [N, 2, Hkv, D]
            kv[:, slot, :, pos] = y[:, hq * d:(hq + 2 * hkv) * d].view(N, 2, hkv, d)
            keys, values = kv[0], kv[1]                                                # [S, Hkv, T, D] each
            outs = []
            if n_dec:
                o = F.scaled_dot_product_attention(q[:n_dec, :, None], keys[:n_dec, :, :tk_d], values[:n_dec, :, :tk_d],
                                                   attn_mask=mask_d, scale=lw.scaling, enable_gqa=hq != hkv)
                outs.append(o.view(n_dec, hq * d))                                     # [n_dec, Hq D]
            if pre is not None:
                qp = q[flat].transpose(1, 2)                                           # [P, Hq, Q, D]
                o = F.scaled_dot_product_attention(qp, keys[slots_p, :, :tk_p], values[slots_p, :, :tk_p],
                                                   attn_mask=mask_p, scale=lw.scaling, enable_gqa=hq != hkv)
                outs.append(o.transpose(1, 2)[real].reshape(-1, hq * d))               # [Np, Hq D]
            o = torch.cat(outs) if len(outs) > 1 else outs[0]                          # [N, Hq D]
            x = _add_linear(x, o, lw.o_t, lw.o_b)
            h = F.rms_norm(x, w.norm_shape, lw.ln2, lw.eps2)
            gate, up = F.linear(h, lw.gate_up, lw.gate_up_b).chunk(2, dim=-1)         # [N, I] each
            x = _add_linear(x, lw.act(gate) * up, lw.down_t, lw.down_b)
        if pre is None:
            return w.logits(x), None
        logits = w.logits(torch.cat([x[:n_dec], x[picked]]) if n_dec else x[picked])
        return (logits[:n_dec] if n_dec else None), logits[n_dec:]


@dataclass
class _LayerWeights:
    ln1: torch.Tensor
    eps1: float
    qkv: torch.Tensor                  # [(Hq + 2 Hkv) D, H]: q, k and v projections stacked
    qkv_b: torch.Tensor | None
    qk_norm: torch.Tensor | None       # qwen3 per-head norms: [Hq + Hkv, D], q's weight per q head, k's per k head
    qk_eps: float
    scaling: float
    o_t: torch.Tensor                  # [Hq D, H]: o projection, transposed for addmm (a view)
    o_b: torch.Tensor | None
    ln2: torch.Tensor
    eps2: float
    gate_up: torch.Tensor              # [2I, H]: gate and up projections stacked
    gate_up_b: torch.Tensor | None
    down_t: torch.Tensor               # [I, H], transposed like o_t
    down_b: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]


def _bias(linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def _cat_bias(*linears) -> torch.Tensor | None:
    if all(m.bias is None for m in linears):
        return None
    return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])


class _FastWeights:
    """A Llama-family model's weights arranged for the lean forward: q/k/v and gate/up stacked into one
    matrix each (fewer, larger matmuls), RoPE cos/sin as tables. Stacked copies go stale when a
    parameter changes, so `refresh` compares parameter versions and rebuilds."""

    STATIC_ROPE = ("default", "linear", "llama3", "yarn")   # frequencies that do not depend on the length

    def __init__(self, model):
        self.model = model
        self.params = list(model.parameters())   # in-place updates (load_weights, optimizers) bump _version
        self.stamp = None
        self.refresh()

    @staticmethod
    def supports(model) -> bool:
        mm = getattr(model, "model", None)
        if model.config.model_type not in FAST_PATH_MODELS or mm is None or not hasattr(model, "lm_head"):
            return False
        norms = [mm.norm] + [n for layer in mm.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        return all(hasattr(n, "variance_epsilon") for n in norms) and all(
            hasattr(layer.mlp, "gate_proj") and hasattr(layer.self_attn, "q_proj") for layer in mm.layers)

    def refresh(self) -> None:
        stamp = [p._version for p in self.params]
        if stamp == self.stamp:
            return
        self.stamp = stamp
        mm = self.model.model
        cfg = self.model.config
        act = F.silu if cfg.hidden_act == "silu" else mm.layers[0].mlp.act_fn
        self.embed = mm.embed_tokens.weight.detach()
        self.head = self.model.lm_head.weight.detach()
        self.head_b = _bias(self.model.lm_head)
        self.final_norm, self.final_eps = mm.norm.weight.detach(), mm.norm.variance_epsilon
        self.norm_shape = (self.embed.shape[1],)
        self.q_heads = cfg.num_attention_heads
        self.layers = []
        hq = self.q_heads
        hkv = getattr(cfg, "num_key_value_heads", None) or hq
        with torch.no_grad():
            for layer in mm.layers:
                a, m = layer.self_attn, layer.mlp
                qk_norm = hasattr(a, "q_norm")
                self.layers.append(_LayerWeights(
                    ln1=layer.input_layernorm.weight.detach(), eps1=layer.input_layernorm.variance_epsilon,
                    qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                    qkv_b=_cat_bias(a.q_proj, a.k_proj, a.v_proj),
                    qk_norm=torch.cat([a.q_norm.weight.expand(hq, -1), a.k_norm.weight.expand(hkv, -1)])
                    if qk_norm else None,
                    qk_eps=a.q_norm.variance_epsilon if qk_norm else 0.0,
                    scaling=a.scaling,
                    o_t=a.o_proj.weight.detach().t(), o_b=_bias(a.o_proj),
                    ln2=layer.post_attention_layernorm.weight.detach(),
                    eps2=layer.post_attention_layernorm.variance_epsilon,
                    gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                    gate_up_b=_cat_bias(m.gate_proj, m.up_proj),
                    down_t=m.down_proj.weight.detach().t(), down_b=_bias(m.down_proj),
                    act=act))
        self.rotary = mm.rotary_emb
        self.cos = self.sin = None

    def rope(self, pos: torch.Tensor, need: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [..., 1, D] for positions [...] (all < need), from tables when the RoPE kind allows.

        The sin's first half is negated: x cos + swap_halves(x) sin is then HF's x cos + rotate_half(x) sin.
        """
        if getattr(self.rotary, "rope_type", "default") not in self.STATIC_ROPE:
            cos, sin = self.rotary(self.embed[:1], pos[None])                  # [1, ..., D]
            return cos[0].unsqueeze(-2), _sign_halves(sin[0]).unsqueeze(-2)
        if self.cos is None or self.cos.shape[0] < need:
            n = max(need, 2 * (0 if self.cos is None else self.cos.shape[0]), 256)
            cos, sin = self.rotary(self.embed[:1], torch.arange(n, device=pos.device)[None])   # [1, n, D]
            self.cos, self.sin = cos[0], _sign_halves(sin[0])
        return self.cos[pos].unsqueeze(-2), self.sin[pos].unsqueeze(-2)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[P, H] last hidden states -> [P, V] logits."""
        return F.linear(F.rms_norm(hidden, self.norm_shape, self.final_norm, self.final_eps), self.head, self.head_b)


def _add_linear(x: torch.Tensor, h: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x + h @ weight_t (+ bias): the residual add fused into the matmul (one addmm) when there is no bias."""
    return torch.addmm(x, h, weight_t) if bias is None else torch.addmm(x + bias, h, weight_t)


def _sign_halves(sin: torch.Tensor) -> torch.Tensor:
    """[..., D] -> the same with its first half negated (the sign of rotate_half)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
