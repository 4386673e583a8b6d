"""The search's budgets as pure predicates: what was spent goes in, whether to stop comes out.

The loop gathers a :class:`Spend` from the store (and the LLM agents) and prints the reason
:func:`budget_reason` gives; nothing here reads the store, writes or prints.

What is in flight counts too: ``Spend.in_flight`` (new candidates whose training has started and
not ended) counts against ``budget.candidates`` and ``Spend.in_flight_compute_s`` (the device-seconds
those attempts are expected to use) against ``budget.gpu_hours``. The round schedule passes 0 for
both, since a round ends with nothing in flight; a pipeline that keeps attempts in flight across
proposals passes its own figures, so that a budget is never overshot by the work already started.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from asiarch.config import Config


@dataclass(frozen=True)
class Spend:
    """What the search has used so far, and what it has started and not yet accounted."""

    trained: int                      # new candidates whose training ended (scored, or failed after their attempts)
    compute_s: float = 0.0            # device-seconds accounted (Store.compute_seconds)
    llm_dollars: float = 0.0          # dollars of LLM calls (Store.llm_dollars)
    llm_exhausted: bool = False       # the LLM agents' dollar cap is reached (LLMAgents.budget_spent)
    in_flight: int = 0                # new candidates training now: they count against budget.candidates
    in_flight_compute_s: float = 0.0  # device-seconds those attempts are expected to use (an estimate)


def trained_count(counts: Mapping[str, int]) -> int:
    """New candidates whose training has ended (scored, failed, or stopped early), from Store.counts()
    (status -> how many)."""
    return counts.get("done", 0) + counts.get("failed", 0) + counts.get("stopped", 0)


def candidates_left(cfg: Config, spend: Spend) -> int:
    """How many more new candidates may start training under budget.candidates."""
    return cfg.budget.candidates - spend.trained - spend.in_flight


def llm_spend_text(cfg: Config, dollars: float) -> str:
    """'$0.0123 of LLM spent (budget.llm_dollars = 0.5)'."""
    return f"${dollars:.4f} of LLM spent (budget.llm_dollars = {cfg.budget.llm_dollars:g})"


def compute_reason(cfg: Config, spend: Spend) -> str | None:
    """Why no more training may start (budget.gpu_hours is spent, counting what is in flight), or None."""
    hours = cfg.budget.gpu_hours
    if hours and (spend.compute_s + spend.in_flight_compute_s) / 3600 >= hours:
        return f"{hours} compute-hours spent"
    return None


def budget_reason(cfg: Config, spend: Spend) -> str | None:
    """Why the search must stop starting work (a compute or, with proposer 'llm', an LLM budget is
    spent), or None while there is budget left. budget.candidates is :func:`candidates_left`'s.
    Candidates already checked may still train when only the LLM budget is spent (:func:`compute_reason`)."""
    reason = compute_reason(cfg, spend)
    if reason:
        return reason
    if cfg.search.proposer == "llm" and spend.llm_exhausted:
        return llm_spend_text(cfg, spend.llm_dollars)
    return None


def proposals_exhausted(cfg: Config, rejected: int) -> bool:
    """Whether so many proposals were rejected (4 per budgeted candidate) that proposing is hopeless."""
    return rejected >= 4 * max(1, cfg.budget.candidates)
