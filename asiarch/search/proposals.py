"""New candidates for a round's slots: sample a parent and references from the store (ASI-Arch's
rule, asiarch.search.sampling), ask the Researcher (LLM) or the offline proposer, and record each
proposal that is new (by code and, for the offline proposer, by genome).

With ``search.proposer = 'mixed'`` each slot goes to the LLM with probability search.llm_fraction;
once the dollar cap is spent the offline proposer takes the LLM's share ('mixed') or proposing
stops ('llm'). An LLM failure costs the slot, never the search.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from asiarch.analysis.format import candidate_label
from asiarch.config import Config
from asiarch.job.candidate import code_sha256
from asiarch.propose.offline import OfflineProposer, ProposalError
from asiarch.search.budget import llm_spend_text
from asiarch.search.messages import Sink
from asiarch.search.sampling import Sample, sample_parents
from asiarch.store import Candidate, Store


class LLMBudgetSpent(Exception):
    """With proposer 'llm': the dollar cap is reached, so proposing ends."""


@dataclass
class Slot:
    """One proposal to make: its parent and references (sampled when the slot was opened), who makes
    it, and the key of the offline proposer's draw."""

    round_no: int
    key: str
    sample: Sample
    use_llm: bool


class Proposals:
    """Fills slots with new candidates from ``proposer`` (offline) and ``agents`` (LLM, or None).

    A slot goes through three steps: :meth:`open` (sample a parent and references, decide who
    proposes: the main thread, since it reads the store as it stands), :meth:`make` (the proposal:
    slow for the Researcher, so the steady pipeline runs it on a worker) and :meth:`record` (the new
    candidate in the store, or nothing for a repeat: the main thread). :meth:`propose_round` runs
    them one after the other for the round schedule.
    """

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
        out = []
        for i in range(n):
            try:
                slot = self.open(round_no, f"{round_no}:{i}")
                if slot is None:
                    break
                made = self.make(slot)
            except LLMBudgetSpent:
                break
            cand = self.record(slot, made)
            if cand is not None:
                out.append(cand)
        return out

    def open(self, round_no: int, key: str) -> Slot | None:
        """A slot: parent and references by ASI-Arch's rule over the store as it is now, and whether the
        LLM proposes it; None while nothing is scored. Raises LLMBudgetSpent with proposer 'llm' once
        the cap is reached."""
        s = self.cfg.search
        sample = sample_parents(self.store, self.rng, pool_size=s.pool_size, parent_top=s.parent_top,
                                num_references=s.num_references, rebuild_every=s.pool_rebuild_every)
        if sample is None:
            return None
        use_llm = self.agents is not None and (
            s.proposer == "llm" or (s.proposer == "mixed" and self.rng.random() < s.llm_fraction))
        if use_llm and self.agents.budget_spent():
            self.llm_spent()
            use_llm = False
        return Slot(round_no, key, sample, use_llm)

    def llm_spent(self) -> None:
        """The LLM budget is spent: say so once; proposing ends ('llm') or the offline proposer takes the
        LLM's share ('mixed')."""
        if self.cfg.search.proposer == "llm":
            self.console.line(f"budget: {self.spend_text()}; no more LLM proposals")
            raise LLMBudgetSpent()
        if not self.llm_budget_noted:
            self.console.line(f"budget: {self.spend_text()}; the offline proposer takes the LLM's share")
            self.llm_budget_noted = True

    def make(self, slot: Slot):
        """The proposal for ``slot``: ``(Proposal, from the LLM)``, or the ProposalError that says why
        there is none. Safe on a worker thread when the store and console are main-thread proxies
        (asiarch.search.workers.OnMain). Raises LLMBudgetSpent with proposer 'llm' when the cap is
        reached during the proposal."""
        use_llm = slot.use_llm
        try:
            prop = self.propose_llm(slot.sample) if use_llm else None  # None: the budget ran out meanwhile
            if use_llm and prop is None:
                self.llm_spent()
                use_llm = False
            if prop is None:
                _, keys = self.store.known_keys()
                prop = self.proposer.propose(slot.sample.parent, slot.sample.references, seen_keys=keys,
                                             rng_key=slot.key)
        except ProposalError as exc:
            return exc, use_llm
        return prop, use_llm

    def record(self, slot: Slot, made) -> Candidate | None:
        """The new candidate of a made proposal, recorded 'proposed'; None when there is none or it
        repeats known code (or, offline, a known genome)."""
        prop, use_llm = made
        parent = slot.sample.parent
        if isinstance(prop, ProposalError):
            who = "the Researcher" if use_llm else "the offline proposer"
            self.console.line(f"round {slot.round_no}: no new proposal from {who} for #{parent.id}: {prop}"[:300])
            if use_llm:
                self.store.log_event("llm", f"no proposal from the Researcher for #{parent.id}: {prop}"[:1000],
                                     parent.id)
            return None
        shas, keys = self.store.known_keys()
        sha = code_sha256(prop.code)
        genome_key = prop.genome.key() if prop.genome is not None else ""
        if sha in shas or (genome_key and genome_key in keys):
            return None
        cid = self.store.add_candidate(name=prop.name, origin="llm" if use_llm else "offline", code=prop.code,
                                       code_sha256=sha, parent_id=parent.id, round=slot.round_no,
                                       motivation=prop.motivation, genome_key=genome_key,
                                       reference_ids=list(prop.reference_ids))
        self.console.line(f"{candidate_label(cid, prop.name)} proposed ({prop.operator} of #{parent.id} "
                          f"{parent.name})")
        return self.store.candidate(cid)

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
