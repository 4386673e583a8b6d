"""``asiarch bench pipeline``: slot utilisation of the steady and the round schedule, measured.

One invocation runs the same search twice on a real Slurm (the one at SLURM_CONF, else the
project's single-node test cluster, started for the run and stopped after it): once with
``search.schedule = "steady"``, once with ``"rounds"``. The Researcher is a loopback
OpenAI-compatible server answering every request after ``--llm-latency`` seconds with a new layer;
the jobs are the labelled sleep payload of :mod:`asiarch.tools.bench_payload` (run times lognormal
around ``--job-median`` s, spread 0.5), since what is measured is the head's scheduling, not
training. Everything else (proposal sampling, the agents and their client, the store, the submitter,
the poller, sbatch arrays, squeue, sacct) is what a search runs.

Figures, per schedule: slot utilisation (busy slot-seconds from sacct's Start/End over slots x time)
over the steady window, from the start of the first proposed candidate's job to the start of the
last one's (ramp-up and drain left out), and over the whole run; sbatch calls and head-caused
controller RPCs (sdiag) per candidate; the head's own CPU-seconds per candidate; wall time.

By default the candidates are not pre-flighted (``--preflight skip``): their code is never run,
by the payload or anywhere else, and on a 2-core machine the pre-flight's few CPU-seconds per
candidate, not the scheduling, would set the pace. ``--preflight real`` runs each in its sandboxed
child as a search does.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from asiarch.config import Config, validate
from asiarch.layout import ExperimentDir
from asiarch.propose.offline import OfflineProposer, baseline_sources
from asiarch.search.preflight import CheckResult, PreflightReport
from asiarch.tools.bench import HEAD_RPCS
from asiarch.tools.llm_server import ChatServer, completion

ROOT = Path(__file__).resolve().parents[2]  # the checkout: slurm/ holds the test cluster's scripts
SUBMIT_RPC = "REQUEST_SUBMIT_BATCH_JOB"


class ProposingServer(ChatServer):
    """Answers the Researcher with a new, valid layer (the offline proposer's mutations of Gated
    DeltaNet) and the Analyst with a short analysis, each after ``latency`` seconds."""

    def __init__(self, latency: float, seed: int = 0):
        super().__init__()
        self.latency = latency
        self.lock = threading.Lock()
        self.proposer = OfflineProposer(seed=seed)
        code = baseline_sources(("gated_deltanet",))["gated_deltanet"]
        self.parent = SimpleNamespace(id=0, name="gated_deltanet", code=code, motivation="", fitness=None)
        self.seen: set[str] = set()
        self.n = 0
        self.calls: dict[str, int] = {}

    def answer(self, model: str, body: dict, headers: dict):
        time.sleep(self.latency)
        with self.lock:
            self.n += 1
            self.calls[model] = self.calls.get(model, 0) + 1
            if model == "researcher":
                prop = self.proposer.propose(self.parent, seen_keys=self.seen, rng_key=f"bench:{self.n}")
                self.seen.add(prop.genome.key())
                text = json.dumps({"name": prop.name, "motivation": prop.motivation, "code": prop.code})
            elif model == "novelty":
                text = json.dumps({"novel": True, "reason": "a new combination"})
            elif model == "analyst":
                text = json.dumps({"summary": "as expected", "analysis": "The benchmark payload does not train.",
                                   "lesson": {"title": "none", "problem": "-", "idea": "-", "when": "-",
                                              "how": "-"}})
            else:
                return 500, {"error": {"message": f"no answers for model {model!r}"}}, None
        return 200, completion(model, text, usage=(1000, 500), n=self.n), None


@contextmanager
def slurm(slots: int):
    """SLURM_CONF's cluster, or the test cluster (slurm/start-test-cluster.sh) for the duration."""
    if os.environ.get("SLURM_CONF"):
        yield os.environ["SLURM_CONF"]
        return
    start = ROOT / "slurm" / "start-test-cluster.sh"
    if not start.exists():
        raise SystemExit("asiarch bench pipeline: SLURM_CONF is not set and slurm/start-test-cluster.sh is not here: "
                         "run it from a checkout, or point SLURM_CONF at a cluster")
    state = tempfile.mkdtemp(prefix="asiarch-bench-slurm-")
    env = dict(os.environ, ASIARCH_SLURM_CPUS=str(max(8, 2 * slots)), ASIARCH_SLURM_MEM_MB=str(max(16000, 2000 * slots)))
    print("starting the test cluster (slurm/start-test-cluster.sh) ...", file=sys.stderr, flush=True)
    res = subprocess.run(["bash", str(start), state], capture_output=True, text=True, env=env, timeout=300)
    if res.returncode:
        raise SystemExit(f"asiarch bench pipeline: the test cluster did not start:\n{res.stderr[-2000:]}")
    os.environ["SLURM_CONF"] = f"{state}/slurm.conf"
    try:
        yield os.environ["SLURM_CONF"]
    finally:
        subprocess.run(["bash", str(ROOT / "slurm" / "stop-test-cluster.sh"), state], capture_output=True, timeout=120)
        os.environ.pop("SLURM_CONF", None)


def bench_config(schedule: str, *, slots: int, candidates: int, url: str, python: str) -> Config:
    cfg = Config()
    cfg.experiment.name = f"bench-{schedule}"
    cfg.search.schedule = schedule
    cfg.search.proposer = "llm"
    cfg.search.round_size = slots            # a round fills every slot
    cfg.search.max_attempts = 1
    cfg.search.novelty_threshold = 0.999     # one LLM answer per proposal: the novelty judge is not asked
    cfg.search.preflight_workers = 2
    cfg.baselines.names = ["deltanet"]
    cfg.budget.candidates = candidates
    cfg.train.nproc = 1
    cfg.cluster.scheduler = "slurm"
    cfg.cluster.max_in_flight = slots
    cfg.cluster.sandbox = "none"             # the payload never runs candidate code
    cfg.cluster.python = python
    cfg.cluster.timeout_min = 30
    cfg.llm.base_url = url
    cfg.llm.researcher_model, cfg.llm.novelty_model = "researcher", "novelty"
    cfg.llm.engineer_model, cfg.llm.analyst_model = "engineer", "analyst"
    cfg.llm.concurrency = 8
    cfg.llm.timeout_s = 60.0
    return validate(cfg)


class Lines:
    """The search's lines on stderr, prefixed by the schedule; status lines every 15 s at most."""

    def __init__(self, tag: str):
        self.tag, self.t0, self.last = tag, time.time(), 0.0

    def line(self, text: str) -> None:
        print(f"[{self.tag} {time.time() - self.t0:5.0f} s] {text}", file=sys.stderr, flush=True)

    def status(self, text: str) -> None:
        if time.time() - self.last > 15:
            self.last = time.time()
            self.line(text)


def _epoch(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def job_times(job_ids: list[str]) -> dict[str, tuple[float, float]]:
    """job id -> (start, end) in unix seconds, from sacct (the jobs have ended)."""
    out: dict[str, tuple[float, float]] = {}
    for _ in range(10):  # accounting lags the controller a little
        res = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=60)
        for line in res.stdout.splitlines():
            jid, start, end = (line.split("|") + ["", ""])[:3]
            s, e = _epoch(start), _epoch(end)
            if s is not None and e is not None:
                out[jid] = (s, e)
        if all(j in out for j in job_ids):
            break
        time.sleep(2)
    return out


def utilisation(spans: list[tuple[float, float]], slots: int, t0: float, t1: float) -> float:
    """Busy slot-seconds within [t0, t1] over slots x (t1 - t0)."""
    if t1 <= t0:
        return float("nan")
    busy = sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in spans)
    return busy / (slots * (t1 - t0))


def skip_preflight(code: str) -> PreflightReport:
    return PreflightReport(ok=True, checks=[CheckResult("benchmark", True, "skipped: the benchmark payload never "
                                                        "runs the code")], elapsed_s=0.0)


def run_one(schedule: str, root: Path, *, slots: int, candidates: int, url: str, python: str,
            preflight: str) -> dict:
    from asiarch.search.loop import Search
    from asiarch.store import Store

    cfg = bench_config(schedule, slots=slots, candidates=candidates, url=url, python=python)
    exp = ExperimentDir(root)
    t0, rpc0, self0 = time.time(), rpc_counts(), resource.getrusage(resource.RUSAGE_SELF)
    search = Search.open(exp, cfg, console=Lines(schedule))
    if preflight == "skip":
        search.checker.preflight = skip_preflight
    try:
        summary = search.run()
    finally:
        search.close()
    wall = time.time() - t0
    self1, rpc1 = resource.getrusage(resource.RUSAGE_SELF), rpc_counts()
    head = {k: rpc1.get(k, 0) - rpc0.get(k, 0) for k in HEAD_RPCS if rpc1.get(k, 0) - rpc0.get(k, 0)}
    store = Store.open_readonly(exp.db)
    try:
        base = {c.id for c in store.candidates(origin="baseline")}
        attempts = [a for a in store.attempts() if a.job_id]
        new = [a for a in attempts if a.candidate_id not in base]
        trained = sum(1 for c in store.candidates() if c.origin != "baseline" and c.status in ("done", "failed"))
    finally:
        store.close()
    times = job_times([a.job_id for a in attempts])
    spans = [times[a.job_id] for a in attempts if a.job_id in times]
    new_spans = [times[a.job_id] for a in new if a.job_id in times]
    first_start = min(s for s, _ in new_spans)
    last_start = max(s for s, _ in new_spans)
    n = max(1, trained)
    return {
        "utilisation": utilisation(spans, slots, first_start, last_start),
        "utilisation_whole_run": utilisation(spans, slots, min(s for s, _ in spans), max(e for _, e in spans)),
        "steady_window_s": last_start - first_start,
        "sbatch_per_candidate": head.get(SUBMIT_RPC, 0) / n,
        "rpcs_per_candidate": sum(head.values()) / n,
        "rpcs": head,
        "head_cpu_s_per_candidate": (self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime) / n,
        "wall_s": wall,
        "trained": trained,
        "jobs": len(attempts),
        "summary_trained": summary.trained,
    }


def rpc_counts() -> dict[str, int]:
    """The controller's RPC counts by message type so far (sdiag)."""
    import re

    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True, timeout=60).stdout
    block = out.split("by message type", 1)[1].split("by user", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(\w+)\s+\(\s*\d+\)\s+count:(\d+)", block)}


def bench_pipeline(*, slots: int = 8, candidates: int = 48, llm_latency: float = 5.0, job_median: float = 20.0,
                   preflight: str = "skip", as_json: bool = False, schedules: tuple[str, ...] = ("steady", "rounds")) -> int:
    if slots < 1 or candidates < 1:
        raise SystemExit("asiarch bench pipeline: --slots and --candidates must be at least 1")
    if not as_json:
        print(f"asiarch bench pipeline: {candidates} candidates on {slots} slots, {llm_latency:g} s per LLM answer, "
              f"jobs lognormal around {job_median:g} s (spread 0.5; the sleep payload, no training), "
              f"pre-flight {'skipped' if preflight == 'skip' else 'sandboxed'}; real Slurm, this machine "
              f"({os.cpu_count()} cores)", flush=True)
    results: dict = {}
    keep = os.environ.get("ASIARCH_BENCH_KEEP")  # a directory to keep the experiments in (for a post-mortem)
    with (nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="asiarch-bench-pipeline-")) as tmp, \
            slurm(slots), ProposingServer(llm_latency) as srv:
        wrapper = Path(tmp) / "payload-python"
        py = shlex.quote(sys.executable)
        # the jobs' interpreter: the trainer's command line runs the sleep payload instead; anything else
        # (submitit's own job process) runs this Python
        wrapper.write_text(f"#!/bin/sh\ncase \" $* \" in *\" asiarch.job.train \"*)\n"
                           f"  exec {py} -m asiarch.tools.bench_payload --median {job_median} --spread 0.5 \"$@\";;\n"
                           f"esac\nexec {py} \"$@\"\n")
        wrapper.chmod(0o755)
        for schedule in schedules:
            results[schedule] = run_one(schedule, Path(tmp) / schedule, slots=slots, candidates=candidates,
                                        url=srv.url, python=str(wrapper), preflight=preflight)
    out = {**results, "slots": slots, "candidates": candidates, "llm_latency_s": llm_latency,
           "job_median_s": job_median, "preflight": preflight}
    if as_json:
        print(json.dumps(out, indent=None, sort_keys=True))
        return 0
    print(f"{'schedule':<8} {'util':>5} {'(whole)':>7} {'window s':>8} {'sbatch/c':>8} {'RPCs/c':>6} "
          f"{'head CPU s/c':>12} {'wall s':>7}")
    for name, r in results.items():
        print(f"{name:<8} {r['utilisation']:5.2f} {r['utilisation_whole_run']:7.2f} {r['steady_window_s']:8.0f} "
              f"{r['sbatch_per_candidate']:8.2f} {r['rpcs_per_candidate']:6.2f} {r['head_cpu_s_per_candidate']:12.3f} "
              f"{r['wall_s']:7.0f}")
    if "steady" in results and "rounds" in results:
        ratio = results["steady"]["utilisation"] / results["rounds"]["utilisation"]
        print(f"steady / rounds utilisation: {ratio:.2f}x; wall time rounds / steady: "
              f"{results['rounds']['wall_s'] / results['steady']['wall_s']:.2f}x")
    return 0
