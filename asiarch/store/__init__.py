"""The experiment store: the only code that speaks SQL (re-exports).

schema: every table and the migration; store: the Store (connection, writes, the loop's
reads); queries: read-only queries for the views, the report and the tools.
"""

from asiarch.store import queries
from asiarch.store.schema import ATTEMPT_STATUSES, CANDIDATE_STATUSES, SCHEMA_VERSION, StoreError
from asiarch.store.store import Attempt, Candidate, Store, to_json

__all__ = ["ATTEMPT_STATUSES", "CANDIDATE_STATUSES", "SCHEMA_VERSION", "Attempt", "Candidate", "Store",
           "StoreError", "queries", "to_json"]
