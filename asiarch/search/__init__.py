"""The search: the loop, recovery, submission, budget, ingest, sampling, fitness, pre-flight."""
