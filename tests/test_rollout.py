import numpy as np
import pytest

from rl.config import EmbeddedModelConfig, SearchConfig
from rl.rollout import RolloutWorker
from rl.tasks import ArithmeticTask
from tests.conftest import EASY

SEARCH = SearchConfig(simulations=4, branching=2, max_depth=4, step_max_tokens=8)


def _check_batch(batch, problems, version):
    assert [r.id for r in batch.records] == [p.id for p in problems]
    assert batch.nodes, "searches produce node experiences"
    assert all(n.policy_version == version and n.critic_version == version for n in batch.nodes)
    ids = [n.id for n in batch.nodes]
    assert len(ids) == len(set(ids))                             # stable, unique record ids
    for n in batch.nodes:
        assert n.state.startswith("Q: ") and n.state.endswith(n.step)
        if not np.isnan(n.value_target):
            assert 0.0 <= n.value_target <= 1.0
    for t in batch.trajectories:                                 # only right answers are kept
        p = next(p for p in problems if p.id == t.problem_id)
        assert ArithmeticTask(EASY).reward(p, t.solution) == 1.0


def test_worker_without_ray(tiny_model_dir):
    task = ArithmeticTask(EASY)
    worker = RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), seed=0)
    problems = task.generate(3, 0, "train")
    batch = worker.search(problems)
    _check_batch(batch, problems, 0)
    recs = worker.evaluate(problems, "greedy")
    assert [r.id for r in recs] == [p.id for p in problems] and all(r.tokens > 0 for r in recs)
    task_ = worker.task   # the record carries the chosen steps: its prediction is what they answer
    assert all(r.solution and task_.extract_answer(r.solution) == r.prediction for r in recs)
    recs = worker.evaluate(problems, "mcts")
    assert len(recs) == 3 and all(task_.extract_answer(r.solution) == r.prediction for r in recs)
    with pytest.raises(ValueError, match="unknown search method"):
        worker.evaluate(problems, "dfs")


def test_worker_with_the_engine_backend(tiny_model_dir):
    task = ArithmeticTask(EASY)
    worker = RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), seed=0, backend="engine")
    problems = task.generate(2, 5, "train")
    _check_batch(worker.search(problems), problems, 0)
    hf = RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), seed=0)
    # greedy decoding is token-identical between the two backends
    assert [r.prediction for r in worker.evaluate(problems, "greedy")] == \
        [r.prediction for r in hf.evaluate(problems, "greedy")]
    with pytest.raises(ValueError, match="model.backend"):
        RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), backend="vllm")


@pytest.mark.ray
def test_worker_through_ray_shell(tiny_model_dir, ray_local):
    from actors.rollout import RolloutActor
    task = ArithmeticTask(EASY)
    actor = RolloutActor.options(num_cpus=0.5).remote(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), seed=0)
    problems = task.generate(2, 1, "train")
    batch = ray_local.get(actor.search.remote(problems))
    _check_batch(batch, problems, 0)
    # a weight push between searches: the actor confirms the version and tags new records with it
    local = RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir))
    weights = {"policy": local.policy.weights(), "value": local.value.weights()}
    assert ray_local.get(actor.load_weights.remote(7, ray_local.put(weights))) == 7
    _check_batch(ray_local.get(actor.search.remote(problems)), problems, 7)


def test_worker_makes_math_shepherd_and_stronger_policy_labels(tiny_model_dir):
    from rl.config import LabelsConfig
    task = ArithmeticTask(EASY)
    labels = LabelsConfig(q_source="stronger", stronger_policy=str(tiny_model_dir), prm_completions=3, prm_paths=2)
    worker = RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), seed=0,
                           critics=("q", "prm"), labels=labels)
    assert set(worker.weights()) == {"policy", "value", "q", "prm"}
    problems = task.generate(2, 2, "train")
    batch = worker.search(problems)
    prm = [e for e in batch.examples if e.kind == "prm"]
    q = [e for e in batch.examples if e.kind == "q"]
    assert prm and len({e.id for e in prm}) == len(prm)
    steps = {n.state: n for n in batch.nodes}
    for e in prm:   # a step prefix of the searched tree, labelled by the fraction of 3 completions
        assert e.text in steps and e.target in (0.0, 1 / 3, 2 / 3, 1.0)
    # Q from the stronger policy: one label per searched node, a 0/1 reward of its completion
    assert sorted(e.text for e in q) == sorted(steps) and {e.target for e in q} <= {0.0, 1.0}
    for e in q:     # terminal nodes are labelled by their own reward
        n = steps[e.text]
        if not np.isnan(n.terminal_reward):
            assert e.target == n.terminal_reward
    with pytest.raises(ValueError, match="labels.stronger_policy"):
        RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), critics=("q",),
                      labels=LabelsConfig(q_source="stronger"))
    with pytest.raises(ValueError, match="lack"):   # a push without the prm critic's weights is refused
        worker.load_weights(3, {"policy": worker.policy.weights(), "value": worker.value.weights()})


def test_threaded_searches_share_the_engine(tiny_model_dir):
    task = ArithmeticTask(EASY)
    worker = RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), seed=0, backend="engine",
                           threads=3)
    problems = task.generate(4, 6, "train")
    _check_batch(worker.search(problems), problems, 0)
    recs = worker.evaluate(problems, "mcts")
    assert [r.id for r in recs] == [p.id for p in problems] and all(r.tokens > 0 for r in recs)
    with pytest.raises(ValueError, match="rollout.search_threads"):
        RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), threads=2)


def test_orm_filter_picks_the_best_scored_terminal_above_the_threshold(tiny_model_dir):
    from rl.config import LabelsConfig
    task = ArithmeticTask(EASY)
    problems = task.generate(3, 9, "train")
    kept = RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), seed=0,
                         labels=LabelsConfig(sft_filter="orm", sft_orm_threshold=0.0)).search(problems)
    assert len(kept.trajectories) == 3      # every search reached a terminal; threshold 0 keeps them all
    for t in kept.trajectories:             # the reward is the critic's score, not the verifier's
        assert 0.0 < t.reward < 1.0
    none = RolloutWorker(task, SEARCH, str(tiny_model_dir), str(tiny_model_dir), seed=0,
                         labels=LabelsConfig(sft_filter="orm", sft_orm_threshold=1.0)).search(problems)
    assert none.trajectories == []          # a sigmoid never exceeds 1


def test_several_distinct_verified_trajectories_per_prompt(tiny_model_dir):
    from rl.config import LabelsConfig

    class AcceptAll(ArithmeticTask):  # every terminal verified: the cap and the deduplication decide
        def reward(self, problem, solution):
            return 1.0

    task = AcceptAll(EASY)
    problems = task.generate(3, 0, "train")
    cfg = SearchConfig(simulations=8, branching=3, max_depth=3, step_max_tokens=8, temperature=1.5)
    one = RolloutWorker(task, cfg, str(tiny_model_dir), str(tiny_model_dir), seed=0).search(problems)
    many = RolloutWorker(task, cfg, str(tiny_model_dir), str(tiny_model_dir), seed=0,
                         labels=LabelsConfig(sft_per_prompt=3)).search(problems)
    assert len(one.trajectories) == 3                                   # the best per prompt
    assert len(many.trajectories) > 3
    for p in problems:
        mine = [t for t in many.trajectories if t.problem_id == p.id]
        assert 1 <= len(mine) <= 3 and len({" ".join(t.solution.split()) for t in mine}) == len(mine)
        assert mine[0] == next(t for t in one.trajectories if t.problem_id == p.id)  # the best comes first
    assert len({t.id for t in many.trajectories}) == len(many.trajectories)


class _Recording:
    """Delegates to a real policy and records the states it was asked to complete."""

    def __init__(self, inner):
        self.inner, self.completed = inner, []

    def complete(self, prefixes, **kw):
        self.completed += list(prefixes)
        return self.inner.complete(prefixes, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("backend", ["hf", "engine"])
def test_fast_rollouts_come_from_the_rollout_policy(tiny_model_dir, tmp_path, backend):
    from rl.models.embedded import build_embedded_model
    small = build_embedded_model(EmbeddedModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                                 tmp_path / "small", seed=3)
    task = ArithmeticTask(EASY)
    cfg = SearchConfig(method="mcts", simulations=3, branching=2, step_max_tokens=8, max_depth=4, temperature=1.0,
                       rollouts=2, beta_orm=0.5)
    worker = RolloutWorker(task, cfg, str(tiny_model_dir), str(tiny_model_dir), seed=0, backend=backend,
                           rollout_policy_path=str(small))
    assert worker.models().rollout_policy is worker.rollout_policy
    size = lambda w: sum(v.size for v in w.values())  # noqa: E731
    assert size(worker.rollout_policy.weights()) < size(worker.policy.weights()) / 2   # the small model, loaded
    worker.rollout_policy = _Recording(worker.rollout_policy)
    worker.policy = _Recording(worker.policy)
    problems = task.generate(2, 0, "train")
    worker.search(problems)
    rollout_states = worker.rollout_policy.completed
    assert rollout_states and all(s.startswith(tuple(task.prompt(p) for p in problems)) for s in rollout_states)
    # 2 rollouts per evaluated leaf, each from the small model; the policy proposes the steps (sample_steps)
    # and completes only the greedy V labels (one per prompt) and at most one unfinished chosen path per search
    assert len(rollout_states) % 2 == 0 and len(rollout_states) >= 2 * len(problems)
    assert len(worker.policy.completed) <= 2 * len(problems)
    # a push carries the rollout policy's weights: a version without them is refused, one with them lands
    weights = {k: v for k, v in worker.weights().items() if k != "rollout_policy"}
    with pytest.raises(ValueError, match="rollout_policy"):
        worker.load_weights(5, weights)
    assert worker.load_weights(5, worker.weights()) == 5 and worker.rollout_policy.version == 5
    # without a rollout policy the main policy does the rollouts
    plain = RolloutWorker(task, cfg, str(tiny_model_dir), str(tiny_model_dir), seed=0, backend=backend)
    assert plain.models().rollout_policy is None and "rollout_policy" not in plain.weights()
