"""The knowledge base: what the Researcher reads about efficient sequence mixing.

Three sources, one record type (:class:`KnowledgeEntry`): the entries the project ships
(``asiarch/propose/llm/knowledge.toml``, written for this project), ASI-Arch's cognition files
imported with :func:`import_cognition` (``asiarch knowledge import DIR``), and what the
Analyst learns from each trained candidate. Imported and learned entries live in the
store's ``knowledge`` table (declared in :mod:`asiarch.store.schema`).

Retrieval is offline: BM25 over word tokens (:class:`KnowledgeIndex`), no server, no
model download; titles and tags weigh more than the prose.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

__all__ = [
    "KnowledgeEntry", "KnowledgeIndex", "builtin_entries", "import_cognition", "cognition_entries",
    "add_entries", "stored_entries", "knowledge_base", "tokenize",
]

@dataclass
class KnowledgeEntry:
    """One idea: the problem it answers, the idea, when to reach for it, how to build it here."""

    key: str
    title: str
    problem: str = ""
    idea: str = ""
    when: str = ""
    how: str = ""
    source: str = ""
    tags: list[str] = field(default_factory=list)
    origin: str = "builtin"          #: builtin | cognition | learned | manual
    candidate_id: int | None = None  #: for learned entries: the candidate they came from

    def text(self) -> str:
        return "\n".join([self.title, " ".join(self.tags), self.problem, self.idea, self.when, self.how])

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- retrieval

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was
were which with when what how not no can so than then into each per one their they we our you your""".split())


def _stem(w: str) -> str:
    for suffix in ("ations", "ation", "ings", "ing", "ies", "es", "s", "ed"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens, light stemming, no stop words ('DeltaNet' -> 'deltanet')."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1]


class KnowledgeIndex:
    """BM25 over the entries' words (k1 = 1.2, b = 0.75); the title and tags count thrice."""

    def __init__(self, entries: Iterable[KnowledgeEntry], *, k1: float = 1.2, b: float = 0.75):
        self.entries = list(entries)
        self.k1, self.b = k1, b
        self.docs: list[Counter] = []
        for e in self.entries:
            heavy = tokenize(" ".join([e.title, e.key.replace("-", " "), " ".join(e.tags)]))
            self.docs.append(Counter(heavy * 3 + tokenize(e.text())))
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = (sum(self.lengths) / len(self.lengths)) if self.lengths else 1.0
        df: Counter = Counter()
        for d in self.docs:
            df.update(d.keys())
        n = len(self.docs)
        self.idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}

    def scores(self, query: str) -> list[float]:
        terms = tokenize(query)
        out = []
        for d, length in zip(self.docs, self.lengths):
            s = 0.0
            for t in terms:
                f = d.get(t)
                if f:
                    s += self.idf[t] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * length / self.avg))
            out.append(s)
        return out

    def search(self, query: str, k: int = 5, *, exclude: Iterable[str] = ()) -> list[KnowledgeEntry]:
        """The ``k`` entries that best match ``query`` (none with a zero score)."""
        skip = set(exclude)
        ranked = sorted(((s, i) for i, s in enumerate(self.scores(query))), key=lambda x: (-x[0], x[1]))
        return [self.entries[i] for s, i in ranked if s > 0 and self.entries[i].key not in skip][:k]


# ----------------------------------------------------------------------------- sources


def builtin_entries() -> list[KnowledgeEntry]:
    """The entries shipped with asiarch (asiarch/propose/llm/knowledge.toml)."""
    text = resources.files("asiarch.propose.llm").joinpath("knowledge.toml").read_text()
    data = tomllib.loads(text)
    return [KnowledgeEntry(key=e["id"], title=e["title"], problem=e["problem"], idea=e["idea"], when=e["when"],
                           how=e["how"], source=e.get("source", ""), tags=list(e.get("tags", [])))
            for e in data["entry"]]


def _strip_md(text: str) -> str:
    text = re.sub(r"[#*`]+", "", text or "")
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def cognition_entries(directory: str | Path) -> list[KnowledgeEntry]:
    """ASI-Arch's cognition files (one JSON list of insights per paper) as entries.

    Each insight's fields map onto a record: the design insight's heading is the title
    (with the paper's title), the trigger patterns are the problem and the when, the
    algorithmic innovation the idea, the implementation guidance the how. Raises
    FileNotFoundError for a missing directory and ValueError (naming the file) for a bad one.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory (expected ASI-Arch's cognition/ folder)")
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            items = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a cognition file: {exc}") from None
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of insights")
        paper = re.sub(r"^arxiv\.org_abs_", "arXiv ", path.stem)
        for n, item in enumerate(items, 1):
            if not isinstance(item, dict):
                continue
            background = item.get("BACKGROUND", "")
            m = re.search(r"\*\*Title\*\*:\s*(.+)", background)
            paper_title = m.group(1).strip() if m else ""
            insight = re.sub(r"^#+\s*DESIGN_INSIGHT_\d+:\s*", "", (item.get("DESIGN_INSIGHT") or "").strip())
            title = _strip_md(insight) or paper_title or path.stem
            trigger = _strip_md(item.get("EXPERIMENTAL_TRIGGER_PATTERNS", ""))
            out.append(KnowledgeEntry(
                key=f"cognition:{path.stem}#{n}", title=title, problem=_strip_md(background)[:1500],
                idea=_strip_md(item.get("ALGORITHMIC_INNOVATION", "")), when=trigger,
                how=_strip_md(item.get("IMPLEMENTATION_GUIDANCE", "")),
                source=f"{paper_title} ({paper})" if paper_title else paper, origin="cognition"))
    return out


# ----------------------------------------------------------------------------- the store's knowledge table


def add_entries(store, entries: Iterable[KnowledgeEntry]) -> int:
    """Insert or replace ``entries`` (by key) in the store; returns how many were written."""
    return store.put_knowledge({"key": e.key, "origin": e.origin, "title": e.title, "source": e.source,
                                "tags": e.tags, "problem": e.problem, "idea": e.idea, "when_to_use": e.when,
                                "how": e.how, "candidate_id": e.candidate_id} for e in entries)


def stored_entries(store, *, origin: str | None = None) -> list[KnowledgeEntry]:
    """Entries in the store's knowledge table (none for a store without one)."""
    return [KnowledgeEntry(key=r["key"], title=r["title"], problem=r["problem"], idea=r["idea"],
                           when=r["when_to_use"], how=r["how"], source=r["source"], tags=r["tags"],
                           origin=r["origin"], candidate_id=r["candidate_id"])
            for r in store.knowledge(origin=origin)]


def import_cognition(directory: str | Path, store=None) -> list[KnowledgeEntry]:
    """Load ASI-Arch's cognition files; with ``store``, keep them in its knowledge table."""
    entries = cognition_entries(directory)
    if store is not None:
        add_entries(store, entries)
    return entries


def knowledge_base(store=None) -> KnowledgeIndex:
    """The index over the shipped entries plus the store's (imported and learned) ones."""
    entries = builtin_entries()
    if store is not None:
        entries += stored_entries(store)
    return KnowledgeIndex(entries)
