# Frozen copy of asiarch/job/static_check.py as it was before issue 13 (the deny-list of
# spellings), kept ONLY so that tests/job/test_static_check.py can show that every layer of
# the lint red-team corpus got past the old defence. Never import it from asiarch.
"""Static safety check of a candidate layer's source, before any of it runs.

LLM-written code is untrusted. This pass reads the source's syntax tree (it never
executes it) and refuses what a token-mixing layer has no business doing: importing
outside an allow-list, touching the file system, the process or the network, reaching
the interpreter's internals through dunder attributes, or building names at run time
(``eval``, ``getattr`` with a computed name) to get past the other rules.

It is a first line of defence, not a sandbox: the pre-flight child process
(``asiarch.search.preflight``) adds resource limits, a scrubbed environment and a timeout.

Pure standard library, so the head can run it in-process before executing anything.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass

__all__ = ["ALLOWED_IMPORTS", "Finding", "static_check", "format_findings"]

# Modules a layer may import; each entry also allows its submodules, except where
# FORBIDDEN_QUALNAMES says otherwise (torch.hub, torch.utils.cpp_extension, ...).
ALLOWED_IMPORTS: tuple[str, ...] = (
    "__future__",
    "torch",
    "math",
    "numbers",
    "typing",
    "typing_extensions",
    "functools",
    "itertools",
    "dataclasses",
    "collections",
    "warnings",
    "einops",
    "fla",
    "transformers.processing_utils",
    "asiarch.job.ops",
    "asiarch.job.compat",
)

# Dotted names (after resolving import aliases) that reach files, native code, the
# network or other processes; a name is refused when it equals one of these or lies
# below it.
FORBIDDEN_QUALNAMES: tuple[str, ...] = (
    "torch.load",
    "torch.save",
    "torch.hub",
    "torch.from_file",
    "torch.serialization",
    "torch.package",
    "torch.library",
    "torch.ops.load_library",
    "torch.classes.load_library",
    "torch.utils.cpp_extension",
    "torch.utils.data",
    "torch.utils.tensorboard",
    "torch.jit.load",
    "torch.jit.save",
    "torch.multiprocessing",
    "torch.distributed",
    "typing.get_type_hints",
    "typing.ForwardRef",
    "typing_extensions.get_type_hints",
    "typing_extensions.ForwardRef",
)

_UNSAFE_WHY = ("is among the APIs that read or write files, load native code, evaluate strings as code or "
               "reach other processes")

# Builtins that execute or import code, read files or the terminal, or expose
# namespaces. Refused as names, called or not (``f = eval`` is as bad as ``eval()``).
FORBIDDEN_BUILTINS: dict[str, str] = {
    "open": "a layer must not read or write files; pass what it needs as constructor arguments",
    "exec": "a layer must not execute code built at run time; write the code out",
    "eval": "a layer must not evaluate code built at run time; write the expression out",
    "compile": "a layer must not compile code at run time (torch.compile is fine)",
    "__import__": "import modules with an import statement from the allow-list",
    "input": "a layer runs unattended; it must not read the terminal",
    "breakpoint": "remove debugging hooks",
    "globals": "a layer must not inspect module namespaces; refer to names directly",
    "locals": "a layer must not inspect namespaces; refer to names directly",
    "vars": "a layer must not inspect namespaces; refer to attributes directly",
    "exit": "a layer must not end the process; raise an exception instead",
    "quit": "a layer must not end the process; raise an exception instead",
    "help": "remove interactive helpers",
    "memoryview": "a layer has no use for raw memory views; use tensors",
}

# Harmless enough that a local of the same name (``def forward(ctx, input)``) is
# accepted; the others are refused even when shadowed, since scopes are not tracked.
_SHADOWABLE_BUILTINS = frozenset({"input", "help", "exit", "quit", "breakpoint"})

# Modules (and module-like builtins) that reach the OS, files, processes, the network
# or the interpreter. Refused as bare names and as attributes (``torch.os`` is the
# real ``os`` module, imported by torch itself).
FORBIDDEN_NAMES: frozenset[str] = frozenset({
    "os", "sys", "subprocess", "socket", "shutil", "pathlib", "ctypes", "pickle",
    "builtins", "marshal", "signal", "threading", "multiprocessing", "importlib",
    "io", "tempfile", "glob", "urllib", "http", "requests", "inspect", "gc",
    "__builtins__", "__loader__", "__spec__", "__import__",
})

# Attribute names that do file I/O or load native code on whatever object has them
# (numpy arrays from ``tensor.numpy()``, storages, tensors).
FORBIDDEN_ATTRIBUTES: dict[str, str] = {
    "tofile": "a layer must not write files",
    "fromfile": "a layer must not read files",
    "from_file": "a layer must not read files",
    "memmap": "a layer must not map files",
    "savetxt": "a layer must not write files",
    "loadtxt": "a layer must not read files",
    "genfromtxt": "a layer must not read files",
    "savez": "a layer must not write files",
    "savez_compressed": "a layer must not write files",
    "load_library": "a layer must not load native libraries; use PyTorch operations",
    "cpp_extension": "a layer must not build or load native code; use PyTorch operations",
    "hub": "a layer must not download or load models",
    "serialization": "a layer must not read or write checkpoints",
    "dump": "a layer must not write files",
    "get_type_hints": "evaluating annotation strings runs code; a layer has no use for it",
    "ForwardRef": "evaluating annotation strings runs code; a layer has no use for it",
}
# Attribute names reached from anything but ``self``: ``t = torch; t.load(...)`` hides
# the module from the qualified-name rule.
_LOAD_SAVE_ATTRIBUTES = frozenset({"load", "save"})

# Frame, generator, coroutine, traceback and code-object internals: the way from any
# generator or exception to a module's globals and builtins without a single dunder.
FORBIDDEN_INTROSPECTION: frozenset[str] = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "f_globals", "f_builtins", "f_locals", "f_back", "f_code", "f_trace", "tb_frame", "tb_next",
    "co_code", "co_consts", "co_names",
})

# Dunder names that, even as strings (dict keys, annotation strings, hasattr), only
# serve to reach the interpreter's internals.
DANGEROUS_DUNDER_STRINGS: tuple[str, ...] = (
    "__import__", "__builtins__", "__globals__", "__subclasses__", "__code__", "__closure__",
    "__getattribute__", "__reduce__", "__reduce_ex__", "__bases__", "__mro__", "__loader__", "__spec__",
    "__traceback__", "__dict__",
)

# Dunder attributes a layer may use: ``super().__init__()``, ``type(self).__name__``.
ALLOWED_DUNDER_ATTRIBUTES: frozenset[str] = frozenset({"__init__", "__name__", "__qualname__", "__doc__"})
# Dunder names a module may read or define at top level or in a class body.
ALLOWED_DUNDER_NAMES: frozenset[str] = frozenset({"__name__", "__all__", "__doc__", "__version__"})

# getattr-family builtins: the attribute name must be a literal, and not a dunder.
_ATTR_BUILTINS = ("getattr", "setattr", "delattr")

# "{0.__class__}".format(x) reads attributes too; refuse format fields that reach dunders.
_FORMAT_DUNDER = re.compile(r"\{[^{}]*(\.|\[)__\w*")


@dataclass(frozen=True)
class Finding:
    """One refused construct: the rule it broke, its line, and what to do instead."""

    rule: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: [{self.rule}] {self.message}"


def format_findings(findings: list[Finding], limit: int = 5) -> str:
    """The first ``limit`` findings as one paragraph, for a failure reason."""
    shown = "; ".join(str(f) for f in findings[:limit])
    more = len(findings) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


def static_check(source: str) -> list[Finding]:
    """Return every refused construct in ``source``, in line order; empty means accepted."""
    try:
        with warnings.catch_warnings():  # invalid escapes etc. are the candidate's business, not ours
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except SyntaxError as exc:
        return [Finding("syntax", exc.lineno or 0, f"syntax error: {exc.msg}. Fix the code so that it parses.")]
    except ValueError as exc:  # e.g. null bytes in the source
        return [Finding("syntax", 0, f"source cannot be parsed: {exc}.")]
    visitor = _Visitor(_bound_names(tree))
    visitor.visit(tree)
    return sorted(visitor.findings, key=lambda f: (f.line, f.rule))


def _import_allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED_IMPORTS)


def _forbidden_qualname(name: str) -> str | None:
    for q in FORBIDDEN_QUALNAMES:
        if name == q or name.startswith(q + "."):
            return q
    return None


def _bound_names(tree: ast.AST) -> set[str]:
    """Names the source binds by assignment, as arguments, or by def/class/for/with/except."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


class _Visitor(ast.NodeVisitor):
    def __init__(self, bound: set[str]) -> None:
        self.bound = bound  # names the source assigns itself (a local `signal` is not the module)
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name -> dotted module path, from imports
        self._call_funcs: set[int] = set()  # ids of Name nodes that are the callee of a Call

    def add(self, rule: str, node: ast.AST, message: str) -> None:
        self.findings.append(Finding(rule, getattr(node, "lineno", 0), message))

    # -- imports --------------------------------------------------------------

    def _check_module(self, node: ast.AST, module: str) -> bool:
        if not _import_allowed(module):
            allowed = ", ".join(a for a in ALLOWED_IMPORTS if a != "__future__")
            self.add("import", node, f"import of {module!r} is not allowed; a layer may import only {allowed}. "
                                     "Remove the import and use PyTorch operations instead.")
            return False
        q = _forbidden_qualname(module)
        if q:
            self.add("unsafe-api", node, f"import of {module!r} is not allowed: {q} {_UNSAFE_WHY}. "
                                         "A layer only computes on tensors; remove it.")
            return False
        return True

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._check_module(node, alias.name):
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    self.aliases[root] = root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.add("import", node, "relative imports are not allowed: a candidate is a single file. "
                                     "Define what you need in the file or import it from the allow-list.")
            return
        module = node.module or ""
        if not self._check_module(node, module):
            return
        for alias in node.names:
            if alias.name == "*":
                self.add("import", node, f"'from {module} import *' is not allowed; import the names you use.")
                continue
            full = f"{module}.{alias.name}"
            q = _forbidden_qualname(full)
            if q:
                self.add("unsafe-api", node, f"importing {full!r} is not allowed: {q} {_UNSAFE_WHY}. "
                                             "A layer only computes on tensors; remove it.")
                continue
            self.aliases[alias.asname or alias.name] = full

    # -- names and calls ------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in _ATTR_BUILTINS:
            self._call_funcs.add(id(func))
            attr = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
                self.add("getattr", node, f"{func.id}() with a computed attribute name is not allowed; "
                                          f"write the attribute out (obj.name) or keep the objects in an "
                                          "nn.ModuleDict / dict and index it.")
            elif _is_dunder(attr.value) or attr.value in FORBIDDEN_NAMES:
                self.add("getattr", node, f"{func.id}(..., {attr.value!r}) reaches interpreter internals; "
                                          "a layer must only use its own attributes.")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in FORBIDDEN_BUILTINS and not (name in _SHADOWABLE_BUILTINS and name in self.bound):
            self.add("builtin", node, f"{name!r} is not allowed: {FORBIDDEN_BUILTINS[name]}.")
        elif name in FORBIDDEN_NAMES and not (name in self.bound and not name.startswith("__")):
            self.add("name", node, f"{name!r} is not allowed: a layer must not reach the operating system, files, "
                                   "processes or the interpreter. Remove it; take settings as constructor arguments.")
        elif name in _ATTR_BUILTINS and id(node) not in self._call_funcs:
            self.add("getattr", node, f"{name!r} may only be called directly with a literal attribute name.")
        elif _is_dunder(name) and name not in ALLOWED_DUNDER_NAMES and isinstance(node.ctx, ast.Load):
            self.add("dunder", node, f"the name {name!r} reaches interpreter internals and is not allowed.")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        qual = self._qualname(node)
        q = _forbidden_qualname(qual) if qual else None
        if q:
            self.add("unsafe-api", node, f"{qual} is not allowed: {q} {_UNSAFE_WHY}. "
                                         "A layer only computes on tensors; build weights in __init__ instead.")
        elif attr in FORBIDDEN_ATTRIBUTES:
            self.add("file-io", node, f".{attr} is not allowed: {FORBIDDEN_ATTRIBUTES[attr]}.")
        elif attr in _LOAD_SAVE_ATTRIBUTES and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
            self.add("file-io", node, f".{attr} is not allowed: a layer must not read or write files or checkpoints.")
        elif attr in FORBIDDEN_INTROSPECTION:
            self.add("dunder", node, f"attribute {attr!r} reaches frames or code objects (interpreter internals) "
                                     "and is not allowed.")
        elif qual and attr.startswith("_") and not _is_dunder(attr):
            self.add("private", node, f"{qual} is a private internal of an imported module and is not allowed; "
                                      "use the module's public API.")
        elif attr in FORBIDDEN_NAMES and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
            self.add("name", node, f".{attr} is not allowed: it is the {attr!r} module (or interpreter internals); "
                                   "a layer must not reach the operating system, files or processes.")
        elif _is_dunder(attr) and attr not in ALLOWED_DUNDER_ATTRIBUTES:
            hint = " Use type(self).__name__ for a class name." if attr == "__class__" else ""
            self.add("dunder", node, f"attribute {attr!r} reaches interpreter internals and is not allowed; "
                                     f"only {', '.join(sorted(ALLOWED_DUNDER_ATTRIBUTES))} are.{hint}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str):
            return
        if _FORMAT_DUNDER.search(node.value):
            self.add("dunder", node, "a format string that reads dunder attributes ('{x.__...}') is not allowed.")
        else:
            hit = next((d for d in DANGEROUS_DUNDER_STRINGS if d in node.value), None)
            if hit:
                self.add("dunder", node, f"the string {hit!r} only serves to reach interpreter internals; remove it.")

    def _qualname(self, node: ast.Attribute) -> str | None:
        """``T.load`` -> ``torch.load`` when ``import torch as T``; None if not rooted at an import."""
        parts = [node.attr]
        cur = node.value
        while isinstance(cur, ast.Attribute):
            parts.append(cur.attr)
            cur = cur.value
        if not isinstance(cur, ast.Name) or cur.id not in self.aliases:
            return None
        return ".".join([self.aliases[cur.id], *reversed(parts)])
