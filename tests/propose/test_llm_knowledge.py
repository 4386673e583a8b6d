"""The knowledge base: shipped entries, offline retrieval, ASI-Arch's cognition import."""

from __future__ import annotations

from pathlib import Path

import pytest

from asiarch.propose.llm.knowledge import (KnowledgeIndex, builtin_entries, import_cognition, knowledge_base,
                                   stored_entries, tokenize)
from asiarch.store import Store

COGNITION = Path(__file__).resolve().parents[3] / "shared" / "asi-arch" / "cognition"


def test_at_least_twenty_complete_entries_with_unique_keys():
    entries = builtin_entries()
    assert len(entries) >= 20
    assert len({e.key for e in entries}) == len(entries)
    for e in entries:
        assert e.title and e.problem and e.idea and e.when and e.how and e.source and e.tags, e.key
    keys = {e.key for e in entries}
    for needed in ("linear-attention", "retnet", "gla", "deltanet", "gated-deltanet", "mamba", "mamba2", "rwkv",
                   "hgrn", "hyena", "based", "titans", "s4", "h3", "xlstm", "longhorn", "ttt",
                   "gated-slot-attention", "deltaproduct"):
        assert needed in keys


@pytest.mark.parametrize("query, first", [
    ("delta rule overwrite memory", "deltanet"),
    ("selective state space model", "mamba"),
    ("token shift receptance", "rwkv"),
    ("Householder products for state tracking", "deltaproduct"),
    ("Taylor feature map with sliding window", "based"),
    ("forget gate lower bound rising with depth", "hgrn"),
    ("exponential input gate and normaliser state", "xlstm"),
])
def test_retrieval_ranks_the_obvious_entry_first(query, first):
    assert knowledge_base().search(query, 3)[0].key == first


def test_retrieval_edge_cases():
    index = KnowledgeIndex(builtin_entries())
    assert index.search("", 3) == [] and index.search("zzzz qqqq", 3) == []
    assert "deltanet" not in [e.key for e in index.search("delta rule overwrite", 5, exclude=["deltanet"])]
    assert KnowledgeIndex([]).search("delta") == []
    assert tokenize("DeltaNet's gating, the L2-norm, overwriting") == ["deltanet", "gating", "l2", "norm", "overwrit"]


@pytest.mark.skipif(not COGNITION.is_dir(), reason="ASI-Arch's cognition files are not here")
def test_import_cognition_into_the_store(tmp_path):
    store = Store.open(tmp_path / "asiarch.db")
    entries = import_cognition(COGNITION, store)
    assert len(entries) >= 100 and all(e.origin == "cognition" and e.title and e.idea for e in entries)
    assert len(stored_entries(store, origin="cognition")) == len(entries)
    import_cognition(COGNITION, store)  # again: replaced, not duplicated
    assert len(stored_entries(store)) == len(entries)
    hits = knowledge_base(store).search("fast weight delta rule update linear attention", 5)
    assert any(e.key.startswith("cognition:arxiv.org_abs_2102.11174") for e in hits)
    store.close()


def test_import_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        import_cognition(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a cognition file"):
        import_cognition(tmp_path)
