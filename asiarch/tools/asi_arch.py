"""Import ASI-Arch's published layers into an experiment, so a search can start from them.

    asiarch import-asi-arch architectures.json [--tree tree.json] --into DIR [--top K | --names a,b]

ASI-Arch (arXiv 2507.18074) published its layers as one JSON list: each entry has the
layer's code (``program``, class ``DeltaNet``), ``motivation``, ``summary``, its id in the
search (``index``) and its parent's (``parent``), and what it reached at ASI-Arch's scale:
``result.train`` (a CSV string of training loss by step), ``result.test`` (a CSV string of
benchmark scores), ``score`` (ASI-Arch's fitness) and ``parameters`` ("495.73M").
``tree.json`` holds the whole search lineage (index, name, parent, score).

Each imported layer becomes a candidate of origin ``asi-arch`` with status ``proposed``:
the next ``asiarch run`` pre-flights and trains it in this experiment's own setting before
it competes, since the reported numbers come from another scale, data and budget. They
are kept in the candidate's ``scores["asi_arch"]`` (parsed into numbers) and summed up in
its motivation, which the Researcher reads. Parent links between imported layers become
store parent links; a parent left out is recorded by its ASI-Arch index (and, with the
tree, the whole ancestry). Importing again adds nothing twice (code sha256) and links new
layers to parents imported earlier.

Head side: standard library and the store only; nothing here runs the layers' code.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Iterable

from asiarch.analysis import format as fmt
from asiarch.job.candidate import code_sha256
from asiarch.store import Store

__all__ = ["ORIGIN", "AsiArchError", "PublishedLayer", "TreeNode", "ImportSummary", "read_architectures",
           "read_tree", "select_layers", "import_layers", "parse_train_csv", "parse_test_csv",
           "parse_parameters", "casts_to_bf16"]

ORIGIN = "asi-arch"
# Scale at which ASI-Arch reported these numbers (paper, exploration stage).
REPORTED_SETTING = "ASI-Arch exploration stage: ~20M-parameter model trained 2,000 steps on ~1B tokens, bf16"
_REQUIRED = ("name", "program", "index")


class AsiArchError(ValueError):
    """The published data could not be read or selected; the message names the file, entry and field."""


@dataclass(frozen=True)
class TreeNode:
    index: int
    name: str
    parent: int | None
    score: float | None


@dataclass(frozen=True)
class PublishedLayer:
    """One entry of ASI-Arch's architectures.json, with its reported results parsed."""

    index: int
    name: str
    display_name: str
    parent: int | None
    code: str
    motivation: str
    summary: str
    score: float | None
    parameters: str
    train: dict = field(default_factory=dict)       # {"step": [...], "loss": [...]}
    benchmarks: dict = field(default_factory=dict)  # task -> score (None where ASI-Arch has nan)

    @property
    def final_train_loss(self) -> float | None:
        losses = self.train.get("loss") or []
        return losses[-1] if losses else None

    @property
    def benchmark_average(self) -> float | None:
        return self.benchmarks.get("average")


@dataclass
class ImportSummary:
    """What an import did: candidates added (id, layer), layers skipped (layer, reason), parent links made."""

    added: list[tuple[int, PublishedLayer]] = field(default_factory=list)
    skipped: list[tuple[PublishedLayer, str]] = field(default_factory=list)
    linked: int = 0


# ----------------------------------------------------------------------------------
# parsing


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _csv_rows(text: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(text or "")) if row]


def parse_train_csv(text: str) -> dict:
    """``",1,100,...\\nname,11.02,7.61,..."`` -> ``{"step": [1, 100, ...], "loss": [11.02, 7.61, ...]}``."""
    rows = _csv_rows(text)
    if len(rows) < 2:
        return {"step": [], "loss": []}
    steps, losses = [], []
    for s, v in zip(rows[0][1:], rows[1][1:]):
        step, loss = _number(s), _number(v)
        if step is not None and loss is not None:
            steps.append(int(step))
            losses.append(loss)
    return {"step": steps, "loss": losses}


def parse_test_csv(text: str) -> dict[str, float | None]:
    """``",arc_challenge,...,average\\nname,0.2355,...,0.3979"`` -> ``{"arc_challenge": 0.2355, ...}`` (nan -> None)."""
    rows = _csv_rows(text)
    if len(rows) < 2:
        return {}
    return {task: _number(v) for task, v in zip(rows[0][1:], rows[1][1:]) if task}


def parse_parameters(text: str | int | float | None) -> int | None:
    """``"495.73M"`` -> 495730000; plain numbers pass through; anything else -> None."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMBG]?)\s*", str(text or ""), re.I)
    if not m:
        return None
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}[m.group(2).upper()]
    return int(round(float(m.group(1)) * scale))


def casts_to_bf16(code: str) -> bool:
    """Whether the code casts to bf16 outside comments (such layers run only under bf16 autocast)."""
    return bool(re.search(r"^[^#\n]*\.to\(torch\.bfloat16\)", code, re.M))


def _int_or_none(value) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _read_json(path: Path, what: str):
    """One of ASI-Arch's JSON files; errors name the file and what was expected."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AsiArchError(f"{path}: cannot read it: {exc.strerror}") from exc
    except ValueError as exc:
        raise AsiArchError(f"{path}: not JSON ({exc}); give ASI-Arch's {what}") from exc


def read_architectures(path: str | Path) -> list[PublishedLayer]:
    """Read ASI-Arch's architectures.json (a JSON list); raise AsiArchError naming what is wrong."""
    path = Path(path)
    data = _read_json(path, "architectures.json")
    if isinstance(data, dict) and "results" in data:
        raise AsiArchError(f"{path}: this looks like tree.json (no layer code); pass it with --tree and give "
                           "architectures.json as the input")
    if not isinstance(data, list):
        raise AsiArchError(f"{path}: expected a JSON list of layers (ASI-Arch's architectures.json), "
                           f"found {type(data).__name__}")
    layers = []
    for i, entry in enumerate(data):
        missing = [k for k in _REQUIRED if not isinstance(entry, dict) or entry.get(k) in (None, "")]
        if missing:
            raise AsiArchError(f"{path}: entry {i} lacks {', '.join(missing)}; every layer needs "
                               f"{', '.join(_REQUIRED)}")
        result = entry.get("result") or {}
        try:
            layers.append(PublishedLayer(
                index=int(entry["index"]), name=str(entry["name"]), display_name=str(entry.get("name_new") or ""),
                parent=_int_or_none(entry.get("parent")), code=str(entry["program"]),
                motivation=str(entry.get("motivation") or ""), summary=str(entry.get("summary") or ""),
                score=_number(entry.get("score")), parameters=str(entry.get("parameters") or ""),
                train=parse_train_csv(result.get("train", "")), benchmarks=parse_test_csv(result.get("test", "")),
            ))
        except (TypeError, ValueError) as exc:
            raise AsiArchError(f"{path}: entry {i} ({entry.get('name')}): {exc}") from exc
    return layers


def read_tree(path: str | Path) -> dict[int, TreeNode]:
    """Read ASI-Arch's tree.json (``{"results": [{index, name, parent, score}]}``) into index -> node."""
    path = Path(path)
    data = _read_json(path, "tree.json")
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise AsiArchError(f"{path}: expected {{\"results\": [...]}} as in ASI-Arch's tree.json")
    try:
        return {int(r["index"]): TreeNode(int(r["index"]), str(r.get("name", "")), _int_or_none(r.get("parent")),
                                          _number(r.get("score"))) for r in rows}
    except (KeyError, TypeError, ValueError) as exc:
        raise AsiArchError(f"{path}: an entry lacks a valid index or parent ({exc})") from exc


def ancestors(index: int, tree: dict[int, TreeNode]) -> list[int]:
    """ASI-Arch indices from ``index``'s parent up to the root (empty without a tree entry)."""
    out, seen = [], {index}
    node = tree.get(index)
    while node is not None and node.parent is not None and node.parent not in seen:
        out.append(node.parent)
        seen.add(node.parent)
        node = tree.get(node.parent)
    return out


# ----------------------------------------------------------------------------------
# selecting and importing


def select_layers(layers: list[PublishedLayer], *, top: int | None = None,
                  names: Iterable[str] | None = None) -> list[PublishedLayer]:
    """All layers, the ``top`` best by ASI-Arch's reported score, or those named (name or display name)."""
    if names:
        by_name = {l.name: l for l in layers} | {l.display_name: l for l in layers if l.display_name}
        wanted, unknown = [], []
        for n in names:
            (wanted if n in by_name else unknown).append(by_name.get(n, n))
        if unknown:
            hints = {n: get_close_matches(n, list(by_name), n=2) for n in unknown}
            text = "; ".join(f"{n!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
            raise AsiArchError(f"no published layer named {text}")
        return list({l.index: l for l in wanted}.values())
    if top is not None:
        if top < 1:
            raise AsiArchError(f"--top must be at least 1, got {top}")
        ranked = sorted(layers, key=lambda l: (l.score is None, -(l.score or 0.0), l.index))
        return ranked[:top]
    return list(layers)


def _record(layer: PublishedLayer, tree: dict[int, TreeNode] | None) -> dict:
    """What goes into the candidate's scores["asi_arch"]."""
    parent_name = tree[layer.parent].name if tree and layer.parent in tree else None
    return {
        "index": layer.index, "name": layer.name, "display_name": layer.display_name,
        "parent_index": layer.parent, "parent_name": parent_name,
        "ancestors": ancestors(layer.index, tree) if tree else None,
        "score": layer.score, "parameters": parse_parameters(layer.parameters),
        "parameters_reported": layer.parameters, "summary": layer.summary,
        "final_train_loss": layer.final_train_loss, "benchmark_average": layer.benchmark_average,
        "benchmarks": layer.benchmarks, "train": layer.train, "setting": REPORTED_SETTING,
    }


def _motivation(layer: PublishedLayer, record: dict, parent_id: int | None) -> str:
    parent = ""
    if layer.parent is not None:
        where = f"imported here as #{parent_id}" if parent_id is not None else "not imported here"
        pname = f" {record['parent_name']}" if record["parent_name"] else ""
        parent = f" Parent: ASI-Arch #{layer.parent}{pname} ({where})."
    head = (f"[Imported from ASI-Arch: #{layer.index} {layer.name}"
            + (f" ({layer.display_name})" if layer.display_name else "")
            + f". Reported there ({REPORTED_SETTING}; not comparable with this experiment's numbers): "
            f"fitness {fmt.number(layer.score, '.3f', missing='n/a')}, "
            f"final train loss {fmt.number(layer.final_train_loss, missing='n/a')}, "
            f"benchmark average {fmt.number(layer.benchmark_average, missing='n/a')}, "
            f"{layer.parameters or 'n/a'} parameters.{parent}"
            + (f" Summary: {layer.summary}" if layer.summary else "") + "]")
    return f"{head}\n\n{layer.motivation}".strip()


def _depth_order(layers: list[PublishedLayer]) -> list[PublishedLayer]:
    """Parents before their children among ``layers`` (then by index), so parent ids exist when linked."""
    by_index = {l.index: l for l in layers}

    def depth(l: PublishedLayer) -> int:
        d, seen = 0, {l.index}
        while l.parent in by_index and l.parent not in seen:
            seen.add(l.parent)
            l = by_index[l.parent]
            d += 1
        return d

    return sorted(layers, key=lambda l: (depth(l), l.index))


# The head of an imported candidate's motivation; it names the ASI-Arch index even where the
# scores JSON has been rewritten since (after training).
_MOTIVATION_INDEX = re.compile(r"^\[Imported from ASI-Arch: #(\d+) ")


def imported_indices(store: Store) -> dict[int, int]:
    """ASI-Arch index -> candidate id of the layers already imported into ``store``."""
    out = {}
    for c in store.candidates(origin=ORIGIN):
        index = (c.scores.get("asi_arch") or {}).get("index")
        if index is None:
            m = _MOTIVATION_INDEX.match(c.motivation)
            index = m.group(1) if m else None
        if index is not None:
            out[int(index)] = c.id
    return out


def import_layers(store: Store, layers: list[PublishedLayer], tree: dict[int, TreeNode] | None = None,
                  *, round: int = 0) -> ImportSummary:
    """Add ``layers`` to ``store`` as ``proposed`` candidates of origin ``asi-arch``; see the module docstring."""
    summary = ImportSummary()
    ids = imported_indices(store)
    shas, _ = store.known_keys()
    for layer in _depth_order(layers):
        sha = code_sha256(layer.code)
        record = _record(layer, tree)
        parent_id = ids.get(layer.parent) if layer.parent is not None else None
        if sha in shas:
            existing = store.candidate_with_code(sha)
            if existing is not None:
                ids.setdefault(layer.index, existing.id)  # its children link to it
                if existing.origin == ORIGIN and "asi_arch" not in existing.scores and existing.status == "proposed":
                    # an import interrupted between adding the candidate and recording its results
                    store.set_scores(existing.id, fitness=None, loss=None, score=None, scores={"asi_arch": record},
                                     num_params=None, status="proposed")
            same = f" as #{existing.id}" if existing is not None else ""
            summary.skipped.append((layer, f"already in the experiment (same code{same})"))
            continue
        cid = store.add_candidate(name=layer.name, origin=ORIGIN, code=layer.code, code_sha256=sha,
                                  parent_id=parent_id, round=round, motivation=_motivation(layer, record, parent_id),
                                  status="proposed")
        store.set_scores(cid, fitness=None, loss=None, score=None, scores={"asi_arch": record}, num_params=None,
                         status="proposed")
        ids[layer.index] = cid
        shas.add(sha)
        summary.added.append((cid, layer))
        summary.linked += parent_id is not None
    return summary


# ----------------------------------------------------------------------------------
# asiarch import-asi-arch


def import_command(architectures: str | Path, into: str | Path, *, tree: str | Path | None = None,
                   top: int | None = None, names: Iterable[str] | None = None,
                   cognition: str | Path | None = None, out=print) -> int:
    """``asiarch import-asi-arch``: read, select, import, and say what the next run will do. Returns an exit code.

    An experiment directory without config.toml gets one with the defaults, except
    ``[train] precision = "bf16"`` (ASI-Arch trained in bf16, and layers that cast to bf16
    inside their kernels run only under autocast).
    """
    from asiarch.config import Config, load_config, render_toml
    from asiarch.layout import ExperimentDir

    from asiarch.propose.llm.knowledge import cognition_entries, import_cognition

    if cognition is not None:
        try:
            cognition_entries(cognition)  # read and parse every paper before anything is written
        except ValueError as exc:
            raise AsiArchError(f"--cognition: {exc}") from None
    layers = read_architectures(architectures)
    nodes = read_tree(tree) if tree else None
    chosen = select_layers(layers, top=top, names=names)

    exp = ExperimentDir(Path(into))
    if exp.config.exists():
        cfg = load_config(exp.config)
    elif exp.exists():
        cfg = Config()
    else:
        cfg = Config()
        cfg.experiment.name = exp.root.resolve().name.replace(" ", "_") or "asiarch"
        cfg.train.precision = "bf16"
        exp.root.mkdir(parents=True, exist_ok=True)
        exp.config.write_text(render_toml(cfg))
        out(f"wrote {exp.config} with the defaults and [train] precision = \"bf16\" (as ASI-Arch trained); edit it "
            "before `asiarch run`")

    store = Store.open(exp.db)
    try:
        if store.get_meta("experiment") is None:
            store.set_meta("experiment", cfg.experiment.name)
        summary = import_layers(store, chosen, nodes)
        insights = import_cognition(cognition, store) if cognition is not None else []
    finally:
        store.close()

    which = f"the top {top} by reported fitness" if top else "the named layers" if names else "all layers"
    out(f"imported {len(summary.added)} of {len(chosen)} ({which} of {len(layers)} in {Path(architectures).name}) "
        f"into {exp.root} as origin {ORIGIN!r}, status proposed; {summary.linked} linked to an imported parent"
        + (f"; {len(summary.skipped)} already there" if summary.skipped else ""))
    if cognition is not None:
        papers = len({e.key.split("#")[0] for e in insights})
        out(f"imported {len(insights)} insights from {papers} papers in {cognition} into the knowledge base the "
            "Researcher reads")
    bf16 = [l.name for _, l in summary.added if casts_to_bf16(l.code)]
    if bf16 and cfg.train.precision != "bf16":
        out(f"warning: {len(bf16)} of them cast to bf16 inside their kernels (ASI-Arch trained under bf16 autocast); "
            f"most such layers mix dtypes and fail pre-flight with [train] precision = {cfg.train.precision!r}. Set "
            "precision = \"bf16\" in config.toml.")
    if summary.added:
        out(f"next: `asiarch run {exp.root}` pre-flights and trains them in this experiment's setting (their reported "
            "numbers came from ASI-Arch's scale); they count toward budget.candidates "
            f"({cfg.budget.candidates}), each costing one training job.")
    return 0
