"""The agents wired to one experiment's store: what the loop calls.

``LLMAgents.from_config(cfg, store)`` builds the client, the three agents, the novelty
check and the knowledge index from the config; its methods fetch the context each agent
needs from the store and record what comes back (analyses, knowledge, repairs), so the
loop makes one call per step.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from asiarch.propose.llm.agents import (Analysis, Analyst, Engineer, LayerRules, Novelty, Repair, Researcher,
                                record_analysis, record_repairs)
from asiarch.propose.llm.client import BudgetExceeded, LLMClient, LLMError, LLMSettings, budget_left
from asiarch.propose.llm.knowledge import KnowledgeEntry, knowledge_base
from asiarch.propose.offline import Proposal

__all__ = ["LLMAgents"]


class LLMAgents:
    """Researcher, Engineer, Analyst and the knowledge base over one store."""

    def __init__(self, client: LLMClient, store, rules: LayerRules, *, novelty_threshold: float = 0.85,
                 novelty_retries: int = 3, repair_attempts: int = 3, judge: bool = False, knowledge_k: int = 4):
        self.client = client
        self.store = store
        self.rules = rules
        self.knowledge_k = knowledge_k
        self.novelty = Novelty(store, client, threshold=novelty_threshold)
        self.researcher = Researcher(client, rules, novelty=self.novelty, novelty_retries=novelty_retries)
        self.engineer = Engineer(client, rules, max_attempts=repair_attempts)
        self.analyst = Analyst(client, judge=judge)

    @classmethod
    def from_config(cls, cfg: Any, store, *, client: LLMClient | None = None) -> "LLMAgents":
        s, llm = cfg.search, cfg.llm
        rules = LayerRules(class_name=s.class_name, allow_quadratic=s.allow_quadratic,
                           max_params=cfg.train.max_params)
        return cls(client or LLMClient(LLMSettings.from_config(cfg), store), store, rules,
                   novelty_threshold=getattr(s, "novelty_threshold", 0.85),
                   novelty_retries=min(s.novelty_retries, getattr(llm, "novelty_reasks", 3)),
                   repair_attempts=getattr(llm, "repair_attempts", 3),
                   judge=cfg.fitness.judge_weight > 0, knowledge_k=getattr(llm, "knowledge_k", 4))

    def bind_store(self, store) -> None:
        """Read and record through ``store`` from now on (the steady pipeline passes a proxy that runs
        every call on the head's main thread, asiarch.search.workers.OnMain)."""
        self.store = self.novelty.store = self.client.store = store

    # ----------------------------------------------------------------- budget
    def budget_left(self) -> float | None:
        """Dollars left under budget.llm_dollars (None: no cap)."""
        left = budget_left(self.store, self.client.settings.dollar_cap)
        return None if left is None else max(0.0, left - self.client.in_flight_dollars())

    def budget_spent(self) -> bool:
        left = self.budget_left()
        return left is not None and left <= 0

    # ----------------------------------------------------------------- researcher
    def knowledge_for(self, parent: Any, references: Sequence[Any] = ()) -> list[KnowledgeEntry]:
        """Entries retrieved for the parent (its name, motivation, analyses) and the references' names."""
        parts = [parent.name.replace("_", " "), parent.motivation or ""]
        parts += [a["summary"] + " " + a["text"] for a in self.store.analyses(parent.id)[-2:]]
        parts += [r.name.replace("_", " ") for r in references]
        return knowledge_base(self.store).search(" ".join(parts), self.knowledge_k)

    def propose(self, parent: Any, references: Sequence[Any] = ()) -> Proposal:
        """A new layer from the Researcher (raises ProposalError, or BudgetExceeded when the cap is reached)."""
        analyses = {c.id: self.store.analyses(c.id) for c in [parent, *references]}
        return self.researcher.propose(parent, references, analyses=analyses,
                                       knowledge=self.knowledge_for(parent, references))

    # ----------------------------------------------------------------- engineer
    def repair(self, cand: Any, error: str, *, stage: str, context: str = "",
               check: Callable[[str], str] | None = None) -> Repair | None:
        """A repair of a stored candidate's code for ``error``; every attempt is recorded in the
        repairs table (stage 'preflight' or 'job'). The caller stores the new code."""
        try:
            return self.engineer.repair(cand.code, error, context=context, name=cand.name,
                                        motivation=cand.motivation, check=check)
        except BudgetExceeded:
            return None
        finally:
            if self.engineer.last_attempts:
                record_repairs(self.store, cand.id, self.engineer.last_attempts, stage=stage)

    # ----------------------------------------------------------------- analyst
    def analyse(self, cand: Any) -> Analysis | None:
        """The Analyst's report on a scored candidate, stored with its lesson; None when the
        LLM gave none (the offline analysis stays)."""
        parent = self.store.candidate(cand.parent_id) if cand.parent_id is not None else None
        siblings = [s for s in self.store.children(cand.parent_id) if s.id != cand.id][-6:] \
            if cand.parent_id is not None else []
        baselines = [b for b in self.store.candidates(origin="baseline") if b.fitness is not None]
        try:
            analysis = self.analyst.analyse(cand, parent=parent, siblings=siblings, baselines=baselines)
        except LLMError:
            return None
        record_analysis(self.store, cand.id, analysis)
        return analysis
