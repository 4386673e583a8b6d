"""Presets of `asiarch init DIR --preset NAME`: configs other people's experiments used, every value with
where it comes from.

- ``asi-arch``: ASI-Arch's language-modelling setting (arXiv 2507.18074 and its code at commit 5995939):
  the exploration stage (~20M parameters, 2,000 steps of 256 x 2,048 GPT-2 tokens, about 1B) and the
  verification stage (~340M parameters, 1B tokens), scored on its benchmark list through lm-eval. Sized
  for a GPU cluster.
- ``tiny-lm``: the same path (prepared data, LM training, lm-eval scoring, two stages) at a size two CPU
  cores train in minutes: byte tokens, a 2-layer model of width 64, sequences of 128. It carries no
  signal about ASI-Arch's results; it shows the LM path works before a cluster allocation is spent on it.

A preset is a set of (key, value, source) over :class:`asiarch.config.Config`; :func:`apply` sets them
and returns the notes `render_toml` writes beside each key.
"""

from __future__ import annotations

from dataclasses import dataclass

from asiarch.config import Config

PAPER = "ASI-Arch (arXiv 2507.18074)"
CODE = "ASI-Arch's code (commit 5995939)"
#: ASI-Arch's benchmarks as lm-eval's registered task names (its paper's tables: ARC-c, ARC-e, BoolQ,
#: HellaSwag, LAMBADA, OpenBookQA, PIQA, SIQA, WinoGrande, WikiText).
ASI_ARCH_TASKS = ["arc_challenge", "arc_easy", "boolq", "hellaswag", "lambada_openai", "openbookqa", "piqa",
                  "social_iqa", "winogrande", "wikitext"]


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    values: tuple[tuple[str, object, str], ...]   # (section.key, value, where it comes from)
    next_steps: str                               # what `asiarch init` prints after writing the config


PRESETS = {p.name: p for p in (
    Preset("asi-arch", "ASI-Arch's language-modelling exploration and verification stages (GPU cluster)", (
        ("experiment.description", "ASI-Arch's LM setting: explore at ~20M parameters on ~1B GPT-2 tokens, "
                                   "verify at ~340M", PAPER),
        ("train.task", "lm", f"{PAPER}: language modelling on web text"),
        ("train.data", "data", "a directory of `asiarch data prepare INPUT... --tokenizer gpt2 --out DIR` "
                               "(ASI-Arch: GPT-2 tokenizer); relative to the experiment directory"),
        ("train.vocab_size", 50304, "GPT-2's 50,257 ids padded to a multiple of 64 (the manifest's 50,257 "
                                    "would work too; padding is faster on GPUs)"),
        ("train.hidden_size", 256, f"{PAPER}, exploration: hidden 256 (~20M parameters)"),
        ("train.num_layers", 8, f"{PAPER}, exploration: 8 layers"),
        ("train.num_heads", 8, f"{PAPER}: 8 heads"),
        ("train.steps", 2000, f"{PAPER}, exploration: 2,000 steps"),
        ("train.batch_size", 256, f"{PAPER}: 256 sequences a step (256 x 2,048 = 524,288 tokens; ~1B in all)"),
        ("train.seq_len", 2048, f"{PAPER}: sequences of 2,048 tokens"),
        ("train.lr", 3e-4, f"{PAPER}: AdamW at 3e-4"),
        ("train.warmup_steps", 100, "warmup-stable-decay as in ASI-Arch; the warmup length is not published "
                                    "(5 % of the steps here)"),
        ("train.decay_fraction", 0.2, "warmup-stable-decay: the last 20 % decay (not published; a common choice)"),
        ("train.precision", "bf16", f"{PAPER}: bf16"),
        ("train.nproc", 8, "one rank per GPU of an 8-GPU node (ASI-Arch's cluster shape is not published)"),
        ("train.log_every", 50, "progress every 50 steps (40 curve points: enough for early stopping)"),
        ("train.eval_batches", 16, "16 x 256 validation windows of 2,048 tokens (~8M tokens)"),
        ("train.lm_eval_tasks", ASI_ARCH_TASKS, f"{PAPER}'s benchmark list, as lm-eval task names; their datasets "
                                                "must be in the cluster's HF cache (jobs run offline)"),
        ("train.lm_eval_limit", 500, f"{PAPER}: 500 samples per benchmark at exploration"),
        ("verify.enabled", True, f"{PAPER}: the best candidates are verified bigger and longer"),
        ("verify.hidden_size", 1024, f"{PAPER}, verification: hidden 1024 (~340M parameters)"),
        ("verify.num_layers", 24, f"{PAPER}, verification: 24 layers"),
        ("verify.steps", 1907, f"{PAPER}, verification: 1B tokens = 1,907 steps of 524,288"),
        ("verify.top_k", 5, f"{PAPER}: the best five went on to the larger runs"),
        ("verify.lm_eval_tasks", ASI_ARCH_TASKS, f"{PAPER}: the same benchmarks"),
        ("verify.lm_eval_limit", 0, "every sample in verification (the 500 are the exploration stage's)"),
        ("cluster.scheduler", "slurm", "a cluster run"),
        ("cluster.gpus_per_node", 8, "with train.nproc"),
        ("cluster.max_in_flight", 8, "jobs in flight at once: size it to your allocation"),
        ("budget.candidates", 100, "ASI-Arch ran 1,773; start smaller and resume with a larger budget"),
    ), "prepare the data into DIR/data on a machine with the corpus (`asiarch data prepare CORPUS... --tokenizer "
       "gpt2 --out DIR/data --workers 16`), fill in [cluster] (partition, account, container image), check with "
       "`asiarch check --config DIR/config.toml`, then submit `asiarch head-script DIR` with sbatch"),
    Preset("tiny-lm", "the LM path at CPU size: prepared byte tokens, lm-eval on a local task, two stages", (
        ("experiment.description", "tiny-lm: ASI-Arch's LM path at a size two CPU cores train in minutes", ""),
        ("train.task", "lm", "language modelling, as ASI-Arch"),
        ("train.data", "data", "a directory of `asiarch data prepare INPUT... --tokenizer bytes --out DIR` "
                               "(byte tokens keep the embedding small on a CPU); relative to the experiment "
                               "directory"),
        ("train.hidden_size", 64, "CPU-sized (ASI-Arch: 256)"),
        ("train.num_layers", 2, "CPU-sized (ASI-Arch: 8)"),
        ("train.num_heads", 2, "CPU-sized (ASI-Arch: 8)"),
        ("train.steps", 150, "CPU-sized (ASI-Arch: 2,000)"),
        ("train.batch_size", 16, "CPU-sized (ASI-Arch: 256)"),
        ("train.seq_len", 128, "CPU-sized (ASI-Arch: 2,048)"),
        ("train.lr", 3e-3, "a small model learns faster at a higher rate (ASI-Arch: 3e-4)"),
        ("train.warmup_steps", 10, "warmup-stable-decay, as ASI-Arch"),
        ("train.log_every", 10, "15 curve points"),
        ("train.eval_batches", 4, "4 x 16 validation windows"),
        ("train.lm_eval_tasks", ["cloze"], "a local task: pick each held-out document's ending among four "
                                           "(`asiarch data cloze`); add others you have"),
        ("train.lm_eval_include", "tasks", "local lm-eval task YAMLs, relative to the experiment directory"),
        ("train.lm_eval_limit", 100, "100 samples per task at most"),
        ("verify.enabled", True, "two stages, as ASI-Arch"),
        ("verify.top_k", 2, "CPU-sized (ASI-Arch: 5)"),
        ("verify.seeds", 2, "CPU-sized"),
        ("verify.steps", 300, "verification trains longer (ASI-Arch: 1B tokens)"),
        ("cluster.max_in_flight", 1, "two cores: one 2-rank job at a time"),
        ("budget.candidates", 4, "a few candidates: a smoke test of the path"),
    ), "prepare a corpus into DIR/data (`asiarch data prepare CORPUS... --tokenizer bytes --out DIR/data`), write "
       "the local task from text kept out of it (`asiarch data cloze HELDOUT... --out DIR/tasks`), then "
       "`asiarch run DIR`"),
)}


def apply(cfg: Config, name: str) -> dict[str, str]:
    """Set preset ``name``'s values on ``cfg``; returns {section.key: where the value comes from}. KeyError
    (naming the presets) for an unknown name."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    notes = {}
    for key, value, source in PRESETS[name].values:
        section, field = key.split(".")
        setattr(getattr(cfg, section), field, value)
        notes[key] = f"preset {name}" + (f": {source}" if source else "")
    return notes
