"""``asiarch export``: one row per candidate, as CSV or JSON lines, for pandas and friends.

Columns: everything the leaderboard has (rank, id, name, origin, parent, round, stage, status,
fitness, loss, score, one column per task metric, num_params, mixer_params, tokens_per_s,
attempts, reason), then the fitness terms (``term_loss``, ``term_bench``, ...), compute_s
(wall seconds x ranks over all its attempts), peak_memory_bytes, created_at, updated_at
(unix time), code_sha256, genome_key, motivation, the latest analysis summary, and
``result_path``: the candidate's best result file, relative to the experiment directory,
which :func:`asiarch.job.result.read_result` reads (curve, metrics, config, environment)::

    import pandas as pd
    from asiarch.job.result import read_result
    df = pd.read_csv("cands.csv")                      # asiarch export DIR --format csv --out cands.csv
    rec = read_result(f"DIR/{df.dropna(subset=['fitness']).iloc[0].result_path}")
    curve = pd.DataFrame(vars(rec.curve))              # step, tokens, loss, lr, time
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Iterable, TextIO

from asiarch.store import Store, queries
from asiarch.analysis.views import LEADERBOARD_COLUMNS, csv_cells, leaderboard_rows, stage_leaderboard_rows

FORMATS = ("csv", "jsonl")
# The header of an export with no candidates yet (task and fitness-term columns appear with data).
EMPTY_COLUMNS = (*LEADERBOARD_COLUMNS, "compute_s", "peak_memory_bytes", "created_at", "updated_at", "code_sha256",
                 "genome_key", "motivation", "analysis", "result_path")


def export_rows(store: Store, *, stage: str | None = None, code: bool = False, reference: str = "") -> list[dict]:
    """The export's rows, leaderboard order (best first, then unscored by id). With ``stage``, only the
    candidates trained in it, each with that stage's figures in ``stage_*`` columns (seeds, loss and
    score mean with their 95 % interval, the paired loss gain against ``reference``, beats)."""
    rows = leaderboard_rows(store, stage=stage)
    per_stage = {r["id"]: r for r in stage_leaderboard_rows(store, stage, reference)} if stage else {}
    extra = {c["id"]: c for c in queries.candidate_table(store)}
    terms = sorted({t for c in extra.values() for t in (c["scores"].get("terms") or {})})
    compute = queries.compute_by_candidate(store)
    paths = queries.best_result_paths(store)  # each candidate's latest ok result, else its latest of any status
    summaries = queries.analysis_summaries(store)
    codes = queries.candidate_codes(store) if code else {}
    out = []
    for row in rows:
        c = extra[row["id"]]
        scores = c["scores"]
        row = dict(row)
        row.update({f"term_{t}": (scores.get("terms") or {}).get(t) for t in terms})
        row.update({"compute_s": compute.get(row["id"]), "peak_memory_bytes": scores.get("peak_memory_bytes"),
                    "created_at": c["created_at"], "updated_at": c["updated_at"], "code_sha256": c["code_sha256"],
                    "genome_key": c["genome_key"], "motivation": c["motivation"],
                    "analysis": summaries.get(row["id"], ""), "result_path": paths.get(row["id"], "")})
        if stage:
            st = per_stage.get(row["id"])
            row["stage_seeds"] = st["seeds"] if st else 0
            for key in ("loss", "score", "loss_vs_ref", "score_vs_ref"):
                for part in ("mean", "low", "high"):
                    row[f"stage_{key}_{part}"] = ((st or {}).get(key) or {}).get(part)
            row["stage_beats_ref"] = st["beats_ref"] if st else None
        if code:
            row["code"] = codes[row["id"]]
        out.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return out


def write_rows(rows: Iterable[dict], fmt: str, stream: TextIO) -> int:
    """Write rows as CSV (header first; every row has the same columns) or JSON lines; returns the count."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of: {', '.join(FORMATS)}")
    rows = list(rows)
    if fmt == "jsonl":
        for r in rows:
            stream.write(json.dumps(r) + "\n")
        return len(rows)
    writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else list(EMPTY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(map(csv_cells, rows))
    return len(rows)


def export_text(store: Store, fmt: str, **kw) -> str:
    buf = io.StringIO()
    write_rows(export_rows(store, **kw), fmt, buf)
    return buf.getvalue()
