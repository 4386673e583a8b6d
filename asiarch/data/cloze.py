"""`asiarch data cloze`: a local lm-eval task from held-out text, for clusters without the benchmarks' data.

Each question is one document of the inputs (read as `asiarch data prepare` reads them): its first words are
the context, the rest of it (up to ``max_words``) the right ending, and the endings of ``choices - 1`` other
documents, drawn with a fixed seed, the wrong ones. A model that learned the corpus's language picks the
right ending more often than chance (1 / choices); it is a sanity benchmark of the LM path, not a
substitute for ASI-Arch's. Give text the models were not trained on (e.g. a file kept out of
``data prepare``), or the score measures memory.

It writes ``OUT/NAME.jsonl`` (``{"context", "choices", "label"}`` per line) and ``OUT/NAME.yaml``, an lm-eval
multiple-choice task over it (metrics acc and acc_norm), atomically; point ``train.lm_eval_include`` at
OUT and name NAME in ``train.lm_eval_tasks``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from asiarch.data.sources import InputError, documents, open_source
from asiarch.job.contract import atomic_write

TASK_YAML = """# lm-eval task written by `asiarch data cloze` from {sources}
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _questions(docs: list[list[str]], *, count: int, choices: int, context_fraction: float, max_words: int,
               seed: int) -> list[dict]:
    rng = random.Random(seed)
    cut = [max(1, int(len(words) * context_fraction)) for words in docs]
    endings = [" ".join(words[c:c + max_words]) for words, c in zip(docs, cut)]
    distinct = sorted(set(endings))
    out = []
    for i, words in enumerate(docs[:count]):
        # choices draws from the distinct endings, less its own if drawn: choices - 1 others
        options = [e for e in rng.sample(distinct, min(choices, len(distinct))) if e != endings[i]][:choices - 1]
        if len(options) < choices - 1:  # too few distinct endings besides its own (a corpus of repeats)
            continue
        label = rng.randrange(choices)
        options.insert(label, endings[i])
        out.append({"context": " ".join(words[:cut[i]]), "choices": options, "label": label})
    return out


def make_cloze(inputs: list[str], out: str | Path, *, name: str = "cloze", count: int = 200, choices: int = 4,
               field: str = "text", min_words: int = 8, max_words: int = 12, context_fraction: float = 0.6,
               seed: int = 0) -> tuple[Path, int]:
    """Write the task (see the module docstring); returns (the YAML's path, questions). InputError when the
    inputs hold too few documents of ``min_words`` words, or a setting is out of range."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise InputError(f"--name {name!r}: an lm-eval task name is letters, digits and _ (e.g. cloze_kjv)")
    if choices < 2 or count < 1 or not 0 < context_fraction < 1:
        raise InputError("--choices must be at least 2, --count at least 1, the context fraction in (0, 1)")
    docs = []
    for source in map(open_source, inputs):
        docs += [words for text, _ in documents(source, field) if len(words := text.split()) >= min_words]
    if len(docs) < max(choices, 2):
        raise InputError(f"{', '.join(inputs)}: {len(docs)} document(s) of {min_words} words or more; a question "
                         f"needs {choices} (one right ending, {choices - 1} wrong): give more text")
    questions = _questions(docs, count=count, choices=choices, context_fraction=context_fraction,
                           max_words=max_words, seed=seed)
    if not questions:
        raise InputError(f"{', '.join(inputs)}: the documents have fewer than {choices} distinct endings; give "
                         f"more varied text")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{name}.jsonl", "".join(json.dumps(q) + "\n" for q in questions))
    atomic_write(out / f"{name}.yaml", TASK_YAML.format(name=name, sources=", ".join(inputs)))
    return out / f"{name}.yaml", len(questions)
