"""Benchmarks that print figures.

``asiarch bench overhead``: the head's own cost per candidate -- everything the head
does for a candidate except training it and waiting for an LLM -- measured with 1,000
scored candidates in the store, against the same work on a store of 10 measured in the
same run (so the ratio shows how the cost grows with the size of a search, free of this
machine's speed). Phases: sampling the parent and references, proposing (offline
proposer), recording the candidate, writing the attempt (layer, spec, rendered job
script), ingesting a real HDF5 result (read, score, compare, analysis). The pre-flight
check runs in a child process and is reported on its own line.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from asiarch.search import ingest as analyst
from asiarch.dispatch.attempt import write_attempt_files
from asiarch.config import demo_config
from asiarch.dispatch.base import JobState
from asiarch.job import result as rf
from asiarch.job.candidate import code_sha256
from asiarch.job.contract import DEFAULT_CLASS_NAME
from asiarch.layout import ExperimentDir, run_key
from asiarch.propose.offline import OfflineProposer, baseline_sources
from asiarch.search.sampling import sample_parents
from asiarch.store import Store


def populate(store: Store, n: int, seed: int = 0) -> None:
    """``n`` scored candidates with real layer code, plus the reference baseline, in one transaction."""
    rng = random.Random(seed)
    sources = baseline_sources(("deltanet",))
    codes = list(sources.values())
    rows = [{"name": "deltanet", "origin": "baseline", "status": "done", "code": codes[0],
             "code_sha256": code_sha256(codes[0]), "fitness": 0.5, "loss": 3.0, "score": 0.5}]
    parents = [1]
    for i in range(n):
        code = codes[i % len(codes)] + f"\n# variant {i}\n"
        loss = 3.0 + rng.gauss(0, 0.2)
        rows.append({"name": f"cand_{i}", "origin": "offline", "parent_id": rng.choice(parents), "status": "done",
                     "code": code, "code_sha256": code_sha256(code), "fitness": rng.random(), "loss": loss,
                     "score": rng.random()})
        parents.append(i + 2)
    store.insert_candidates(rows)


def _fake_result(path: Path, cid: int, n: int, rng: random.Random) -> None:
    rec = rf.ResultRecord(experiment="bench", candidate_id=cid, attempt=n, run_key=f"bench-{cid}-{n}",
                          code_sha256="0" * 64, curve=rf.Curve(step=[], tokens=[], loss=[], lr=[], time=[]))
    for s in range(1, 201, 10):
        rec.curve.append(s, s * 2048, 5.0 / s ** 0.3, 1e-3, s * 0.05)
    rec.metrics = {"eval/loss": 3.0 + rng.gauss(0, 0.2), "mqar/accuracy": rng.random()}
    rec.eval_loss = rec.metrics["eval/loss"]
    rec.final_loss = rec.eval_loss
    rec.tokens_per_s, rec.num_params, rec.steps_done = 50_000.0, 100_000, 200
    rec.started_at, rec.finished_at = time.time() - 10, time.time()
    rec.env = {"world_size": 2}
    rf.write_result(path, rec)


def measure(n_store: int, rounds: int, per_round: int = 4) -> dict[str, list[float]]:
    """Seconds per phase per candidate for ``rounds`` rounds on a store of ``n_store`` candidates."""
    cfg = demo_config("bench")
    timings: dict[str, list[float]] = defaultdict(list)
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="asiarch-bench-") as tmp:
        exp = ExperimentDir(Path(tmp))
        store = Store.open(exp.db)
        populate(store, n_store)
        proposer = OfflineProposer(0)
        srng = random.Random(0)
        s = cfg.search
        for r in range(rounds):
            for i in range(per_round):
                t = time.perf_counter()
                sample = sample_parents(store, srng, pool_size=s.pool_size, parent_top=s.parent_top,
                                        num_references=s.num_references, rebuild_every=s.pool_rebuild_every)
                t1 = time.perf_counter()
                _, keys = store.known_keys()
                prop = proposer.propose(sample.parent, sample.references, seen_keys=keys, rng_key=f"{r}:{i}")
                t2 = time.perf_counter()
                cid = store.add_candidate(name=prop.name, origin="offline", code=prop.code,
                                          code_sha256=code_sha256(prop.code), parent_id=sample.parent.id,
                                          round=r + 1, motivation=prop.motivation, genome_key=prop.genome.key(),
                                          reference_ids=[x.id for x in sample.references])
                store.set_candidate_status(cid, "checked", event="pre-flight ok")
                t3 = time.perf_counter()
                cand = store.candidate(cid)
                key = run_key("bench", cid, 1)
                paths = exp.attempt(cid, cand.name, 1)
                layer = exp.layer_file(cid, cand.name)
                layer.parent.mkdir(parents=True, exist_ok=True)
                layer.write_text(cand.code)
                write_attempt_files(paths, layer_path=layer, identity={"experiment": "bench", "candidate_id": cid,
                                    "attempt": 1, "run_key": key, "code_sha256": cand.code_sha256},
                                    train=cfg.train, cluster=cfg.cluster, class_name=DEFAULT_CLASS_NAME,
                                    python=sys.executable)
                aid = store.add_attempt(cid, 1, key, exp.relative(paths.dir), cand.code_sha256)
                store.mark_submitted(aid, "local", f"job-{cid}")
                t4 = time.perf_counter()
                _fake_result(paths.result, cid, 1, rng)  # the job's work: not timed
                t5 = time.perf_counter()
                out = analyst.ingest_attempt(store, exp, cfg, store.attempt(aid), JobState.COMPLETED)
                store.set_attempt_status(aid, out.attempt_status, out.error)
                t6 = time.perf_counter()
                for name, dt in (("sample", t1 - t), ("propose", t2 - t1), ("record", t3 - t2),
                                 ("write attempt", t4 - t3), ("ingest", t6 - t5)):
                    timings[name].append(dt)
                timings["total"].append((t4 - t) + (t6 - t5))
        store.close()
    return timings


def bench_overhead(candidates: int = 1000, rounds: int = 5, preflight: bool = True) -> int:
    small = 10
    print(f"asiarch bench overhead: head work per candidate, {rounds} rounds of 4, store of {candidates} "
          f"vs {small} candidates (same run, this machine)")
    measure(small, 1)  # warm imports and caches
    ref = measure(small, rounds)
    big = measure(candidates, rounds)
    print(f"{'phase':<14} {'ms @' + str(small):>10} {'ms @' + str(candidates):>10} {'ratio':>7}")
    for phase in ("sample", "propose", "record", "write attempt", "ingest", "total"):
        a = statistics.median(ref[phase]) * 1e3
        b = statistics.median(big[phase]) * 1e3
        print(f"{phase:<14} {a:10.2f} {b:10.2f} {b / a if a else float('nan'):7.2f}")
    if preflight:
        from asiarch.search.preflight import run_preflight

        code = baseline_sources(("deltanet",))["deltanet"]
        t = time.perf_counter()
        report = run_preflight(code, hidden_size=64, num_heads=2, seq_len=64)
        print(f"pre-flight check (child process, deltanet): {time.perf_counter() - t:.2f} s, ok={report.ok}")
    return 0


# ----------------------------------------------------------------------------- pre-flight


def bench_preflight(sample: int = 10, architectures: str | Path | None = None, *, every: bool = False,
                    sandbox: str = "auto") -> int:
    """Pre-flight time per layer, as the loop runs it: ``run_preflight`` in the sandboxed child, at the
    demo experiment's training settings (train.seq_len, batch per rank, hidden size, heads; bf16
    autocast for the layers that cast to bf16), on the good layers of tests/layers and ``sample``
    of ASI-Arch's published layers (spread over the file; ``every``: all of them). Prints one line per
    layer (seconds, verdict, the first failed check) and the median; returns 0.
    """
    from asiarch.search.preflight import preflight_settings, run_preflight
    from asiarch.tools.asi_arch import casts_to_bf16, read_architectures

    repo = Path(__file__).resolve().parents[2]
    layers = [(p.stem, p.read_text(), False) for p in sorted((repo / "tests" / "layers").glob("good_*.py"))]
    path = Path(architectures) if architectures else repo.parent / "shared" / "asi-arch" / "architectures.json"
    if path.exists():
        published = read_architectures(path)
        step = 1 if every or sample >= len(published) else max(1, len(published) // max(1, sample))
        chosen = published[::step] if every else published[::step][:sample]
        layers += [(p.name, p.code, casts_to_bf16(p.code)) for p in chosen]
    else:
        print(f"(no ASI-Arch data at {path}: the good layers only)")
    settings = preflight_settings(demo_config("bench"))  # what the loop's pre-flight runs with
    settings["sandbox"] = sandbox
    print(f"asiarch bench preflight: {len(layers)} layers through the sandboxed child (sandbox {sandbox}), training "
          f"length {settings['seq_len']}, batch {settings['batch_size']} per rank, hidden {settings['hidden_size']}, "
          f"{settings['num_heads']} heads; this machine")
    print(f"{'layer':<40} {'s':>6}  verdict")
    times, verdicts = [], {}
    for name, code, bf16 in layers:
        start = time.perf_counter()
        report = run_preflight(code, **{**settings, "precision": "bf16" if bf16 else settings["precision"]},
                               filename=f"{name}.py")
        seconds = time.perf_counter() - start
        times.append(seconds)
        verdicts[name] = "ok" if report.ok else report.reason
        print(f"{name:<40} {seconds:6.1f}  {'ok' if report.ok else report.reason[:110]}", flush=True)
    refused = [n for n, v in verdicts.items() if v != "ok"]
    print(f"median {statistics.median(times):.1f} s, max {max(times):.1f} s per layer; {len(layers) - len(refused)} "
          f"of {len(layers)} pass; refused: {', '.join(refused) or 'none'}")
    return 0


# ----------------------------------------------------------------------------- Slurm


# The controller RPCs a head causes (submitting, querying, cancelling); the others are the jobs' own
# (step creation, completion) and slurmd's, whoever submitted them.
HEAD_RPCS = ("REQUEST_SUBMIT_BATCH_JOB", "REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE", "REQUEST_JOB_USER_INFO",
             "REQUEST_FED_INFO", "REQUEST_PARTITION_INFO", "REQUEST_NODE_INFO", "REQUEST_KILL_JOB",
             "REQUEST_CANCEL_JOB_STEP", "REQUEST_UPDATE_JOB")


def controller_rpcs() -> tuple[int, int]:
    """(RPCs a head causes, all RPCs) slurmctld has served so far, from sdiag's per-type counts."""
    import re
    import subprocess

    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    block = out.split("by message type", 1)[1].split("by user", 1)[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"(\w+)\s+\(\s*\d+\)\s+count:(\d+)", block)}
    return sum(counts.get(k, 0) for k in HEAD_RPCS), sum(counts.values())


def _round_jobs(folder: Path, n: int) -> list:
    from asiarch.dispatch.base import JobRequest

    folder.mkdir(parents=True, exist_ok=True)
    reqs = []
    for i in range(n):
        script = folder / f"job{i}.sh"
        script.write_text("true\n")
        reqs.append(JobRequest(run_key=f"b{i}", script=script, log=folder / f"job{i}.log"))
    return reqs


def bench_slurm(candidates: int = 64, poll_s: float = 1.0) -> int:
    """Controller RPCs per candidate and submit-to-done time for one round on the Slurm at SLURM_CONF:
    asiarch (one array sbatch, one squeue per poll, backing off) against one sbatch per candidate
    with a squeue per job per poll, measured in the same run. ``candidates``: jobs in the round (>= 1)."""
    if candidates < 1:
        raise ValueError(f"bench_slurm: candidates={candidates}; a round needs at least 1 job")
    import subprocess

    import submitit

    from asiarch.dispatch.payload import run_job_script
    from asiarch.dispatch.slurm import SlurmScheduler, SlurmSpec

    spec = SlurmSpec(job_name="bench", time_min=10, cpus_per_task=1, array_parallelism=candidates)
    print(f"asiarch bench slurm: a round of {candidates} trivial jobs on the Slurm at SLURM_CONF "
          f"(controller RPCs from sdiag; this machine)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="asiarch-bench-slurm-") as tmp:
        # asiarch: one array job, one squeue per poll for all ids, polls backing off while nothing changes
        sched = SlurmScheduler(Path(tmp) / "a", spec, max_poll_s=10.0)
        reqs = _round_jobs(Path(tmp) / "a-jobs", candidates)
        (h0, a0), t0 = controller_rpcs(), time.time()
        ids = sched.submit(reqs)
        interval = poll_s
        while True:  # as Search.wait polls
            states = sched.states(ids)
            if all(s.finished for s in states.values()):
                break
            time.sleep(interval)
            interval = min(interval * 1.5, sched.max_poll_s)
        wall = time.time() - t0
        h1, a1 = controller_rpcs()
        rows.append(("asiarch (array, one squeue per poll, backoff)", h1 - h0, a1 - a0 - 1, wall))
        # reference: an sbatch per candidate and a squeue per job per poll, every poll_s
        ex = submitit.SlurmExecutor(folder=str(Path(tmp) / "b" / "%j"))
        ex.update_parameters(**spec.submitit_parameters())
        reqs = _round_jobs(Path(tmp) / "b-jobs", candidates)
        (h0, a0), t0 = controller_rpcs(), time.time()
        jobs = [ex.submit(run_job_script, str(r.script), str(r.log)) for r in reqs]
        pending = {j.job_id for j in jobs}
        while pending:
            for jid in list(pending):
                out = subprocess.run(["squeue", "--local", "-h", "-o", "%T", "-j", jid], capture_output=True,
                                     text=True).stdout.strip()
                if not out:
                    pending.discard(jid)
            time.sleep(poll_s)
        wall = time.time() - t0
        h1, a1 = controller_rpcs()
        rows.append(("reference (sbatch per job, squeue per job/s)", h1 - h0, a1 - a0 - 1, wall))
    print(f"{'dispatch':<44} {'head RPCs':>9} {'per cand':>8} {'all RPCs':>8} {'wall s':>7}")
    for name, head, every, wall in rows:
        print(f"{name:<44} {head:9d} {head / candidates:8.2f} {every:8d} {wall:7.1f}")
    print(f"head RPCs, reference / asiarch: {rows[1][1] / max(rows[0][1], 1):.1f}x "
          "(all RPCs include the jobs' own: step create/complete, batch complete)")
    return 0
