"""Train one candidate: the job's entry point, run under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m asiarch.job.train SPEC.json

SPEC.json is written by the head (:class:`asiarch.job.contract.JobSpec`): the candidate's
identity, the path of its layer file, the resolved [train] config, and where to write the
result and progress files. Every rank trains a shard of the global batch under DDP
(gloo on CPU, NCCL on GPU); rank 0 evaluates and writes the HDF5 result atomically.
Whatever happens -- an exception in the candidate, NaN, divergence, SIGTERM from the
scheduler -- rank 0 still writes a result file with the status and the curve so far.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from asiarch.job import result as rf
from asiarch.job.candidate import load_layer_file
from asiarch.job.contract import AttemptFiles, JobSpec, JobSpecError, atomic_path, read_stop_request
from asiarch.job.model import LanguageModel
# The figures are computed with functions captured here, before the candidate's module executes
# (it could reassign F.cross_entropy or torch.Tensor.item); see asiarch.job.trusted.
from asiarch.job import trusted
from asiarch.job.probe import Leak, LeakProbe
from asiarch.job.tasks import PreparedDataTask, make_task


class Diverged(Exception):
    pass


class Interrupted(Exception):
    """The scheduler asked the job to stop (SIGTERM/SIGUSR1: preemption or time limit)."""


class Stopped(Exception):
    """The head asked the job to stop (its control file, AttemptFiles.STOP: early stopping or the watchdog)."""

    def __init__(self, request: dict, steps_done: int):
        self.request = {**request, "stopped_at": steps_done}
        why = request.get("message") or request.get("reason")
        super().__init__(f"stopped by the head at step {steps_done}: {why}")


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


class ProgressClock:
    """When rank 0 rewrites the progress record at a logged point: at most every ``interval`` seconds (the
    record holds the whole curve so far), at the last step, and at the first logged point at or past each
    of ``report_steps`` (the early-stopping rungs: the head judges an attempt at a rung from the record,
    and a rung point held back by the rate limit would let the attempt train on, past where its stop
    belongs, for up to ``interval`` more seconds)."""

    def __init__(self, report_steps=(), interval: float = 2.0):
        self.pending = sorted(set(report_steps))
        self.interval = interval
        self.last = -math.inf

    def due(self, step: int, now: float, *, final: bool = False) -> bool:
        """Whether to write the record at ``step`` (steps done) at time ``now``; if so, counted as written."""
        reached = bool(self.pending) and step >= self.pending[0]
        while self.pending and self.pending[0] <= step:
            self.pending.pop(0)
        if final or reached or now - self.last > self.interval:
            self.last = now
            return True
        return False


def setup_distributed(threads: int) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, threads))
        backend = "gloo"
    if world > 1:
        dist.init_process_group(backend)
    return Dist(rank, world, local_rank, device)


def wsd_lr(step: int, *, peak: float, steps: int, warmup: int, decay_fraction: float) -> float:
    """Warmup-stable-decay: linear warmup, constant, linear decay to 0 over the last fraction."""
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_start = int(steps * (1 - decay_fraction))
    if step >= decay_start and steps > decay_start:
        return peak * max(0.0, (steps - step) / (steps - decay_start))
    return peak


def job_ids() -> dict[str, str]:
    env = os.environ
    return {
        "job_id": env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID", ""),
        "array_job_id": env.get("SLURM_ARRAY_JOB_ID", ""),
        "array_task_id": env.get("SLURM_ARRAY_TASK_ID", ""),
    }


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    trusted.all_reduce(t)
    return trusted.tolist(t)


def all_reduce_mean(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    trusted.all_reduce(t)
    return float(trusted.item(t)) / d.world


def all_reduce_max(value: int, d: Dist) -> int:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    trusted.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(trusted.item(t))


def build_task(cfg: dict):
    if cfg["task"] == "mqar":
        return make_task("mqar", vocab_size=cfg["vocab_size"], seq_len=cfg["seq_len"],
                         num_kv_pairs=cfg["num_kv_pairs"])
    if cfg["data"]:  # a directory of `asiarch data prepare`: its manifest sets the vocabulary
        return PreparedDataTask(cfg["data"], cfg["seq_len"], vocab_size=cfg["vocab_size"])
    return make_task("lm", path=cfg["token_file"], seq_len=cfg["seq_len"])


def _eval_sharded(model, task: PreparedDataTask, count: int, per_rank: int, d: Dist, autocast) -> float:
    """Mean loss per token over the first ``count`` val windows of a prepared directory: each rank scores
    its part (``task.eval_shard``), and the sums of loss and of scored tokens are all-reduced, so the
    figure is the same for any number of ranks."""
    total = scored = 0.0
    with torch.no_grad(), autocast():
        for inputs, targets in task.eval_shard(d.rank, d.world, count, per_rank):
            inputs, targets = inputs.to(d.device), targets.to(d.device)
            n = targets.numel()  # every LM target is scored
            total += trusted.item(trusted.cross_entropy(model(inputs), targets)) * n
            scored += n
    total, scored = all_reduce_sum([total, scored], d)
    return total / scored


def _eval_task(model, task, n_batches, per_rank, d: Dist, autocast, mqar: bool) -> tuple[float, float | None]:
    """Mean loss over scored positions and, for MQAR, mean query accuracy, on fixed batches."""
    losses, accs = [], []
    with torch.no_grad(), autocast():
        for inputs, targets in task.eval_batches(n_batches, per_rank):
            inputs, targets = inputs.to(d.device), targets.to(d.device)
            logits = model(inputs)
            losses.append(trusted.item(trusted.cross_entropy(logits, targets)))
            if mqar:
                accs.append(trusted.masked_accuracy(logits, targets))
    return sum(losses) / len(losses), (sum(accs) / len(accs) if accs else None)


def load_harness(cfg: dict):
    """asiarch.job.harness (lm-eval) when ``train.lm_eval_tasks`` asks for it, imported before the candidate
    executes; the import error's message when lm-eval is not installed where the job runs (the run then
    trains and keeps its loss)."""
    if cfg["task"] != "lm" or not cfg["lm_eval_tasks"]:
        return None
    try:
        from asiarch.job import harness
    except ImportError as exc:
        return (f"lm-eval cannot be imported where the job runs ({exc}): install it with pip install "
                f"'asiarch[eval]', or add lm-eval to the job image (containers/asiarch.def)")
    return harness


def run_lm_eval(harness, model: torch.nn.Module, task: PreparedDataTask, cfg: dict, d: Dist, autocast,
                record: rf.ResultRecord) -> dict[str, float]:
    """lm-eval's scores of ``train.lm_eval_tasks`` (every rank runs lm-eval, each scores its share of the
    requests); the tasks that could not run go into ``record.env['lm_eval_errors']`` with lm-eval's words."""
    from asiarch.data.tokenizers import TokenizerError, prepared_tokenizer

    tasks = list(cfg["lm_eval_tasks"])
    if isinstance(harness, str):
        record.env["lm_eval_errors"] = {t: harness for t in tasks}
        return {}
    try:
        tokenizer = prepared_tokenizer(task.directory, task.manifest)
    except TokenizerError as exc:
        record.env["lm_eval_errors"] = {t: f"the tokenizer: {exc}" for t in tasks}
        return {}
    lm = harness.HarnessLM(model, tokenizer, seq_len=cfg["seq_len"], batch_size=max(1, cfg["batch_size"] // d.world),
                           rank=d.rank, world=d.world, device=d.device, autocast=autocast)
    model.eval()
    def log(line: str) -> None:  # rank 0's lines, and the errors of every other rank (they name the rank)
        if d.main or line.startswith(f"asiarch: rank {d.rank}:"):
            print(line, flush=True)

    metrics, errors = harness.evaluate(lm, tasks, include=cfg["lm_eval_include"] or None,
                                       limit=cfg["lm_eval_limit"], log=log)
    model.train()
    if errors:
        record.env["lm_eval_errors"] = errors
    return metrics


def evaluate(model: torch.nn.Module, task, cfg: dict, d: Dist, autocast) -> dict[str, float]:
    """Loss over scored positions and, for MQAR, accuracy on the queries; then, for MQAR, the same at
    each further difficulty of ``mqar_eval`` ('PAIRSxLENGTH'), as mqar_<difficulty>/accuracy and /loss.
    (The LM task's benchmarks are lm-eval's: :func:`run_lm_eval`.)"""
    model.eval()
    per_rank = max(1, cfg["batch_size"] // d.world)
    mqar = cfg["task"] == "mqar"
    if isinstance(task, PreparedDataTask):  # the val split, sharded over the ranks
        loss, acc = _eval_sharded(model, task, cfg["eval_batches"] * cfg["batch_size"], per_rank, d, autocast), None
    else:
        loss, acc = _eval_task(model, task, cfg["eval_batches"], per_rank, d, autocast, mqar)
    metrics = {"eval/loss": loss}
    if acc is not None:
        metrics["mqar/accuracy"] = acc
    for item in cfg["mqar_eval"] if mqar else []:
        pairs, length = (int(x) for x in item.lower().split("x"))
        harder = make_task("mqar", vocab_size=cfg["vocab_size"], seq_len=length, num_kv_pairs=pairs)
        # keep the tokens per batch of the main evaluation: longer rows, fewer of them
        rows = max(1, per_rank * cfg["seq_len"] // length)
        loss, acc = _eval_task(model, harder, cfg["eval_batches"], rows, d, autocast, True)
        metrics[f"mqar_{pairs}x{length}/loss"] = loss
        metrics[f"mqar_{pairs}x{length}/accuracy"] = acc
    model.train()
    return metrics


def train(spec: JobSpec, d: Dist, record: rf.ResultRecord, stop: dict) -> None:
    """Train in place of ``record``: fills its curve, metrics and throughput; raises on failure."""
    cfg = spec.train
    torch.manual_seed(cfg["seed"])  # same initialisation on every rank
    # The device picks fla or its compat stand-ins; off CUDA the layer's @torch.compile is a no-op
    # (compiling on CPU costs minutes per new sequence length for little gain).
    harness = load_harness(cfg)  # lm-eval is imported before the candidate's module executes
    layer_cls = load_layer_file(spec.layer_path, spec.class_name, device=d.device)
    task = build_task(cfg)
    model = LanguageModel(layer_cls, vocab_size=task.vocab_size, hidden_size=cfg["hidden_size"],
                          num_layers=cfg["num_layers"], num_heads=cfg["num_heads"],
                          mlp_ratio=cfg["mlp_ratio"]).to(d.device)
    record.num_params = sum(p.numel() for p in model.parameters())
    record.env["mixer_params"] = model.mixer_parameters()
    if isinstance(task, PreparedDataTask):
        m = task.manifest
        record.env["data"] = {"tokenizer": m.tokenizer, "vocab_size": m.vocab_size, "eot": m.eot,
                              "train_tokens": m.splits["train"].tokens, "val_tokens": m.splits["val"].tokens,
                              "eval_windows": min(task.num_eval_windows, cfg["eval_batches"] * cfg["batch_size"])}
    ddp = DDP(model, find_unused_parameters=False) if d.world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                            betas=(0.9, 0.95))
    use_bf16 = cfg["precision"] == "bf16"

    def autocast():
        return torch.autocast(device_type=d.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    start = resume(spec, model, opt, record, d)
    leak_probe = LeakProbe.plan(steps=cfg["steps"], start=start, rank=d.rank, world=d.world, device=d.device,
                                precision=cfg["precision"], vocab_size=task.vocab_size, record=record)
    # distinct data per rank; a resumed run draws a fresh, still deterministic, stream
    gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + d.rank + 7919 * start)
    per_rank = cfg["batch_size"] // d.world
    tokens_per_step = per_rank * cfg["seq_len"] * d.world
    progress_path = spec.progress_path
    stop_path = AttemptFiles(Path(spec.result_path).parent).stop
    t0 = time.time()
    t_measure, step_measure = None, 0  # throughput excludes the first step (allocation, warm-up)
    first_loss = None
    clock = ProgressClock(spec.report_steps)
    rungs = set(spec.report_steps)
    recent: list[float] = []
    for step in range(start, cfg["steps"]):
        lr = wsd_lr(step, peak=cfg["lr"], steps=cfg["steps"], warmup=cfg["warmup_steps"],
                    decay_fraction=cfg["decay_fraction"])
        for group in opt.param_groups:
            group["lr"] = lr
        inputs, targets = task.batch(per_rank, gen)
        inputs, targets = inputs.to(d.device), targets.to(d.device)
        leak_probe.at_step(step, model, inputs, autocast)  # raises Leak (on every rank) if it sees one
        with autocast():
            logits = ddp(inputs)
        loss = trusted.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        # One collective per step carries the loss and any stop request, so every rank sees the same
        # mean loss and stop flag and all take the same decision at the same step (no rank left
        # waiting in a collective its peers abandoned).
        # The head's stop request (its control file) is read by rank 0 alone and travels in the same
        # collective, so that both ranks stop after the same step.
        request = read_stop_request(stop_path) if d.main else None
        loss_value, stopping, requested = all_reduce_sum(
            [float(trusted.item(loss)) / d.world, 1.0 if stop["signal"] else 0.0, 1.0 if request else 0.0], d)
        if requested:
            # the partial curve reaches the step it stopped at: the mean since the last logged point
            record.curve.append(step + 1, (step + 1) * tokens_per_step, (sum(recent) + loss_value) / (len(recent) + 1),
                                lr, time.time() - t0)
            record.steps_done = step + 1
            record.final_loss = record.curve.loss[-1] if record.curve.loss else loss_value
            if t_measure and step > start:
                record.tokens_per_s = tokens_per_step * (step - start) / (time.time() - t_measure)
            save_checkpoint(spec, model, opt, record, step + 1, d)
            raise Stopped(request or {}, step + 1)
        if stopping:
            save_checkpoint(spec, model, opt, record, step + 1, d)
            raise Interrupted(f"received {stop['signal'] or 'a stop signal on a peer rank'} at step {step + 1}")
        if step == start:
            t_measure = time.time()
        else:
            step_measure = step - start  # steps timed since the first one of this run
        recent.append(loss_value)
        first_loss = loss_value if first_loss is None else first_loss
        elapsed = time.time() - t0
        # a rung is a logged point too, so that the head judges the attempt there as soon as it trains past it
        if (step + 1) % cfg["log_every"] == 0 or step == cfg["steps"] - 1 or not math.isfinite(loss_value) \
                or step + 1 in rungs:
            mean_loss = sum(recent) / len(recent)
            recent.clear()
            record.curve.append(step + 1, (step + 1) * tokens_per_step, mean_loss, lr, elapsed)
            record.steps_done = step + 1
            if d.main and clock.due(step + 1, time.time(), final=step == cfg["steps"] - 1):
                tps = tokens_per_step * step_measure / (time.time() - t_measure) if step_measure else float("nan")
                rf.write_progress(progress_path, step=step + 1, steps=cfg["steps"], tokens=(step + 1) * tokens_per_step,
                                  loss=mean_loss, lr=lr, tokens_per_s=tps, elapsed=elapsed,
                                  curve=[list(x) for x in zip(record.curve.step, record.curve.loss)])
        if not math.isfinite(loss_value):
            raise Diverged(f"loss became {loss_value} at step {step + 1}")
        if step >= cfg["warmup_steps"] and loss_value > cfg["divergence_factor"] * first_loss:
            raise Diverged(f"loss {loss_value:.4g} at step {step + 1} exceeds {cfg['divergence_factor']}x "
                           f"the first loss {first_loss:.4g}")
    train_time = time.time() - t_measure if t_measure else float("nan")
    record.tokens_per_s = tokens_per_step * step_measure / train_time if step_measure else float("nan")
    record.final_loss = record.curve.loss[-1] if record.curve.loss else float("nan")
    leak_probe.before_eval(model, task, max(1, cfg["batch_size"] // d.world), autocast)
    metrics = evaluate(model, task, cfg, d, autocast)
    # average the evaluation over ranks (each rank scored its own shard of the eval set size)
    record.metrics = {k: all_reduce_mean(v, d) for k, v in metrics.items()}
    if harness is not None:  # the same figures on every rank (each scored its share, then all-reduced)
        record.metrics.update(run_lm_eval(harness, model, task, cfg, d, autocast, record))
    record.eval_loss = record.metrics["eval/loss"]


def save_checkpoint(spec: JobSpec, model: torch.nn.Module, opt: torch.optim.Optimizer, record: rf.ResultRecord,
                    steps_done: int, d: Dist) -> None:
    """Rank 0 saves what a requeued job needs to go on from ``steps_done`` (atomic: temp + rename)."""
    path = spec.checkpoint_path
    if path and d.main:
        with atomic_path(path) as tmp:
            torch.save({"step": steps_done, "model": model.state_dict(), "opt": opt.state_dict(),
                        "curve": vars(record.curve), "code_sha256": record.code_sha256}, tmp)
    if d.world > 1:
        dist.barrier()


def resume(spec: JobSpec, model: torch.nn.Module, opt: torch.optim.Optimizer, record: rf.ResultRecord,
           d: Dist) -> int:
    """Load the checkpoint a preempted or requeued run left, if any; returns the step to start from."""
    path = spec.checkpoint_path
    if not path or not os.path.exists(path):
        return 0
    state = torch.load(path, map_location=d.device, weights_only=False)
    if state.get("code_sha256") != record.code_sha256:
        return 0  # a checkpoint of other code (the attempt was repaired): start over
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    record.curve = rf.Curve(**state["curve"])
    record.env["resumed_from_step"] = state["step"]
    if d.main:
        print(f"asiarch: resuming {record.run_key} from its checkpoint at step {state['step']}", flush=True)
    return int(state["step"])


def install_signal_handlers(stop: dict) -> None:
    """torchrun forwards TERM/INT/HUP/QUIT to workers. The job's payload turns the scheduler's
    time-limit warning (--signal USR1/USR2) into HUP: HUP means timeout, TERM preemption."""
    def handler(signum, _frame):
        stop["signal"] = signal.Signals(signum).name
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, handler)


def run(spec_path: str) -> int:
    spec = JobSpec.load(spec_path)
    cfg = spec.train
    stop = {"signal": None}
    install_signal_handlers(stop)
    d = setup_distributed(cfg["threads_per_rank"])
    ident = spec.identity
    record = rf.ResultRecord(
        experiment=ident.experiment, candidate_id=ident.candidate_id, attempt=ident.attempt,
        run_key=ident.run_key, code_sha256=ident.code_sha256, **job_ids(),
        config=cfg, curve=rf.Curve(step=[], tokens=[], loss=[], lr=[], time=[]),
        env={"torch": torch.__version__, "python": platform.python_version(), "device": str(d.device),
             "world_size": d.world, "hostname": socket.gethostname(),
             "container_image": os.environ.get("APPTAINER_CONTAINER", os.environ.get("SINGULARITY_CONTAINER", ""))},
        started_at=time.time(),
    )
    code = 0
    try:
        train(spec, d, record, stop)
        record.status = "ok"
    except Leak as exc:  # the candidate is refused: see asiarch.job.probe
        record.status, record.error = "leak", str(exc)
        record.env["leak_probe"] = exc.figures["probes"]
    except Diverged as exc:
        record.status, record.error = "diverged", str(exc)
    except Stopped as exc:  # the head's request: checkpoint kept, so that a promoted attempt can resume
        record.status, record.error = "stopped", str(exc)
        if d.main:
            record.env["stop"] = exc.request
            AttemptFiles(Path(spec.result_path).parent).stop.unlink(missing_ok=True)  # acted on
    except Interrupted as exc:
        timeout = stop["signal"] in ("SIGHUP", "SIGUSR1", "SIGUSR2")
        record.status, record.error = ("timeout" if timeout else "preempted"), str(exc)
    except Exception as exc:  # the candidate's own failure: record it, do not hang the other ranks
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        record.traceback = traceback.format_exc()
        code = 1
    record.finished_at = time.time()
    try:
        record.peak_memory_bytes = all_reduce_max(peak_memory_bytes(d.device), d) if code == 0 else \
            peak_memory_bytes(d.device)
    except Exception:
        record.peak_memory_bytes = peak_memory_bytes(d.device)
    # rank 0 writes; a rank that failed alone writes too, so the reason is never lost -- but a rank
    # that only saw its peer die ("connection closed by peer") never overwrites the peer's reason
    peer_died = code != 0 and "closed by peer" in record.error.lower()
    if (d.main or code != 0) and not (peer_died and os.path.exists(spec.result_path)):
        rf.write_result(spec.result_path, record)
    if d.main and record.status == "ok" and spec.checkpoint_path:
        Path(spec.checkpoint_path).unlink(missing_ok=True)  # done: nothing to resume any more
    if code != 0 and d.world > 1:
        sys.stderr.write(record.traceback)
        sys.stderr.flush()
        os._exit(code)  # peers are blocked in a collective: exit hard so torchrun tears the group down
    if d.world > 1:
        # Leave together: a rank that tears gloo down while its peer is still writing the result
        # can abort at exit ("terminate called without an active exception") and turn a finished
        # run into a failed job.
        try:
            dist.barrier()
            dist.destroy_process_group()
        except Exception:
            pass
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: torchrun ... -m asiarch.job.train SPEC.json", file=sys.stderr)
        return 2
    try:
        code = run(argv[0])
    except JobSpecError as exc:  # before training: nothing to record but the reason
        print(f"asiarch: {exc}", file=sys.stderr)
        return 2
    # Skip interpreter teardown: C++ destructors of the process group's threads can still abort
    # the process after the result is safely written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
