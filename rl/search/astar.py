"""A* over reasoning steps, guided by a Q-value heuristic (Q*, Wang et al. 2024).

Reasoning is a deterministic MDP (Q* §3): a state s is the prompt plus the steps so
far, an action a is the next step. A* keeps one open set over states of every depth and
always pops the state with the largest

    f(s) = g(s) + lam * h(s)                              (Q* §4: A* with a learned heuristic)
    g(s) = Agg(r_1, ..., r_t),  r_i = PRM(prompt + steps 1..i)     (Q* §4: utility aggregation)
                                or r_i = the task's rule-based utility of step i (g_source="rule")
    h(s) = max_{a in top-K(pi(.|s))} Q(s, a)               (Q* §4: h from the optimal Q-value)

with Agg one of min / max / sum / last / zero (g = 0 at the root, which has no steps).
Rewards and Q are "higher is better", so the open set is a max-heap on f.

Design choices:
- Candidates are sampled when a state is *pushed*: its K steps are drawn once, scored by Q
  (that gives h(s)) and stored; when the state is popped those same steps become its
  children and are pushed in turn. So each step is generated once and used twice (for h
  of its parent, then as a child); the cost is that a pushed state's K steps are drawn
  even if it is never popped, since its h needs them.
  Identical samples under one state are one candidate (one child, one Q call).
- A terminal state (an answer step, a step its termination did not end, or a non-terminal step at
  max_depth, which then has no answer) gets h = 0, so f = g: nothing comes after it (Q*
  §3: the episode ends), and with an optimistic heuristic (f of every open state >= the
  best f of any terminal below it) the first terminal popped is the best one. With
  g_source="zero" every terminal has f = 0 and the search is best-first on h over the
  non-terminal frontier; terminals are then taken in the order they were pushed.
- With `redraws` = R > 0, an expanded state goes back into the open set and, popped again, draws top_k
  fresh candidates (a text it already has is dropped), up to R times. It waits at the f of a fresh step
  with the best reward (r = 1, critics score in [0, 1]) and nothing known after it (h = 0):
  f = Agg(r_1, ..., r_t, 1), which for min is g(s), and 1 at the root. A redraw thus runs only when no
  open state scores higher: with a rule-based g (1 while every step is right) a right state, the root
  included, draws again before A* descends into a wrong one, and a larger budget buys more draws instead
  of ending at a wrong terminal. R = 0 is Q*'s A*.
- Ties in f go to the state pushed first: the heap holds (-f, rank, node id) with rank = the node id,
  and node ids are handed out in push order. A redraw's rank is -depth, so among equal f redraws come
  first, the deepest first: under min, every right state waits at the same f = g, and the deepest is the
  one whose own draws went wrong.
- The search stops at the first terminal popped (Q*), or with `solutions` = M > 1 once M terminals
  were popped (the next best solutions in f order, which a larger budget can buy); with final="vote"
  the popped terminals vote, each for its answer with weight f (the answer's best-f terminal is
  chosen), with final="first" the first one popped is the answer. It also stops after max_expansions
  pops, or, before a
  pop, once spent.generated_tokens >= budget.max_tokens (0 = no cap); one batched policy
  call that starts under the cap runs to the end; the root's candidates are always drawn. Without
  a popped terminal the answer is the best open state (the next one A* would pop),
  completed greedily by the policy when it is not terminal; that completion always runs so
  every result carries a full solution, and may overshoot the cap.
- Critics: g reads models.prm (fallback models.value; not called when g_source="zero" or
  g_agg="zero"), or with g_source="rule" the task's step_utilities (rl.grading.RuleCritic, no model);
  h reads models.q (fallback models.value); both are checked before any generation. critic_calls
  counts texts scored, one per (state) or (state, step).
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from rl.grading.rule_critic import RuleCritic
from rl.search.sampling import majority_vote
from rl.search.tree import Tree
from rl.search.types import (Budget, Models, SearchResult, Spent, check_fields, finish_greedily, sample_steps,
                             step_is_complete)
from rl.tasks.base import Problem, Task

if TYPE_CHECKING:  # rl.models.policy imports torch; search code only reads the dataclass
    from rl.models.policy import StepSample

AGGREGATIONS = ("min", "max", "sum", "last", "zero")
G_SOURCES = ("prm", "rule", "zero")


def aggregate(rewards: Sequence[float], agg: str) -> float:
    """g(s): the per-step rewards r_1..r_t of a path folded into one utility (Q* §4).

    An empty path (the root) and agg="zero" give 0.
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {agg!r}; known: {', '.join(AGGREGATIONS)}")
    if agg == "zero" or len(rewards) == 0:
        return 0.0
    if agg == "min":
        return float(min(rewards))
    if agg == "max":
        return float(max(rewards))
    if agg == "sum":
        return float(sum(rewards))
    return float(rewards[-1])  # last


def heuristic(q_values: Sequence[float]) -> float:
    """h(s) = max over the candidate steps' Q(s, a) (Q* §4); 0 when s has no candidates."""
    return float(max(q_values)) if len(q_values) else 0.0


def f_score(g: float, h: float, *, lam: float) -> float:
    """f(s) = g(s) + lam * h(s) (Q* §4)."""
    return g + lam * h


@dataclass
class AStarResult(SearchResult):
    """A SearchResult plus the A* bookkeeping, per node id ([N] = tree.size).

    The tree holds the rest: f in tree.evaluation, each step's reward r in tree.prm (nan if unscored),
    Q(parent, step) in tree.step_q (nan at the root).
    """
    popped: list[int] = field(default_factory=list)                 # node ids in pop (expansion) order
    g: np.ndarray = field(default_factory=lambda: np.zeros(0))      # [N] aggregated process reward
    h: np.ndarray = field(default_factory=lambda: np.zeros(0))      # [N] max Q over the node's candidates


@dataclass
class _State:
    """The open heap and g, h per node id (lists: they grow with the tree; r and Q live in the tree's arrays)."""
    g: list[float] = field(default_factory=lambda: [0.0])
    h: list[float] = field(default_factory=lambda: [0.0])
    candidates: dict[int, list[tuple[StepSample, float]]] = field(default_factory=dict)  # open node -> [(step, Q)]
    heap: list[tuple[float, int, int]] = field(default_factory=list)  # (-f, rank, node id); see the module doc

    def grow(self, size: int) -> None:
        """Pad the per-node lists to `size` nodes (new nodes: g = h = 0)."""
        for values in (self.g, self.h):
            values += [0.0] * (size - len(values))


@dataclass(frozen=True)
class AStar:
    """Q* (Wang et al. 2024, §4): A* on f(s) = g(s) + lam * h(s), h(s) = max over top-K steps of Q(s, a)."""
    top_k: int = 6                  # candidate steps sampled per state (the K of h's top-K)
    lam: float = 1.0                # weight of the heuristic; 0 = best-first on g
    g_agg: Literal["min", "max", "sum", "last", "zero"] = "min"
    # where per-step rewards come from: the PRM, the task's rule-based utility, or none ("zero": best-first on h)
    g_source: Literal["prm", "rule", "zero"] = "prm"
    max_expansions: int = 32        # states popped at most (the root included)
    temperature: float = 1.0
    step_max_tokens: int = 24
    max_depth: int = 8              # a non-terminal step at this depth ends the path with no answer
    # h of a terminal state: "zero" as in Q* (nothing follows it), or "q": the Q(s, a) of the final step that
    # led to it, the Q model's estimate that the finished solution is right. With critics in [0, 1] and
    # h = 0 at terminals, f = g + lam*h ranks every open non-terminal state above the terminals, so A*
    # pops a terminal only after exhausting the better-scored frontier; "q" puts both on the same scale.
    terminal_h: Literal["zero", "q"] = "zero"
    solutions: int = 1              # terminals to pop before stopping (1 = Q*'s first terminal)
    final: Literal["first", "vote"] = "first"   # among the popped terminals: the first, or an f-weighted vote
    # times an expanded state may draw top_k fresh candidates; it waits in the open set at the f of one more
    # step of reward 1 (g(s) for min), so a redraw runs only when no open state scores higher (0 = Q*'s A*)
    redraws: int = 0

    def __post_init__(self):
        check_fields(self, [
            ("g_agg", self.g_agg in AGGREGATIONS, f"one of {', '.join(AGGREGATIONS)}"),
            ("terminal_h", self.terminal_h in ("zero", "q"), "one of zero, q"),
            ("g_source", self.g_source in G_SOURCES, f"one of {', '.join(G_SOURCES)}"),
            ("final", self.final in ("first", "vote"), "one of first, vote"),
            *[(name, getattr(self, name) >= 1, "must be >= 1")
              for name in ("top_k", "max_expansions", "max_depth", "step_max_tokens", "solutions")],
            ("redraws", self.redraws >= 0, "must be >= 0 (0 = off)"),
            ("lam", self.lam >= 0, "must be >= 0 (a negative weight prefers states Q rates low)"),
            ("temperature", self.temperature >= 0, "must be >= 0")])

    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> AStarResult:
        prm, q_critic = self._critics(models, task)  # before sampling: fail without spending tokens
        t0 = time.perf_counter()
        tree = Tree(task.prompt(problem))
        spent = Spent()
        st = _State()
        self._push(tree, [0], st, task, models, prm, q_critic, spent, rng)

        popped: list[int] = []
        found: list[int] = []  # terminals popped, in pop order
        redraws: dict[int, int] = {}  # expanded state -> fresh draws it may still make
        chosen = None
        while st.heap and len(popped) < self.max_expansions:
            if budget.max_tokens and spent.generated_tokens >= budget.max_tokens:
                break  # pushing children samples their candidates: no new generation past the cap
            _, _, node = heapq.heappop(st.heap)
            popped.append(node)
            tree.visits[node] = 1  # exports show which states A* expanded; `popped` keeps the order
            if tree.terminal[node]:
                found.append(node)
                if len(found) >= self.solutions:
                    break
                continue
            if tree.expanded[node]:  # a redraw: fresh candidates for a state popped before
                candidates = self._draw(tree, [node], task, models, q_critic, spent, rng)[0]
                redraws[node] -= 1
            else:  # sampled when node was pushed: its children now
                candidates = st.candidates.pop(node)
                redraws[node] = self.redraws
            children = [tree.add_child(node, s.text, logprob=s.logprob, terminal=self._ends(task, s, tree, node))
                        for s, _ in candidates]
            st.grow(tree.size)
            for child, (_, q) in zip(children, candidates):
                tree.step_q[child] = q
            tree.expanded[node] = True
            self._push(tree, children, st, task, models, prm, q_critic, spent, rng)
            if redraws[node] > 0:  # back in the open set: a fresh step of reward 1, nothing known after it
                heapq.heappush(st.heap, (-self._redraw_f(tree, node, prm), -int(tree.depth[node]), node))

        solution_tail = ""
        if found:
            chosen = found[0] if self.final == "first" else self._vote(tree, task, found)
        if chosen is None:
            if st.heap:
                chosen = st.heap[0][2]  # the best open state: the one A* would pop next
            else:  # every state was popped and none had candidates: the best f anywhere (first of equals)
                chosen = int(np.argmax(tree.evaluation[:tree.size]))
            if not tree.terminal[chosen]:  # stops short of an answer: finish it greedily
                solution_tail = finish_greedily(tree, chosen, models.policy, spent,
                                                max_new_tokens=self.step_max_tokens * self.max_depth)
        solution = tree.steps(chosen) + solution_tail
        spent.seconds = time.perf_counter() - t0
        return AStarResult(answer=task.extract_answer(solution), solution=solution, tree=tree, chosen=chosen,
                           spent=spent, popped=popped, g=np.array(st.g), h=np.array(st.h))

    @staticmethod
    def _vote(tree: Tree, task: Task, found: list[int]) -> int:
        """The best-f terminal of the answer with the largest total f over the popped terminals.

        Ties (in total or in f) go to the one popped first; terminals without an answer do not vote.
        """
        answers = [task.extract_answer(tree.steps(i)) for i in found]
        best = majority_vote(answers, tree.evaluation[found])
        if best is None:
            return found[0]
        return max((i for i, a in zip(found, answers) if a == best),
                   key=lambda i: (tree.evaluation[i], -found.index(i)))

    def _critics(self, models: Models, task: Task) -> tuple[object | None, object]:
        """(PRM, or None when g is 0 by construction; Q critic). ValueError naming every missing critic."""
        missing = []
        q_critic = models.q if models.q is not None else models.value
        if q_critic is None:
            missing.append("models.q (h = max Q(s, a))")
        prm = None
        if self.g_source == "rule" and self.g_agg != "zero":
            prm = RuleCritic(task, "prm", key='AStar.g_source="rule"')
        if self.g_source == "prm" and self.g_agg != "zero":  # g = 0 otherwise: no rewards to read
            prm = models.prm if models.prm is not None else models.value
            if prm is None:
                missing.append('models.prm (g with g_source="prm")')
        if missing:
            raise ValueError(f"AStar needs {' and '.join(missing)}; it is None and so is the fallback models.value")
        return prm, q_critic

    def _ends(self, task: Task, step: StepSample, tree: Tree, parent: int) -> bool:
        """True when a step ends its path: an answer, a step its termination did not end (EOS or truncated),
        or max_depth reached."""
        return (task.is_terminal(step.text) or not step_is_complete(task, step)
                or tree.depth[parent] + 1 >= self.max_depth)

    def _redraw_f(self, tree: Tree, node: int, prm) -> float:
        """f of a redraw at node: g of its path extended by a step of reward 1, with h = 0."""
        if prm is None:
            return 0.0  # g is 0 everywhere
        return f_score(aggregate([*tree.prm[tree.path(node)[1:]], 1.0], self.g_agg), 0.0, lam=self.lam)

    def _draw(self, tree: Tree, nodes: list[int], task: Task, models: Models, q_critic, spent: Spent,
              rng: np.random.Generator) -> list[list[tuple[StepSample, float]]]:
        """top_k candidate steps per node with their Q(s, a): one batched policy call, one batched Q call.

        A node's identical samples, and samples equal to a step it already has as a child, are one
        candidate or none (one child, one Q call).
        """
        samples = sample_steps(models.policy, task, [tree.state(i) for i in nodes], self.top_k,
                               temperature=self.temperature, max_new_tokens=self.step_max_tokens,
                               seed=int(rng.integers(2**31)))
        pairs: list[tuple[int, StepSample]] = []  # (index into nodes, StepSample), distinct texts per node
        for k, (i, steps) in enumerate(zip(nodes, samples)):
            seen = {tree.text[c] for c in tree.children[i]}
            for s in steps:
                spent.generated_tokens += s.num_tokens
                if s.text in seen:
                    continue
                seen.add(s.text)
                pairs.append((k, s))
        q_values = np.asarray(q_critic.score([tree.state(nodes[k]) + s.text for k, s in pairs]),
                              dtype=np.float64) if pairs else np.zeros(0)  # [len(pairs)]
        spent.critic_calls += len(pairs)
        out: list[list[tuple[StepSample, float]]] = [[] for _ in nodes]
        for (k, s), qv in zip(pairs, q_values):
            out[k].append((s, float(qv)))
        return out

    def _push(self, tree: Tree, nodes: list[int], st: _State, task: Task, models: Models, prm, q_critic,
              spent: Spent, rng: np.random.Generator) -> None:
        """Give each new node g, candidates, h and f, and put it on the open heap (in id order).

        One batched call each: PRM on the nodes, policy on the non-terminal nodes, Q on all
        (node, candidate) pairs.
        """
        stepped = [i for i in nodes if i > 0]  # the root has no step to reward
        if prm is not None and stepped:
            rewards = np.asarray(prm.score([tree.state(i) for i in stepped]), dtype=np.float64)  # [len(stepped)]
            spent.critic_calls += len(stepped)
            tree.prm[stepped] = rewards
        for i in nodes:
            path_rewards = [tree.prm[j] for j in tree.path(i)[1:]]
            st.g[i] = aggregate(path_rewards, self.g_agg) if prm is not None else 0.0

        live = [i for i in nodes if not tree.terminal[i]]
        if live:
            for i, drawn in zip(live, self._draw(tree, live, task, models, q_critic, spent, rng)):
                st.candidates[i] = drawn
                st.h[i] = heuristic([qv for _, qv in drawn])

        for i in nodes:  # terminals keep h = 0 (f = g), or take their final step's Q with terminal_h="q"
            if tree.terminal[i] and self.terminal_h == "q" and i > 0:
                st.h[i] = tree.step_q[i]
            f = f_score(st.g[i], st.h[i], lam=self.lam)
            tree.evaluation[i] = f
            heapq.heappush(st.heap, (-f, i, i))
