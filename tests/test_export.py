import json
from html.parser import HTMLParser

from rl.search.export import tree_html
from tests.test_mcts import run


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.details, self.chosen, self.titles, self.external = 0, 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "details":
            self.details += 1
            self.chosen += "chosen" in (a.get("class") or "")
        if tag == "summary":
            self.titles.append(a.get("title", ""))
        if tag in ("script", "link", "img") or any(v and "http" in v for _, v in attrs):
            self.external.append(tag)


def test_tree_json_export_and_html_view():
    res = run()
    data = res.tree.to_json(res.chosen)
    data = json.loads(json.dumps(data))                       # plain JSON, no numpy or nan
    assert data["chosen_path"] == [0, 1, 3]
    assert [n["visits"] for n in data["nodes"]] == [6, 3, 2, 1, 1, 1, 0]
    assert data["nodes"][3]["reward"] == 1.0 and data["nodes"][6]["evaluation"] is None
    page = tree_html({**data, "answer": res.answer, "gold": "1"}, title="toy")
    p = _Collect()
    p.feed(page)
    assert p.details == 7 and p.chosen == 3                  # one collapsible per node, path highlighted
    assert any("visits=3" in t and "value=0.533" in t for t in p.titles)   # scores on hover
    assert not p.external                                     # opens with no network
