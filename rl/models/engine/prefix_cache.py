"""Prefix reuse: a radix tree over token ids whose nodes hold the KV of their tokens.

Bounded by total cached tokens, with LRU eviction of leaves. An admitted request copies the KV of its
longest cached prefix into its slot and only encodes the rest (rl/models/engine/scheduler.py). Prompts
are cached after their prefill and finished sequences (prompt + step) when they retire, so the children
and fast rollouts of a search node start from the node's KV (all of it but the stop token).
"""
from __future__ import annotations

import heapq
import itertools
from typing import Callable

import torch


class _Node:
    __slots__ = ("tokens", "kv", "children", "parent", "tick", "alive")

    def __init__(self, tokens: tuple[int, ...], kv: torch.Tensor | None, parent: "_Node | None"):
        self.tokens = tokens       # the edge from the parent: token ids
        self.kv = kv               # [L, 2, Hkv, len(tokens), D]; None at the root
        self.children: dict[int, _Node] = {}   # first token of the child's edge -> child
        self.parent = parent
        self.tick = 0              # last use, for LRU
        self.alive = True


def _common_prefix(edge: tuple[int, ...], ids: tuple[int, ...], start: int, stop: int) -> int:
    """Number of leading tokens that edge shares with ids[start:stop]."""
    n = min(len(edge), stop - start)
    i = 0
    while i < n and edge[i] == ids[start + i]:
        i += 1
    return i


class PrefixCache:
    """Radix tree from token-id prefixes to their KV, bounded by total cached tokens (LRU over leaves).

    A node's KV covers only its own edge; the KV of a prefix is the concatenation along its path, and
    any prefix of a cached sequence (not only whole entries) can be reused. Only leaves are evicted, so
    a cached path never has a hole.
    """

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.root = _Node((), None, None)
        self.tokens = 0                      # tokens held by the tree
        self.nodes = 0
        self._tick = itertools.count(1)
        self._order = itertools.count()      # heap tie-breaker
        self._heap: list[tuple[int, int, _Node]] = []   # (tick, order, leaf); stale entries skipped on pop
        self.lookups = self.hits = self.reused_tokens = self.evictions = self.evicted_tokens = 0

    def match(self, ids: list[int], limit: int) -> tuple[list[tuple[_Node, int]], int]:
        """Longest cached prefix of ids[:limit]: the path as (node, tokens used) pairs and its length."""
        self.lookups += 1
        if self.max_tokens <= 0:
            return [], 0
        tick = next(self._tick)
        ids = tuple(ids[:limit])    # tuples, like the edges: a whole-edge match is one slice comparison
        node, i, path = self.root, 0, []
        while i < limit:
            child = node.children.get(ids[i])
            if child is None:
                break
            edge = child.tokens
            n = len(edge) if ids[i:i + len(edge)] == edge else _common_prefix(edge, ids, i, limit)
            path.append((child, n))
            self._touch(child, tick)
            i += n
            if n < len(child.tokens):
                break
            node = child
        if i:
            self.hits += 1
            self.reused_tokens += i
        return path, i

    def insert(self, ids: list[int], kv_of: Callable[[int, int], torch.Tensor]) -> None:
        """Cache ids; kv_of(a, b) returns a copy of the KV of ids[a:b] ([L, 2, Hkv, b - a, D])."""
        if self.max_tokens <= 0 or not ids:
            return
        tick = next(self._tick)
        ids = tuple(ids)            # tuples, like the edges: a whole-edge match is one slice comparison
        node, i, end = self.root, 0, len(ids)
        while i < end:
            child = node.children.get(ids[i])
            if child is None:
                leaf = _Node(ids[i:], kv_of(i, end), node)
                node.children[ids[i]] = leaf
                self.tokens += len(leaf.tokens)
                self.nodes += 1
                self._touch(leaf, tick)
                break
            edge = child.tokens
            n = len(edge)
            if ids[i:i + n] != edge:    # ids diverge from the edge or end inside it: split it there
                n = _common_prefix(edge, ids, i, end)
                child = self._split(child, n)
            self._touch(child, tick)
            node, i = child, i + n
        self._evict()

    def clear(self) -> None:
        self.root = _Node((), None, None)
        self.tokens = self.nodes = 0
        self._heap.clear()

    def _split(self, node: _Node, n: int) -> _Node:
        """Cut node's edge after n tokens; return the new upper node (clones keep memory accounting exact)."""
        upper = _Node(node.tokens[:n], node.kv[:, :, :, :n].clone(), node.parent)
        upper.tick = node.tick
        node.parent.children[node.tokens[0]] = upper
        node.tokens, node.kv, node.parent = node.tokens[n:], node.kv[:, :, :, n:].clone(), upper
        upper.children[node.tokens[0]] = node
        self.nodes += 1
        return upper

    def _touch(self, node: _Node, tick: int) -> None:
        node.tick = tick
        if not node.children:
            heapq.heappush(self._heap, (tick, next(self._order), node))

    def _evict(self) -> None:
        while self.tokens > self.max_tokens and self._heap:
            tick, _, node = heapq.heappop(self._heap)
            if not node.alive or node.children or node.tick != tick:
                continue  # stale entry: evicted, grew children, or used again since
            parent = node.parent
            del parent.children[node.tokens[0]]
            node.alive, node.kv = False, None
            self.tokens -= len(node.tokens)
            self.nodes -= 1
            self.evictions += 1
            self.evicted_tokens += len(node.tokens)
            if parent is not self.root and not parent.children:
                heapq.heappush(self._heap, (parent.tick, next(self._order), parent))
        if len(self._heap) > 4 * self.nodes + 64:  # drop stale entries now and then
            self._heap = [e for e in self._heap if e[2].alive and not e[2].children and e[2].tick == e[0]]
            heapq.heapify(self._heap)

