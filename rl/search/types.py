"""What every search takes and returns: Models, Budget, Spent, SearchResult, the Search protocol."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from rl.search.tree import Tree
from rl.tasks.base import Problem, Task
from rl.tasks.termination import NewlineStep

if TYPE_CHECKING:  # rl/models/__init__.py imports torch; search code only reads these types
    from rl.models.backend import Critic, GenerationBackend, StepSample


@dataclass
class Models:
    """What a search may call.

    Every critic has one batched method, `score(texts: list[str]) -> np.ndarray` ([len(texts)] floats
    in [0, 1]); each reads its own kind of text:
      value  V(s):    prompt + steps so far
      prm    PRM(s):  prompt + steps so far, scoring the last step
      orm    ORM(s):  prompt + a complete solution
      q      Q(s, a): prompt + steps so far + one candidate next step
    A search that needs a critic it was not given falls back to `value` (documented per method).
    reward is the verifier (labels available) or None (critic only).
    """
    policy: GenerationBackend                        # a search calls sample_steps and complete
    value: Critic | None = None
    reward: Callable[[Problem, str], float] | None = None
    prm: Critic | None = None
    orm: Critic | None = None
    q: Critic | None = None
    rollout_policy: GenerationBackend | None = None  # a (smaller) policy for fast rollouts; None = policy


@dataclass(frozen=True)
class Budget:
    """Generated tokens per problem, a soft cap that every search applies the same way:

    - no search step that generates (an expansion, a sample, a rollout, a candidate draw) starts
      once spent.generated_tokens >= max_tokens; a call that starts under the cap runs to its end;
    - a search's first generation always runs;
    - if the search ends without a finished solution, one greedy completion of its chosen path
      always runs (finish_greedily), so every method returns an answer; it may overshoot the cap.
    """
    max_tokens: int = 0   # 0 = no cap


@dataclass
class Spent:
    generated_tokens: int = 0
    critic_calls: int = 0
    seconds: float = 0.0
    simulations: int = 0        # MCTS simulations run (an early stop or the token budget can cut them short)


@dataclass
class SearchResult:
    answer: str | None          # extracted final answer
    solution: str               # the chosen solution text (steps)
    tree: Tree                  # everything the search built
    chosen: int                 # node id of the chosen leaf
    spent: Spent = field(default_factory=Spent)


class Search(Protocol):
    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult: ...


def check_fields(search, checks: list[tuple[str, bool, str]]) -> None:
    """ValueError "<Class>.<field> = <value>: <rule>" for the first (field, holds, rule) that does not hold.

    The one place a search's hyperparameters are checked: the dataclasses call it in __post_init__, and
    SearchConfig (rl/config.py) builds every method from its fields so the same message names the config key.
    """
    for name, holds, rule in checks:
        if not holds:
            raise ValueError(f"{type(search).__name__}.{name} = {getattr(search, name)!r}: {rule}")


def finish_greedily(tree: Tree, node: int, policy: GenerationBackend, spent: Spent, *, max_new_tokens: int) -> str:
    """Greedy completion of a path that stops short of an answer; its tokens are added to spent."""
    done = policy.complete([tree.state(node)], temperature=0.0, max_new_tokens=max_new_tokens)[0]
    spent.generated_tokens += done.num_tokens
    return done.text


def sample_steps(policy: GenerationBackend, task: Task, prefixes: list[str], n: int, *, temperature: float,
                 max_new_tokens: int, seed: int) -> list[list[StepSample]]:
    """policy.sample_steps with steps ended by the task's termination function (AlphaLLM §4.2 options).

    A newline termination is not passed: it is every backend's default, so backends and fakes that know only
    newline steps keep working and the newline path is the same call as before terminations existed.
    """
    kw = {} if isinstance(task.termination, NewlineStep) else {"termination": task.termination}
    return policy.sample_steps(prefixes, n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, **kw)


def step_is_complete(task: Task, sample: StepSample) -> bool:
    """True when the task's termination ended the step, so the path may go on; False after EOS or max tokens.

    A backend given the termination reports it (`sample.complete`): a code block closed by a dedent is
    complete, though its text alone does not show it. Otherwise the text says it: `termination.ends(text)`
    (for newline steps: the text holds the newline that ended it).
    """
    complete = getattr(sample, "complete", None)  # None, or absent: the backend did not get the termination
    return task.termination.ends(sample.text) if complete is None else bool(complete)
