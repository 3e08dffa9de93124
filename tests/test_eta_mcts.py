"""ηMCTS pieces (AlphaLLM §4.3) on scripted models with hand-derived numbers."""
import numpy as np
import pytest

from rl.search import MCTS, Budget, Models, Tree, backup
from rl.search.mcts import adaptive_width, edit_distance, equivalent_by_edit_distance, importance
from rl.search.tree import puct_select
from tests.fakes import ScriptedPolicy, TableCritic
from tests.test_mcts import PROBLEM, PROMPT, ToyTask


def test_adaptive_width_follows_the_formula():
    # n(s) = max(c_min, min(floor(alpha * I) + 1, c_max))
    assert adaptive_width(0.0, alpha=4, c_min=2, c_max=6) == 2          # root floor
    assert adaptive_width(0.3, alpha=4, c_min=2, c_max=6) == 2          # floor(1.2)+1 = 2
    assert adaptive_width(0.5, alpha=4, c_min=2, c_max=6) == 3          # floor(2.0)+1 = 3
    assert adaptive_width(0.9, alpha=4, c_min=2, c_max=6) == 4          # floor(3.6)+1 = 4
    assert adaptive_width(5.0, alpha=4, c_min=2, c_max=6) == 6          # capped at c_max
    assert adaptive_width(0.6, alpha=4, c_min=1, c_max=3) == 3          # below the root: floor(2.4)+1 = 3


def test_importance_is_max_child_deviation():
    t = Tree("p")
    a, b = t.add_child(0, "a"), t.add_child(0, "b")
    backup(t, a, 1.0)
    backup(t, b, 0.0)
    backup(t, b, 0.0)
    # v(root) = 1/3, v(a) = 1, v(b) = 0 -> I = max(2/3, 1/3)
    assert importance(t, 0) == pytest.approx(2 / 3)
    assert importance(t, a) == 0.0                                     # no visited children


def _policy_with_many_root_steps():
    steps = {PROMPT: [f"s{i}\n" for i in range(8)]}
    for i in range(8):
        steps[PROMPT + f"s{i}\n"] = [f"Answer: {i}\n"]
    return ScriptedPolicy(steps)


class CyclingPolicy(ScriptedPolicy):
    """Hands out each state's listed steps in turn across calls, so growing a node yields new steps."""

    def __init__(self, steps):
        super().__init__(steps)
        self.offset = {}

    def sample_steps(self, prefixes, n, **kw):
        out = []
        for p in prefixes:
            texts = self.steps.get(p, [self.completion])
            k = self.offset.get(p, 0)
            self.offset[p] = k + n
            from rl.models.policy import StepSample
            out.append([StepSample(t, len(t), -1.0, True) for t in (texts * 10)[k:k + n]])
        return out


def test_adaptive_branching_widens_the_root_when_children_disagree():
    steps = {PROMPT: [f"s{i}\n" for i in range(8)]}
    for i in range(8):
        steps[PROMPT + f"s{i}\n"] = [f"Answer: {i}\n"]
    values = {PROMPT: 0.5, PROMPT + "s0\n": 1.0, PROMPT + "s1\n": 0.0}
    task = ToyTask()
    models = Models(policy=CyclingPolicy(steps), value=TableCritic(values, default=0.5), reward=task.reward)
    search = MCTS(simulations=4, adaptive=True, alpha=4.0, c_min_root=2, c_max_root=6, c_min=1, c_max=1)
    res = search(PROBLEM, task, models, Budget(), np.random.default_rng(0))
    t = res.tree
    # sim1: root expanded with c_min_root = 2 children (s0, s1), V(root) = 0.5
    # sim2: s0 evaluated (1.0); sim3: s1 evaluated (0.0): v(root) = 0.5, I = 0.5 -> width floor(2)+1 = 3
    # sim4: revisiting the root grows it to 3 children before selecting
    assert [t.text[k] for k in t.children[0]] == ["s0\n", "s1\n", "s2\n"]
    assert all(len(t.children[k]) <= 1 for k in t.children[0])          # c_max = 1 below the root


def test_fixed_width_without_adaptive_branching():
    task = ToyTask()
    models = Models(policy=_policy_with_many_root_steps(), value=TableCritic({}, 0.5), reward=task.reward)
    res = MCTS(simulations=6, branching=3)(PROBLEM, task, models, Budget(), np.random.default_rng(0))
    assert len(res.tree.children[0]) == 3


def test_state_merge_by_edit_distance():
    assert edit_distance("12+3", "12+4") == 1 and edit_distance("", "abc") == 3
    assert equivalent_by_edit_distance("12+3\n", "12+4\n", 0.25)      # 1 / 4 <= 0.25
    assert not equivalent_by_edit_distance("12+3\n", "45-6\n", 0.25)
    steps = {PROMPT: ["total is 12\n", "total is 13\n", "we subtract\n"]}
    task = ToyTask()
    for threshold, kept in ((0.0, 3), (0.1, 2)):
        models = Models(policy=ScriptedPolicy(steps), value=TableCritic({}), reward=task.reward)
        t = MCTS(simulations=1, branching=3, merge_threshold=threshold)(
            PROBLEM, task, models, Budget(), np.random.default_rng(0)).tree
        assert len(t.children[0]) == kept
    assert [t.text[k] for k in t.children[0]] == ["total is 12\n", "we subtract\n"]
    assert t.merged[t.children[0][0]] == 1                              # "total is 13" merged into it


def test_pluggable_equivalence():
    steps = {PROMPT: ["x=1\n", "x = 1\n", "y=2\n"]}
    task = ToyTask()
    models = Models(policy=ScriptedPolicy(steps), value=TableCritic({}), reward=task.reward)
    same = lambda a, b: a.replace(" ", "") == b.replace(" ", "")  # noqa: E731
    t = MCTS(simulations=1, branching=3, equivalent=same)(PROBLEM, task, models, Budget(),
                                                         np.random.default_rng(0)).tree
    assert [t.text[k] for k in t.children[0]] == ["x=1\n", "y=2\n"]


def test_puct_uses_length_normalised_priors():
    t = Tree("p")
    a = t.add_child(0, "aaaa", logprob=-4.0, num_tokens=4)   # -1 per token
    b = t.add_child(0, "b", logprob=-2.0, num_tokens=1)      # -2 per token
    t.visits[0] = 1
    assert puct_select(t, 0, c=1.0) == a                     # higher per-token prior wins at equal Q
    backup(t, a, 0.0)
    backup(t, b, 1.0)
    assert puct_select(t, 0, c=1.0) == b                     # Q dominates once visited


def test_evaluation_mixes_value_prm_and_rollouts():
    steps = {PROMPT: ["a\n"]}
    task = ToyTask()

    class Rollouts(ScriptedPolicy):
        def complete(self, prefixes, **kw):
            from rl.models.policy import StepSample
            self.n = getattr(self, "n", 0) + 1
            text = "Answer: 1\n" if self.n % 2 else "Answer: 2\n"   # alternately right and wrong
            return [StepSample(text, len(text), -1.0, True) for _ in prefixes]

    models = Models(policy=ScriptedPolicy(steps), value=TableCritic({PROMPT: 0.4}),
                    prm=TableCritic({PROMPT: 0.8}), reward=task.reward, rollout_policy=Rollouts({}))
    search = MCTS(simulations=1, branching=1, beta_value=0.5, beta_prm=0.25, beta_orm=0.25, rollouts=2)
    res = search(PROBLEM, task, models, Budget(), np.random.default_rng(0))
    # 0.5 * 0.4 + 0.25 * 0.8 + 0.25 * mean(1, 0) = 0.2 + 0.2 + 0.125
    assert res.tree.evaluation[0] == pytest.approx(0.525)
    assert res.tree.orm[0] == pytest.approx(0.5) and res.tree.prm[0] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="rollouts"):
        MCTS(beta_orm=1.0)(PROBLEM, task, models, Budget(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="PRM"):
        MCTS(beta_prm=1.0)(PROBLEM, task, Models(policy=models.policy, value=models.value),
                           Budget(), np.random.default_rng(0))


def test_stop_after_enough_terminals_and_final_vote():
    steps = {PROMPT: ["Answer: 1\n", "Answer: 2\n", "Answer: 1 \n"]}
    task = ToyTask()
    models = Models(policy=ScriptedPolicy(steps), value=TableCritic({}), reward=None)
    res = MCTS(simulations=10, branching=3, max_terminals=3, final="vote")(
        PROBLEM, task, models, Budget(), np.random.default_rng(0))
    assert res.tree.visits[0] == 4        # expand (1) + one visit to each of the 3 terminals, then stop
    assert res.answer == "1"              # answer 1 holds two terminals of one visit each


def _widening_models(task):
    steps = {PROMPT: ["a\n", "b\n", "c\n", "d\n"], PROMPT + "a\n": ["Answer: 1\n"], PROMPT + "b\n": ["Answer: 2\n"],
             PROMPT + "c\n": ["Answer: 1\n"], PROMPT + "d\n": ["Answer: 1\n"]}
    return Models(policy=CyclingPolicy(steps), value=TableCritic({}, default=0.5), reward=None)


def test_an_exhausted_tree_spends_nothing_without_widening():
    task = ToyTask()
    spent = [MCTS(simulations=s, branching=1)(PROBLEM, task, _widening_models(task), Budget(),
                                              np.random.default_rng(0)).spent.generated_tokens for s in (3, 30)]
    assert spent[0] == spent[1] == len("a\n") + len("Answer: 1\n")   # after sim 3 only the terminal is revisited


def test_widening_samples_at_the_deepest_node_with_draws_left_then_moves_up_when_values_agree():
    task = ToyTask()
    search = MCTS(simulations=6, branching=1, widen=1, widen_max_draws=3)
    t = search(PROBLEM, task, _widening_models(task), Budget(), np.random.default_rng(0)).tree
    # sims 1-3: root -> a -> "Answer: 1" (scored). Sims 4-5 revisit it: a draws "Answer: 1" twice more,
    # both merged (a has drawn 3). Sim 6: a is full, so the root draws "b" and the simulation expands it.
    a = t.children[0][0]
    assert [t.text[k] for k in t.children[a]] == ["Answer: 1\n"] and t.merged[t.children[a][0]] == 2
    assert [t.text[k] for k in t.children[0]] == ["a\n", "b\n"]
    b = t.children[0][1]
    assert t.expanded[b] and [t.text[k] for k in t.children[b]] == ["Answer: 2\n"]
    assert t.visits[0] == 6


def test_widening_samples_where_the_children_disagree_most():
    """V(root) .9, V(a) .2, V(a, Answer: 1) .2. After 3 sims q(root) = (.9+.2+.2)/3 = .433 and q(a) = .2, so
    I(root) = |q(a) - q(root)| = .233 and I(a) = |q(Answer: 1) - q(a)| = 0: sim 4 draws at the root, not at a."""
    task = ToyTask()
    models = _widening_models(task)
    models.value = TableCritic({PROMPT: 0.9, PROMPT + "a\n": 0.2, PROMPT + "a\nAnswer: 1\n": 0.2}, default=0.5)
    t = MCTS(simulations=4, branching=1, widen=1, widen_max_draws=3)(PROBLEM, task, models, Budget(),
                                                                    np.random.default_rng(0)).tree
    a = t.children[0][0]
    assert [t.text[k] for k in t.children[0]] == ["a\n", "b\n"] and t.merged[t.children[a][0]] == 0


def test_widening_stops_at_the_draw_limit_and_the_candidates_vote():
    task = ToyTask()
    res = MCTS(simulations=60, branching=1, widen=1, widen_max_draws=3, final="vote")(
        PROBLEM, task, _widening_models(task), Budget(), np.random.default_rng(0))
    t = res.tree
    assert [t.text[k] for k in t.children[0]] == ["a\n", "b\n", "c\n"]     # the root's 3 draws, none merged
    assert all(len(t.children[k]) == 1 and t.merged[t.children[k][0]] == 2 for k in t.children[0])
    assert res.answer == "1"                                               # a and c say 1, b says 2
    with pytest.raises(ValueError, match="widen"):
        MCTS(widen=-1)


class SharpPolicy(ScriptedPolicy):
    """Below temperature 1 it proposes only each state's first step; hotter, it hands out the others in turn."""

    def __init__(self, steps):
        super().__init__(steps)
        self.temperatures = []
        self.offset = {}

    def sample_steps(self, prefixes, n, *, temperature=1.0, **kw):
        from rl.models.policy import StepSample
        self.temperatures.append(temperature)
        out = []
        for p in prefixes:
            texts = self.steps.get(p, [self.completion])
            if temperature < 1.0 or len(texts) == 1:
                out.append([StepSample(texts[0], len(texts[0]), -1.0, True) for _ in range(n)])
                continue
            k = self.offset.get(p, 0)
            self.offset[p] = k + n
            rest = texts[1:] * 10
            out.append([StepSample(t, len(t), -1.0, True) for t in rest[k:k + n]])
        return out


def _sharp_models():
    steps = {PROMPT: ["a\n", "b\n", "c\n"], PROMPT + "a\n": ["Answer: 1\n"], PROMPT + "b\n": ["Answer: 2\n"],
             PROMPT + "c\n": ["Answer: 3\n"]}
    return Models(policy=SharpPolicy(steps), value=TableCritic({}, default=0.5), reward=None)


def test_resampling_redraws_merged_samples_hotter_and_gives_the_search_other_candidates():
    task = ToyTask()
    plain = MCTS(simulations=1, branching=3, temperature=0.8)(PROBLEM, task, _sharp_models(), Budget(),
                                                              np.random.default_rng(0)).tree
    assert [plain.text[k] for k in plain.children[0]] == ["a\n"] and plain.merged[plain.children[0][0]] == 2
    models = _sharp_models()
    t = MCTS(simulations=1, branching=3, temperature=0.8, resample=1, resample_temperature=1.5)(
        PROBLEM, task, models, Budget(), np.random.default_rng(0)).tree
    assert [t.text[k] for k in t.children[0]] == ["a\n", "b\n", "c\n"]   # the 2 merged draws, redrawn hotter
    assert models.policy.temperatures == [0.8, 1.5]


def test_resampling_stops_when_nothing_merged_or_after_its_rounds():
    task = ToyTask()
    models = _sharp_models()
    models.policy = SharpPolicy({PROMPT: ["a\n"]})   # only one step there is: every redraw merges again
    t = MCTS(simulations=1, branching=2, temperature=0.8, resample=3)(PROBLEM, task, models, Budget(),
                                                                      np.random.default_rng(0)).tree
    assert len(t.children[0]) == 1 and t.merged[t.children[0][0]] == 1 + 3   # 1 merged, then 3 rounds of 1
    assert models.policy.temperatures == [0.8] * 4                         # 0: the search's own temperature
    with pytest.raises(ValueError, match="resample"):
        MCTS(resample=-1)


def _solved(tree):
    return int((tree.reward[:tree.size] == 1.0).sum())


def test_training_search_stops_once_enough_terminals_are_verified():
    steps = {PROMPT: ["Answer: 2\n", "Answer: 1\n", "Answer: 1 \n"]}
    task = ToyTask()
    def run(stop_solved, reward):
        models = Models(policy=ScriptedPolicy(steps), value=TableCritic({}), reward=reward)
        return MCTS(simulations=12, branching=3, stop_solved=stop_solved)(
            PROBLEM, task, models, Budget(), np.random.default_rng(0))
    full = run(0, task.reward)
    assert full.tree.visits[0] == 12 and _solved(full.tree) == 2   # both right terminals, then revisits
    one, two = run(1, task.reward), run(2, task.reward)
    assert _solved(one.tree) == 1 and one.tree.visits[0] < two.tree.visits[0] < 12
    assert _solved(two.tree) == 2
    assert full.spent.simulations == 12 and one.spent.simulations < two.spent.simulations < 12  # counted as run
    assert one.spent.generated_tokens <= full.spent.generated_tokens
    # evaluation has no reward: the setting never stops it
    assert run(1, None).tree.visits[0] == 12
    with pytest.raises(ValueError, match="stop_solved"):
        MCTS(stop_solved=-1)
