"""The experiment store: the only code that speaks SQL (re-exports)."""

from asiarch.store.store import (ATTEMPT_STATUSES, CANDIDATE_STATUSES, SCHEMA_VERSION, Attempt, Candidate, Store,
                                 StoreError, to_json)

__all__ = ["ATTEMPT_STATUSES", "CANDIDATE_STATUSES", "SCHEMA_VERSION", "Attempt", "Candidate", "Store",
           "StoreError", "to_json"]
