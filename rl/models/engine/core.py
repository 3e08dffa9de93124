"""Engine: the public API (sample_steps, complete, score), requests, and the decode loop shared by callers.

The engine is thread-safe and batches across callers: searches running in several threads share one
decode batch. The first caller with unfinished work drives the decode loop (`Scheduler.step`) until its
own requests are done, then hands the loop to a waiting caller; the others sleep until theirs are done.
Each request draws its uniforms up front from its own generator (sampling.py), so the samples do not
depend on what else is in the batch: same seed, same samples.
"""
from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.models.backend import StepSample
from rl.models.device import pick_device
from rl.models.engine.forward import Forward
from rl.models.engine.prefix_cache import PrefixCache
from rl.models.engine.requests import EngineSample, _Call, _Seq, finish
from rl.models.engine.sampling import sequence_seed
from rl.models.engine.scheduler import Scheduler
from rl.models.engine.slots import Slots
from rl.models.engine.stops import generate_terminated
from rl.models.weights import Weights, load_numpy, to_numpy

if TYPE_CHECKING:
    from rl.tasks.termination import Termination


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
        self.cache = PrefixCache(cache_tokens)
        self.counters = dict(requests=0, generated_tokens=0, prefill_tokens=0, forward_passes=0, steps=0,
                             max_batch=0, shared_prompt_copies=0)
        self.slots = Slots(cfg, max_batch_size, self.device, next(model.parameters()).dtype)
        self.forward = Forward(self.model, self.slots, self.counters, fast_path=fast_path)
        self.fast_path = self.forward.fast is not None

        # callers and the decode loop
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)   # signalled when the decode loop is released
        self._calls: list[_Call] = []                  # public calls with unfinished sequences
        self._waiting: list[_Seq] = []
        self._driving = False
        self._tok_lock = threading.Lock()   # HF fast tokenizers are not safe to share across threads
        self._rust_tokenizer = _plain_rust_tokenizer(tokenizer)
        self.scheduler = Scheduler(self.slots, self.forward, self.cache, self.counters, self._lock)

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
        stop string or EOS; while `termination.ends` rejects the text so far, the same step goes on
        (rl/models/engine/stops.py), up to max_new_tokens in all.
        """
        if termination is None:
            return self._generate(prefixes, n, (self.newline_id, self.eos_id), temperature, max_new_tokens, seed,
                                  top_p, top_k)
        return generate_terminated(self, prefixes, n, termination, temperature, max_new_tokens, seed, top_p,
                                   top_k)

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
                self.forward.refresh()  # weights may have been changed in place since the last call
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
            failed = self.slots.rows + self._waiting
            for s in failed:
                s.error = exc
            finish(failed)
            self.slots.rows, self._waiting = [], []

    def _step(self) -> None:
        """Admit waiting requests into free slots and run one scheduler step (the driving caller only)."""
        with self._lock:
            free = self.max_batch_size - len(self.slots.rows)
            admitted, self._waiting = self._waiting[:free], self._waiting[free:]
        self.scheduler.step(admitted)


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

