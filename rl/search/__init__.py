"""Search methods behind one protocol; chosen by name from SEARCHES."""
from rl.search.greedy import Greedy, greedy_batch
from rl.search.mcts import MCTS
from rl.search.tree import Tree, backup, uct_select
from rl.search.types import Budget, Models, Search, SearchResult, Spent

SEARCHES = {"greedy": Greedy, "mcts": MCTS}

__all__ = ["SEARCHES", "Budget", "build_search", "Greedy", "MCTS", "Models", "Search", "SearchResult", "Spent", "Tree",
           "backup", "greedy_batch", "uct_select"]


def build_search(method: str, cfg) -> Search:
    """A search of the named method with hyperparameters from a SearchConfig."""
    if method == "greedy":
        return Greedy(max_new_tokens=cfg.step_max_tokens * cfg.max_depth)
    if method == "mcts":
        return MCTS(simulations=cfg.simulations, branching=cfg.branching, c_uct=cfg.c_uct, max_depth=cfg.max_depth,
                    temperature=cfg.temperature, step_max_tokens=cfg.step_max_tokens, final=cfg.final)
    raise ValueError(f"unknown search method {method!r}; known: {', '.join(SEARCHES)}")
