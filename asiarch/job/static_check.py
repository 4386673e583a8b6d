"""The allow-list lint of a candidate layer's source, read before any of it runs.

LLM-written code is untrusted. The OS sandbox (``asiarch.search.preflight``, the job's
container) is what contains it; this lint is not the boundary. But during training the
layer runs inside the trainer's own process, beside the loss it is scored on, so the lint
is what keeps it from reaching the interpreter and patching the trainer. It reads the
syntax tree (it never executes the source) and accepts only what a token-mixing layer
needs:

- imports of vetted modules only, and through them only vetted members
  (``asiarch.job.vetted_api``): ``from torch import os`` and ``torch.utils.collect_env``
  are refused; modules are never values (``t = torch``), and the vetted classes are
  called, subclassed or named in ``isinstance``, never passed around;
- no dunder attribute but ``__init__``/``__name__``/``__qualname__``/``__doc__`` on any
  object (``self`` included), no dunder bound by any means (assignment, capture pattern,
  ``except``/``import ... as``, parameter, class name), no dunder method but ``__init__`` and
  ``__repr__``, no override of the ``nn.Module`` methods the trainer calls (``train``,
  ``parameters``, ``state_dict``, ...);
- no state outside the instances: module-level and class-body values are immutable
  (constants, tuples, arithmetic, a few pure calls), no mutable default arguments, no
  ``global``/``nonlocal``, no decorator of the source's own on a module-level definition
  (the probes copy the instances; state elsewhere would outlive their copies);
- private names (``_x``) only on the layer itself (``self._step``), attribute stores only
  on the layer itself (``self.x = ...``, ``ctx.x`` in an autograd Function);
- no builtins that run, import or inspect code (``eval``, ``exec``, ``compile``, ``open``,
  ``__import__``, ``globals``, ``vars``, ...), no ``getattr``/``setattr``/``delattr`` with a
  computed name, no frame, traceback, code-object or autograd-graph attributes, no
  ``type(obj)`` beyond ``type(obj).__name__``, no ``match`` class patterns with
  subpatterns (they read attributes by name), no ``str.format`` templates that read
  attributes or items, and no rebinding of the builtins these rules rely on or of the
  names imports bind.

Each finding names its rule, its line and what to do instead. Pure standard library, so
the head runs it in-process before anything of the candidate runs.
"""

from __future__ import annotations

import ast
import builtins
import string
import warnings
from dataclasses import dataclass

from asiarch.job.vetted_api import CLASS, FUNCTION, MODULE, RESTRICTED_CALLS, UNSAFE, VETTED
from asiarch.job.source import parse as parse_source

__all__ = ["ALLOWED_IMPORTS", "Finding", "static_check", "format_findings"]

# Modules a layer may import (each only with its vetted members).
ALLOWED_IMPORTS: tuple[str, ...] = tuple(m for m in VETTED if m != "__future__")

_IMPORTS_READABLE = ("torch (torch.nn, torch.nn.functional, torch.nn.init, torch.fft, torch.linalg, "
                     "torch.special, torch.autograd, torch.distributions, torch.utils.checkpoint), math, typing, "
                     "functools, itertools, collections, dataclasses, einops, fla.modules, fla.modules.l2norm, "
                     "fla.layers.utils, fla.models.utils, transformers.processing_utils and asiarch.job.ops")

# Builtins that execute or import code, read files or the terminal, expose namespaces or
# end the process. Refused as names, called or not (``f = eval`` is as bad as ``eval()``).
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
    "SystemExit": "a layer must not end the process; raise ValueError or RuntimeError instead",
    "KeyboardInterrupt": "a layer must not end the process; raise ValueError or RuntimeError instead",
    "help": "remove interactive helpers",
    "copyright": "remove interactive helpers", "credits": "remove interactive helpers",
    "license": "remove interactive helpers (license() reads files)",
    "memoryview": "a layer has no use for raw memory views; use tensors",
}

# Harmless enough that a local of the same name (``def forward(ctx, input)``) is
# accepted; the others are refused even when shadowed, since scopes are not tracked.
_SHADOWABLE_BUILTINS = frozenset({"input", "help", "exit", "quit", "breakpoint"})

# Builtins the rules below rely on meaning what they mean (``isinstance`` returns a bool,
# ``type(x)`` is the type): no scope may rebind them.
LINT_BUILTINS: frozenset[str] = frozenset({
    "type", "super", "isinstance", "issubclass", "getattr", "setattr", "delattr", "hasattr",
    "staticmethod", "classmethod", "property", "object",
})

# Modules (and module-like builtins) that reach the OS, files, processes, the network or
# the interpreter. Refused as names and as attributes of any object (``torch.os`` is the
# real ``os``, imported by torch itself; ``typing.operator`` has attrgetter).
FORBIDDEN_NAMES: frozenset[str] = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "socket", "shutil", "pathlib", "ctypes", "pickle", "marshal",
    "shelve", "builtins", "signal", "threading", "_thread", "multiprocessing", "importlib", "runpy", "io",
    "tempfile", "glob", "urllib", "http", "requests", "inspect", "gc", "operator", "linecache", "warnings",
    "traceback", "pdb", "pty", "resource", "mmap", "zipimport",
    "__builtins__", "__loader__", "__spec__", "__import__",
})

# Attribute names that do file I/O or load native code on whatever object has them
# (numpy arrays, storages, tensors).
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
    "load": "a layer must not read files or checkpoints",
    "save": "a layer must not write files or checkpoints",
    "dump": "a layer must not write files",
    "dumps": "a layer must not pickle objects",
    "load_library": "a layer must not load native libraries; use PyTorch operations",
    "cpp_extension": "a layer must not build or load native code; use PyTorch operations",
    "hub": "a layer must not download or load models",
    "serialization": "a layer must not read or write checkpoints",
    "get_type_hints": "evaluating annotation strings runs code; a layer has no use for it",
    "ForwardRef": "evaluating annotation strings runs code; a layer has no use for it",
}

# Methods that leave PyTorch for an object model the lint does not vet.
_OBJECT_API: dict[str, str] = {
    "numpy": "a layer computes in PyTorch: .numpy() leaves autograd and the device and hands out numpy "
             "arrays, whose methods write files; use tensor operations",
}

# Frame, generator, coroutine, traceback, cell and code-object internals (the way from any
# generator or exception to a module's globals and builtins without a single dunder), the
# autograd graph (the way from an input to the trainer's other parameters) and the class
# hierarchy (``type(self).mro()[1]`` is nn.Module itself).
FORBIDDEN_INTROSPECTION: frozenset[str] = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "gi_running", "gi_suspended",
    "cr_frame", "cr_code", "cr_await", "cr_origin", "cr_running", "cr_suspended",
    "ag_frame", "ag_code", "ag_await", "ag_running",
    "f_globals", "f_builtins", "f_locals", "f_back", "f_code", "f_trace", "f_lasti", "f_lineno",
    "f_trace_lines", "f_trace_opcodes", "tb_frame", "tb_next", "tb_lasti", "tb_lineno",
    "co_code", "co_consts", "co_names", "co_varnames", "co_filename", "co_freevars", "co_cellvars",
    "co_lines", "co_positions", "co_qualname", "co_name", "co_firstlineno", "co_linetable", "co_exceptiontable",
    "cell_contents", "grad_fn", "next_functions", "mro",
})

# Dunder names that, even as strings (dict keys, annotation strings, hasattr), only
# serve to reach the interpreter's internals.
DANGEROUS_DUNDER_STRINGS: tuple[str, ...] = (
    "__import__", "__builtins__", "__globals__", "__subclasses__", "__code__", "__closure__", "__func__",
    "__self__", "__wrapped__", "__defaults__", "__kwdefaults__", "__class__", "__base__", "__bases__", "__mro__",
    "__dict__", "__getattribute__", "__getattr__", "__setattr__", "__delattr__", "__reduce__", "__reduce_ex__",
    "__getstate__", "__setstate__", "__deepcopy__", "__init_subclass__", "__class_getitem__", "__set_name__",
    "__torch_function__", "__torch_dispatch__", "__loader__", "__spec__", "__traceback__", "__annotations__",
    "__objclass__",
)

# Dunder attributes a layer may read: ``super().__init__()``, ``type(self).__name__``.
ALLOWED_DUNDER_ATTRIBUTES: frozenset[str] = frozenset({"__init__", "__name__", "__qualname__", "__doc__"})
# Dunder names a module may read, and those it may assign at top level or in a class body.
ALLOWED_DUNDER_NAMES: frozenset[str] = frozenset({"__name__", "__doc__", "__all__", "__version__"})
ALLOWED_DUNDER_STORES: frozenset[str] = frozenset({"__all__", "__doc__", "__version__", "__constants__"})
# Dunder methods a layer may define (others change how the interpreter, copy, pickle or
# nn.Module treat the object: __getattr__, __call__, __deepcopy__, __reduce__, __del__, ...).
ALLOWED_DUNDER_DEFS: frozenset[str] = frozenset({"__init__", "__repr__"})

# nn.Module methods and attributes the trainer and the checks rely on to count, move,
# save, hook and switch modes: a layer may call them, not redefine them (a layer whose
# train() keeps it in eval mode, or whose parameters() hides weights, cheats the checks).
PROTECTED_MODULE_NAMES: frozenset[str] = frozenset({
    "parameters", "named_parameters", "buffers", "named_buffers", "children", "named_children", "modules",
    "named_modules", "state_dict", "load_state_dict", "train", "eval", "training", "requires_grad_",
    "zero_grad", "to", "to_empty", "cuda", "cpu", "xpu", "mps", "half", "float", "double", "bfloat16", "type",
    "apply", "share_memory", "compile", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook", "register_backward_hook",
    "register_buffer", "register_parameter", "register_module", "add_module", "get_submodule",
    "set_submodule", "get_parameter", "get_buffer", "_apply", "_call_impl", "_wrapped_call_impl",
    "_load_from_state_dict", "_save_to_state_dict", "_named_members", "_register_state_dict_hook",
    "_register_load_state_dict_pre_hook", "_get_name",
})

# getattr-family builtins: the attribute name must be a literal, and is then checked
# exactly as the attribute would be.
_ATTR_BUILTINS = ("getattr", "setattr", "delattr")
# Generic aliases whose subscripts may name classes outside an annotation (Tuple[torch.Tensor, ...]).
_GENERIC_BUILTINS = frozenset({"tuple", "list", "dict", "set", "frozenset", "type"})
_VETTED_DECORATOR_NAMES = frozenset({"property"})

# State outside the instances (rule "state"). A layer's state must live on its instances, where the probes copy it:
# a value kept in its file's globals, a class attribute or a default argument survives from one call to the next
# unseen, and a layer can replay an earlier call's outputs from it (a perturbation probe's second forward gets the
# first's) or count calls to turn to leaking later. At module level and in class bodies, values must be immutable:
# constants, names, attributes, tuples, arithmetic, and calls of these (their arguments immutable too).
_IMMUTABLE_CALLS = frozenset({
    "int", "float", "str", "bool", "bytes", "complex", "tuple", "frozenset", "range", "slice", "len", "min", "max",
    "abs", "round", "pow", "divmod", "repr", "hash", "isinstance", "issubclass", "object",
    "torch.device", "torch.finfo", "torch.iinfo", "typing.TypeVar", "typing.NewType", "typing.cast",
    "typing.NamedTuple", "collections.namedtuple", "dataclasses.field"})  # not functools.partial: .keywords is a dict
# Containers of constants only, at module level or in a class body, for the names that must be containers: read by
# asiarch from the source (ASIARCH_GENOME, with ast.literal_eval) or by Python and TorchScript (__all__,
# __constants__); code may not use them as values (that would make them state).
_CONSTANT_CONTAINERS = frozenset({"ASIARCH_GENOME", "__all__", "__constants__"})


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
            tree = parse_source(source)
    except SyntaxError as exc:
        return [Finding("syntax", exc.lineno or 0, f"syntax error: {exc.msg}. Fix the code so that it parses.")]
    except ValueError as exc:  # e.g. null bytes in the source
        return [Finding("syntax", 0, f"source cannot be parsed: {exc}.")]
    linter = _Linter(tree)
    linter.visit(tree)
    unique = {(f.line, f.rule, f.message): f for f in linter.findings}
    return sorted(unique.values(), key=lambda f: (f.line, f.rule))


# ----------------------------------------------------------------------------------
# helpers


# What binds a name, for the message of a refused dunder binding (keyed by the node's class name).
_BINDING_KINDS = {"MatchAs": "capture pattern", "MatchStar": "star pattern", "MatchMapping": "mapping pattern's rest",
                  "ExceptHandler": "'except ... as' name", "Import": "'import ... as' name",
                  "ImportFrom": "'from ... import ... as' name", "arg": "parameter", "ClassDef": "class name",
                  "FunctionDef": "function name", "AsyncFunctionDef": "function name"}


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not _is_dunder(name)


def _path_kind(path: str) -> str | None:
    """What the vetted dotted ``path`` is (MODULE, CLASS, ...), or None if it is not vetted."""
    if path in VETTED:
        return MODULE
    parent, _, name = path.rpartition(".")
    return VETTED.get(parent, {}).get(name)


def _unsafe_reason(path: str) -> str | None:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        reason = UNSAFE.get(".".join(parts[:i]))
        if reason:
            return reason
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


def _rebinds(scope: ast.AST, name: str) -> bool:
    """Whether anything inside ``scope`` (nested scopes included) binds ``name`` other than a parameter."""
    for node in ast.walk(scope):
        if node is scope:
            continue
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, (ast.Store, ast.Del)):
            return True
        if isinstance(node, ast.ExceptHandler) and node.name == name:
            return True
        if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name == name:
            return True
        if isinstance(node, ast.MatchMapping) and node.rest == name:
            return True
        if isinstance(node, (ast.Global, ast.Nonlocal)) and name in node.names:
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.alias) and (node.asname or node.name.partition(".")[0]) == name:
            return True
    return False


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    return {d.id for d in node.decorator_list if isinstance(d, ast.Name)}


def _positional(args: ast.arguments) -> list[ast.arg]:
    return [*args.posonlyargs, *args.args]


def _all_params(args: ast.arguments) -> set[str]:
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    return names


def _format_fields(template: str) -> list[str] | None:
    """Field names of a str.format template (nested ones in format specs too); None if malformed."""
    fields: list[str] = []
    try:
        for _, field, spec, _ in string.Formatter().parse(template):
            if field is not None:
                fields.append(field)
            if spec and "{" in spec:
                nested = _format_fields(spec)
                if nested is None:
                    return None
                fields.extend(nested)
    except ValueError:
        return None
    return fields


def _short(node: ast.AST, limit: int = 50) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------------
# the linter


class _Linter(ast.NodeVisitor):
    def __init__(self, tree: ast.Module) -> None:
        self.findings: list[Finding] = []
        self.bound = _bound_names(tree)  # names the source binds itself (a local `signal` is not the module)
        self.parent: dict[int, ast.AST] = {}
        self.aliases: dict[str, str] = {}  # local name -> vetted dotted path, from imports
        self.classes: dict[str, set[str]] = {}  # source class -> its plain (instance) methods
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parent[id(child)] = node
            if isinstance(node, ast.Import):
                for alias in node.names:
                    path = alias.name if alias.asname else alias.name.partition(".")[0]
                    if _path_kind(alias.name):
                        self.aliases[alias.asname or path] = path
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                for alias in node.names:
                    path = f"{node.module}.{alias.name}"
                    if node.module in VETTED and _path_kind(path):
                        self.aliases[alias.asname or alias.name] = path
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = {
                    f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and not _decorator_names(f) & {"staticmethod", "classmethod", "property"}
                    and not any(isinstance(d, ast.Attribute) and d.attr in ("setter", "getter", "deleter")
                                for d in f.decorator_list)}
        self.methods = set().union(*self.classes.values()) if self.classes else set()
        self.resolved: dict[int, tuple[str, str] | None] = {}
        self.consumed: set[int] = set()  # class references in a position that uses them, not passes them
        self.frames: list[dict[str, str]] = [{}]  # per scope: owned names ("self" or "ctx") -> role
        self.scopes: list[ast.AST] = [tree]

    def add(self, rule: str, node: ast.AST, message: str) -> None:
        self.findings.append(Finding(rule, getattr(node, "lineno", 0), message))

    def _consume(self, node: ast.AST | None, deep: bool = False) -> None:
        if node is None:
            return
        if deep:
            self.consumed.update(id(n) for n in ast.walk(node))
        elif isinstance(node, ast.Tuple):
            self.consumed.update(id(e) for e in node.elts)
        else:
            self.consumed.add(id(node))

    # -- resolution ---------------------------------------------------------------

    def _resolve(self, node: ast.AST) -> tuple[str, str] | None:
        """(dotted path, kind) of a vetted name reached through an import, else None."""
        key = id(node)
        if key not in self.resolved:
            result = None
            if isinstance(node, ast.Name) and node.id in self.aliases:
                path = self.aliases[node.id]
                result = (path, _path_kind(path))
            elif isinstance(node, ast.Attribute):
                base = self._resolve(node.value)
                if base and base[1] == MODULE:
                    kind = VETTED[base[0]].get(node.attr)
                    result = (f"{base[0]}.{node.attr}", kind) if kind else None
            self.resolved[key] = result
        return self.resolved[key]

    def _owned(self, name: str) -> str | None:
        return self.frames[-1].get(name)

    def _root(self, node: ast.AST) -> ast.AST:
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        return node

    # -- imports ------------------------------------------------------------------

    def _refuse_member(self, node: ast.AST, module: str, name: str, generic_rule: str = "api") -> None:
        full = f"{module}.{name}"
        reason = _unsafe_reason(full)
        if reason:
            self.add("unsafe-api", node, f"{full} is not allowed: it {reason}. A layer only computes on tensors; "
                                         "remove it.")
        elif module.partition(".")[0] == "torch" and name.startswith("set_"):
            self.add("unsafe-api", node, f"{full} is not allowed: it changes process-wide state the trainer and "
                                         "the checks depend on. Keep settings local to the layer.")
        elif name in FORBIDDEN_NAMES:
            self.add("name", node, f"{full} is not allowed: it is the {name!r} module, which {module} imports for "
                                   "itself; a layer must not reach the operating system, files, processes or the "
                                   "interpreter.")
        elif _is_private(name):
            self.add("private", node, f"{full} is a private internal of {module} and is not allowed; use the "
                                      "module's public API.")
        else:
            self.add(generic_rule, node, f"{full} is not among the vetted names of {module} that a layer may use. "
                                         f"Use PyTorch tensor operations or asiarch.job.ops (the vetted names are "
                                         "listed in asiarch/job/vetted_api.py).")

    def _check_module(self, node: ast.AST, module: str) -> bool:
        parts = module.split(".")
        if parts[0] not in VETTED:
            self.add("import", node, f"import of {module!r} is not allowed; a layer may import only "
                                     f"{_IMPORTS_READABLE}. Remove the import and use PyTorch operations instead.")
            return False
        for i in range(1, len(parts)):
            parent, name = ".".join(parts[:i]), parts[i]
            if VETTED[parent].get(name) != MODULE:
                self._refuse_member(node, parent, name, generic_rule="import")
                return False
        return True

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
            self._check_binding(node, alias.asname or alias.name.partition(".")[0])

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
            elif alias.name not in VETTED[module]:
                self._refuse_member(node, module, alias.name)
            self._check_binding(node, alias.asname or alias.name)

    # -- scopes and definitions -----------------------------------------------------

    def _check_binding(self, node: ast.AST, name: str) -> None:
        # every way of binding a name, not only assignment: a capture pattern, ``except ... as``, ``import ... as``,
        # a parameter or a class name bound in a class body sets a class attribute as ``__x__ = ...`` would
        # (``case __match_args__:`` let a class pattern read any attribute by a name the lint never saw whole)
        if _is_dunder(name) and not isinstance(node, ast.Name) and not (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and name in ALLOWED_DUNDER_DEFS):
            self.add("dunder", node, f"binding {name} (as a {_BINDING_KINDS.get(type(node).__name__, 'name')}) is not "
                                     "allowed: dunders change how the interpreter treats the module or class. "
                                     "Choose a plain name.")
        if name in LINT_BUILTINS or name in _GENERIC_BUILTINS:
            self.add("rebind", node, f"rebinding the builtin {name!r} is not allowed: the lint's rules rely on it "
                                     "meaning what it means. Choose another name.")
        elif name in self.aliases and not isinstance(node, (ast.Import, ast.ImportFrom)):
            self.add("rebind", node, f"rebinding {name!r}, which an import binds to {self.aliases[name]}, is not "
                                     "allowed: the lint reads the name as the import. Choose another name.")

    def _method_frame(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str] | None:
        """The owned names of a method defined directly in a class body, or None if it is not one."""
        parent = self.parent.get(id(node))
        if not isinstance(parent, ast.ClassDef) or node not in parent.body:
            return None
        params = _positional(node.args)
        if not params:
            return None
        first = params[0].arg
        decorators = _decorator_names(node)
        has_default = len(node.args.defaults) >= len(params)
        if first == "ctx" and "staticmethod" in decorators and not _rebinds(node, "ctx"):
            return {"ctx": "ctx"}  # torch.autograd.Function.forward(ctx, ...)
        if first != "self" or has_default or decorators & {"staticmethod", "classmethod"} or _rebinds(node, "self"):
            return None
        for d in node.decorator_list:  # a decorator of the source's own could call the method on any object
            target = d.func if isinstance(d, ast.Call) else d
            vetted = self._resolve(target) is not None
            accessor = isinstance(target, ast.Attribute) and target.attr in ("setter", "getter", "deleter")
            if not (vetted or accessor or (isinstance(target, ast.Name) and target.id in _VETTED_DECORATOR_NAMES)):
                return None
        return {"self": "self"}

    def _enter_function(self, node: ast.AST, args: ast.arguments) -> None:
        frame = self._method_frame(node) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        if frame is None:  # a closure keeps the owned names of its scope unless it binds them anew
            params = _all_params(args)
            frame = {k: v for k, v in self.frames[-1].items() if k not in params and not _rebinds(node, k)}
        self.frames.append(frame)
        self.scopes.append(node)

    def _leave(self) -> None:
        self.frames.pop()
        self.scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        in_class = isinstance(self.scopes[-1], ast.ClassDef)
        if _is_dunder(node.name) and node.name not in ALLOWED_DUNDER_DEFS:
            self.add("definition", node, f"defining {node.name} is not allowed: it changes how Python, copy, pickle "
                                         f"or nn.Module treat the object. A layer may define only "
                                         f"{' and '.join(sorted(ALLOWED_DUNDER_DEFS))}; use forward() for the "
                                         "computation.")
        elif in_class and node.name in PROTECTED_MODULE_NAMES:
            self.add("definition", node, f"overriding {node.name}() is not allowed: the trainer and the checks rely "
                                         "on nn.Module's own. Give the method another name.")
        self._check_binding(node, node.name)
        self._check_defaults(node, node.args)
        self._check_decorators(node)
        for d in node.decorator_list:
            self._consume(d.func if isinstance(d, ast.Call) else d)
        self._consume(node.returns, deep=True)
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)
        if node.returns:
            self.visit(node.returns)
        self._enter_function(node, node.args)
        for stmt in node.body:
            self.visit(stmt)
        self._leave()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _check_defaults(self, node: ast.AST, args: ast.arguments) -> None:
        for d in (*args.defaults, *(k for k in args.kw_defaults if k is not None)):
            if not self._immutable(d):
                self.add("state", d, f"the default {_short(d)} is made once and shared by every call that omits the "
                                     "argument: make it None (or a constant) and build the value inside.")

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._check_defaults(node, node.args)
        self.visit(node.args)
        self._enter_function(node, node.args)
        self.visit(node.body)
        self._leave()

    def visit_arguments(self, node: ast.arguments) -> None:
        # defaults run in the enclosing scope; annotations name classes without using them
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self._check_binding(node, node.arg)
        self._consume(node.annotation, deep=True)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._check_binding(node, node.name)
        self._check_decorators(node)
        for kw in node.keywords:
            self.add("definition", node, f"class keyword {kw.arg or '**'}= is not allowed: metaclasses and class "
                                         "hooks change how classes are built. Subclass nn.Module plainly.")
        for base in node.bases:
            self._consume(base)
            if isinstance(base, ast.Name) and base.id == "type":
                self.add("definition", base, "subclassing type (a metaclass) is not allowed; subclass nn.Module.")
        for d in node.decorator_list:
            self._consume(d.func if isinstance(d, ast.Call) else d)
        for child in (*node.decorator_list, *node.bases, *node.keywords):
            self.visit(child)
        frame = {k: v for k, v in self.frames[-1].items() if not _rebinds(node, k)}
        self.frames.append(frame)
        self.scopes.append(node)
        for stmt in node.body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id in PROTECTED_MODULE_NAMES:
                        self.add("definition", t, f"assigning {t.id} in a class body overrides nn.Module's own, "
                                                  "which the trainer and the checks rely on; use another name.")
            self.visit(stmt)
        self._leave()

    def _visit_comprehension(self, node: ast.AST) -> None:
        frame = {k: v for k, v in self.frames[-1].items() if not _rebinds(node, k)}
        self.frames.append(frame)
        self.scopes.append(node)
        self.generic_visit(node)
        self._leave()

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        for name in node.names:
            if hasattr(builtins, name):
                self.add("rebind", node, f"'{type(node).__name__.lower()} {name}' rebinds a builtin and is not "
                                         "allowed; choose another name.")
        self.add("state", node, f"'{type(node).__name__.lower()} {', '.join(node.names)}' keeps state outside the "
                                "instances (a global or a closure's variable, shared by every instance and "
                                "outliving the probes' copies): keep it on the instance (self.x).")

    visit_Nonlocal = visit_Global

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._consume(node.type)
        if node.name:
            self._check_binding(node, node.name)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._consume(node.annotation, deep=True)
        if node.value is not None:
            self._check_state(node, [node.target], node.value)
        self.generic_visit(node)

    # -- state outside the instances --------------------------------------------------

    def _outside_functions(self) -> bool:
        return isinstance(self.scopes[-1], (ast.Module, ast.ClassDef))

    def _immutable(self, node: ast.AST | None) -> bool:
        """Whether ``node`` evaluates to a value nothing can change later (see _IMMUTABLE_CALLS)."""
        if node is None or isinstance(node, (ast.Constant, ast.Name)):
            return True
        if isinstance(node, ast.Attribute):
            return self._immutable(node.value)
        if isinstance(node, ast.Tuple):
            return all(self._immutable(e) for e in node.elts)
        if isinstance(node, ast.BinOp):
            return self._immutable(node.left) and self._immutable(node.right)
        if isinstance(node, ast.UnaryOp):
            return self._immutable(node.operand)
        if isinstance(node, ast.BoolOp):
            return all(self._immutable(v) for v in node.values)
        if isinstance(node, ast.Compare):
            return self._immutable(node.left) and all(self._immutable(c) for c in node.comparators)
        if isinstance(node, ast.IfExp):
            return all(self._immutable(n) for n in (node.test, node.body, node.orelse))
        if isinstance(node, ast.Subscript):  # typing generics (Optional[int]), an item of a tuple
            return self._immutable(node.value) and self._immutable(node.slice)
        if isinstance(node, ast.Slice):
            return all(self._immutable(n) for n in (node.lower, node.upper, node.step))
        if isinstance(node, ast.Lambda):
            return all(self._immutable(d) for d in (*node.args.defaults, *node.args.kw_defaults))
        if isinstance(node, ast.JoinedStr):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            resolved = self._resolve(func)
            name = resolved[0] if resolved else (func.id if isinstance(func, ast.Name) and func.id not in self.bound
                                                 else None)
            if name is None or not (name in _IMMUTABLE_CALLS or name.startswith("math.")):
                return False
            freezer = name in ("tuple", "frozenset")
            args = [*node.args, *(k.value for k in node.keywords)]
            return all(self._immutable(a) or (freezer and self._constant_container(a)) for a in args)
        return False

    @staticmethod
    def _constant_container(node: ast.AST) -> bool:
        """A list, set, dict or tuple display of constants and tuples of constants (a list inside would be state)."""
        def frozen(n):
            return isinstance(n, ast.Constant) or (isinstance(n, ast.Tuple) and all(map(frozen, n.elts)))
        if isinstance(node, (ast.List, ast.Set, ast.Tuple)):
            return all(map(frozen, node.elts))
        if isinstance(node, ast.Dict):
            return all(k is not None and frozen(k) for k in node.keys) and all(map(frozen, node.values))
        return False

    def _check_state(self, node: ast.AST, targets: list[ast.AST], value: ast.AST) -> None:
        if not self._outside_functions() or self._immutable(value):
            return
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if names and all(n in _CONSTANT_CONTAINERS for n in names) and self._constant_container(value):
            return
        where = "in a class body" if isinstance(self.scopes[-1], ast.ClassDef) else "at module level"
        self.add("state", node, f"{_short(value)} {where} is a value that can change between calls "
                                "(the layer's file's globals and class attributes are shared by every instance "
                                "and outlive the probes' copies): keep state on the instance (self.x = ... in "
                                "__init__), or make the value a constant or a tuple.")

    def _check_decorators(self, node: ast.AST) -> None:
        """A decorator of the source's own, on a definition at module level or in a class body, runs once at import
        and can hand back a closure over a container: state no instance holds."""
        if not self._outside_functions():
            return
        for d in node.decorator_list:
            target = d.func if isinstance(d, ast.Call) else d
            vetted = self._resolve(target) is not None
            accessor = isinstance(target, ast.Attribute) and target.attr in ("setter", "getter", "deleter")
            known = isinstance(target, ast.Name) and target.id in _VETTED_DECORATOR_NAMES | {"staticmethod",
                                                                                             "classmethod"}
            if not (vetted or accessor or known):
                self.add("state", d, f"the decorator {_short(target)} is the source's own: at import it can wrap the "
                                     "function in a closure that keeps state no instance holds. Call the helper "
                                     "inside the function instead.")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._check_state(node, node.targets, node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_state(node, [node.target], node.value)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._check_state(node, [node.target], node.value)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self._check_state(node, [node.target], node.iter)  # `for cache in ([],):` binds a list
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if item.optional_vars is not None:
                self._check_state(node, [item.optional_vars], item.context_expr)
        self.generic_visit(node)

    visit_AsyncWith = visit_With

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        self._consume(node.cls)
        if node.kwd_attrs:
            self.add("match", node, f"a class pattern with keyword attributes ({', '.join(node.kwd_attrs)}=...) "
                                    "reads attributes past the lint; use isinstance() and plain attribute access.")
        elif node.patterns:
            self.add("match", node, f"a class pattern with positional patterns ({_short(node)}) reads the attributes "
                                    "its class's __match_args__ names, past the lint; use isinstance() and plain "
                                    "attribute access.")
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self._check_binding(node, node.name)
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def visit_TypeVar(self, node) -> None:  # Python 3.12's type parameters (class C[T]: ...), by name as well
        self._check_binding(node, node.name)
        self.generic_visit(node)

    visit_ParamSpec = visit_TypeVarTuple = visit_TypeVar

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self._check_binding(node, node.rest)
        self.generic_visit(node)

    # -- names, calls and attributes ------------------------------------------------

    def visit_Subscript(self, node: ast.Subscript) -> None:
        base = self._resolve(node.value)
        typing_base = base is not None and base[0].partition(".")[0] in ("typing", "transformers")
        generic = typing_base or (isinstance(node.value, ast.Name) and node.value.id in _GENERIC_BUILTINS)
        if generic and isinstance(node.ctx, ast.Load):
            self._consume(node.slice, deep=True)  # Tuple[torch.Tensor, ...] names classes, it does not use them
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        self._consume(func)
        name = func.id if isinstance(func, ast.Name) else None
        if name in _ATTR_BUILTINS:
            self._attr_builtin(node, name)
        elif name in ("isinstance", "issubclass") and len(node.args) > 1:
            self._consume(node.args[1])
        elif name == "type":
            self._type_call(node)
        elif name == "super" and (node.keywords or not all(isinstance(a, ast.Name) for a in node.args)):
            self.add("introspection", node, "super() takes no arguments or (ClassName, self); write super().")
        resolved = self._resolve(func)
        if resolved and resolved[0] in RESTRICTED_CALLS:
            allowed = RESTRICTED_CALLS[resolved[0]]
            for kw in node.keywords:
                if kw.arg not in allowed:
                    self.add("unsafe-api", node, f"{resolved[0]}({kw.arg or '**'}=...) is not allowed: it chooses "
                                                 f"code that compiles or runs outside the layer; use only "
                                                 f"{', '.join(sorted(allowed))}.")
        if resolved and resolved[0] == "typing.cast" and node.args:
            self._consume(node.args[0], deep=True)
        self.generic_visit(node)

    def _attr_builtin(self, node: ast.Call, name: str) -> None:
        attr = node.args[1] if len(node.args) > 1 else None
        if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
            self.add("getattr", node, f"{name}() with a computed attribute name is not allowed; write the attribute "
                                      "out (obj.name) or keep the objects in an nn.ModuleDict / dict and index it.")
            return
        ctx = ast.Load() if name == "getattr" else ast.Store()
        receiver = node.args[0]
        base = self._resolve(receiver)
        if base and base[1] == MODULE:
            if attr.value not in VETTED[base[0]]:
                self._refuse_member(node, base[0], attr.value)
        else:
            self._object_attribute(node, receiver, attr.value, ctx, via=name)
        if name != "getattr":
            self._check_store(node, receiver, attr.value)

    def _type_call(self, node: ast.Call) -> None:
        if len(node.args) != 1 or node.keywords:
            self.add("introspection", node, "type() with three arguments builds classes at run time and is not "
                                            "allowed; write a class statement.")
            return
        parent = self.parent.get(id(node))
        if isinstance(parent, ast.Attribute) and parent.attr in ("__name__", "__qualname__"):
            return
        if isinstance(parent, ast.Compare):
            return
        self.add("introspection", node, "type(obj) may only be used as type(obj).__name__ (or compared); use "
                                        "isinstance(obj, cls) to test a type.")

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in _CONSTANT_CONTAINERS and isinstance(node.ctx, ast.Load):
            self.add("state", node, f"{name} is read from the source by asiarch or Python, not by the layer: as a "
                                    "value it would be a container every instance shares. Use a constant of your "
                                    "own.")
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            if _is_dunder(name) and name not in ALLOWED_DUNDER_STORES:
                self.add("dunder", node, f"assigning {name} is not allowed: it changes how the interpreter treats the "
                                         f"module or class. Only {', '.join(sorted(ALLOWED_DUNDER_STORES))} may be "
                                         "assigned.")
            self._check_binding(node, name)
            return
        if name in FORBIDDEN_BUILTINS and not (name in _SHADOWABLE_BUILTINS and name in self.bound):
            self.add("builtin", node, f"{name!r} is not allowed: {FORBIDDEN_BUILTINS[name]}.")
        elif name in FORBIDDEN_NAMES and not (name in self.bound and not name.startswith("__")):
            self.add("name", node, f"{name!r} is not allowed: a layer must not reach the operating system, files, "
                                   "processes or the interpreter. Remove it; take settings as constructor arguments.")
        elif name in _ATTR_BUILTINS and id(node) not in self.consumed:
            self.add("getattr", node, f"{name!r} may only be called directly with a literal attribute name.")
        elif _is_dunder(name) and name not in ALLOWED_DUNDER_NAMES:
            self.add("dunder", node, f"the name {name!r} reaches interpreter internals and is not allowed.")
        scope = self.scopes[-1]
        if isinstance(scope, ast.ClassDef) and name in self.classes.get(scope.name, ()):
            self.add("unbound-method", node, f"using the method {name} as a value in the class body lets it be "
                                             "called on any object; call it on an instance (self."
                                             f"{name}(...)).")
        self._check_value_use(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        base = self._resolve(node.value)
        if base and base[1] == MODULE:
            if attr not in VETTED[base[0]]:
                self._refuse_member(node, base[0], attr)
            elif isinstance(node.ctx, (ast.Store, ast.Del)):
                self.add("store", node, f"assigning {base[0]}.{attr} patches a module for the whole process (the "
                                        "trainer included) and is not allowed; define your own function instead.")
        elif base and base[1] == CLASS and isinstance(node.ctx, ast.Load) and attr not in ALLOWED_DUNDER_ATTRIBUTES \
                and not (isinstance(self.parent.get(id(node)), ast.Call) and self.parent[id(node)].func is node):
            self.add("state", node, f"{base[0]}.{attr} is read off a vetted class without calling it: a class's data "
                                    "(a dict such as a distribution's arg_constraints) is shared by the whole process, "
                                    "a store no instance holds. Call its methods, or keep your own values on self.")
        else:
            self._object_attribute(node, node.value, attr, node.ctx)
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                self._check_store(node, node.value, attr)
        self._check_value_use(node)
        self.generic_visit(node)

    def _object_attribute(self, node: ast.AST, receiver: ast.AST, attr: str, ctx: ast.expr_context,
                          via: str | None = None) -> None:
        """The rules for ``receiver.attr`` on any object (not a vetted module)."""
        shown = f"{via}({_short(receiver)}, {attr!r})" if via else f"{_short(receiver)}.{attr}"
        store = isinstance(ctx, (ast.Store, ast.Del))
        if _is_dunder(attr):
            if store or attr not in ALLOWED_DUNDER_ATTRIBUTES:
                hint = " Use type(self).__name__ for a class name." if attr == "__class__" else ""
                self.add("dunder", node, f"attribute {attr!r} ({shown}) reaches interpreter internals and is not "
                                         f"allowed; only reading {', '.join(sorted(ALLOWED_DUNDER_ATTRIBUTES))} is."
                                         f"{hint}")
        elif attr in FORBIDDEN_ATTRIBUTES:
            self.add("file-io", node, f".{attr} is not allowed: {FORBIDDEN_ATTRIBUTES[attr]}.")
        elif attr in _OBJECT_API:
            self.add("api", node, f".{attr} is not allowed: {_OBJECT_API[attr]}.")
        elif attr in FORBIDDEN_INTROSPECTION:
            self.add("introspection", node, f"attribute {attr!r} ({shown}) reaches frames, code objects, the "
                                            "autograd graph or the class hierarchy and is not allowed; a layer "
                                            "computes on its inputs and its own parameters.")
        elif attr in FORBIDDEN_NAMES:
            self.add("name", node, f".{attr} is not allowed: it is the {attr!r} module (or interpreter internals); "
                                   "a layer must not reach the operating system, files or processes.")
        elif _is_private(attr) and not self._may_use_private(receiver, store):
            self.add("private", node, f"{shown} is a private name of an object the layer does not own and is not "
                                      "allowed; a layer may use private names only on itself (self._step, inside "
                                      "its methods).")
        elif isinstance(receiver, ast.Name) and receiver.id in self.classes and attr in self.methods:
            self.add("unbound-method", node, f"{receiver.id}.{attr} takes the method off the class, where it can "
                                             f"be called on any object; call it on an instance (self.{attr}(...)).")
        elif attr in ("format", "format_map"):
            self._check_format(node, receiver, attr)

    def _may_use_private(self, receiver: ast.AST, store: bool) -> bool:
        if isinstance(receiver, ast.Name) and (self._owned(receiver.id) == "self" or receiver.id in self.classes):
            return True
        root = self._root(receiver)  # self.A_log._no_weight_decay = True marks the layer's own parameter
        return store and isinstance(root, ast.Name) and self._owned(root.id) == "self"

    def _check_store(self, node: ast.AST, receiver: ast.AST, attr: str) -> None:
        root = self._root(receiver)
        owner = self._owned(root.id) if isinstance(root, ast.Name) else None
        if owner is None and isinstance(root, ast.Name) and root.id in self.classes and not self._outside_functions():
            self.add("state", node, f"setting {_short(receiver)}.{attr} inside a function changes a class attribute, "
                                    "state every instance shares and the probes' copies do not separate: keep it on "
                                    "the instance (self.name = ...).")
        elif owner is None and not (isinstance(root, ast.Name) and root.id in self.classes):
            self.add("store", node, f"setting {_short(receiver)}.{attr} changes an object the layer does not own "
                                    "and is not allowed; a layer may set attributes only on itself (self.name = "
                                    "..., inside its methods) or on ctx in an autograd Function.")
        elif owner == "self" and receiver is root and attr in PROTECTED_MODULE_NAMES:
            self.add("store", node, f"setting self.{attr} replaces nn.Module's own, which the trainer and the checks "
                                    "rely on; use another name.")

    def _check_format(self, node: ast.AST, receiver: ast.AST, attr: str) -> None:
        if not (isinstance(receiver, ast.Constant) and isinstance(receiver.value, str)):
            self.add("format", node, f".{attr}() on a computed string is not allowed: its fields could read any "
                                     "attribute. Use an f-string, or .format() on a literal template.")
            return
        fields = _format_fields(receiver.value)
        if fields is None:
            self.add("format", node, "the format template is malformed; fix its braces.")
            return
        for field in fields:
            if "." in field or "[" in field:
                self.add("format", node, f"the format field {{{field}}} reads attributes or items of its argument "
                                         "past the lint; format plain values ('{}'.format(x.shape)) or use an "
                                         "f-string.")

    def _check_value_use(self, node: ast.Name | ast.Attribute) -> None:
        if not isinstance(node.ctx, ast.Load):
            return
        resolved = self._resolve(node)
        if not resolved:
            return
        path, kind = resolved
        parent = self.parent.get(id(node))
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return  # F.silu, nn.Module.__init__: reaching a member is what modules and classes are for
        if kind == MODULE:
            hint = ""
            if isinstance(parent, ast.Call) and parent.func is node:
                hint = f" It is a module, not a function: import the function (from {path} import " \
                       f"{path.rpartition('.')[2]})."
            self.add("value", node, f"the module {path} may only be used to reach its members ({path}.name), "
                                    f"never as a value: a module object reaches everything it imports.{hint}")
        elif kind == CLASS and id(node) not in self.consumed:
            self.add("value", node, f"the class {path} may be called, subclassed or named in isinstance/except, "
                                    "not passed around as a value (a class object lets a layer patch it for the "
                                    "whole process). Pass an instance, or a string naming the choice.")
        elif kind == FUNCTION and path in RESTRICTED_CALLS and id(node) not in self.consumed:
            self.add("value", node, f"{path} may only be called directly (or used as a decorator), so that its "
                                    "arguments can be checked.")

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str):
            return
        hit = next((d for d in DANGEROUS_DUNDER_STRINGS if d in node.value), None)
        if hit:
            self.add("dunder", node, f"the string {hit!r} only serves to reach interpreter internals; remove it.")
