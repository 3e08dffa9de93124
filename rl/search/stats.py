"""How diverse a search was: counts over one tree (tree_stats), and their means over a round (diversity_metrics).

Plain arrays and a task, no models: the rollout worker counts each tree after its search, the controller
logs the round's figures under search/ (see diversity_metrics).
"""
from __future__ import annotations

from dataclasses import dataclass

from rl.search.tree import Tree
from rl.tasks.base import Problem, Task

# the round's figures, logged as search/<key> and kept in summary.json as search_<key>
DIVERSITY_KEYS = ("distinct_children", "merged_samples", "merged_frac", "unique_answers", "pass_any", "multi_path",
                  "nodes_expanded", "depth", "terminals", "simulations")


@dataclass
class SearchStats:
    """Counts of one search tree."""
    expanded: int           # nodes with at least one child
    children: int           # distinct child states (step texts) summed over those nodes
    sampled: int            # child nodes plus merged samples: the steps the search kept or folded in
    merged: int             # sampled steps folded into an existing sibling (state merge, Tree.merged)
    answers: int            # distinct final answers among the complete solutions in the tree
    solved: bool            # some complete solution in the tree has the right answer
    paths: int = 0          # complete solutions (terminal nodes whose steps hold an answer)
    depth: int = 0          # steps from the root to the deepest node
    simulations: int = 0    # simulations the search ran (MCTS; 0 for methods without them)


def tree_stats(tree: Tree, task: Task, problem: Problem, simulations: int = 0) -> SearchStats:
    """Diversity counts of one tree. A complete solution is a terminal node whose steps hold an answer
    (task.extract_answer is not None); a path that stopped without one (EOS, truncated, out of depth)
    counts for nothing, nor does the greedy finish of a chosen path that stops short (it is not in the tree)."""
    parents = [i for i in range(tree.size) if tree.children[i]]
    children = sum(len({tree.text[k] for k in tree.children[i]}) for i in parents)
    merged = int(tree.merged[:tree.size].sum())
    answers, paths = set(), 0
    for i in range(1, tree.size):
        if tree.terminal[i]:
            a = task.extract_answer(tree.steps(i))
            if a is not None:
                answers.add(a.strip())
                paths += 1
    return SearchStats(expanded=len(parents), children=children, sampled=tree.size - 1 + merged, merged=merged,
                       answers=len(answers), solved=any(task.is_correct(problem, a) for a in answers), paths=paths,
                       depth=int(tree.depth[:tree.size].max(initial=0)), simulations=simulations)


def diversity_metrics(stats: list[SearchStats]) -> dict[str, float]:
    """The round's figures under search/ ({} without searches):

        distinct_children  distinct child states per expanded node (all the round's expansions pooled)
        merged_samples     sampled steps folded into an existing sibling, in all
        merged_frac        ... as a fraction of the steps sampled (child nodes plus merged samples)
        unique_answers     distinct final answers per problem, mean over the round's problems
        pass_any           problems with a right answer among the complete solutions the search reached
                           (pass@k of the policy's samples inside the search)
        multi_path         problems whose tree holds more than one complete solution
        nodes_expanded     expanded nodes per tree (mean); depth: the deepest node's steps (mean)
        terminals          complete solutions per tree (mean); simulations: simulations per search (mean)
    """
    if not stats:
        return {}
    n = len(stats)
    expanded, sampled, merged = (sum(getattr(s, k) for s in stats) for k in ("expanded", "sampled", "merged"))
    return {"search/distinct_children": sum(s.children for s in stats) / expanded if expanded else 0.0,
            "search/merged_samples": merged,
            "search/merged_frac": merged / sampled if sampled else 0.0,
            "search/unique_answers": sum(s.answers for s in stats) / n,
            "search/pass_any": sum(s.solved for s in stats) / n,
            "search/multi_path": sum(s.paths > 1 for s in stats) / n,
            "search/nodes_expanded": expanded / n, "search/depth": sum(s.depth for s in stats) / n,
            "search/terminals": sum(s.paths for s in stats) / n,
            "search/simulations": sum(s.simulations for s in stats) / n}
