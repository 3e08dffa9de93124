"""Steps that end where a task's termination says (rl/tasks/termination.py), generated in rounds.

A round stops at a stop token (the last token of a stop string, or EOS); a step whose text
`termination.ends` rejects goes on as a new request whose prompt is the old prompt plus every token so
far (its KV is in the prefix cache, so only the last token is encoded) and whose uniforms are the rest of
the step's draws: a step comes out as one uninterrupted decode would give it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rl.models.backend import StepSample
from rl.models.engine.requests import EngineSample, _Seq

if TYPE_CHECKING:
    from rl.models.engine.core import Engine
    from rl.tasks.termination import Termination


@dataclass(eq=False)
class _Step:
    """One step generated over rounds (with a termination): its current request and what the rounds gave."""
    seq: _Seq                               # the current round's request
    prompt: list[int]                       # the step's prefix
    uniforms: list[float] | None            # max_new draws for the whole step; a round takes the rest
    tokens: list[int] = field(default_factory=list)       # every token of the step so far
    starts: list[int] = field(default_factory=list)       # index in tokens where each round starts
    logprobs: list[float] = field(default_factory=list)   # each round's summed log-prob


def stop_ids(engine: Engine, termination: Termination) -> tuple[int, ...]:
    """Token ids that end a round: the last token of each stop string, then EOS.

    A one-token stop string stops on itself; a longer one ("\\n\\n" in a character vocabulary) stops on
    its last token, which only proposes a boundary: `termination.ends` reads the decoded text.
    """
    ids = []
    for stop in termination.stop_strings:
        toks = engine._encode([stop])[0]
        if not toks:
            raise ValueError(f"the engine's tokenizer encodes stop string {stop!r} as no tokens")
        ids.append(toks[-1])
    return tuple(dict.fromkeys(ids + [engine.eos_id]))


def generate_terminated(engine: Engine, prefixes, n, termination: Termination, temperature, max_new_tokens,
                        seed, top_p, top_k) -> list[list[StepSample]]:
    """sample_steps with a termination: rounds of requests until `ends` accepts each step (or EOS, or max tokens).

    A round that stops where the step is not complete is followed by a request for the same step: the
    prompt plus every token so far, the step's remaining budget and the rest of its uniforms.
    """
    stop = stop_ids(engine, termination)
    grid = engine._requests(prefixes, n, stop, temperature, max_new_tokens, seed, top_p, top_k)
    steps = [_Step(seq=s, prompt=s.prompt, uniforms=s.uniforms) for row in grid for s in row]
    out: dict[int, EngineSample] = {}
    todo = list(range(len(steps)))
    while todo:
        engine._run([steps[i].seq for i in todo])
        going = []
        for i in todo:
            st, seq = steps[i], steps[i].seq
            st.starts.append(len(st.tokens))
            st.logprobs.append(seq.logprob)
            st.tokens += seq.tokens
            with engine._tok_lock:
                text = engine._text(st.tokens)
            stopped = seq.finished and seq.tokens[-1] != engine.eos_id  # at a stop token, not EOS
            if stopped and termination.ends(text):
                out[i] = cut_rounds(engine, st, termination, text)
            elif stopped and len(st.tokens) < max_new_tokens:
                used = len(st.tokens)
                st.seq = _Seq(prompt=st.prompt + st.tokens, max_new=max_new_tokens - used, stop=stop,
                              temperature=seq.temperature, top_p=seq.top_p, top_k=seq.top_k,
                              uniforms=None if st.uniforms is None else st.uniforms[used:])
                going.append(i)
            else:  # EOS (the solution ends here), or out of tokens inside the step
                eos = seq.finished and seq.tokens[-1] == engine.eos_id
                out[i] = EngineSample(text=text, num_tokens=len(st.tokens), logprob=sum(st.logprobs),
                                      finished=eos, complete=False, token_ids=tuple(st.tokens))
        todo = going
    return [[out[k * n + j] for j in range(n)] for k in range(len(prefixes))]


def cut_rounds(engine: Engine, st: _Step, termination: Termination, text: str) -> EngineSample:
    """The complete step `termination.split(text)[0]` of a step's rounds.

    It is all of the text except after a code block closed by a dedent, when the dedented line (the
    next step's start, a round of its own) was generated only to see the block end: that round leaves
    text, token_ids and logprob, and stays in num_tokens (its tokens were spent).
    """
    step = termination.split(text)[0]
    keep, logprob = len(st.tokens), 0.0
    with engine._tok_lock:
        for r, start in enumerate(st.starts):
            if r and len(engine._text(st.tokens[:start])) >= len(step):
                keep = start
                break
            logprob += st.logprobs[r]
    return EngineSample(text=step, num_tokens=len(st.tokens), logprob=logprob, finished=True, complete=True,
                        token_ids=tuple(st.tokens[:keep]))

