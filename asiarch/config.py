"""Experiment configuration: one TOML file loaded into typed dataclasses.

Every field is declared once, here, with its type, default and a one-line help text;
`asiarch init` renders the commented config.toml from these declarations, and the
loader refuses unknown keys and wrong types with an error that names the key and the
valid ones. The LLM API key is never part of the config: the config names the
environment variable that holds it (``llm.api_key_env``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asiarch.job.contract import DEFAULT_CLASS_NAME  # standard library only


class ConfigError(ValueError):
    """A config file or value is wrong; the message names the key and what is valid."""


def _f(default: Any, help: str, choices: tuple | None = None, **kw):
    """A config field with its help text (and allowed values) kept beside its declaration."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ExperimentConfig:
    name: str = _f("asiarch", "Experiment name; prefixes every run key, job name and result file.")
    seed: int = _f(0, "Seed of the search (parent sampling, offline proposer); training seeds are in [train].")
    description: str = _f("", "Free text kept with the results.")


@dataclass
class SearchConfig:
    proposer: str = _f(
        "offline",
        "Who proposes candidates: 'offline' (the LLM-free seeded proposer), 'llm' (the Researcher agent), "
        "or 'mixed' (a fraction llm_fraction from the LLM).",
        choices=("offline", "llm", "mixed"),
    )
    llm_fraction: float = _f(0.5, "With proposer = 'mixed': fraction of proposals that come from the LLM.")
    schedule: str = _f(
        "steady",
        "How work is scheduled: 'steady' (keep cluster.max_in_flight jobs busy; a slot is refilled as it frees "
        "from candidates proposed and checked ahead, agents and pre-flights run concurrently) or 'rounds' "
        "(propose round_size, check, train them all, then the next round: the same order on every run).",
        choices=("steady", "rounds"),
    )
    round_size: int = _f(4, "Candidates proposed, checked and submitted together (one array job on Slurm) with "
                            "schedule 'rounds'.")
    ahead: int = _f(-1, "Schedule 'steady': checked candidates kept ready beyond the free slots, so that a "
                        "slot that frees is refilled at once (-1: half of cluster.max_in_flight, at least 1).")
    preflight_workers: int = _f(2, "Schedule 'steady': pre-flights run at once, each a sandboxed child "
                                   "(one CPU core each while it runs; size it for the head's node).")
    pool_size: int = _f(50, "Size of the candidate pool parents are sampled from (ASI-Arch: the 50 best).")
    parent_top: int = _f(10, "The parent is drawn uniformly from ranks 1..parent_top of the pool (ASI-Arch: 10).")
    num_references: int = _f(4, "References shown to the Researcher, drawn from ranks parent_top+1..pool_size (ASI-Arch: 4).")
    pool_rebuild_every: int = _f(50, "Rebuild the pool after this many new results (ASI-Arch: 50).")
    class_name: str = _f(DEFAULT_CLASS_NAME, "Name of the layer class in candidate code (ASI-Arch's convention: DeltaNet).")
    max_attempts: int = _f(3, "Training attempts per candidate, repairs included (ASI-Arch: 3).")
    novelty_retries: int = _f(10, "Proposals rejected as duplicates before the proposer gives up for this slot.")
    novelty_threshold: float = _f(0.85, "LLM proposals: similarity (0-1, TF-IDF of code and motivation) to an earlier "
                                        "candidate above which the novelty agent judges whether it is new.")
    allow_quadratic: bool = _f(False, "Accept candidates whose cost grows quadratically with length (softmax "
                                      "attention); the pre-flight complexity check refuses them otherwise.")


@dataclass
class BaselineConfig:
    names: list[str] = _f(
        ["deltanet", "gated_deltanet"],
        "Baselines trained before the search (softmax, linear, retnet, gla, deltanet, gated_deltanet).",
    )
    reference: str = _f("deltanet", "The baseline fitness is measured against (ASI-Arch: DeltaNet).")


@dataclass
class TrainConfig:
    # The defaults are a small MQAR run that carries signal on a laptop CPU: vocabulary 64, 4 pairs in 64
    # tokens, 300 steps; there DeltaNet reaches ~0.87 query accuracy and linear attention ~0.26 (measured on
    # a 2-core machine), so the task separates mixers. ASI-Arch's exploration values are in parentheses.
    task: str = _f("mqar", "Training task: 'mqar' (associative recall, accuracy on queries) or 'lm' (next-token "
                           "prediction over train.data or train.token_file).",
                   choices=("mqar", "lm"))
    hidden_size: int = _f(64, "Model width (ASI-Arch exploration: 256).")
    num_layers: int = _f(2, "Number of blocks (mixer + gated MLP) in the model shell (ASI-Arch exploration: 8).")
    num_heads: int = _f(2, "Heads passed to the mixer (ASI-Arch: 8).")
    mlp_ratio: float = _f(2.0, "Hidden size of the gated MLP as a multiple of hidden_size.")
    steps: int = _f(300, "Optimizer steps (ASI-Arch exploration: 2000).")
    batch_size: int = _f(16, "Global batch size in sequences, split across ranks (ASI-Arch: 256).")
    seq_len: int = _f(64, "Sequence length in tokens (ASI-Arch: 2048).")
    lr: float = _f(3e-3, "Peak learning rate of AdamW (ASI-Arch: 3e-4 at 20M parameters).")
    weight_decay: float = _f(0.1, "AdamW weight decay.")
    warmup_steps: int = _f(20, "Linear warmup steps of the warmup-stable-decay schedule.")
    decay_fraction: float = _f(0.2, "Final fraction of steps over which the learning rate decays linearly to 0.")
    grad_clip: float = _f(1.0, "Gradient norm clip (0 disables).")
    precision: str = _f("fp32", "Training precision: fp32, or bf16 autocast (GPU or CPU; ASI-Arch trained in bf16, "
                                "and many of its published layers need it).",
                        choices=("fp32", "bf16"))
    seed: int = _f(0, "Training seed (data order and initialisation); seed i of a stage trains with seed + i.")
    seeds: int = _f(1, "Seeds per candidate in the exploration stage: one attempt each, aggregated (mean, interval); "
                       "baselines train with the same seeds. Intervals and paired differences need 2 or more.")
    eval_batches: int = _f(8, "Evaluation batches after training.")
    log_every: int = _f(20, "Steps between progress records.")
    divergence_factor: float = _f(3.0, "A loss above this multiple of the first loss, or NaN, ends the run as 'diverged'.")
    nproc: int = _f(2, "Ranks per job (torchrun --nproc_per_node); one per GPU on clusters.")
    threads_per_rank: int = _f(1, "torch CPU threads per rank (CPU training).")
    max_params: int = _f(0, "Refuse candidates whose mixer has more parameters than this (0: no limit).")
    # task parameters
    vocab_size: int = _f(64, "Vocabulary size (MQAR: keys from the lower half, values from the upper half; "
                                  "LM: at least the largest token + 1, 256 for byte tokens; with train.data the "
                                  "manifest's, unless set larger).")
    num_kv_pairs: int = _f(4, "MQAR: key-value pairs per sequence (Zoology: 4 at length 64, 64 at 512).")
    token_file: str = _f("", "LM task: path of a token file, a flat array of uint16 token ids (nanoGPT's train.bin "
                             "format, read as a memmap; its last tenth is held out); asiarch.job.tasks."
                             "write_token_file(path, text_or_tokens) writes one. For real corpora use train.data.")
    data: str = _f("", "LM task: a directory written by `asiarch data prepare INPUT... --tokenizer gpt2 --out DIR` "
                       "(token shards, a train and a val split, manifest.json). Its vocabulary sets the model's: "
                       "train.vocab_size is ignored unless set larger (padding, e.g. 50304 for GPT-2's 50257); "
                       "set smaller it is an error. Training windows are drawn per rank from the train shards; "
                       "the val split is evaluated sharded over the ranks (train.eval_batches x batch_size "
                       "windows at most).")
    lm_eval_tasks: list[str] = _f([], "LM task: lm-evaluation-harness tasks scored after training (needs train.data "
                                      "and the [eval] extra), lm-eval's registered names (e.g. 'arc_easy', 'piqa', "
                                      "'hellaswag', 'lambada_openai'; their datasets must be in the HF cache: jobs run "
                                      "offline) or tasks of train.lm_eval_include. Each metric goes into the result as "
                                      "lm_eval/<task>/<metric>; the task score averages acc_norm (else acc). A task "
                                      "that cannot run is recorded with lm-eval's error; the run keeps its loss.")
    lm_eval_include: str = _f("", "LM task: a directory of lm-eval task YAMLs (a task over a local JSONL file: "
                                  "dataset_path json, dataset_kwargs.data_files relative to this directory).")
    lm_eval_limit: int = _f(0, "LM task: lm-eval samples per task (0: all; a handful make a smoke test, not a score).")
    mqar_eval: list[str] = _f([], "MQAR: further difficulties evaluated after training, as 'PAIRSxLENGTH' (e.g. "
                                  "'8x128'); each adds metrics mqar_PAIRSxLENGTH/accuracy and /loss, and the task "
                                  "score averages all accuracies.")


@dataclass
class ClusterConfig:
    scheduler: str = _f("local", "Where jobs run: 'local' (submitit's local executor) or 'slurm'.",
                        choices=("local", "slurm"))
    max_in_flight: int = _f(1, "Jobs running at once (local) or array throttle %K (Slurm).")
    timeout_min: float = _f(30.0, "Wall-clock limit of one training job in minutes.")
    poll_interval_s: float = _f(1.0, "Seconds between state polls of jobs in flight, at first.")
    submit_window_s: float = _f(2.0, "Schedule 'steady': checked candidates ready within this many seconds of "
                                     "the first go out together (one sbatch, one array); 0 submits each at once.")
    poll_max_interval_s: float = _f(10.0, "Slurm: polls back off to this while no job changes state (each "
                                          "poll is one squeue for all jobs, 2 controller RPCs).")
    slurm_timeout_s: float = _f(30.0, "Slurm: seconds sinfo, squeue, sacct, sbatch and scancel may take before the "
                                      "controller counts as not answering (an unanswered squeue is retried and "
                                      "its jobs keep their last known state; sbatch and sinfo stop the search).")
    gpus_per_node: int = _f(0, "GPUs per job (0 on CPU).")
    nodes: int = _f(1, "Nodes per job.")
    site_profile: str = _f("", "Site profile name or path from slurm/ (partition, gres, modules, scratch).")
    partition: str = _f("", "Slurm partition (overrides the site profile).")
    account: str = _f("", "Slurm account.")
    qos: str = _f("", "Slurm QOS.")
    constraint: str = _f("", "Slurm --constraint (node features).")
    gres_name: str = _f("gpu", "Generic resource name GPUs are requested by (--gres=NAME:N).")
    mem_gb: float = _f(0.0, "Memory per job in GB (0: the partition's default).")
    scratch_var: str = _f("", "Environment variable holding node-local scratch (e.g. TMPDIR, SCRATCH); "
                              "jobs use it as their TMPDIR.")
    sbatch_extra: list[str] = _f([], "Any other sbatch option as 'key=value' (or 'key' for a flag), passed through.")
    container_image: str = _f("", "Apptainer image (.sif) to run jobs in; empty runs torchrun directly.")
    binds: list[str] = _f([], "Extra Apptainer binds (src[:dst]) besides the experiment directory.")
    hf_cache: str = _f("", "A Hugging Face hub cache (HF_HUB_CACHE, e.g. ~/.cache/huggingface/hub, filled on a machine "
                           "with internet) that jobs read lm-eval's registered datasets from (train.lm_eval_tasks): "
                           "bound read-only; the datasets library builds its own cache in the job's /tmp.")
    container_cleanenv: bool = _f(True, "apptainer --cleanenv: the job sees only what asiarch passes with --env.")
    container_containall: bool = _f(False, "apptainer --containall: no home, /tmp or /dev from the host.")
    container_network_none: bool = _f(False, "apptainer --net --network none, where the site allows it.")
    modules: list[str] = _f([], "Environment modules loaded before the job runs.")
    python: str = _f("", "Python interpreter jobs use (default: the head's own).")
    sandbox: str = _f("auto", "The OS sandbox for every process that runs candidate code (pre-flight on the head, "
                              "training jobs): 'bwrap' (bubblewrap: own user, pid, network, IPC and mount "
                              "namespaces; system, interpreter, project and layer read-only; only the attempt "
                              "directory writable; no home, private /tmp, no network, a process limit), "
                              "'apptainer' (apptainer exec --containall --cleanenv --no-home --net --network none "
                              "in container_image, only the attempt directory bound writable), 'auto' (apptainer "
                              "when container_image is set, else bwrap; refuses to run when bwrap does not work "
                              "here), or 'none' (no sandbox: LLM-written code runs as you, beside your API key; "
                              "warned on every run).", choices=("auto", "bwrap", "apptainer", "none"))


@dataclass
class LLMConfig:
    base_url: str = _f("", "OpenAI-compatible endpoint (OpenAI, vLLM, Ollama); empty means no LLM.")
    api_key_env: str = _f("OPENAI_API_KEY", "Name of the environment variable holding the API key (never stored).")
    model: str = _f("gpt-4o-mini", "Default model for every agent.")
    timeout_s: float = _f(120.0, "Per-request timeout.")
    max_retries: int = _f(5, "Retries on rate limits, server errors and timeouts (exponential backoff, jitter).")
    researcher_model: str = _f("", "Model of the Researcher, which proposes layers (empty: llm.model).")
    novelty_model: str = _f("", "Model of the novelty judge, asked when a proposal is close to an earlier "
                                "candidate (empty: llm.model).")
    engineer_model: str = _f("", "Model of the Engineer, which repairs layers that fail pre-flight or training "
                                 "(empty: llm.model).")
    analyst_model: str = _f("", "Model of the Analyst, which explains each trained candidate (empty: llm.model).")
    agent_base_urls: list[str] = _f([], "Per-agent endpoint as 'AGENT=URL' (AGENT: researcher, novelty, engineer, "
                                        "analyst); the others use llm.base_url. The same key is sent to each.")
    backoff_s: float = _f(1.0, "Seconds before the first retry; doubled each retry, with jitter.")
    backoff_max_s: float = _f(60.0, "Longest wait between retries in seconds (a server's Retry-After is honoured "
                                    "up to it).")
    max_reasks: int = _f(2, "Re-asks after a malformed answer (no JSON, no code, code that breaks the rules), with "
                            "the problem shown to the model.")
    structured: str = _f("auto", "How structured answers are asked for: 'auto' (response_format json_schema, "
                                 "falling back to fenced JSON where the server refuses it), 'json_schema', 'text'.",
                         choices=("auto", "json_schema", "text"))
    temperature: float = _f(-1.0, "Sampling temperature (negative: the server's default).")
    max_tokens: int = _f(0, "Most tokens per answer (0: the server's default).")
    prices: list[str] = _f([], "Dollars per million tokens as 'MODEL=PROMPT/COMPLETION' (e.g. 'gpt-4o=2.50/10.00'); "
                               "overrides the built-in table, and a model in neither costs 0 (local servers).")
    repair_attempts: int = _f(3, "LLM repairs the Engineer tries per failure, each checked by the pre-flight "
                                 "(0: no repairs).")
    concurrency: int = _f(4, "LLM calls (Researcher, novelty, Engineer, Analyst) in flight at once with "
                             "schedule 'steady'; the polling of jobs never waits for them.")
    knowledge_k: int = _f(4, "Knowledge-base entries shown to the Researcher with each request.")
    novelty_reasks: int = _f(3, "Times a proposal too close to earlier candidates is sent back to the Researcher "
                                "(at most search.novelty_retries).")


@dataclass
class FitnessConfig:
    scale: float = _f(0.1, "Relative improvement over the baseline that saturates the sigmoid (ASI-Arch: 0.1).")
    sharpness: float = _f(6.0, "Sigmoid slope (ASI-Arch: 6).")
    judge_weight: float = _f(0.0, "Weight of the LLM judge's qualitative term (0: no judge).")
    combine: str = _f("mean", "How the terms combine: 'mean' (ASI-Arch's paper) or 'sum' (its code).",
                      choices=("mean", "sum"))


@dataclass
class VerifyConfig:
    enabled: bool = _f(False, "Run a verification stage after exploration: the promoted candidates and the "
                              "reference baseline are trained again, bigger and longer, with several seeds.")
    promote: str = _f("top_k", "Which explored candidates are verified: 'top_k' (best exploration fitness) or "
                               "'beats_baseline' (those whose paired difference in evaluation loss against the "
                               "reference excludes zero; needs train.seeds >= 2), at most top_k of them.",
                      choices=("top_k", "beats_baseline"))
    top_k: int = _f(3, "Candidates promoted to verification (at most).")
    seeds: int = _f(3, "Seeds per candidate and baseline in the verification stage.")
    hidden_size: int = _f(0, "Model width in verification (0: as in [train]).")
    num_layers: int = _f(0, "Blocks in verification (0: as in [train]).")
    steps: int = _f(0, "Optimizer steps in verification (0: as in [train]).")
    batch_size: int = _f(0, "Global batch size in verification (0: as in [train]).")
    seq_len: int = _f(0, "Sequence length in verification (0: as in [train]).")
    num_kv_pairs: int = _f(0, "MQAR pairs in verification (0: as in [train]).")
    lm_eval_tasks: list[str] = _f([], "lm-eval tasks of the verification stage (see train.lm_eval_tasks; empty: "
                                      "as in [train]); ASI-Arch scored its verified models on its ten benchmarks.")
    lm_eval_limit: int = _f(-1, "lm-eval samples per task in verification (-1: as in [train]; 0: every sample).")


@dataclass
class BudgetConfig:
    candidates: int = _f(8, "New candidates to train (baselines not counted); the search stops after them.")
    gpu_hours: float = _f(0.0, "Stop submitting when this many GPU-hours (CPU-hours locally) are spent (0: no limit).")
    llm_dollars: float = _f(0.0, "Stop LLM calls when this many dollars are spent (llm.prices); with proposer "
                                 "'llm' the search stops, with 'mixed' it goes on offline (0: no limit).")


@dataclass
class WatchdogConfig:
    # Read by asiarch.search.early_stopping.watchdog_decisions from each running attempt's progress record.
    enabled: bool = _f(True, "Stop running attempts that are slow, stalled, diverging or implausibly good "
                             "(never the reference baseline); each stop is recorded with its reason and curve.")
    stages: list[str] = _f(["explore", "verify"], "Stages the watchdog watches (explore, verify).")
    warmup_fraction: float = _f(0.1, "Fraction of an attempt's steps before the slow, diverging and implausible "
                                     "rules look at it (throughput and loss are noisy at first).")
    min_peers: int = _f(2, "Other attempts at the same stage and settings (running or finished) the slow and "
                           "peer-implausible rules need before they judge.")
    slow_fraction: float = _f(1 / 3, "'slow': tokens/s below this fraction of the median of the peers' tokens/s.")
    slow_min_s: float = _f(60.0, "'slow' judges an attempt only after it has trained this many seconds (and its "
                                 "warm-up): a rate over a few seconds says more about the machine's load then (a "
                                 "head restarting beside local jobs) than about the layer.")
    stall_s: float = _f(900.0, "'stalled': seconds without a new progress record (or, before the first, since the "
                               "attempt started running).")
    diverging_window: int = _f(5, "'diverging': the curve points since the lowest loss, at least this many, rise "
                                 "(least-squares slope > 0) ...")
    diverging_rise: float = _f(0.1, "... and the last one is above the lowest loss so far by this fraction of the "
                                    "larger of that loss and the progress made down to it (first loss - lowest).")
    implausible_floor: float = _f(0.0, "'implausible', LM task: a loss below this cannot be honest (0: use "
                                       "implausible_fraction of the best loss a finished peer reached). MQAR's own "
                                       "floor is 0 (every query's value is in its context), so there only the peer "
                                       "rule applies.")
    implausible_fraction: float = _f(0.5, "'implausible', LM task without implausible_floor: a loss below this "
                                          "fraction of the best final loss of the finished peers.")
    implausible_factor: float = _f(0.25, "'implausible': a loss below this fraction of the lowest loss of every "
                                         "peer at the same step (min_peers of them) is far too good to be true.")


@dataclass
class EarlyStoppingConfig:
    # Asynchronous successive halving (Li et al., MLSys 2020; Optuna's SuccessiveHalvingPruner): decided as each
    # attempt reaches a rung, never by waiting for a cohort. Off by default: a stopped candidate is ranked on a
    # partial curve, so opt in once `asiarch bench early-stopping DIR` shows the settings keep the best on
    # curves like yours. The default rungs and reduction factors are the demo's (MQAR): its curves sit on a
    # plateau until about a third of the steps and the best cross the others late, so the first rung (at 3/10)
    # keeps the best 40 % and only the second, once the curves have separated, keeps the best third; and an
    # attempt whose loss is falling as fast as the best's there goes on too (drop_window: one taking off late).
    enabled: bool = _f(False, "Stop attempts at rungs when their loss is outside the top 1/eta of the attempts "
                              "that reached the rung, and so is their fall before it (drop_window); the reference "
                              "baseline always continues and always counts.")
    stages: list[str] = _f(["explore"], "Stages early stopping applies to (explore, verify).")
    eta: float = _f(3.0, "Reduction factor: at each rung after the first the top 1/eta continue (Optuna: "
                         "reduction_factor).")
    first_rung_eta: float = _f(2.5, "Reduction factor at the first rung, where the curves have separated least "
                                    "(0: eta there too).")
    rungs: list[float] = _f([0.3, 2 / 3], "Rungs as fractions of the steps, increasing, each in (0, 1) (empty: "
                                            "min_fraction * eta^k for k = 0, 1, ... below 1).")
    min_fraction: float = _f(1 / 9, "With rungs empty: the first rung as a fraction of the steps.")
    drop_window: float = _f(1 / 12, "A second way past a rung: an attempt whose loss fell, over this fraction of "
                                    "the steps before the rung, by as much as the best 1/eta of the attempts "
                                    "there also continues (a curve taking off; on MQAR the eventual best can "
                                    "still sit on the plateau at a rung). 0: the loss alone (plain ASHA).")


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)

    def api_key(self) -> str | None:
        """The LLM API key, read from the environment at the moment it is needed; never stored."""
        return os.environ.get(self.llm.api_key_env) or None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTION_HELP = {
    "experiment": "What this experiment is called and how it is seeded.",
    "search": "How parents are sampled and candidates proposed (ASI-Arch defaults in parentheses).",
    "baselines": "Reference layers trained first; fitness is relative to `reference`.",
    "train": "Training of one candidate (one job): model shell, task, optimiser.",
    "cluster": "Where and how jobs run.",
    "llm": "The LLM endpoint and agents (Researcher, novelty judge, Engineer, Analyst); the key is read from the "
           "environment, never stored.",
    "fitness": "ASI-Arch's fitness: sigmoid-scaled improvements over the baseline in loss and task score.",
    "verify": "The verification stage: promoted candidates trained again, bigger, with several seeds, beside the "
              "reference baseline with the same seeds.",
    "budget": "When the search stops.",
    "watchdog": "Stops running attempts that are slow, stalled, diverging or too good to be true, from their "
                "progress records.",
    "early_stopping": "Asynchronous successive halving: attempts stopped at rungs when behind their peers (off "
                      "by default).",
}


# --------------------------------------------------------------------------- loading


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"list of {_type_name(arg)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str, meta: dict) -> Any:
    """Check ``value`` against the declared type ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return [_coerce(v, arg, f"{key}[{i}]", {}) for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if math.isnan(value):
            raise ConfigError(f"{key}: NaN is not a valid value")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
    return value


#: Keys an earlier asiarch read, and what replaced them.
_REPLACED = {"lm_eval": "replaced by lm_eval_tasks (lm-evaluation-harness task names) and train.lm_eval_include (a "
                        "directory of task YAMLs: a multiple-choice JSONL file becomes a YAML with dataset_path json; "
                        "README, 'Language modelling')"}


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown and unknown[0] in _REPLACED:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{unknown[0]}: {_REPLACED[unknown[0]]}")
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown key {prefix + '.' if prefix else ''}{unknown[0]} in {where}; valid keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table [{key}], got {type(value).__name__}")
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key, fields[name].metadata)
    return cls(**kwargs)


def parse_difficulty(item: str) -> tuple[int, int]:
    """'8x128' -> (8, 128): an MQAR difficulty as key-value pairs and sequence length."""
    try:
        pairs, length = (int(x) for x in item.lower().split("x"))
    except ValueError:
        raise ConfigError(f"train.mqar_eval: {item!r} should be 'PAIRSxLENGTH', e.g. '8x128'") from None
    if pairs < 1 or length < 1:
        raise ConfigError(f"train.mqar_eval: {item!r} needs positive pairs and length")
    return pairs, length


def stage_train(cfg: Config, stage: str, seed_index: int = 0) -> TrainConfig:
    """The training settings of one seed of one stage: [train], with [verify]'s non-zero overrides in
    the verification stage, and seed = train.seed + seed_index."""
    t = dataclasses.replace(cfg.train, seed=cfg.train.seed + seed_index)
    if stage == "verify":
        v = cfg.verify
        for name in ("hidden_size", "num_layers", "steps", "batch_size", "seq_len", "num_kv_pairs", "lm_eval_tasks"):
            if getattr(v, name):
                setattr(t, name, getattr(v, name))
        if v.lm_eval_limit >= 0:
            t.lm_eval_limit = v.lm_eval_limit
    elif stage != "explore":
        raise ValueError(f"unknown stage {stage!r}; stages are 'explore' and 'verify'")
    return t


def stage_seeds(cfg: Config, stage: str) -> int:
    """How many seeds each candidate trains with in ``stage``."""
    return cfg.verify.seeds if stage == "verify" else cfg.train.seeds


def _validate_lm_eval(key: str, t: TrainConfig) -> None:
    """lm-eval tasks need the LM task over a prepared directory (the tokenizer is its manifest's). Whether a
    name is a task is lm-eval's to say, in the job (indexing its tasks takes ~20 s): `asiarch check` runs it."""
    if not t.lm_eval_tasks and not t.lm_eval_include:
        return
    if t.task != "lm" or not t.data:
        raise ConfigError(f"{key} needs train.task = 'lm' with train.data (a directory of `asiarch data prepare`: "
                          f"lm-eval tokenizes with its tokenizer)")
    if t.lm_eval_limit < 0:
        raise ConfigError(f"train.lm_eval_limit must be 0 (every sample) or more, got {t.lm_eval_limit}")
    for name in t.lm_eval_tasks:
        if not name or "," in name or name != name.strip():
            raise ConfigError(f"{key}: {name!r} is not a task name (one name per list item, e.g. ['piqa', 'arc_easy'])")
    if t.lm_eval_include and not Path(t.lm_eval_include).is_dir():
        raise ConfigError(f"train.lm_eval_include: {t.lm_eval_include} is not a directory (of lm-eval task YAMLs)")


def _validate_lm_data(t: TrainConfig) -> None:
    """train.data or train.token_file, one of them; a prepared directory's manifest is read and its shards'
    sizes checked (cheap: the sha256 are checked by `asiarch check --config`, `asiarch train` and
    `asiarch data verify`), and its vocabulary held against train.vocab_size."""
    if t.data and t.token_file:
        raise ConfigError("train.data and train.token_file are both set; set one (train.data: a prepared directory)")
    if not t.data and not t.token_file:
        raise ConfigError("train.task = 'lm' needs train.data: a directory of token shards, written by `asiarch data "
                          "prepare INPUT... --tokenizer gpt2 --out DIR` (or train.token_file, a flat uint16 array "
                          "of token ids)")
    if not t.data:
        return
    from asiarch.job.data import DataError, read_manifest  # numpy, no torch

    try:
        manifest = read_manifest(t.data)
    except DataError as exc:
        raise ConfigError(f"train.data: {exc}") from None
    default = TrainConfig.__dataclass_fields__["vocab_size"].default
    if t.vocab_size != default and t.vocab_size < manifest.vocab_size:
        raise ConfigError(f"train.vocab_size = {t.vocab_size} is smaller than the vocabulary of train.data "
                          f"({manifest.vocab_size}, tokenizer {manifest.tokenizer!r}): the model could not embed "
                          f"every token. Remove train.vocab_size (the manifest sets it) or set it to at least "
                          f"{manifest.vocab_size}")
    for split in ("train", "val"):
        if max((sh.tokens for sh in manifest.splits[split].shards), default=0) < t.seq_len + 1:
            raise ConfigError(f"train.data: no {split} shard of {t.data} holds train.seq_len + 1 = {t.seq_len + 1} "
                              f"tokens; use a shorter seq_len or prepare more text (--val-tokens for val)")


def _validate_verify(cfg: Config) -> None:
    v = cfg.verify
    if not v.enabled:
        return
    if v.promote == "beats_baseline" and cfg.train.seeds < 2:
        raise ConfigError("verify.promote = 'beats_baseline' needs train.seeds >= 2 (a paired interval needs two "
                          "seeds); set train.seeds or use promote = 'top_k'")
    t = stage_train(cfg, "verify")
    _validate_lm_eval("verify.lm_eval_tasks", t)
    if t.hidden_size % t.num_heads:
        raise ConfigError(f"verify.hidden_size ({t.hidden_size}) must be divisible by train.num_heads ({t.num_heads})")
    if t.batch_size % t.nproc:
        raise ConfigError(f"verify.batch_size ({t.batch_size}) must be divisible by train.nproc ({t.nproc})")
    if t.task == "mqar" and t.seq_len < 4 * t.num_kv_pairs:
        raise ConfigError(f"the verification stage's seq_len ({t.seq_len}) must be at least 4 * num_kv_pairs "
                          f"({t.num_kv_pairs}); set verify.seq_len or verify.num_kv_pairs")


def validate(cfg: Config) -> Config:
    """Cross-field checks that a single type cannot express."""
    t, s = cfg.train, cfg.search
    positive = {
        "train.hidden_size": t.hidden_size, "train.num_layers": t.num_layers, "train.num_heads": t.num_heads,
        "train.steps": t.steps, "train.batch_size": t.batch_size, "train.seq_len": t.seq_len,
        "train.nproc": t.nproc, "search.round_size": s.round_size, "search.pool_size": s.pool_size,
        "search.parent_top": s.parent_top, "search.max_attempts": s.max_attempts,
        "cluster.max_in_flight": cfg.cluster.max_in_flight, "train.vocab_size": t.vocab_size,
        "train.seeds": t.seeds, "verify.seeds": cfg.verify.seeds, "verify.top_k": cfg.verify.top_k,
        "search.preflight_workers": s.preflight_workers, "llm.concurrency": cfg.llm.concurrency,
        "cluster.slurm_timeout_s": cfg.cluster.slurm_timeout_s,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if s.ahead < -1:
        raise ConfigError(f"search.ahead must be -1 (automatic) or at least 0, got {s.ahead}")
    if cfg.cluster.submit_window_s < 0:
        raise ConfigError(f"cluster.submit_window_s must be at least 0, got {cfg.cluster.submit_window_s}")
    if t.hidden_size % t.num_heads:
        raise ConfigError(f"train.hidden_size ({t.hidden_size}) must be divisible by train.num_heads ({t.num_heads})")
    if t.batch_size % t.nproc:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by train.nproc ({t.nproc})")
    if not 0 < t.lr < 1:
        raise ConfigError(f"train.lr must be in (0, 1), got {t.lr}")
    if not 0 <= t.decay_fraction <= 1:
        raise ConfigError(f"train.decay_fraction must be in [0, 1], got {t.decay_fraction}")
    if t.task == "lm":
        _validate_lm_data(t)
    if t.task == "mqar" and t.seq_len < 4 * t.num_kv_pairs:
        raise ConfigError(f"train.seq_len ({t.seq_len}) must be at least 4 * train.num_kv_pairs ({t.num_kv_pairs})")
    for item in t.mqar_eval:
        pairs, length = parse_difficulty(item)  # raises naming the item
        if length < 4 * pairs or 2 * pairs > t.vocab_size // 2:
            raise ConfigError(f"train.mqar_eval: {item!r} needs length >= 4 * pairs and pairs <= vocab_size // 4")
    _validate_lm_eval("train.lm_eval_tasks", t)
    _validate_verify(cfg)
    if not 0 <= s.llm_fraction <= 1:
        raise ConfigError(f"search.llm_fraction must be in [0, 1], got {s.llm_fraction}")
    if s.proposer in ("llm", "mixed") and not cfg.llm.base_url:
        raise ConfigError(f"search.proposer = {s.proposer!r} needs llm.base_url (an OpenAI-compatible endpoint)")
    _validate_llm(cfg)
    _validate_stopping(cfg)
    if not cfg.baselines.names:
        raise ConfigError("baselines.names must name at least one baseline (fitness is relative to one)")
    if cfg.baselines.reference not in cfg.baselines.names:
        raise ConfigError(
            f"baselines.reference {cfg.baselines.reference!r} must be one of baselines.names {cfg.baselines.names}"
        )
    c = cfg.cluster
    for extra in c.sbatch_extra:
        if not extra or extra.startswith("-") or "\n" in extra:
            raise ConfigError(f"cluster.sbatch_extra: {extra!r} should look like 'mail-type=END' (no leading dashes)")
    if c.scratch_var and not c.scratch_var.isidentifier():
        raise ConfigError(f"cluster.scratch_var {c.scratch_var!r} must be an environment variable name")
    if c.nodes > 1 and c.scheduler != "slurm":
        raise ConfigError("cluster.nodes > 1 needs cluster.scheduler = 'slurm'")
    if c.sandbox == "apptainer" and not c.container_image:
        raise ConfigError("cluster.sandbox = 'apptainer' needs cluster.container_image (build one with "
                          "`asiarch container build`), or use sandbox = 'bwrap'")
    if c.sandbox == "bwrap" and c.container_image:
        raise ConfigError("cluster.sandbox = 'bwrap' runs jobs without a container, but cluster.container_image "
                          "is set: use sandbox = 'apptainer' (or 'auto'), or empty container_image")
    if cfg.budget.candidates < 0:
        raise ConfigError(f"budget.candidates must be >= 0, got {cfg.budget.candidates}")
    if not cfg.experiment.name or any(c in cfg.experiment.name for c in "/ \t\n"):
        raise ConfigError(f"experiment.name {cfg.experiment.name!r} must be non-empty with no spaces or '/'")
    return cfg


def _validate_stopping(cfg: Config) -> None:
    w, e = cfg.watchdog, cfg.early_stopping
    for key, stages in (("watchdog.stages", w.stages), ("early_stopping.stages", e.stages)):
        for stage in stages:
            if stage not in ("explore", "verify"):
                raise ConfigError(f"{key}: {stage!r} is not a stage; stages are 'explore' and 'verify'")
    if not 0 <= w.warmup_fraction < 1:
        raise ConfigError(f"watchdog.warmup_fraction must be in [0, 1), got {w.warmup_fraction}")
    if not 0 < w.slow_fraction < 1:
        raise ConfigError(f"watchdog.slow_fraction must be in (0, 1), got {w.slow_fraction}")
    if not 0 < w.implausible_fraction < 1 or not 0 < w.implausible_factor < 1:
        raise ConfigError("watchdog.implausible_fraction and watchdog.implausible_factor must be in (0, 1), got "
                          f"{w.implausible_fraction} and {w.implausible_factor}")
    for key in ("min_peers", "stall_s", "slow_min_s", "diverging_rise", "implausible_floor"):
        if getattr(w, key) < 0:
            raise ConfigError(f"watchdog.{key} must be >= 0, got {getattr(w, key)}")
    if w.diverging_window < 2:
        raise ConfigError(f"watchdog.diverging_window must be at least 2 curve points, got {w.diverging_window}")
    if e.eta <= 1:
        raise ConfigError(f"early_stopping.eta must be above 1 (3 keeps the top third), got {e.eta}")
    if e.first_rung_eta != 0 and e.first_rung_eta <= 1:
        raise ConfigError(f"early_stopping.first_rung_eta must be above 1 (2 keeps the top half) or 0 (eta at the "
                          f"first rung too), got {e.first_rung_eta}")
    if not 0 <= e.drop_window < 1:
        raise ConfigError(f"early_stopping.drop_window must be in [0, 1) (a fraction of the steps; 0 turns the "
                          f"fall rule off), got {e.drop_window}")
    if not e.rungs and not 0 < e.min_fraction < 1:
        raise ConfigError(f"early_stopping.min_fraction must be in (0, 1), got {e.min_fraction}")
    if any(not 0 < r < 1 for r in e.rungs) or any(b <= a for a, b in zip(e.rungs, e.rungs[1:])):
        raise ConfigError(f"early_stopping.rungs must increase, each a fraction of the steps in (0, 1), "
                          f"got {e.rungs} (e.g. [0.111, 0.333])")


def _validate_llm(cfg: Config) -> None:
    llm = cfg.llm
    if not 0 < cfg.search.novelty_threshold <= 1:
        raise ConfigError(f"search.novelty_threshold must be in (0, 1], got {cfg.search.novelty_threshold}")
    if llm.timeout_s <= 0:
        raise ConfigError(f"llm.timeout_s must be positive, got {llm.timeout_s}")
    for key in ("max_retries", "backoff_s", "backoff_max_s", "max_reasks", "max_tokens", "repair_attempts",
                "knowledge_k", "novelty_reasks"):
        if getattr(llm, key) < 0:
            raise ConfigError(f"llm.{key} must be >= 0, got {getattr(llm, key)}")
    if cfg.budget.llm_dollars < 0:
        raise ConfigError(f"budget.llm_dollars must be >= 0, got {cfg.budget.llm_dollars}")
    if llm.prices or llm.agent_base_urls:
        # the parsers live with the client, which imports openai: only when there is something to parse
        from asiarch.propose.llm.client import parse_agent_map, parse_prices

        try:
            parse_prices(llm.prices)
            parse_agent_map(llm.agent_base_urls, "llm.agent_base_urls")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _profile_dirs() -> list[Path]:
    """slurm/profiles, installed with the package as asiarch.site_profiles."""
    from importlib import resources

    try:
        return [Path(str(resources.files("asiarch.site_profiles")))]
    except ModuleNotFoundError:
        return []


def find_profile(name: str, base: Path | None = None) -> Path:
    """A site profile by path, or by name among the shipped ones (slurm/profiles/NAME.toml)."""
    candidates = [Path(name)] if name.endswith(".toml") else []
    if base is not None and name.endswith(".toml"):
        candidates.insert(0, base / name)
    candidates += [d / f"{name}.toml" for d in _profile_dirs()]
    for c in candidates:
        if c.is_file():
            return c
    shipped = sorted(p.stem for d in _profile_dirs() if d.is_dir() for p in d.glob("*.toml"))
    raise ConfigError(f"cluster.site_profile {name!r}: no such profile; shipped profiles: "
                      f"{', '.join(shipped) or 'none'} (or give a path to a .toml file)")


def apply_profile(data: dict, base: Path | None = None) -> dict:
    """Merge the site profile under the config's own [cluster] keys (the config wins)."""
    cluster = data.get("cluster")
    if not isinstance(cluster, dict) or not cluster.get("site_profile"):
        return data
    path = find_profile(cluster["site_profile"], base)
    try:
        profile = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"site profile {path}: not valid TOML: {exc}") from None
    keys = profile.get("cluster", profile)
    if not isinstance(keys, dict):
        raise ConfigError(f"site profile {path}: expected [cluster] keys")
    try:
        _build(ClusterConfig, {k: v for k, v in keys.items() if k != "site_profile"}, "cluster")
    except ConfigError as exc:
        raise ConfigError(f"site profile {path}: {exc}") from None
    return {**data, "cluster": {**keys, **cluster}}


#: Keys that name files or directories: '~' is the user's home; a relative one is relative to the config
#: file's directory.
PATH_KEYS = (("train", "data"), ("train", "token_file"), ("train", "lm_eval_include"), ("cluster", "hf_cache"))


def from_dict(data: dict, base: Path | None = None) -> Config:
    """The validated config of a parsed TOML document; ``base`` (the config file's directory) anchors the
    site profile and the relative paths of :data:`PATH_KEYS`."""
    cfg = _build(Config, apply_profile(data, base), "")
    for section, key in PATH_KEYS:
        value = os.path.expanduser(getattr(getattr(cfg, section), key))
        if value and base is not None and not Path(value).is_absolute():
            value = str(Path(base).absolute() / value)
        setattr(getattr(cfg, section), key, value)
    return validate(cfg)


def load_config(path: str | Path) -> Config:
    """Load and validate a config file; errors name the file and the key."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; create one with `asiarch init DIR`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return from_dict(data, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_toml(cfg: Config, *, comments: bool = True, notes: dict[str, str] | None = None) -> str:
    """The config as TOML text; with ``comments`` every key carries its help text, and the keys of ``notes``
    ('section.key') a second comment line: where their value comes from (a preset's sources)."""
    notes = notes or {}
    lines = []
    if comments:
        lines += [
            "# asiarch experiment config. Every key is optional; unknown keys are an error.",
            "# Run it with `asiarch run DIR`; the resolved config is written back beside the store.",
            "",
        ]
    for sec in dataclasses.fields(cfg):
        section = getattr(cfg, sec.name)
        if comments:
            lines.append(f"# {SECTION_HELP[sec.name]}")
        lines.append(f"[{sec.name}]")
        for f in dataclasses.fields(section):
            if comments:
                extra = f" One of: {', '.join(f.metadata['choices'])}." if "choices" in f.metadata else ""
                lines.append(f"# {f.metadata['help']}{extra}")
                if f"{sec.name}.{f.name}" in notes:
                    lines.append(f"#   -> {notes[f'{sec.name}.{f.name}']}")
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    return "\n".join(lines)


def demo_config(name: str = "demo") -> Config:
    """The demo's config: small enough that baselines and 8 candidates train in minutes on 2 CPU cores."""
    cfg = Config()
    cfg.experiment.name = name
    cfg.experiment.description = "asiarch demo: the whole loop on one machine, CPU, no LLM."
    cfg.cluster.max_in_flight = 1
    cfg.search.round_size = 4
    cfg.budget.candidates = 8
    return validate(cfg)
