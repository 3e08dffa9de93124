"""ηMCTS over reasoning steps (AlphaLLM, Tian et al. 2024, §4.3).

A node is an option: a step whose end the task's termination function decides
(a newline for the embedded task). Each simulation
  1. selects down the tree by UCT or PUCT; a node whose target width has grown
     on this visit first gets new children (importance-weighted adaptive branching),
  2. expands the first unexpanded node it meets by sampling candidate steps,
     merging a candidate into an equivalent sibling instead of adding it (state merge),
  3. evaluates that node: β_value·V(s) + β_prm·PRM(s) + β_orm·(mean score of fast rollouts),
     or, at a terminal node, the reward (the verifier, when labels are allowed) or the critics,
  4. backs the score up to the root.
Once every path the policy proposes ends in an answer, simulations only revisit scored terminals and
spend nothing; with `widen` > 0 such a revisit instead samples `widen` more steps at the node on its
path, of those that have drawn fewer than `widen_max_draws` steps, whose children's values differ most
(importance, the deepest of equals), so the search keeps turning its token
budget into new candidates (a simulation whose new samples all merge into known siblings backs up the
revisited terminal as before). With `final="vote"` those candidates vote.
With `resample` = R > 0, an expansion whose samples merged into siblings draws that many again, at
`resample_temperature` (hotter than the search's, so that a sharpened policy proposes something else), up
to R more times: a policy that keeps proposing its favourite step still gives the search a second candidate.
With the defaults (fixed width, no merge beyond identical text, V only) this is plain MCTS.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from rl.search.sampling import majority_vote
from rl.search.tree import Tree, backup, puct_select, uct_select
from rl.search.types import (Budget, Models, SearchResult, Spent, check_fields, finish_greedily, sample_steps,
                             step_is_complete)
from rl.tasks.base import Problem, Task


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (O(len(a)·len(b)), steps are short)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def equivalent_by_edit_distance(a: str, b: str, threshold: float) -> bool:
    """True when the normalised edit distance of two steps is at most threshold (0 = identical only)."""
    if a == b:
        return True
    if threshold <= 0:
        return False
    return edit_distance(a.strip(), b.strip()) / max(len(a.strip()), len(b.strip()), 1) <= threshold


def adaptive_width(importance: float, *, alpha: float, c_min: int, c_max: int) -> int:
    """AlphaLLM eq. 5: n(s) = max(c_min, min(floor(alpha·I(s)) + 1, c_max))."""
    return max(c_min, min(math.floor(alpha * importance) + 1, c_max))


def importance(tree: Tree, node: int) -> float:
    """AlphaLLM eq. 4: I(s) = max over visited children |v(child) - v(s)|; 0 without visited children."""
    kids = [k for k in tree.children[node] if tree.visits[k] > 0]
    if not kids or tree.visits[node] == 0:
        return 0.0
    v = tree.q(node)
    return max(abs(tree.q(k) - v) for k in kids)


@dataclass(frozen=True)
class MCTS:
    simulations: int = 16
    branching: int = 3                      # children per expansion when adaptive branching is off
    selection: Literal["uct", "puct"] = "uct"
    c_uct: float = 1.0                      # exploration constant of UCT or PUCT
    adaptive: bool = False                  # importance-weighted adaptive branching
    alpha: float = 4.0                      # width gain per unit of importance (eq. 5)
    c_min_root: int = 2
    c_max_root: int = 6
    c_min: int = 1
    c_max: int = 3
    merge_threshold: float = 0.0            # normalised edit distance under which siblings merge
    equivalent: Callable[[str, str], bool] | None = None  # pluggable step equivalence; overrides the threshold
    rollouts: int = 0                       # fast rollouts per evaluated leaf
    rollout_temperature: float = 1.0
    beta_value: float = 1.0
    beta_prm: float = 0.0
    beta_orm: float = 0.0
    max_depth: int = 8
    temperature: float = 1.0
    step_max_tokens: int = 24
    max_terminals: int = 0                  # stop once this many terminal nodes were visited (0 = off)
    stop_solved: int = 0                    # with a reward (training): stop once this many terminals scored 1 (0 = off)
    final: Literal["visits", "value", "vote"] = "visits"
    widen: int = 0                          # steps sampled when a simulation revisits a scored terminal (0 = off)
    widen_max_draws: int = 12               # steps a node may draw in all (children plus merged samples)
    resample: int = 0                       # rounds of redraws for samples that merged into a sibling (0 = off)
    resample_temperature: float = 0.0       # their temperature (0 = the search's temperature)

    def __post_init__(self):
        check_fields(self, [
            ("simulations", self.simulations >= 1, "must be >= 1"),
            ("branching", self.branching >= 1, "must be >= 1"),
            ("selection", self.selection in ("uct", "puct"), "one of uct, puct"),
            ("c_uct", self.c_uct >= 0, "must be >= 0"),
            ("alpha", self.alpha >= 0, "must be >= 0"),
            ("c_min_root", 1 <= self.c_min_root <= self.c_max_root, "need 1 <= c_min_root <= c_max_root"),
            ("c_min", 1 <= self.c_min <= self.c_max, "need 1 <= c_min <= c_max"),
            ("merge_threshold", 0 <= self.merge_threshold <= 1, "a normalised edit distance, in [0, 1]"),
            ("rollouts", self.rollouts >= 0, "must be >= 0"),
            ("rollout_temperature", self.rollout_temperature >= 0, "must be >= 0"),
            *[(b, getattr(self, b) >= 0, "must be >= 0") for b in ("beta_value", "beta_prm", "beta_orm")],
            ("beta_value", self.beta_value + self.beta_prm + self.beta_orm > 0,
             "beta_value, beta_prm and beta_orm are all 0: nothing would score a leaf"),
            ("max_depth", self.max_depth >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("step_max_tokens", self.step_max_tokens >= 1, "must be >= 1"),
            ("max_terminals", self.max_terminals >= 0, "must be >= 0 (0 = off)"),
            ("stop_solved", self.stop_solved >= 0, "must be >= 0 (0 = off)"),
            ("final", self.final in ("visits", "value", "vote"), "one of visits, value, vote"),
            ("widen", self.widen >= 0, "must be >= 0 (0 = off)"),
            ("widen_max_draws", self.widen_max_draws >= 1, "must be >= 1"),
            ("resample", self.resample >= 0, "must be >= 0 (0 = off)"),
            ("resample_temperature", self.resample_temperature >= 0, "must be >= 0 (0 = the search's temperature)")])

    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult:
        self._check(models)
        t0 = time.perf_counter()
        tree = Tree(task.prompt(problem))
        spent = Spent()
        for _ in range(self.simulations):
            if budget.max_tokens and spent.generated_tokens >= budget.max_tokens:
                break
            found = tree.terminal[:tree.size] & (tree.visits[:tree.size] > 0)
            if self.max_terminals and int(found.sum()) >= self.max_terminals:
                break
            if self.stop_solved and models.reward is not None \
                    and int((tree.reward[:tree.size] == 1.0).sum()) >= self.stop_solved:
                break  # enough verified solutions to learn from: more simulations only spend tokens
            spent.simulations += 1
            node = self._select(tree, task, models, spent, rng, budget)
            if tree.terminal[node] and self.widen and not np.isnan(tree.evaluation[node]):
                node = self._widen(tree, node, task, models, spent, rng)  # a new candidate, or node again
            if tree.terminal[node]:
                score = self._terminal_score(tree, node, problem, models, spent)
            else:
                self._add_children(tree, node, self._width(tree, node), task, models, spent, rng)
                tree.expanded[node] = True
                score = self._evaluate(tree, node, problem, models, spent, rng)
            backup(tree, node, score)
        chosen = self._choose(tree, task)
        solution = tree.steps(chosen)
        if not tree.terminal[chosen]:  # the chosen path stops short of an answer
            solution += finish_greedily(tree, chosen, models.policy, spent,
                                        max_new_tokens=self.step_max_tokens * self.max_depth)
        spent.seconds = time.perf_counter() - t0
        return SearchResult(answer=task.extract_answer(solution), solution=solution, tree=tree,
                            chosen=chosen, spent=spent)

    def _check(self, models: Models) -> None:
        if self.beta_value and models.value is None:
            raise ValueError("MCTS with beta_value > 0 needs a value critic (models.value)")
        if self.beta_prm and models.prm is None:
            raise ValueError("MCTS with beta_prm > 0 needs a PRM (models.prm)")
        if self.beta_orm and not self.rollouts:
            raise ValueError("MCTS with beta_orm > 0 needs rollouts > 0 (the ORM scores fast rollouts)")

    # ---- selection and width -----------------------------------------------------------
    def _width(self, tree: Tree, node: int) -> int:
        if not self.adaptive:
            return self.branching
        c_min, c_max = (self.c_min_root, self.c_max_root) if node == 0 else (self.c_min, self.c_max)
        return adaptive_width(importance(tree, node), alpha=self.alpha, c_min=c_min, c_max=c_max)

    def _select(self, tree: Tree, task: Task, models: Models, spent: Spent, rng: np.random.Generator,
                budget: Budget) -> int:
        node = 0
        while tree.expanded[node] and not tree.terminal[node]:
            want = self._width(tree, node)
            within_budget = not budget.max_tokens or spent.generated_tokens < budget.max_tokens
            if self.adaptive and len(tree.children[node]) < want and within_budget:
                self._add_children(tree, node, want - len(tree.children[node]), task, models, spent, rng)
            if not tree.children[node]:
                break
            select = puct_select if self.selection == "puct" else uct_select
            node = select(tree, node, c=self.c_uct)
        return node

    def _add_children(self, tree: Tree, node: int, n: int, task: Task, models: Models, spent: Spent,
                      rng: np.random.Generator) -> None:
        temperature = self.temperature
        for _ in range(1 + self.resample):
            samples = sample_steps(models.policy, task, [tree.state(node)], n, temperature=temperature,
                                   max_new_tokens=self.step_max_tokens, seed=int(rng.integers(2**31)))[0]
            n = 0  # the samples that merged, drawn again below
            for s in samples:
                spent.generated_tokens += s.num_tokens
                twin = self._equivalent_sibling(tree, node, s.text)
                if twin is not None:  # state merge: the sample adds nothing new
                    tree.merged[twin] += 1
                    n += 1
                    continue
                ended = task.is_terminal(s.text) or not step_is_complete(task, s)  # an answer, EOS or truncated
                child = tree.add_child(node, s.text, logprob=s.logprob, num_tokens=s.num_tokens, terminal=ended)
                if not ended and tree.depth[child] >= self.max_depth:
                    tree.terminal[child] = True  # out of steps: no answer, the reward scores it 0
            if not n:
                break
            temperature = self.resample_temperature or self.temperature

    def _draws(self, tree: Tree, node: int) -> int:
        """Steps sampled at node so far: its children plus the samples merged into them."""
        return len(tree.children[node]) + int(sum(tree.merged[k] for k in tree.children[node]))

    def _widen(self, tree: Tree, terminal: int, task: Task, models: Models, spent: Spent,
               rng: np.random.Generator) -> int:
        """Sample `widen` more steps at the ancestor of a revisited terminal where the choice matters most.

        That is the ancestor with draws left whose importance I(s) (AlphaLLM eq. 4: how far its children's
        values stray from its own) is largest, the deepest of equals: below a node whose children all score
        alike, such as a wrong step that leads only to its own wrong answer, a new draw changes nothing.
        Returns the first new child (the simulation goes on from it), or the terminal when every ancestor
        has drawn `widen_max_draws` steps or every new sample merged into a known sibling.
        """
        open_ = [n for n in tree.path(terminal)[:-1] if self._draws(tree, n) < self.widen_max_draws]
        if not open_:
            return terminal
        node = max(open_, key=lambda n: (importance(tree, n), tree.depth[n]))
        before = tree.size
        self._add_children(tree, node, min(self.widen, self.widen_max_draws - self._draws(tree, node)), task,
                           models, spent, rng)
        return before if tree.size > before else terminal

    def _equivalent_sibling(self, tree: Tree, node: int, text: str) -> int | None:
        for k in tree.children[node]:
            same = (self.equivalent(tree.text[k], text) if self.equivalent is not None
                    else equivalent_by_edit_distance(tree.text[k], text, self.merge_threshold))
            if same:
                return k
        return None

    # ---- evaluation ------------------------------------------------------------------
    def _evaluate(self, tree: Tree, node: int, problem: Problem, models: Models, spent: Spent,
                  rng: np.random.Generator) -> float:
        """β_value·V(s) + β_prm·PRM(s) + β_orm·mean fast-rollout score (AlphaLLM eq. 6)."""
        state = tree.state(node)
        score = 0.0
        if self.beta_value:
            score += self.beta_value * float(models.value.score([state])[0])
            spent.critic_calls += 1
        if self.beta_prm:
            tree.prm[node] = float(models.prm.score([state])[0])
            spent.critic_calls += 1
            score += self.beta_prm * tree.prm[node]
        if self.beta_orm:
            tree.orm[node] = self._rollout_score(tree, node, problem, models, spent, rng)
            score += self.beta_orm * tree.orm[node]
        tree.evaluation[node] = score
        return score

    def _rollout_score(self, tree: Tree, node: int, problem: Problem, models: Models, spent: Spent,
                       rng: np.random.Generator) -> float:
        """Mean score of `rollouts` completions from node by the rollout policy (fast rollout, §4.3).

        A rollout is scored by the reward when labels are allowed, else by the ORM (or V).
        """
        policy = models.rollout_policy or models.policy
        state = tree.state(node)
        outs = [policy.complete([state], max_new_tokens=self.step_max_tokens * self.max_depth,
                                temperature=self.rollout_temperature, seed=int(rng.integers(2**31)))[0]
                for _ in range(self.rollouts)]
        spent.generated_tokens += sum(o.num_tokens for o in outs)
        steps = tree.steps(node)
        if models.reward is not None:
            return float(np.mean([models.reward(problem, steps + o.text) for o in outs]))
        scorer = models.orm or models.value
        spent.critic_calls += len(outs)
        return float(np.mean(scorer.score([state + o.text for o in outs])))

    def _terminal_score(self, tree: Tree, node: int, problem: Problem, models: Models, spent: Spent) -> float:
        if np.isnan(tree.evaluation[node]):
            if models.reward is not None:
                tree.reward[node] = models.reward(problem, tree.steps(node))
                tree.evaluation[node] = tree.reward[node]
            else:  # critic only: the critics score the finished solution (rollouts have nothing to add)
                score, weight = 0.0, 0.0
                if self.beta_value:
                    score += self.beta_value * float(models.value.score([tree.state(node)])[0])
                    weight += self.beta_value
                    spent.critic_calls += 1
                if models.orm is not None and self.beta_orm:
                    tree.orm[node] = float(models.orm.score([tree.state(node)])[0])
                    score += self.beta_orm * tree.orm[node]
                    weight += self.beta_orm
                    spent.critic_calls += 1
                if self.beta_prm:
                    tree.prm[node] = float(models.prm.score([tree.state(node)])[0])
                    score += self.beta_prm * tree.prm[node]
                    weight += self.beta_prm
                    spent.critic_calls += 1
                tree.evaluation[node] = score / weight if weight else 0.0
        return float(tree.evaluation[node])

    # ---- the answer ------------------------------------------------------------------
    def _choose(self, tree: Tree, task: Task) -> int:
        """The leaf of the final answer: most-visited path, best-scored terminal, or a visit-weighted vote."""
        term = [i for i in range(tree.size) if tree.terminal[i] and not np.isnan(tree.evaluation[i])]
        if self.final == "value" and term:
            return max(term, key=lambda i: (tree.evaluation[i], tree.visits[i]))
        if self.final == "vote" and term:
            answers = [task.extract_answer(tree.steps(i)) for i in term]
            best = majority_vote(answers, tree.visits[term])  # ties: the answer of the lowest node id
            if best is not None:
                return max((i for i, a in zip(term, answers) if a == best),
                           key=lambda i: (tree.visits[i], tree.evaluation[i]))
        node = 0
        while tree.children[node]:
            node = max(tree.children[node], key=lambda k: (tree.visits[k], tree.q(k)))
            if tree.visits[node] == 0:
                break
        return node
