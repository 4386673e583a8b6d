"""New candidates for a round's slots: sample a parent and references from the store (ASI-Arch's
rule, asiarch.search.sampling), ask the Researcher (LLM) or the offline proposer, and record each
proposal that is new (by code and, for the offline proposer, by genome).

With ``search.proposer = 'mixed'`` each slot goes to the LLM with probability search.llm_fraction;
once the dollar cap is spent the offline proposer takes the LLM's share ('mixed') or proposing
stops ('llm'). An LLM failure costs the slot, never the search.
"""

from __future__ import annotations

import random

from asiarch.analysis.format import candidate_label
from asiarch.config import Config
from asiarch.job.candidate import code_sha256
from asiarch.propose.offline import OfflineProposer, ProposalError
from asiarch.search.budget import llm_spend_text
from asiarch.search.messages import Sink
from asiarch.search.sampling import sample_parents
from asiarch.store import Candidate, Store


class Proposals:
    """Fills slots with new candidates from ``proposer`` (offline) and ``agents`` (LLM, or None)."""

    def __init__(self, cfg: Config, store: Store, proposer: OfflineProposer, agents, console: Sink):
        self.cfg = cfg
        self.store = store
        self.proposer = proposer
        self.agents = agents
        self.console = console
        self.rng = random.Random(cfg.experiment.seed)  # parent sampling and the LLM's share of slots
        self.llm_budget_noted = False

    def spend_text(self) -> str:
        return llm_spend_text(self.cfg, self.store.llm_dollars())

    def propose_round(self, round_no: int, n: int) -> list[Candidate]:
        """Up to ``n`` new candidates for round ``round_no``, recorded 'proposed' (fewer when the pool is
        empty, a proposal repeats known code, or the LLM budget ends proposing)."""
        shas, keys = self.store.known_keys()
        out = []
        s = self.cfg.search
        for i in range(n):
            sample = sample_parents(self.store, self.rng, pool_size=s.pool_size, parent_top=s.parent_top,
                                    num_references=s.num_references, rebuild_every=s.pool_rebuild_every)
            if sample is None:
                break
            use_llm = self.agents is not None and (
                s.proposer == "llm" or (s.proposer == "mixed" and self.rng.random() < s.llm_fraction))
            prop = None
            try:
                if use_llm and not self.agents.budget_spent():
                    prop = self.propose_llm(sample)  # None: the budget ran out during this proposal
                if use_llm and prop is None:  # the LLM budget is spent
                    if s.proposer == "llm":
                        self.console.line(f"budget: {self.spend_text()}; no more LLM proposals")
                        break
                    if not self.llm_budget_noted:
                        self.console.line(f"budget: {self.spend_text()}; the offline proposer takes the "
                                          "LLM's share")
                        self.llm_budget_noted = True
                    use_llm = False
                if prop is None:
                    prop = self.proposer.propose(sample.parent, sample.references, seen_keys=keys,
                                                 rng_key=f"{round_no}:{i}")
            except ProposalError as exc:
                who = "the Researcher" if use_llm else "the offline proposer"
                self.console.line(f"round {round_no}: no new proposal from {who} for #{sample.parent.id}: "
                                  f"{exc}"[:300])
                if use_llm:
                    self.store.log_event("llm", f"no proposal from the Researcher for #{sample.parent.id}: "
                                                f"{exc}"[:1000], sample.parent.id)
                continue
            sha = code_sha256(prop.code)
            if sha in shas:
                continue
            shas.add(sha)
            genome_key = prop.genome.key() if prop.genome is not None else ""
            if genome_key:
                keys.add(genome_key)
            cid = self.store.add_candidate(name=prop.name, origin="llm" if use_llm else "offline", code=prop.code,
                                           code_sha256=sha, parent_id=sample.parent.id, round=round_no,
                                           motivation=prop.motivation, genome_key=genome_key,
                                           reference_ids=list(prop.reference_ids))
            out.append(self.store.candidate(cid))
            self.console.line(f"{candidate_label(cid, prop.name)} proposed ({prop.operator} of #{sample.parent.id} "
                              f"{sample.parent.name})")
        return out

    def propose_llm(self, sample):
        """The Researcher's proposal for one slot; None when the LLM budget ran out (ProposalError
        when it gave nothing usable)."""
        from asiarch.propose.llm.client import BudgetExceeded, LLMError

        self.console.status(f"the Researcher proposes from #{sample.parent.id} {sample.parent.name}")
        try:
            return self.agents.propose(sample.parent, sample.references)
        except BudgetExceeded:
            return None
        except LLMError as exc:  # the agents turn these into ProposalError; kept as a safety net
            raise ProposalError(str(exc)) from exc
