"""The critic family: scalar-head critics (V, Q, ORM, PRM), a generative verifier, a shared-backbone multi-head critic.

Every critic has one batched method, `score(texts) -> np.ndarray` ([len(texts)] floats in [0, 1]),
and reads the kind of text rl.search.types.Models describes (value: prompt + steps so far; prm:
the same, scoring the last step; orm: prompt + a complete solution; q: prompt + steps + one
candidate step). Step critics also offer `score_steps(prompt, steps)`: one score per step.

  HeadCritic        backbone + scalar head, stored as a HF token-classification model with one label
                    (the storage of rl.models.ValueCritic, so their checkpoints interchange); the score
                    is sigmoid(logit) at the last token, and the PRM reads every step-end in one pass.
  GenerativeCritic  a causal LM asked "Is this correct? " after the text; the score is
                    p(True) / (p(True) + p(False)) of the next token (AlphaLLM, Tian et al. 2024, §4.3,
                    serves its PRM and ORM this way).
  MultiHeadCritic   one backbone (AutoModel) with several named linear heads, e.g. value, prm and orm:
                    one copy of the weights in memory, one forward pass for all heads of a text.

Batching: texts are scored in chunks of batch_size, right-padded; a causal backbone never lets a
token see the padding after it, so a batch scores like texts one at a time.

Folder layout (save_pretrained; every folder also holds the tokenizer and critic.json):
  HeadCritic        config.json + model.safetensors (XxxForTokenClassification, num_labels=1)
  GenerativeCritic  config.json + model.safetensors (XxxForCausalLM)
  MultiHeadCritic   config.json + model.safetensors (the backbone, XxxModel)
                    + heads.safetensors ("<name>.weight" [1, H], "<name>.bias" [1] per head)
critic.json says which class wrote the folder and its settings (HeadCritic kind, GenerativeCritic
template and tokens, MultiHeadCritic head names); build_critic reads it to pick the class.
"""
from __future__ import annotations

import json
from bisect import bisect_left
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from rl.models.critic import last_token_logits, load_value_model
from rl.models.device import pick_device
from rl.models.weights import Weights, load_numpy, to_numpy

KINDS = ("value", "q", "orm", "prm")  # what a critic is asked (rl.search.types.Models); not its architecture
CONFIG_FILE = "critic.json"
HEADS_FILE = "heads.safetensors"
DEFAULT_TEMPLATE = "{text}\nIs this correct? "


class Critic(Protocol):
    version: int

    def score(self, texts: list[str]) -> np.ndarray: ...
    def load_weights(self, version: int, weights: Weights) -> None: ...
    def weights(self) -> Weights: ...
    def save_pretrained(self, path: str | Path) -> None: ...


class StepCritic(Critic, Protocol):
    def score_steps(self, prompt: str, steps: list[str]) -> np.ndarray: ...


# ---- shared pieces ---------------------------------------------------------------------
def load_critic_tokenizer(path: str | Path):
    """The tokenizer of a critic folder, right-padded: scores are read at the last real token."""
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "right"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def step_char_ends(prompt: str, steps: Sequence[str]) -> list[int]:
    """Character offset just past each step in prompt + "".join(steps)."""
    ends, pos = [], len(prompt)
    for s in steps:
        pos += len(s)
        ends.append(pos)
    return ends


def step_end_tokens(offsets: Sequence[tuple[int, int]], char_ends: Sequence[int]) -> list[int]:
    """Index of the last token of each step: the last token that starts before the step's end.

    offsets are the (start, end) character spans of the real tokens (no padding). A token that
    straddles a step boundary counts as the end of the earlier step; steps that end in a newline
    never straddle one with the tokenizers we use.
    """
    starts = [s for s, _ in offsets]  # non-decreasing
    out = [bisect_left(starts, c) - 1 for c in char_ends]
    if out and out[0] < 0:
        raise ValueError("the first step ends before the first token: empty prompt and empty first step")
    return out


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _to_numpy(parts: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(parts).cpu().numpy().astype(np.float64) if parts else np.zeros(0)


def _encode(tokenizer, texts: list[str], device: torch.device, offsets: bool = False):
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                    return_offsets_mapping=offsets)
    return enc.to(device)


def _encode_steps(tokenizer, trajectories: list[tuple[str, list[str]]], device: torch.device):
    """Right-padded ids of prompt + steps for each trajectory, and each row's step-end positions."""
    texts = [p + "".join(s) for p, s in trajectories]
    enc = _encode(tokenizer, texts, device, offsets=True)
    lengths = enc["attention_mask"].sum(1).tolist()                                   # [B]
    spans = enc.pop("offset_mapping").tolist()                                        # [B, T, 2]
    ends = [step_end_tokens(spans[b][:lengths[b]], step_char_ends(p, s)) for b, (p, s) in enumerate(trajectories)]
    return enc, ends


def _read_config(path: str | Path) -> dict:
    f = Path(path) / CONFIG_FILE
    return json.loads(f.read_text()) if f.exists() else {}


def _write_config(path: str | Path, **cfg) -> None:
    (Path(path) / CONFIG_FILE).write_text(json.dumps(cfg, indent=1) + "\n")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"critic kind {kind!r} is not one of {list(KINDS)}")
    return kind


# ---- HeadCritic --------------------------------------------------------------------------
class HeadCritic:
    """V, Q, ORM or PRM as a backbone with a scalar head: sigmoid(logit) at a text's last token.

    The kind changes what text the critic is given and trained on, not the architecture. score_steps
    reads the logit at every step-end of one trajectory in one forward pass; a causal backbone makes
    that equal to scoring each prefix alone (the PRM of Q*, Wang et al. 2024, §4.1, rewards each step).
    """

    def __init__(self, model, tokenizer, device: torch.device, *, kind: str = "value", version: int = 0,
                 batch_size: int = 64):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.kind = _check_kind(kind)
        self.version = version
        self.batch_size = batch_size
        self.calls = 0  # texts (or steps) scored so far

    @classmethod
    def from_pretrained(cls, path: str | Path, kind: str | None = None, *, tokenizer_path: str | Path | None = None,
                        device: str = "auto", batch_size: int = 64) -> "HeadCritic":
        """A critic folder, a ValueCritic folder, or a policy folder (a new random head).

        kind defaults to the folder's critic.json, else "value"; an explicit kind wins, so a Q critic
        can start from a trained value critic.
        """
        kind = kind or _read_config(path).get("kind", "value")
        return cls(load_value_model(path), load_critic_tokenizer(tokenizer_path or path), pick_device(device),
                   kind=kind, batch_size=batch_size)

    @torch.no_grad()
    def score(self, texts: list[str]) -> np.ndarray:
        """[len(texts)] scores in (0, 1), read at each text's last token."""
        out = []
        for chunk in _chunks(texts, self.batch_size):
            enc = _encode(self.tokenizer, chunk, self.device)
            out.append(torch.sigmoid(last_token_logits(self.model, enc["input_ids"], enc["attention_mask"])))
        self.calls += len(texts)
        return _to_numpy(out)

    @torch.no_grad()
    def score_trajectories(self, trajectories: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        """For each (prompt, steps): [len(steps)] scores, one forward pass per chunk of trajectories."""
        out = []
        for chunk in _chunks(trajectories, self.batch_size):
            enc, ends = _encode_steps(self.tokenizer, chunk, self.device)
            logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[..., 0]
            probs = torch.sigmoid(logits)                                                 # [B, T]
            out += [_to_numpy([probs[b, e]]) for b, e in enumerate(ends)]
        self.calls += sum(len(s) for _, s in trajectories)
        return out

    def score_steps(self, prompt: str, steps: list[str]) -> np.ndarray:
        """[len(steps)] scores of prompt + steps[:k+1] for every k, from one forward pass."""
        return self.score_trajectories([(prompt, steps)])[0]

    def load_weights(self, version: int, weights: Weights) -> None:
        load_numpy(self.model, weights)
        self.version = version

    def weights(self) -> Weights:
        return to_numpy(self.model)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        _write_config(path, **{"class": "HeadCritic", "kind": self.kind})


# ---- GenerativeCritic --------------------------------------------------------------------
def _single_token(tokenizer, text: str, role: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"{role} = {text!r} is not a single token of the tokenizer (it encodes to {ids})")
    return ids[0]


class GenerativeCritic:
    """A causal LM as verifier: p(True) / (p(True) + p(False)) for the token after a verification prompt.

    The prompt is template with {text} replaced by the text scored. The ratio is sigmoid(l_True -
    l_False) of the two logits, so only the last position's hidden state goes through the LM head
    (a [B, V] product, not [B, T, V]). Models that transform logits after the head (Gemma-2's
    softcapping) would need the full forward and are refused.
    """

    def __init__(self, model, tokenizer, device: torch.device, *, template: str = DEFAULT_TEMPLATE,
                 true_token: str = "Y", false_token: str = "N", version: int = 0, batch_size: int = 64):
        if "{text}" not in template:
            raise ValueError(f"template {template!r} has no {{text}} placeholder")
        if getattr(model.config, "final_logit_softcapping", None):
            raise ValueError("GenerativeCritic reads raw head logits; this model softcaps them")
        self.true_id = _single_token(tokenizer, true_token, "true_token")
        self.false_id = _single_token(tokenizer, false_token, "false_token")
        if self.true_id == self.false_id:
            raise ValueError(f"true_token {true_token!r} and false_token {false_token!r} are the same token")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.template, self.true_token, self.false_token = template, true_token, false_token
        self.version = version
        self.batch_size = batch_size
        self.calls = 0

    @classmethod
    def from_pretrained(cls, path: str | Path, *, template: str | None = None, true_token: str | None = None,
                        false_token: str | None = None, tokenizer_path: str | Path | None = None,
                        device: str = "auto", batch_size: int = 64) -> "GenerativeCritic":
        """A causal LM folder; settings not given come from its critic.json, else the defaults."""
        cfg = _read_config(path)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, load_critic_tokenizer(tokenizer_path or path), pick_device(device),
                   template=template or cfg.get("template", DEFAULT_TEMPLATE),
                   true_token=true_token or cfg.get("true_token", "Y"),
                   false_token=false_token or cfg.get("false_token", "N"), batch_size=batch_size)

    def prompt(self, text: str) -> str:
        return self.template.replace("{text}", text)

    @torch.no_grad()
    def score(self, texts: list[str]) -> np.ndarray:
        """[len(texts)] p(True) / (p(True) + p(False)) after each text's verification prompt."""
        head = self.model.get_output_embeddings()
        out = []
        for chunk in _chunks(texts, self.batch_size):
            enc = _encode(self.tokenizer, [self.prompt(t) for t in chunk], self.device)
            hidden = self.model.base_model(input_ids=enc["input_ids"],
                                           attention_mask=enc["attention_mask"]).last_hidden_state  # [B, T, H]
            last = enc["attention_mask"].sum(1) - 1                                         # [B]
            logits = head(hidden[torch.arange(len(chunk), device=self.device), last])      # [B, V]
            out.append(torch.sigmoid(logits[:, self.true_id] - logits[:, self.false_id]))
        self.calls += len(texts)
        return _to_numpy(out)

    def score_steps(self, prompt: str, steps: list[str]) -> np.ndarray:
        """[len(steps)] scores of each prefix; one text per step, since the question follows each step."""
        return self.score([prompt + "".join(steps[:k + 1]) for k in range(len(steps))])

    def load_weights(self, version: int, weights: Weights) -> None:
        load_numpy(self.model, weights)
        self.version = version

    def weights(self) -> Weights:
        return to_numpy(self.model)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        _write_config(path, **{"class": "GenerativeCritic", "template": self.template,
                               "true_token": self.true_token, "false_token": self.false_token})


# ---- MultiHeadCritic ---------------------------------------------------------------------
class MultiHeadModel(nn.Module):
    """A backbone and named scalar heads; state_dict keys are backbone.* and heads.<name>.{weight,bias}."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Linear]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """[len(names), B, T] logits of each head at every position."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        return torch.stack([self.heads[n](hidden)[..., 0] for n in names])


def _new_head(hidden_size: int, std: float, seed: int) -> nn.Linear:
    """A scalar head initialised as HF initialises a classification head: N(0, std) weight, zero bias."""
    head = nn.Linear(hidden_size, 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed)) * std)
        head.bias.zero_()
    return head


class MultiHeadCritic:
    """One backbone, several scalar heads (e.g. value, prm, orm); head(name) is a critic for one head.

    Saves memory (one copy of the backbone) and compute (score_heads reads every head from one pass).
    Weights and versions belong to the whole model: the heads share the backbone, so they are
    trained, synced and saved together.
    """

    def __init__(self, model: MultiHeadModel, tokenizer, device: torch.device, *, version: int = 0,
                 batch_size: int = 64):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.version = version
        self.batch_size = batch_size
        self.calls = 0  # texts (or steps) scored so far, each counted once however many heads read it

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.model.heads.keys())

    @classmethod
    def from_pretrained(cls, path: str | Path, heads: Sequence[str] | None = None, *,
                        tokenizer_path: str | Path | None = None, device: str = "auto", batch_size: int = 64,
                        seed: int = 0) -> "MultiHeadCritic":
        """A MultiHeadCritic folder, or any folder with a backbone (a policy, a HeadCritic) plus new heads.

        Stored heads are always loaded; names in `heads` that are not stored get a new head
        (seeded by seed and its position in `heads`), so a trained backbone can grow a head.
        """
        stored = _read_config(path).get("heads", [])
        names = list(stored) + [n for n in (heads or []) if n not in stored]
        if not names:
            raise ValueError(f"{path} stores no critic heads; pass heads=[...] to make new ones")
        for n in names:
            if not n.isidentifier():
                raise ValueError(f"head name {n!r} is not an identifier")
        backbone = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        config = backbone.config.get_text_config()
        modules = {n: _new_head(config.hidden_size, getattr(config, "initializer_range", 0.02), seed + i)
                   for i, n in enumerate(heads or []) if n not in stored}
        if stored:
            tensors = load_file(str(Path(path) / HEADS_FILE))
            for n in stored:
                modules[n] = nn.Linear(config.hidden_size, 1)
                modules[n].load_state_dict({"weight": tensors[f"{n}.weight"], "bias": tensors[f"{n}.bias"]})
        model = MultiHeadModel(backbone, {n: modules[n] for n in names})
        return cls(model, load_critic_tokenizer(tokenizer_path or path), pick_device(device), batch_size=batch_size)

    def head(self, name: str) -> "CriticHead":
        if name not in self.model.heads:
            raise ValueError(f"no critic head {name!r}; heads are {list(self.names)}")
        return CriticHead(self, name)

    @torch.no_grad()
    def score_heads(self, texts: list[str], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{name: [len(texts)] scores at each text's last token}, every head from one backbone pass."""
        names = list(names or self.names)
        out: list[torch.Tensor] = []
        for chunk in _chunks(texts, self.batch_size):
            enc = _encode(self.tokenizer, chunk, self.device)
            logits = self.model(enc["input_ids"], enc["attention_mask"], names)          # [K, B, T]
            last = (enc["attention_mask"].sum(1) - 1).expand(len(names), -1)              # [K, B]
            out.append(torch.sigmoid(logits.gather(2, last.unsqueeze(2)).squeeze(2)))    # [K, B]
        self.calls += len(texts)
        scores = torch.cat(out, dim=1) if out else torch.zeros(len(names), 0)
        return {n: scores[k].cpu().numpy().astype(np.float64) for k, n in enumerate(names)}

    @torch.no_grad()
    def score_trajectories(self, trajectories: list[tuple[str, list[str]]], name: str) -> list[np.ndarray]:
        """For each (prompt, steps): [len(steps)] scores of head `name` at every step-end, one pass per chunk."""
        out = []
        for chunk in _chunks(trajectories, self.batch_size):
            enc, ends = _encode_steps(self.tokenizer, chunk, self.device)
            probs = torch.sigmoid(self.model(enc["input_ids"], enc["attention_mask"], [name])[0])  # [B, T]
            out += [_to_numpy([probs[b, e]]) for b, e in enumerate(ends)]
        self.calls += sum(len(s) for _, s in trajectories)
        return out

    def load_weights(self, version: int, weights: Weights) -> None:
        load_numpy(self.model, weights)
        self.version = version

    def weights(self) -> Weights:
        return to_numpy(self.model)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.backbone.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        tensors = {f"{n}.{k}": v.detach().cpu().contiguous()
                   for n, h in self.model.heads.items() for k, v in h.state_dict().items()}
        save_file(tensors, str(Path(path) / HEADS_FILE))
        _write_config(path, **{"class": "MultiHeadCritic", "heads": list(self.names)})


class CriticHead:
    """One head of a MultiHeadCritic with the critic interface; weights and version are the parent's."""

    def __init__(self, parent: MultiHeadCritic, name: str):
        self.parent = parent
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str | Path, name: str, **kwargs) -> "CriticHead":
        return MultiHeadCritic.from_pretrained(path, [name], **kwargs).head(name)

    @property
    def version(self) -> int:
        return self.parent.version

    @property
    def backbone(self) -> nn.Module:
        return self.parent.model.backbone

    def score(self, texts: list[str]) -> np.ndarray:
        return self.parent.score_heads(texts, [self.name])[self.name]

    def score_steps(self, prompt: str, steps: list[str]) -> np.ndarray:
        return self.parent.score_trajectories([(prompt, steps)], self.name)[0]

    def load_weights(self, version: int, weights: Weights) -> None:
        self.parent.load_weights(version, weights)

    def weights(self) -> Weights:
        return self.parent.weights()

    def save_pretrained(self, path: str | Path) -> None:
        self.parent.save_pretrained(path)


# ---- registry ----------------------------------------------------------------------------
CRITICS = {"head": HeadCritic, "generative": GenerativeCritic, "multihead": MultiHeadCritic}
_CLASS_TO_BACKEND = {"HeadCritic": "head", "GenerativeCritic": "generative", "MultiHeadCritic": "multihead"}


def build_critic(kind: str, path: str | Path, *, backend: str | None = None,
                 shared: dict[str, MultiHeadCritic] | None = None, **kwargs) -> Critic:
    """The `kind` critic (value, q, orm or prm) stored at path.

    A generative verifier answers for any kind: the text it is given makes the difference.

    Args:
        backend: a key of CRITICS; None reads it from the folder's critic.json, else "head".
        shared: for "multihead", loaded MultiHeadCritics by path; pass the same dict to every call
            so that heads of one folder share one backbone.
        kwargs: passed to the backend's from_pretrained (device, batch_size, tokenizer_path, ...).
    """
    _check_kind(kind)
    backend = backend or _CLASS_TO_BACKEND.get(_read_config(path).get("class"), "head")
    if backend not in CRITICS:
        raise ValueError(f"critic backend {backend!r} is not one of {list(CRITICS)}")
    if backend == "head":
        return HeadCritic.from_pretrained(path, kind, **kwargs)
    if backend == "generative":
        return GenerativeCritic.from_pretrained(path, **kwargs)
    shared = {} if shared is None else shared
    key = str(path)
    if key not in shared:
        heads = list(kwargs.pop("heads", None) or [])
        shared[key] = MultiHeadCritic.from_pretrained(path, heads + [kind] * (kind not in heads), **kwargs)
    elif kind not in shared[key].names:
        raise ValueError(f"{path} is already loaded without a {kind!r} head (heads {list(shared[key].names)}); "
                         f"list every head in the first call's heads=")
    return shared[key].head(kind)
