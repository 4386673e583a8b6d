"""The benchmark payload of ``asiarch bench pipeline``: a job that sleeps instead of training.

What that benchmark measures is the head's scheduling, so its jobs do no training: each reads its
job spec, sleeps a time drawn from a lognormal around ``--median`` seconds (``--spread`` is the
sigma of the log; deterministic in the attempt's run key), and writes a result file and progress
record as the trainer would, labelled ``env.benchmark_payload = "sleep"``, with a loss drawn the
same way. It never imports the candidate's code. The bench runs it as the jobs' interpreter
(cluster.python is a wrapper script that calls ``python -m asiarch.tools.bench_payload ... "$@"``),
so the job script, the scheduler and the head are the real ones; the job's last argument is the
spec, as it is for ``asiarch.job.train``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time

from asiarch.job import result as rf
from asiarch.job.contract import JobSpec


def draw(run_key: str, median: float, spread: float) -> tuple[float, float]:
    """(seconds, loss) for one attempt: lognormal around ``median``, and a loss around 1."""
    rng = random.Random(int(hashlib.sha256(run_key.encode()).hexdigest()[:16], 16))
    return median * math.exp(rng.gauss(0.0, spread)), 1.0 + 0.1 * rng.gauss(0.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asiarch.tools.bench_payload")
    p.add_argument("--median", type=float, required=True)
    p.add_argument("--spread", type=float, default=0.5)
    args, rest = p.parse_known_args(argv)
    spec = JobSpec.load(rest[-1])
    ident = spec.identity
    started = time.time()
    seconds, loss = draw(ident.run_key, args.median, args.spread)
    steps = int(spec.train["steps"])
    rf.write_progress(spec.progress_path, step=0, steps=steps, tokens=0, loss=loss + 1.0, tokens_per_s=0.0)
    time.sleep(seconds)
    rec = rf.ResultRecord(experiment=ident.experiment, candidate_id=ident.candidate_id, attempt=ident.attempt,
                          run_key=ident.run_key, code_sha256=ident.code_sha256, status="ok", config=spec.train,
                          env={"benchmark_payload": "sleep", "world_size": 1}, started_at=started,
                          finished_at=time.time())
    for i in range(1, 5):
        rec.curve.append(steps * i // 4, steps * i // 4, loss + 1.0 / i, 0.0, seconds * i / 4)
    rec.final_loss = rec.eval_loss = loss
    rec.metrics = {"eval/loss": loss, "mqar/accuracy": max(0.0, min(1.0, 1.5 - loss))}
    rec.tokens_per_s, rec.steps_done, rec.num_params = 1000.0, steps, 1000
    rf.write_result(spec.result_path, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
