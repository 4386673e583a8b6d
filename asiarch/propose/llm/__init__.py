"""The LLM agents over any OpenAI-compatible endpoint (re-exports)."""

from asiarch.propose.llm.agents import (Analysis, Analyst, Engineer, LayerRules, Novelty, Repair, RepairAttempt,
                                Researcher, code_diff, record_analysis, record_repairs, repairs)
from asiarch.propose.llm.client import (BudgetExceeded, LLMClient, LLMError, LLMSettings, MalformedAnswer, budget_left,
                                check_budget)
from asiarch.propose.llm.knowledge import (KnowledgeEntry, KnowledgeIndex, builtin_entries, import_cognition,
                                   knowledge_base)
from asiarch.propose.llm.team import LLMAgents

__all__ = [
    "Analysis", "Analyst", "Engineer", "LayerRules", "Novelty", "Repair", "RepairAttempt", "Researcher",
    "code_diff", "record_analysis", "record_repairs", "repairs",
    "BudgetExceeded", "LLMClient", "LLMError", "LLMSettings", "MalformedAnswer", "budget_left", "check_budget",
    "KnowledgeEntry", "KnowledgeIndex", "builtin_entries", "import_cognition", "knowledge_base",
    "LLMAgents",
]
