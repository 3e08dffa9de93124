"""Rollout actors and the pool that hands them work."""
from __future__ import annotations

import numpy as np
import ray

from actors.placement import RolloutPlacement
from rl.config import Config, ImaginationConfig, RFTConfig
from rl.models.weights import split_models
from rl.rft import RFTSample
from rl.rollout import EvalRecord, RolloutBatch, RolloutWorker
from rl.runtime import runtime_env, threads_for
from rl.tasks import build_task
from rl.tasks.base import Problem


class RolloutShell(RolloutWorker):
    """RolloutWorker plus the one thing that needs Ray: sending experiences straight to the replay actor."""

    def search_to(self, replay, problems: list[Problem], **kwargs) -> RolloutBatch:
        """Search, put the node records into the replay actor (not through the driver), return the rest.

        The put waits while the replay inbox is full under replay.backpressure = "block": that wait is
        the backpressure on this actor. Only nodes with a Monte Carlo target are sent (the others carry
        no label for any critic).
        """
        batch = self.search(problems, **kwargs)
        sent = [n for n in batch.nodes if not np.isnan(n.value_target)]
        ray.get(replay.put.remote(sent))
        batch.sent_nodes, batch.nodes = len(sent), []
        self.sent_total = getattr(self, "sent_total", 0) + len(sent)
        return batch

    def sent(self) -> int:
        """Node records this actor has sent to the replay actor so far."""
        return getattr(self, "sent_total", 0)


    # ---- the collective weight transport (learner rank 0 sends, every actor receives) ------
    def join_broadcast(self, addr, rank: int) -> int:
        from rl.transport import CollectiveReceiver
        self.receiver = CollectiveReceiver()
        return self.receiver.join(addr, rank)

    def receive_broadcast(self) -> int:
        """Take the next broadcast publish and swap it in; returns the version now in use."""
        version, flat = self.receiver.receive()
        return self.load_weights(version, split_models(flat))

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


RolloutActor = ray.remote(RolloutShell)


class RolloutPool:
    """N rollout actors, each in its own placement group; problems are handed out in chunks from a
    queue, so a fast actor takes more."""

    def __init__(self, cfg: Config, policy_path: str, value_path: str, rollout_path: str | None = None):
        task = build_task(cfg.task)
        r = cfg.rollout
        self.chunk_size = r.chunk_size
        self.max_restarts, self.max_chunk_retries = r.max_restarts, r.max_chunk_retries
        self.published = None  # (version, weights ref) of the last load_weights: a restarted actor gets it again
        self.requeued = 0      # chunks handed out again after their actor died
        self.placement = RolloutPlacement(r.num_actors, num_cpus=r.num_cpus, policy_gpus=r.num_gpus,
                                          critic_gpus=r.critic_gpus, colocate=r.colocate_critics)
        on_gpu = "GPU" in self.placement.bundle
        device = self.placement.devices["policy"] if on_gpu else cfg.model.device
        critic_device = self.placement.devices["critic"] if on_gpu else None
        self.actors = [
            RolloutActor.options(**self.placement.options(i), runtime_env=runtime_env(r.num_cpus),
                                 max_restarts=r.max_restarts)
            .remote(task, cfg.search, policy_path, value_path, device=device, critic_device=critic_device,
                    seed=cfg.seed, stream=i, num_threads=threads_for(r.num_cpus), backend=cfg.model.backend,
                    critics=tuple(cfg.learner.critics), labels=cfg.labels, threads=r.search_threads,
                    critic_model=cfg.learner.critic_model, rollout_policy_path=rollout_path)
            for i in range(r.num_actors)]

    def _map(self, problems: list[Problem], call, progress=None) -> list:
        """Run call(actor, chunk) over chunks, keeping every actor busy; results in problem order.

        A chunk whose actor dies is queued again (Ray restarts the actor, up to rollout.max_restarts) and the
        restarted actor is given the last published weights first; a chunk that fails more than
        rollout.max_chunk_retries times, or a pool with no live actor left, stops the round with an error.
        """
        from collections import deque
        chunks = [problems[i:i + self.chunk_size] for i in range(0, len(problems), self.chunk_size)]
        results: list = [None] * len(chunks)
        queue = deque(range(len(chunks)))
        tries = [0] * len(chunks)
        deaths = [0] * len(self.actors)
        pending: dict = {}

        def feed(k: int) -> None:
            if queue and deaths[k] <= self.max_restarts:
                idx = queue.popleft()
                pending[call(self.actors[k], chunks[idx])] = (k, idx)

        for k in range(len(self.actors)):
            feed(k)
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            k, idx = pending.pop(done)
            try:
                results[idx] = ray.get(done)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                deaths[k] += 1
                tries[idx] += 1
                self.requeued += 1
                if tries[idx] > self.max_chunk_retries:
                    raise RuntimeError(f"rollout chunk {idx} ({[p.id for p in chunks[idx]]}) failed "
                                       f"{tries[idx]} times; last on rollout actor {k}: {e}") from e
                queue.appendleft(idx)
                if deaths[k] <= self.max_restarts and self.published is not None:
                    self.actors[k].load_weights.remote(*self.published)  # runs before its next chunk
                if all(d > self.max_restarts for d in deaths):
                    raise RuntimeError(f"every rollout actor died more than rollout.max_restarts = "
                                       f"{self.max_restarts} times") from e
                if not pending:  # nobody else busy: hand the chunk to the first live actor now
                    for j in range(len(self.actors)):
                        feed(j)
                feed(k)
                continue
            if progress is not None:
                progress(len(chunks[idx]))
            feed(k)
        return results

    def search(self, problems: list[Problem], progress=None, export_trees: int = 0, replay=None) -> list[RolloutBatch]:
        """Search every problem with labels allowed; each chunk exports up to export_trees trees.

        With a replay actor, node records go there directly and the batches come back without them.
        """
        if replay is not None:
            return self._map(problems, lambda a, c: a.search_to.remote(replay, c, use_reward=True,
                                                                      export_trees=export_trees), progress)
        return self._map(problems, lambda a, c: a.search.remote(c, use_reward=True, export_trees=export_trees),
                         progress)

    def rft_samples(self, problems: list[Problem], cfg: RFTConfig, progress=None) -> list[RFTSample]:
        """cfg.samples verified-scored solutions per problem (RolloutWorker.rft_samples), in problem order."""
        parts = self._map(problems, lambda a, c: a.rft_samples.remote(c, cfg), progress)
        return [s for part in parts for s in part]

    def evaluate(self, problems: list[Problem], method: str, progress=None) -> list[EvalRecord]:
        parts = self._map(problems, lambda a, c: a.evaluate.remote(c, method), progress)
        return [rec for part in parts for rec in part]

    def synthesize(self, seeds: list[Problem], cfg: ImaginationConfig, *, eval_index: frozenset,
                   seed: int) -> tuple[list[Problem], dict]:
        """Rewritten prompts from seeds (RolloutWorker.synthesize) by the first actor: every actor holds the
        same weights, and the batch is small enough for one."""
        return ray.get(self.actors[0].synthesize.remote(seeds, cfg, eval_index=eval_index, seed=seed))

    def join_broadcast(self, addr) -> list:
        """Every actor joins the learner's broadcast group (ranks 1..N); refs to wait on with the sender's join."""
        return [a.join_broadcast.remote(addr, i + 1) for i, a in enumerate(self.actors)]

    def receive_broadcast(self) -> list:
        """Every actor takes the next broadcast publish; refs of the versions they then hold."""
        return [a.receive_broadcast.remote() for a in self.actors]

    def load_weights(self, version: int, weights_ref) -> list[int]:
        """Every actor swaps to the published weights; returns the versions they confirm."""
        self.published = (version, weights_ref)
        return ray.get([a.load_weights.remote(version, weights_ref) for a in self.actors])
