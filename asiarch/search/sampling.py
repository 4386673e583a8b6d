"""Parent and reference sampling, as ASI-Arch does it.

The candidate pool holds the ``pool_size`` best scored candidates (baselines included:
ASI-Arch's first parent was DeltaNet itself). It is rebuilt after every
``pool_rebuild_every`` new results, and on every new result while it is not yet full.
The parent is drawn uniformly from pool ranks 1..``parent_top``; references from ranks
``parent_top``+1..``pool_size`` (from the rest of the top when those ranks are empty).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from asiarch.store import Candidate, Store

POOL_KEY = "pool"


@dataclass
class Sample:
    parent: Candidate
    references: list[Candidate]


def current_pool(store: Store, *, pool_size: int, rebuild_every: int) -> list[int]:
    """Ids of the pool, best first, rebuilt by ASI-Arch's rule and remembered in the store."""
    n_results = store.count("done")
    saved = store.get_meta(POOL_KEY)
    if saved:
        pool = json.loads(saved)
        since = n_results - pool["built_at"]
        full = len(pool["ids"]) >= pool_size
        if since == 0 or (full and since < rebuild_every):
            return pool["ids"]
    ids = [c.id for c in store.ranked(pool_size)]
    if not store.readonly:
        store.set_meta(POOL_KEY, json.dumps({"ids": ids, "built_at": n_results}))
    return ids


def sample_parents(store: Store, rng: random.Random, *, pool_size: int = 50, parent_top: int = 10,
                   num_references: int = 4, rebuild_every: int = 50) -> Sample | None:
    """Draw a parent and references; None while nothing has been scored."""
    ids = current_pool(store, pool_size=pool_size, rebuild_every=rebuild_every)
    if not ids:
        return None
    top = ids[:parent_top]
    parent_id = rng.choice(top)
    rest = ids[parent_top:] or [i for i in top if i != parent_id]
    ref_ids = rng.sample(rest, min(num_references, len(rest)))
    return Sample(parent=store.candidate(parent_id), references=[store.candidate(i) for i in ref_ids])
