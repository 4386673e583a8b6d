"""The three LLM agents: Researcher (with the novelty check), Engineer and Analyst.

Each agent renders its prompt from ``templates/prompts/`` (pure, golden-tested), asks
the :class:`~asiarch.propose.llm.client.LLMClient` for a structured answer, validates it and
returns a plain value. None of them touches the scheduler or runs candidate code: the
caller (the loop) passes a ``check`` function where running is needed (pre-flight).
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from asiarch.analysis import format as fmt
from asiarch.job.contract import DEFAULT_CLASS_NAME
from asiarch.job.static_check import format_findings, static_check
from asiarch.propose.llm.client import BudgetExceeded, LLMClient, LLMError, extract_code, messages
from asiarch.propose.llm.knowledge import KnowledgeEntry, tokenize
from asiarch.propose.offline import Proposal, ProposalError
from asiarch.dispatch.render import render_template
from asiarch.job.source import parse as parse_source

__all__ = [
    "LayerRules", "CandidateView", "candidate_view", "results_line", "code_diff",
    "Researcher", "Novelty", "NoveltyVerdict", "Engineer", "Repair", "RepairAttempt", "Analyst", "Analysis",
    "render_researcher_prompt", "render_engineer_prompt", "render_analyst_prompt", "render_novelty_prompt",
    "record_repairs", "repairs", "record_analysis", "DEFAULT_ALLOWED_IMPORTS",
]

#: What the prompts list as importable (a readable subset of asiarch.job.static_check.ALLOWED_IMPORTS).
DEFAULT_ALLOWED_IMPORTS = ("torch", "math", "einops", "typing", "functools", "asiarch.job.ops",
                           "fla.modules", "fla.modules.l2norm", "fla.layers.utils", "fla.models.utils",
                           "transformers.processing_utils")

_NAME_MAX = 40


@dataclass(frozen=True)
class LayerRules:
    """The contract a candidate must keep, as the prompts state it."""

    class_name: str = DEFAULT_CLASS_NAME
    allow_quadratic: bool = False
    allowed_imports: tuple[str, ...] = DEFAULT_ALLOWED_IMPORTS
    max_params: int = 0


@dataclass
class CandidateView:
    """A candidate as an agent sees it (built from the store by :func:`candidate_view`)."""

    id: int
    name: str
    results: str
    motivation: str = ""
    code: str = ""
    role: str = ""
    analyses: list[dict] = field(default_factory=list)  #: {author, summary, text}


def results_line(cand: Any) -> str:
    """'fitness 0.512, eval loss 0.3230, task score 0.914, 21,540 parameters' or the status."""
    if getattr(cand, "status", "done") != "done" or getattr(cand, "loss", None) is None:
        status = getattr(cand, "status", "not trained")
        reason = getattr(cand, "reason", "")
        return f"not trained ({status}{': ' + reason[:200] if reason else ''})"
    parts = [f"fitness {fmt.number(cand.fitness, '.3f')}", f"eval loss {fmt.number(cand.loss, '.4f')}"]
    if getattr(cand, "score", None) is not None:
        parts.append(f"task score {fmt.number(cand.score, '.3f')}")
    scores = getattr(cand, "scores", None) or {}
    if scores.get("tokens_per_s"):
        parts.append(f"{fmt.number(scores['tokens_per_s'], ',.0f')} tokens/s")
    if getattr(cand, "num_params", None):
        parts.append(f"{cand.num_params:,} parameters")
    return ", ".join(parts)


def candidate_view(cand: Any, *, role: str = "", analyses: Iterable[Mapping] = (), with_code: bool = True,
                   max_analyses: int = 2) -> CandidateView:
    """A view of a store Candidate (or anything with its fields) for a prompt."""
    shown = [{"author": a.get("author", ""), "summary": a.get("summary", ""), "text": a.get("text", "")}
             for a in list(analyses)[-max_analyses:]]
    return CandidateView(id=cand.id, name=cand.name, results=results_line(cand),
                         motivation=" ".join((cand.motivation or "").split()),
                         code=cand.code if with_code else "", role=role, analyses=shown)


def code_diff(before: str, after: str, before_name: str = "parent", after_name: str = "candidate") -> str:
    """A unified diff of two sources."""
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=before_name, tofile=after_name))


# ----------------------------------------------------------------------------- prompts (pure)


def render_researcher_prompt(parent: CandidateView, references: Sequence[CandidateView],
                             knowledge: Sequence[KnowledgeEntry], rules: LayerRules) -> list[dict]:
    return messages(render_template("prompts/researcher.system.j2", rules=rules),
                    render_template("prompts/researcher.user.j2", parent=parent, references=list(references),
                                    knowledge=list(knowledge), rules=rules))


def render_novelty_prompt(name: str, motivation: str, code: str, duplicates: Sequence[Mapping]) -> list[dict]:
    return [{"role": "user", "content": render_template("prompts/novelty.user.j2", layer_name=name, motivation=motivation,
                                                        code=code, duplicates=list(duplicates))}]


def render_engineer_prompt(*, name: str, motivation: str, code: str, error: str, context: str,
                           rules: LayerRules) -> list[dict]:
    return messages(render_template("prompts/engineer.system.j2", rules=rules),
                    render_template("prompts/engineer.user.j2", layer_name=name, motivation=motivation, code=code,
                                    error=error, context=context))


def render_analyst_prompt(cand: CandidateView, *, parent: CandidateView | None, siblings: Sequence[CandidateView],
                          baselines: Sequence[CandidateView], diff: str, judge: bool) -> list[dict]:
    return messages(render_template("prompts/analyst.system.j2", judge=judge),
                    render_template("prompts/analyst.user.j2", cand=cand, parent=parent, siblings=list(siblings),
                                    baselines=list(baselines), diff=diff))


# ----------------------------------------------------------------------------- validating code


def _code_of(obj: dict, text: str) -> str:
    code = obj.get("code")
    if not isinstance(code, str) or not code.strip():
        code = extract_code(text)
    if not code or not code.strip():
        raise ValueError('the answer has no code: give the complete file in "code" or in a ```python block')
    return code if code.endswith("\n") else code + "\n"


def _validate_code(code: str, rules: LayerRules) -> None:
    """Cheap checks worth a re-ask: it parses, defines the class, passes the static check."""
    try:
        tree = parse_source(code)
    except SyntaxError as exc:
        raise ValueError(f"the code does not parse: line {exc.lineno}: {exc.msg}") from None
    if not any(isinstance(n, ast.ClassDef) and n.name == rules.class_name for n in tree.body):
        raise ValueError(f"the code defines no top-level class {rules.class_name!r}; the layer class must be "
                         f"named {rules.class_name}")
    findings = static_check(code)
    if findings:
        raise ValueError("the code breaks the rules: " + format_findings(findings))


def _snake(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name or "").lower()).strip("_")
    return s[:_NAME_MAX].rstrip("_")


# ----------------------------------------------------------------------------- novelty


@dataclass
class NoveltyVerdict:
    novel: bool
    duplicates: list[dict]    #: {id, name, similarity, motivation, code}, most similar first
    reason: str = ""


_CODE_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\*\*|[-+*/@<>=]")


def _code_terms(code: str) -> list[str]:
    """Identifier/operator tokens and their bigrams, with comments and docstrings removed."""
    try:
        tree = parse_source(code)
        for node in ast.walk(tree):  # drop docstrings: they restate the motivation
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body[0].value.value = ""
        code = ast.unparse(tree)
    except (SyntaxError, ValueError):
        code = re.sub(r"#.*", "", code)
    toks = _CODE_TOKEN.findall(code)
    return toks + [a + " " + b for a, b in zip(toks, toks[1:])]


def _tfidf(docs: list[list[str]]) -> list[dict[str, float]]:
    n = len(docs)
    df: dict[str, int] = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    out = []
    for d in docs:
        tf: dict[str, float] = {}
        for t in d:
            tf[t] = tf.get(t, 0.0) + 1.0
        vec = {t: (1 + math.log(c)) * math.log(1 + n / df[t]) for t, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        out.append({t: v / norm for t, v in vec.items()})
    return out


def _cos(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(t, 0.0) for t, v in a.items())


class Novelty:
    """Is a proposal new? Lexical similarity against every candidate in the store: the
    TF-IDF cosine of code tokens (docstrings and comments dropped), or the mean of that and
    the cosine of the motivations' words when higher (the same idea told again). Above
    ``threshold`` the LLM judges the closest ones (agent 'novelty'); without a client the
    proposal is a duplicate. Identical code is always a duplicate."""

    def __init__(self, store, client: LLMClient | None = None, *, threshold: float = 0.85, top: int = 3):
        self.store = store
        self.client = client
        self.threshold = threshold
        self.top = top

    def similar(self, motivation: str, code: str) -> list[dict]:
        """Earlier candidates by similarity to (motivation, code), most similar first."""
        rows = self.store.candidate_texts()
        if not rows:
            return []
        codes = _tfidf([_code_terms(code)] + [_code_terms(r["code"]) for r in rows])
        mots = _tfidf([tokenize(motivation)] + [tokenize(r["motivation"]) for r in rows])
        out = []
        for i, r in enumerate(rows, 1):
            code_sim = _cos(codes[0], codes[i])
            sim = max(code_sim, 0.5 * (code_sim + _cos(mots[0], mots[i])))
            if r["code"] == code:
                sim = 1.0
            out.append({"id": r["id"], "name": r["name"], "similarity": min(1.0, sim),
                        "motivation": " ".join(r["motivation"].split())[:600], "code": r["code"]})
        out.sort(key=lambda d: -d["similarity"])
        return out

    def check(self, name: str, motivation: str, code: str) -> NoveltyVerdict:
        close = [d for d in self.similar(motivation, code)[: self.top] if d["similarity"] >= self.threshold]
        if not close:
            return NoveltyVerdict(True, [])
        if close[0]["similarity"] >= 0.999 or self.client is None:
            return NoveltyVerdict(False, close, "the same code" if close[0]["similarity"] >= 0.999
                                  else "lexically too similar")

        def validate(obj: dict, text: str) -> tuple[bool, str]:
            if not isinstance(obj.get("novel"), bool):
                raise ValueError('"novel" must be true or false')
            return obj["novel"], str(obj.get("reason", ""))

        try:
            novel, reason = self.client.ask_json("novelty", render_novelty_prompt(name, motivation, code, close),
                                                 schema=_NOVELTY_SCHEMA, validate=validate, schema_name="novelty")
        except LLMError as exc:  # no judgement: keep the lexical verdict
            return NoveltyVerdict(False, close, f"lexically too similar (the judge did not answer: {exc})"[:300])
        return NoveltyVerdict(novel, [] if novel else close, reason)


_NOVELTY_SCHEMA = {"type": "object", "properties": {"novel": {"type": "boolean"}, "reason": {"type": "string"}},
                   "required": ["novel", "reason"]}


# ----------------------------------------------------------------------------- researcher

_PROPOSAL_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "motivation": {"type": "string"}, "code": {"type": "string"}},
    "required": ["name", "motivation", "code"]}


class Researcher:
    """Proposes new layers with the LLM (agent 'researcher').

    With ``novelty``, a proposal too close to earlier ones is sent back with the
    near-duplicates shown, up to ``novelty_retries`` times.
    """

    def __init__(self, client: LLMClient, rules: LayerRules = LayerRules(), *, novelty: Novelty | None = None,
                 novelty_retries: int = 3):
        self.client = client
        self.rules = rules
        self.novelty = novelty
        self.novelty_retries = novelty_retries
        self.last_prompt: list[dict] = []

    def propose(self, parent: Any, references: Sequence[Any] = (), *,
                analyses: Mapping[int, Sequence[Mapping]] | None = None,
                knowledge: Sequence[KnowledgeEntry] = (), rules: LayerRules | None = None) -> Proposal:
        """A new layer derived from ``parent`` (a store Candidate), shown with ``references``,
        their ``analyses`` ({candidate id: [{author, summary, text}]}) and ``knowledge``.

        Returns a Proposal with operator 'llm' and ``genome`` None unless the code declares
        one. Raises ProposalError when no usable, novel proposal came (the LLM error inside).
        """
        rules = rules or self.rules
        analyses = analyses or {}
        pview = candidate_view(parent, role="parent", analyses=analyses.get(parent.id, ()))
        rviews = [candidate_view(r, role="reference", analyses=analyses.get(r.id, ())) for r in references]
        msgs = render_researcher_prompt(pview, rviews, knowledge, rules)
        self.last_prompt = msgs

        def validate(obj: dict, text: str) -> tuple[str, str, str]:
            name, motivation = obj.get("name"), obj.get("motivation")
            if not isinstance(name, str) or not _snake(name):
                raise ValueError('"name" must be a short snake_case name')
            if not isinstance(motivation, str) or not motivation.strip():
                raise ValueError('"motivation" must say what changes and why')
            code = _code_of(obj, text)
            _validate_code(code, rules)
            return _snake(name), " ".join(motivation.split()), code

        for round_ in range(self.novelty_retries + 1):
            try:
                name, motivation, code = self.client.ask_json("researcher", msgs, schema=_PROPOSAL_SCHEMA,
                                                              validate=validate, schema_name="proposal")
            except BudgetExceeded:
                raise
            except LLMError as exc:
                raise ProposalError(f"the Researcher gave no usable proposal: {exc}") from exc
            if self.novelty is None:
                break
            verdict = self.novelty.check(name, motivation, code)
            if verdict.novel:
                break
            if round_ == self.novelty_retries:
                near = ", ".join(f"#{d['id']} {d['name']}" for d in verdict.duplicates)
                raise ProposalError(f"the Researcher's proposals stayed too close to earlier layers ({near}) "
                                    f"after {self.novelty_retries} re-asks")
            msgs = msgs + [
                {"role": "assistant", "content": json.dumps({"name": name, "motivation": motivation, "code": code})},
                {"role": "user", "content": render_template("prompts/novelty_feedback.j2",
                                                            duplicates=verdict.duplicates, reason=verdict.reason)},
            ]
        return Proposal(name=name, motivation=motivation, code=code, genome=None,  # see the note below
                        operator="llm", parent_id=parent.id, reference_ids=[r.id for r in references])
        # genome None: an LLM edit of a rendered layer may keep its parent's ASIARCH_GENOME literal,
        # which then no longer describes the code; the loop stores genome_key '' for LLM proposals.


# ----------------------------------------------------------------------------- engineer


@dataclass
class RepairAttempt:
    n: int
    error: str        #: the failure this attempt answered
    code: str         #: the code it produced ('' when the LLM gave none)
    diff: str         #: unified diff from the code before it
    outcome: str      #: 'ok', 'still failing: ...', 'no answer: ...', 'unchecked'
    explanation: str = ""


@dataclass
class Repair:
    code: str
    diff: str                 #: from the original code to the repaired one
    explanation: str
    attempts: list[RepairAttempt]


_REPAIR_SCHEMA = {"type": "object", "properties": {"explanation": {"type": "string"}, "code": {"type": "string"}},
                  "required": ["explanation", "code"]}


class Engineer:
    """Repairs failing layers with the LLM (agent 'engineer'), keeping their idea."""

    def __init__(self, client: LLMClient, rules: LayerRules = LayerRules(), *, max_attempts: int = 3):
        self.client = client
        self.rules = rules
        self.max_attempts = max_attempts
        self.last_attempts: list[RepairAttempt] = []

    def repair(self, code: str, error: str, *, context: str = "", name: str = "layer", motivation: str = "",
               check: Callable[[str], str] | None = None) -> Repair | None:
        """A minimal repair of ``code`` for ``error`` (a pre-flight reason, or a job's
        traceback and log tail; ``context`` adds e.g. the Slurm state).

        With ``check`` (code -> '' when it passes, else the new failure), each repair is
        checked and a failing one goes back with its new error, up to ``max_attempts``
        LLM repairs in all; without it the first usable repair is returned unchecked.
        Returns None when no attempt gave working code; ``last_attempts`` keeps them all.
        """
        rules = self.rules
        msgs = render_engineer_prompt(name=name, motivation=motivation, code=code, error=error[-6000:],
                                      context=context[-3000:], rules=rules)
        attempts: list[RepairAttempt] = []
        self.last_attempts = attempts
        current, current_error = code, error

        def validate(obj: dict, text: str) -> tuple[str, str]:
            new = _code_of(obj, text)
            _validate_code(new, rules)
            if new.strip() == current.strip():
                raise ValueError("the code is unchanged; change what causes the error")
            return new, " ".join(str(obj.get("explanation", "")).split())

        for n in range(1, self.max_attempts + 1):
            try:
                new, explanation = self.client.ask_json("engineer", msgs, schema=_REPAIR_SCHEMA, validate=validate,
                                                        schema_name="repair")
            except BudgetExceeded:
                raise
            except LLMError as exc:
                attempts.append(RepairAttempt(n, current_error, "", "", f"no answer: {exc}"[:500]))
                return None
            diff = code_diff(current, new, "before", "after")
            if check is None:
                attempts.append(RepairAttempt(n, current_error, new, diff, "unchecked", explanation))
                return Repair(new, code_diff(code, new, "original", "repaired"), explanation, attempts)
            failure = check(new)
            if not failure:
                attempts.append(RepairAttempt(n, current_error, new, diff, "ok", explanation))
                return Repair(new, code_diff(code, new, "original", "repaired"), explanation, attempts)
            attempts.append(RepairAttempt(n, current_error, new, diff, f"still failing: {failure}"[:500], explanation))
            msgs = msgs + [
                {"role": "assistant", "content": json.dumps({"explanation": explanation, "code": new})},
                {"role": "user", "content": f"The repaired layer still fails:\n\n```\n{failure[-4000:]}\n```\n\n"
                                            "Repair it again (minimal change, same idea) and give the complete file."},
            ]
            current, current_error = new, failure
        return None


def record_repairs(store, candidate_id: int, attempts: Sequence[RepairAttempt], *, stage: str) -> None:
    """Keep every repair attempt (its error, diff and outcome) in the store's repairs table."""
    store.add_repairs(candidate_id, stage, [{"n": a.n, "error": a.error, "diff": a.diff, "outcome": a.outcome,
                                             "explanation": a.explanation} for a in attempts])


def repairs(store, candidate_id: int) -> list[dict]:
    """The repair attempts recorded for a candidate (none for a store without a repairs table)."""
    return store.repairs(candidate_id)


# ----------------------------------------------------------------------------- analyst


@dataclass
class Analysis:
    summary: str
    text: str
    judge_score: float | None
    lesson: KnowledgeEntry | None
    author: str


def _analysis_schema(judge: bool) -> dict:
    lesson = {"type": ["object", "null"], "properties": {k: {"type": "string"} for k in
                                                          ("title", "problem", "idea", "when", "how")}}
    props = {"summary": {"type": "string"}, "analysis": {"type": "string"}, "lesson": lesson}
    required = ["summary", "analysis", "lesson"]
    if judge:
        props["judge_score"] = {"type": "integer", "minimum": 1, "maximum": 10}
        required.append("judge_score")
    return {"type": "object", "properties": props, "required": required}


class Analyst:
    """Explains a trained candidate's result with the LLM (agent 'analyst')."""

    def __init__(self, client: LLMClient, *, judge: bool = False):
        self.client = client
        self.judge = judge

    def analyse(self, candidate: Any, *, parent: Any | None = None, siblings: Sequence[Any] = (),
                baselines: Sequence[Any] = (), diff: str | None = None) -> Analysis:
        """Analysis of ``candidate`` (a scored store Candidate; its figures are read from it)
        against its parent, siblings and the baselines, and the code diff to the parent.
        Raises LLMError when no usable analysis came."""
        if diff is None:
            diff = code_diff(parent.code, candidate.code, parent.name, candidate.name) if parent is not None else ""
        cv = candidate_view(candidate, with_code=parent is None)
        msgs = render_analyst_prompt(
            cv, parent=candidate_view(parent, with_code=False) if parent is not None else None,
            siblings=[candidate_view(s, with_code=False) for s in siblings],
            baselines=[candidate_view(b, with_code=False) for b in baselines], diff=diff[-8000:], judge=self.judge)
        judge = self.judge

        def validate(obj: dict, text: str) -> Analysis:
            summary, analysis = obj.get("summary"), obj.get("analysis")
            if not isinstance(summary, str) or not summary.strip():
                raise ValueError('"summary" must be a one-line string')
            if not isinstance(analysis, str) or not analysis.strip():
                raise ValueError('"analysis" must be text')
            score = None
            if judge:
                score = obj.get("judge_score")
                if isinstance(score, str) and score.strip().isdigit():
                    score = int(score)
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 10:
                    raise ValueError('"judge_score" must be an integer from 1 to 10')
                score = float(score)
            lesson = obj.get("lesson")
            entry = None
            if isinstance(lesson, dict) and str(lesson.get("title", "")).strip():
                entry = KnowledgeEntry(
                    key=f"learned:c{candidate.id}", title=str(lesson["title"]).strip()[:200],
                    problem=str(lesson.get("problem", "")), idea=str(lesson.get("idea", "")),
                    when=str(lesson.get("when", "")), how=str(lesson.get("how", "")),
                    source=f"asiarch analysis of #{candidate.id} {candidate.name}", tags=["learned"],
                    origin="learned", candidate_id=candidate.id)
            return Analysis(" ".join(summary.split())[:200], analysis.strip(), score, entry,
                            self.client.settings.model_for("analyst"))

        return self.client.ask_json("analyst", msgs, schema=_analysis_schema(self.judge), validate=validate,
                                    schema_name="analysis")


def record_analysis(store, candidate_id: int, analysis: Analysis) -> None:
    """Store the analysis (analyses table, author 'llm:MODEL') and its lesson as knowledge."""
    from asiarch.propose.llm.knowledge import add_entries

    store.add_analysis(candidate_id, f"llm:{analysis.author}", analysis.summary, analysis.text)
    if analysis.lesson is not None:
        add_entries(store, [analysis.lesson])
