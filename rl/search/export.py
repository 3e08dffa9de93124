"""Seeing a search: a tree's JSON export as a self-contained HTML page.

The page needs no network and no script: nodes are nested <details> elements
(collapsible natively), the chosen path is highlighted, and each node's scores
are shown on hover (title attribute) and in a small badge.
"""
from __future__ import annotations

import html

_STYLE = """
body { font-family: ui-monospace, monospace; font-size: 13px; margin: 1em; }
details { margin-left: 1.4em; border-left: 1px dotted #bbb; padding-left: .4em; }
summary { cursor: pointer; white-space: pre-wrap; }
.chosen > summary { background: #fff3b0; font-weight: bold; }
.terminal > summary::after { content: " ■"; color: #777; }
.right > summary { color: #1a7f37; } .wrong > summary { color: #cf222e; }
.badge { color: #666; font-size: 11px; margin-left: .6em; }
pre.prompt { background: #f6f8fa; padding: .5em; }
"""


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def tree_html(tree_json: dict, *, title: str = "search tree") -> str:
    """HTML page for `Tree.to_json(...)` output (plus optional 'answer'/'gold' keys)."""
    nodes = tree_json["nodes"]
    chosen = set(tree_json.get("chosen_path", []))
    kids: dict[int, list[int]] = {n["id"]: [] for n in nodes}
    for n in nodes:
        if n["parent"] >= 0:
            kids[n["parent"]].append(n["id"])

    def render(i: int) -> str:
        n = nodes[i]
        classes = []
        if i in chosen:
            classes.append("chosen")
        if n["terminal"]:
            classes.append("terminal")
        if n.get("reward") is not None:
            classes.append("right" if n["reward"] >= 1 else "wrong")
        keys = ("visits", "value", "evaluation", "prm", "orm", "q", "reward", "merged", "depth", "logprob")
        hover = " ".join(f"{k}={_fmt(n.get(k))}" for k in keys if k in n)
        label = "(root)" if i == 0 else n["text"].rstrip("\n") or "(empty step)"
        badge = f"N={n['visits']} Q={_fmt(n['value'])}"
        open_attr = " open" if i in chosen or i == 0 else ""
        inner = "".join(render(k) for k in kids[i])
        return (f'<details class="{" ".join(classes)}"{open_attr}><summary title="{html.escape(hover)}">'
                f'{html.escape(label)}<span class="badge">{html.escape(badge)}</span></summary>{inner}</details>')

    head = f"<h3>{html.escape(title)}</h3><pre class=\"prompt\">{html.escape(tree_json['prompt'])}</pre>"
    if "answer" in tree_json:
        head += f"<p>answer: <b>{html.escape(str(tree_json['answer']))}</b>"
        if "gold" in tree_json:
            head += f" · gold: {html.escape(str(tree_json['gold']))}"
        head += "</p>"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{head}{render(0)}</body></html>")
