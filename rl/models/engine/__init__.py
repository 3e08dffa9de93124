"""A batched step-generation engine for small causal LMs: continuous batching and prefix reuse.

`Engine` satisfies the backend interface that search code sees (`GenerationBackend`, rl/models/backend.py),
as the plain `Policy` does; its samples are `EngineSample`s (a StepSample with token ids).

Files: core.py (Engine: public API, requests, the decode loop shared by callers), scheduler.py (admission,
step, retirement), slots.py (the slot KV buffer), prefix_cache.py, forward.py and fast_weights.py (the
forward pass), sampling.py (inverse-CDF sampling, per-sequence seeds), stops.py (steps ended by a task's
termination), requests.py (what the scheduler works on).

How this engine works
---------------------
* Slots (slots.py). The KV cache is one preallocated buffer [L, 2, S, Hkv, T, D] with S = max_batch_size
  slots. A sequence owns one slot and its token at position p sits at column p, so positions are plain indices
  and nothing is padded on the left. Active sequences occupy slots 0..n-1 (a finished sequence's slot is
  refilled from the end), so decoding reads views of the buffer, not copies.
* One step = admit + one forward + sample (scheduler.py). Waiting requests take free slots (continuous
  batching: a finished sequence frees its slot at once and the next waiting request takes it in the next
  step); the rest of their prompts is encoded in the same forward that decodes one token for every active
  sequence. A request with only its last prompt token to encode (in a search, nearly all: see below) is a
  decode row from the start, so most steps are pure decode steps. Each attention uses an explicit visibility
  mask (the query at position p sees keys 0..p of its own slot) and explicit positions, so every row computes
  what a full recompute of that row would.
* Per-step costs (slots.py, requests.py). With a tiny model a step costs framework calls, not arithmetic, so a
  step makes few: per-slot state the forward and the sampler read lives in two packed tensors (a slot moves in
  two copies); generated tokens, log-probs, stops and caps are kept in Python on each sequence, after one
  small device-to-host copy per step.
* Prefix reuse (prefix_cache.py, scheduler.py). `PrefixCache` is a radix tree over token ids whose nodes hold
  the KV of their tokens, bounded by total cached tokens with LRU eviction of leaves. An admitted request
  copies the KV of its longest cached prefix into its slot and only encodes the rest (at least its last token,
  whose logits it needs). Prompts are cached after their prefill and finished sequences (prompt + step) when
  they retire, so the children and rollouts of a search node start from the node's KV (all of it but the stop
  token). Requests that share a prompt in one admission copy the KV to their siblings (and with more than one
  token to encode, encode it once).
* Terminations (stops.py). With a termination a step is generated in rounds: a round stops at a stop token,
  and a step whose text `termination.ends` rejects goes on as a new request whose prompt is the old prompt
  plus every token so far (its KV is in the prefix cache, so only the last token is encoded) and whose
  uniforms are the rest of the step's draws: a step comes out as one uninterrupted decode would give it.
* Sampling (sampling.py). Each sequence draws its uniforms up front from its own torch.Generator, seeded from
  (call seed, prefix index, sample index); tokens are sampled by inverse CDF. The samples therefore do not
  depend on what else is in the batch: same seed, same samples.
* Threads (core.py). The engine is thread-safe and batches across callers: searches running in several threads
  share one decode batch. The first caller with unfinished work drives the decode loop until its own requests
  are done, then hands the loop to a waiting caller; the others sleep until theirs are done.
* Forward (forward.py, fast_weights.py). For Llama-family models (llama, mistral without a sliding window,
  qwen2, qwen3) a lean forward runs all tokens of a step as one flat batch ([N, H]: stacked q/k/v and gate/up
  weights, RoPE tables, in-place RoPE, residual adds fused into the matmuls, one KV write per layer) with
  attention in two parts (decode tokens against a view of their slots, prompt tokens regrouped into padded
  rows); at small sizes it costs about half the HF forward. `fast_path=False` (and any other architecture)
  runs the model's own forward with the slot buffer as `past_key_values`.
"""
from rl.models.engine.core import Engine
from rl.models.engine.prefix_cache import PrefixCache
from rl.models.engine.requests import EngineSample
from rl.models.engine.sampling import sample_tokens, sequence_seed

__all__ = ["Engine", "EngineSample", "PrefixCache", "sample_tokens", "sequence_seed"]
