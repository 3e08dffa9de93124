"""Search methods behind one protocol; chosen by name from SEARCHES and built from a SearchConfig."""
import dataclasses
import re

from rl.search.astar import AStar
from rl.search.beam import StepBeam
from rl.search.greedy import Greedy, greedy_batch
from rl.search.mcts import MCTS
from rl.search.sampling import BestOfN, SelfConsistency, WeightedVote
from rl.search.tree import Tree, backup, puct_select, uct_select
from rl.search.types import Budget, Models, Search, SearchResult, Spent

SEARCHES = {"greedy": Greedy, "sc": SelfConsistency, "wvote": WeightedVote, "bon": BestOfN, "beam": StepBeam,
            "mcts": MCTS, "astar": AStar}

# method field -> SearchConfig field, where the names differ (the rest share their names)
_CONFIG_NAMES = {
    "sc": {"n": "samples", "batch_size": "samples_batch"}, "wvote": {"n": "samples", "batch_size": "samples_batch"},
    "bon": {"n": "samples", "batch_size": "samples_batch"},
    "beam": {"expand": "beam_expand"},
    "astar": {"top_k": "astar_top_k", "lam": "astar_lam", "g_agg": "astar_g_agg", "g_source": "astar_g_source",
              "max_expansions": "astar_max_expansions", "terminal_h": "astar_terminal_h",
              "temperature": "astar_temperature", "solutions": "astar_solutions",
              "final": "astar_final", "redraws": "astar_redraws"},
}

__all__ = ["SEARCHES", "AStar", "BestOfN", "Budget", "Greedy", "MCTS", "Models", "Search", "SearchResult",
           "SelfConsistency", "Spent", "StepBeam", "Tree", "WeightedVote", "backup", "build_search",
           "check_search_config", "greedy_batch", "puct_select", "uct_select"]


def build_search(method: str, cfg) -> Search:
    """A search of the named method, its hyperparameters taken from a SearchConfig by field name.

    A whole-solution length cap (`max_new_tokens`) is step_max_tokens * max_depth.
    """
    if method not in SEARCHES:
        raise ValueError(f"unknown search method {method!r}; known: {', '.join(SEARCHES)}")
    cls = SEARCHES[method]
    names = _CONFIG_NAMES.get(method, {})
    kwargs = {}
    for f in dataclasses.fields(cls):
        source = names.get(f.name, f.name)
        if f.name == "max_new_tokens":
            kwargs[f.name] = cfg.step_max_tokens * cfg.max_depth
        elif hasattr(cfg, source):
            kwargs[f.name] = getattr(cfg, source)
    return cls(**kwargs)


def check_search_config(cfg) -> None:
    """Build every method from a SearchConfig; ValueError "search.<key> = <value>: <rule> (read by <method>)".

    The methods' own checks (check_fields in their __post_init__) are the rules; this names the config key.
    """
    for method, cls in SEARCHES.items():
        try:
            build_search(method, cfg)
        except ValueError as e:
            found = re.match(rf"{cls.__name__}\.(\w+) = ", str(e))
            if found is None:
                raise
            field = found.group(1)
            key = ("step_max_tokens * search.max_depth" if field == "max_new_tokens"
                   else _CONFIG_NAMES.get(method, {}).get(field, field))
            raise ValueError(f"search.{key}{str(e)[found.end(1):]} (read by {method})") from None
