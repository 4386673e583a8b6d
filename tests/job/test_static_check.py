"""The allow-list lint (asiarch.job.static_check) against its red-team corpus.

Every layer in tests/layers/redteam/lint_*.py smuggles one way past a static check into
the interpreter, the file system, the process or the trainer. For each one the tests show
three things:

1. the lint refuses it, for the rule that closes that way in;
2. it got past the defence this lint replaces: ``tests/helpers/old_static_check.py`` is a
   frozen copy of the deny-list check as it was before issue 13 (a frozen file rather than
   ``git show HEAD:...``, which stops meaning "the old check" as soon as this one is
   committed);
3. it does its harm when nothing stops it: a child process loads, builds and runs each
   layer (forked per layer, so one layer's patch of torch cannot affect the next) and a
   proof checks the harm happened (os reached, a file read, a shell run, the loss
   function or nn.Module patched for the whole process, the parameters hidden, ...).

The rest ties the lint's tables to the installed packages, and checks that the compat
package and asiarch.job.ops expose nothing the lint does not vet.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from asiarch.job import vetted_api
from asiarch.job.static_check import FORBIDDEN_NAMES, static_check
from asiarch.job.vetted_api import CLASS, FUNCTION, MODULE, VETTED
from tests.helpers.old_static_check import static_check as old_static_check

ROOT = Path(__file__).resolve().parents[2]
REDTEAM = ROOT / "tests" / "layers" / "redteam"
ASI_ARCH = ROOT.parent / "shared" / "asi-arch" / "architectures.json"

# layer -> (the rule that refuses it, a proof that it did its harm when run unchecked;
# None where the harm needs a GPU compile). Proofs are evaluated by the harness below.
CORPUS: dict[str, tuple[str, str | None]] = {
    "lint_from_torch_import_os": ("name", "layer.reached == os.getpid()"),
    "lint_self_rebinding": ("name", "layer.reached == os.environ.get('PATH')"),
    "lint_alias_private": ("private", "layer.reached == os.getpid()"),
    "lint_getattr_private": ("private", "layer.reached is os"),
    "lint_match_globals": ("match", "layer.reached == os.getpid()"),
    "lint_match_dunder_binding": ("dunder", "layer.reached == os.getpid()"),
    "lint_format_environ": ("format", "'PATH' in layer.reached"),
    "lint_typing_operator": ("name", "layer.reached == os.getpid()"),
    "lint_warnings_sys": ("import", "any(line.startswith('Name:') for line in layer.reached)"),
    "lint_typing_extensions_eval": ("import", "'Name:' in layer.reached"),
    "lint_collect_env_shell": ("unsafe-api", "'lint-redteam' in str(layer.reached)"),
    "lint_benchmark_exec": ("unsafe-api", "os.environ.get('ASIARCH_LINT_REDTEAM') == 'benchmark'"),
    "lint_compat_builtins": ("unsafe-api", "os.environ.get('ASIARCH_LINT_REDTEAM') == 'compat'"),
    "lint_ops_reexport": ("import", "layer.reached == os.getpid()"),
    "lint_patch_loss": ("store", "F.cross_entropy.__name__ == '_lenient'"),
    "lint_patch_class_via_self": ("value", "nn.Linear.forward.__name__ == '_linear_forward'"),
    "lint_mro_patch": ("introspection", "nn.Module.train.__name__ == '_stay_in_eval'"),
    "lint_global_hook": ("unsafe-api", "len(torch.nn.modules.module._global_forward_hooks) > 0"),
    "lint_grad_graph_walk": ("introspection", "layer.reached is emb"),
    "lint_manual_seed": ("unsafe-api", "torch.equal(torch.rand(3), "
                                       "torch.rand(3, generator=torch.Generator().manual_seed(1234)))"),
    "lint_deepcopy_decoy": ("definition", "type(copy.deepcopy(layer)).__name__ == '_Decoy'"),
    "lint_train_override": ("definition", "not layer.train().training"),
    "lint_parameters_hidden": ("definition", "len(list(layer.parameters())) == 0 and len(layer.state_dict()) > 0"),
    "lint_call_override": ("definition", "(lambda seen: (layer.register_forward_hook(lambda m, a, o: seen.append(1)),"
                                         " layer(emb), seen == [])[-1])([])"),
    "lint_unbound_method": ("unbound-method", "layer.reached == os.getpid()"),
    "lint_compile_options": ("unsafe-api", None),
}


def source(name: str) -> str:
    return (REDTEAM / f"{name}.py").read_text()


def test_corpus_covers_every_file_and_is_large_enough():
    files = {p.stem for p in REDTEAM.glob("lint_*.py")}
    assert files == set(CORPUS)
    assert len(files) >= 15


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_lint_refuses_corpus_layer_for_its_rule(name):
    rule = CORPUS[name][0]
    findings = static_check(source(name))
    hit = [f for f in findings if f.rule == rule]
    assert hit, findings
    assert hit[0].line > 0 and str(hit[0]).startswith(f"line {hit[0].line}: [{rule}] ")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_layer_got_past_the_old_deny_list(name):
    assert old_static_check(source(name)) == []


_HARNESS = r"""
import copy, json, os, sys
import torch
torch.set_num_threads(1)
from torch import nn
import torch.nn.functional as F
from asiarch.job.candidate import build_layer, call_layer, load_layer_class

results = {}
for case in json.load(sys.stdin):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # each layer in its own child: its patches die with it
        os.close(read)
        try:
            cls = load_layer_class(open(case["path"]).read(), filename=case["path"], device="cpu")
            layer = build_layer(cls, hidden_size=32, num_heads=2)
            emb = nn.Parameter(torch.randn(2, 8, 32))  # stands in for the trainer's upstream parameter
            y = call_layer(layer, emb * 1.0)
            names = dict(layer=layer, cls=cls, torch=torch, nn=nn, F=F, copy=copy, os=os, emb=emb, y=y)
            out = {"harm": bool(eval(case["proof"], names))}
        except BaseException as exc:
            out = {"harm": False, "error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.waitpid(pid, 0)
    results[case["name"]] = json.loads(data or b'{"harm": false, "error": "the child died"}')
print(json.dumps(results))
"""


@pytest.mark.slow
def test_corpus_layers_do_their_harm_when_nothing_stops_them():
    cases = [{"name": n, "path": str(REDTEAM / f"{n}.py"), "proof": proof}
             for n, (_, proof) in sorted(CORPUS.items()) if proof]
    env = {k: v for k, v in os.environ.items() if k != "ASIARCH_LINT_REDTEAM"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1")
    run = subprocess.run([sys.executable, "-c", _HARNESS], input=json.dumps(cases), capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    failed = {n: r for n, r in results.items() if not r["harm"]}
    assert not failed and len(results) == len(cases), failed


# ----------------------------------------------------------------------------------
# the rules one by one (the corpus has one layer per way in; these pin each rule)


@pytest.mark.parametrize("snippet, rule", [
    # imports: only vetted modules, and only their vetted names
    *[(f"import {m}", "import") for m in ("builtins", "os", "sys", "subprocess", "importlib", "pickle", "ctypes",
                                          "io", "pathlib", "socket", "threading", "multiprocessing", "signal",
                                          "inspect", "linecache", "warnings", "operator", "typing_extensions",
                                          "numpy", "gc", "asiarch.store", "asiarch.job.train")],
    ("from operator import attrgetter", "import"),
    ("from operator import methodcaller", "import"),
    ("from typing_extensions import get_annotations", "import"),
    ("from torch import os", "name"),
    ("from typing import sys", "name"),
    ("from torch.nn.functional import np", "api"),
    ("from asiarch.job.ops import os", "name"),
    ("from asiarch.job import compat", "unsafe-api"),
    ("from asiarch.job.ops import fla_route", "api"),
    ("import asiarch.job.compat.imports", "unsafe-api"),
    ("from fla.modules import convolution", "api"),
    ("from torch import nn, Tensor, _C", "private"),
    # torch's escape hatches
    *[(f"import torch\ntorch.{path}", "unsafe-api") for path in (
        "utils.collect_env.run('id')", "utils.benchmark.Timer('1')", "utils.model_zoo.load_url(u)", "hub.load(r)",
        "load(f)", "save(x, f)", "ops.aten", "classes.load_library(p)", "library.Library('x', 'DEF')",
        "jit.load(f)", "utils.cpp_extension.load_inline('m', '')", "package.PackageImporter(f)",
        "multiprocessing.spawn(f)", "distributed.init_process_group()", "backends.cudnn.benchmark",
        "fx.symbolic_trace(m)", "random.manual_seed(0)", "set_default_device('cuda')", "set_num_threads(1)",
        "overrides.TorchFunctionMode", "compiler.set_stance('force_eager')", "UntypedStorage.from_file(f)")],
    ("import torch\ntorch._C._get_tracing_state()", "private"),
    ("import torch\ntorch.optim.SGD", "api"),
    ("import torch\nclass A:\n    @torch.compile(backend=spy)\n    def f(self, x):\n        return x", "unsafe-api"),
    ("import torch\ntorch.compile(f, **kw)", "unsafe-api"),
    # private names on any object but the layer itself
    ("import torch\nt = torch\nt._utils", "private"),
    ("x = y\nx._modules", "private"),
    ("class A:\n    def f(self):\n        return self.proj._parameters", "private"),
    ("class A:\n    @staticmethod\n    def f(self):\n        return self._x", "private"),
    ("class A:\n    def f(self):\n        g = lambda self: self._x", "private"),
    ("class A:\n    def f(self):\n        for self in xs:\n            self._x", "private"),
    ("def deco(f):\n    return f\nclass A:\n    @deco\n    def f(self):\n        return self._x", "private"),
    ("class A:\n    def f(self):\n        return getattr(other, '_x')", "private"),
    # dunders, with no exemption for self
    ("class A:\n    def f(self):\n        return self.__dict__", "dunder"),
    ("class A:\n    def f(self):\n        return self.__class__.__init__.__globals__", "dunder"),
    ("class A:\n    def f(self):\n        self.__class__ = B", "dunder"),
    ("class A:\n    def f(self):\n        self.__init__ = g", "dunder"),
    ("__builtins__ = {}", "dunder"),
    ("class A:\n    __getattr__ = g", "dunder"),
    *[(f"class A:\n    def {d}(self, *a):\n        pass", "definition") for d in (
        "__getattr__", "__getattribute__", "__setattr__", "__deepcopy__", "__reduce__", "__reduce_ex__", "__del__",
        "__init_subclass__", "__class_getitem__", "__call__", "__torch_function__", "__getstate__", "__set_name__")],
    *[(f"class A:\n    def {d}(self, *a):\n        pass", "definition") for d in (
        "train", "eval", "parameters", "named_parameters", "state_dict", "load_state_dict", "to", "zero_grad",
        "register_forward_hook", "_call_impl")],
    ("class A:\n    parameters = lambda self: iter(())", "definition"),
    ("class A:\n    def f(self):\n        self.train = lambda mode=True: self", "store"),
    ("class A(metaclass=M):\n    pass", "definition"),
    ("class M(type):\n    pass", "definition"),
    # stores only on the layer itself
    ("import torch.nn.functional as F\nF.cross_entropy = f", "store"),
    ("import torch\ntorch.nn.functional.cross_entropy = f", "store"),
    ("import torch\ndel torch.load_state", "api"),
    ("import torch\ntorch.Tensor.backward = f", "store"),
    ("import torch.nn as nn\nsetattr(nn.Linear, 'forward', f)", "store"),
    ("x = make()\nx.forward = f", "store"),
    ("def f(self):\n    self.x = 1", "store"),
    # classes and modules are not values
    ("import torch.nn as nn\ncls = nn.Linear", "value"),
    ("import torch.nn as nn\ndef f(act=nn.SiLU):\n    return act()", "value"),
    ("import torch.nn as nn\nfs = [nn.Linear]", "value"),
    ("import torch\nf(torch)", "value"),
    ("import torch.nn as nn\nm = torch_nn = nn", "value"),
    ("import functools, torch\nfunctools.partial(torch.compile, backend=b)", "value"),
    ("from fla.modules import l2norm\nl2norm(x)", "value"),
    # format templates that read attributes or items
    ("'{0.__class__}'.format(x)", "format"),
    ("'{0.os.environ}'.format(torch)", "format"),
    ("'{x[key]}'.format(x=d)", "format"),
    ("'{:{0.real}}'.format(x)", "format"),
    ("'{a.b}'.format_map(m)", "format"),
    ("template.format(x)", "format"),
    ("('{0.' + 'real}').format(x)", "format"),
    ("str.format('{0.real}', x)", "format"),
    # match class patterns that read attributes
    ("match x:\n    case object(gi_frame=g):\n        pass", "match"),
    ("match f:\n    case object(__globals__=g):\n        pass", "match"),
    ("match f:\n    case Reader(g):\n        pass", "match"),  # positional: the attributes __match_args__ names
    # state outside the instances: globals, class attributes, defaults, closures made at import
    ("from collections import deque\n_RECENT = deque(maxlen=96)", "state"),
    ("_CACHE = {}", "state"),
    ("_CACHE = [0]", "state"),
    ("import torch\nBUF = torch.zeros(4)", "state"),
    ("class A:\n    seen = []", "state"),
    ("class A:\n    count = dict()", "state"),
    ("def f(x, seen=[]):\n    return seen", "state"),
    ("def f(x, *, seen={}):\n    return seen", "state"),
    ("g = lambda x, seen=[]: seen", "state"),
    ("def f():\n    global N\n    N = 1", "state"),
    ("def f():\n    n = 0\n    def g():\n        nonlocal n\n        n += 1\n    return g", "state"),
    ("def keep(fn):\n    return fn\n@keep\ndef f(x):\n    return x", "state"),
    ("for _store in ([],):\n    pass", "state"),
    ("import contextlib\nwith make() as s:\n    pass", "state"),
    ("(seen := [])", "state"),
    ("ASIARCH_GENOME = {'update': make()}", "state"),
    ("T = tuple([[]])", "state"),
    ("import functools\nSHELF = functools.partial(int, base=10)", "state"),  # SHELF.keywords is a live dict
    ("class Box:\n    calls = 0\ndef f(x):\n    Box.calls = Box.calls + 1", "state"),
    ("class DeltaNet:\n    recent = ()\n    def forward(self, x):\n        DeltaNet.recent = (x,)", "state"),
    ("import torch\ndef f(x):\n    torch.distributions.Cauchy.arg_constraints['recent'] = x", "state"),
    ("import torch\ndef f(x):\n    box = torch.distributions.Normal.arg_constraints\n    box['x'] = x", "state"),
    ("ASIARCH_GENOME = {'update': 'delta'}\ndef f(x):\n    ASIARCH_GENOME['seen'] = x", "state"),
    # dunders bound other than by assignment (a class body binds them as class attributes)
    ("class A:\n    match x:\n        case __match_args__:\n            pass", "dunder"),
    ("class A:\n    match x:\n        case [*__match_args__]:\n            pass", "dunder"),
    ("class A:\n    match x:\n        case {**__match_args__}:\n            pass", "dunder"),
    ("class A:\n    try:\n        pass\n    except ValueError as __subclasshook__:\n        pass", "dunder"),
    ("class A:\n    import math as __getattr__", "dunder"),
    ("class A:\n    from math import sqrt as __call__", "dunder"),
    ("class A:\n    class __class_getitem__:\n        pass", "dunder"),
    ("def f(__x__):\n    return __x__", "dunder"),
    # rebinding builtins
    ("def f():\n    global len\n    len = g", "rebind"),
    ("def f():\n    def g():\n        nonlocal print\n    return g", "rebind"),
    ("isinstance = lambda a, b: b", "rebind"),
    ("def f(type):\n    return type", "rebind"),
    ("import torch as super", "rebind"),
    ("list = {}", "rebind"),  # list[nn.Linear] names a class only while list is the builtin
    ("from typing import Optional\nOptional = {}", "rebind"),
    ("import torch.nn.functional as F\ndef f(F):\n    return F._x", "rebind"),
    ("from torch import nn\nfor nn in xs:\n    pass", "rebind"),
    # interpreter internals
    ("import gc", "import"),
    ("gc.get_objects()", "name"),
    ("sys.modules['os']", "name"),
    ("x.modules.sys", "name"),
    ("g = f()\ng.gi_frame.f_globals", "introspection"),
    ("try:\n    pass\nexcept Exception as e:\n    e.__traceback__.tb_frame", "dunder"),
    ("async def f():\n    pass\nf().cr_frame", "introspection"),
    ("f.cell_contents", "introspection"),
    ("x.grad_fn.next_functions", "introspection"),
    ("type(x).mro()", "introspection"),
    ("type(x).forward", "introspection"),
    ("type('A', (), {})", "introspection"),
    ("super(1, 2).f", "introspection"),
    ("class A:\n    def f(self):\n        pass\nA.f(torch)", "unbound-method"),
    ("class A:\n    def f(self):\n        pass\n    g = f", "unbound-method"),
    *[(f"{b}()", "builtin") for b in ("globals", "locals", "vars", "breakpoint", "input")],
    *[(f"{b}('x')", "builtin") for b in ("eval", "exec", "open", "__import__")],
    ("compile('1', 'f', 'eval')", "builtin"),
    ("getattr(x, name)", "getattr"),
    ("setattr(self, name, v)", "getattr"),
    ("delattr(x, n)", "getattr"),
    ("f = getattr", "getattr"),
    ("raise SystemExit(1)", "builtin"),
    ("x.numpy()", "api"),
    ("x.load('w.pt')", "file-io"),
])
def test_lint_refuses(snippet, rule):
    findings = static_check(snippet)
    assert rule in {f.rule for f in findings}, findings


@pytest.mark.parametrize("snippet", [
    "import torch\nfrom torch import nn, Tensor\nimport torch.nn.functional as F\nimport torch.nn.init as init",
    "import torch.fft\nimport torch.linalg\nimport torch.special\nfrom torch.utils.checkpoint import checkpoint",
    "from torch.distributions import Normal\nfrom torch.autograd import Function",
    "import math, functools, itertools\nfrom collections import OrderedDict\nfrom dataclasses import dataclass, field",
    "from einops import rearrange, repeat\nfrom einops.layers.torch import Rearrange",
    "import fla.modules\nfrom fla.layers.utils import pad_input\nfrom fla.models.utils import Cache",
    "import asiarch.job.ops\ndef f(q, k, v):\n    return asiarch.job.ops.chunk_linear_attn(q, k, v)",
    "class A:\n    def f(self):\n        self._step += 1\n        return self._helper(self._cache)",
    "class A:\n    @property\n    def n(self):\n        return self._n\n"
    "    @n.setter\n    def n(self, v):\n        self._n = v",
    "import torch\nclass A:\n    @torch.compile\n    def f(self, x):\n        return self._w * x",
    "import torch\nclass A:\n    @torch.no_grad()\n    def f(self):\n        self.A_log._no_weight_decay = True",
    "import functools\nclass A:\n    @functools.lru_cache(maxsize=8)\n    def f(self, n):\n        return self._n",
    "class A:\n    def f(self):\n        fn = lambda x: self._scale * x\n"
    "        return [self._w for _ in range(3)]",
    "class A:\n    @staticmethod\n    def _conv(conv, x):\n        return conv(x)\n"
    "    def f(self, x):\n        return A._conv(self.c, x)",
    "class A:\n    def __init__(self):\n        super().__init__()\n        print(type(self).__name__, type(self) == A)",
    "class A:\n    def __repr__(self):\n        return f'A({self.n!r})'",
    "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def reset_parameters(self):\n"
    "        for m in self.modules():\n            if isinstance(m, (nn.Linear, nn.Conv1d)):\n"
    "                nn.init.xavier_uniform_(m.weight)",
    "import torch\nfrom typing import Optional, Tuple\ndef f(x: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:\n"
    "    y: torch.Tensor = x\n    return None",
    "import torch\nPair = tuple[torch.Tensor, torch.Tensor]\ntry:\n    pass\n"
    "except (torch.OutOfMemoryError, ValueError):\n    pass",
    "import torch\nclass Fn(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n        ctx.s = 2\n"
    "        ctx.save_for_backward(x)\n        return x\n    @staticmethod\n    def backward(ctx, g):\n"
    "        return g * ctx.s\ndef f(x):\n    return Fn.apply(x)",
    "import torch\n@torch.compile(mode='max-autotune', fullgraph=True, dynamic=False)\ndef k(x):\n    return x",
    "'{} {:.3f} {name}'.format(x.shape, 1.0, name='a')\nf'{x.shape!r} {x.dtype}'",
    "match x:\n    case (a, b):\n        pass\n    case {'k': v}:\n        pass",
    "def forward(ctx, input):\n    return input",
    "def f(x):\n    signal = x * 2\n    return signal",
    "if hasattr(cache, '__getitem__'):\n    pass",
    # immutable module-level and class-level values, and containers asiarch or Python read from the source
    "import math, torch\nEPS = 1e-6\nSCALE = math.sqrt(2.0) / 2\nDIMS = (1, 2)\nTINY = torch.finfo(torch.float32).eps\n"
    "NAMES = frozenset({'a', 'b'})\nMODE = 'x' if EPS > 0 else 'y'\n__all__ = ['DeltaNet']\n"
    "ASIARCH_GENOME = {'update': 'delta', 'short_conv': 4}",
    "import math\ndef f(x, scale=math.log(math.expm1(0.7)), eps=1e-6, dims=(1, 2), name=None):\n    return x",
    "import torch\nclass A:\n    heads = 4\n    __constants__ = ['heads']\n    @staticmethod\n    def f(x):\n"
    "        return x\n    @torch.no_grad()\n    def g(self, x):\n        return x",
    "import functools\n@functools.lru_cache(maxsize=32)\ndef f(n):\n    return n",
    "def f(x):\n    seen = []\n    def g():\n        seen.append(1)\n    g()\n    return seen",
    "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        nn.Module.__init__(self)\n"
    "        self.eps = torch.finfo(torch.float32).eps\n        self.d = torch.distributions.Normal(0.0, 1.0)",
])
def test_lint_accepts(snippet):
    assert static_check(snippet) == []


def test_findings_name_the_member_and_what_to_do():
    (finding,) = static_check("from torch import os as host")
    assert finding.rule == "name" and finding.line == 1
    assert "torch.os" in finding.message and "'os' module" in finding.message
    (finding,) = static_check("import torch\ntorch.utils.collect_env.run('id')")
    assert finding.line == 2 and "runs shell commands" in finding.message and "remove it" in finding.message
    (finding,) = static_check("import torch\ntorch.cummulative_sum(x)")
    assert finding.rule == "api" and "vetted_api.py" in finding.message
    store = next(f for f in static_check(source("lint_patch_loss")) if f.rule == "store")
    assert "torch.nn.functional.cross_entropy" in store.message and "whole process" in store.message
    value = next(f for f in static_check("from fla.modules import l2norm\nl2norm(x)") if f.rule == "value")
    assert "from fla.modules.l2norm import l2norm" in value.message


@pytest.mark.skipif(not ASI_ARCH.exists(), reason="ASI-Arch's published layers are not beside the repository")
def test_every_published_asi_arch_layer_is_accepted():
    programs = [a["program"] for a in json.loads(ASI_ARCH.read_text())]
    refused = {i: static_check(p)[:2] for i, p in enumerate(programs) if static_check(p)}
    assert len(programs) == 80 and not refused


# ----------------------------------------------------------------------------------
# the vetted tables against what is installed


def _module_for(path: str) -> types.ModuleType:
    root = path.partition(".")[0]
    if root in ("fla", "transformers"):  # the lint vets what asiarch's stand-ins provide
        return importlib.import_module(f"asiarch.job.compat.{path}")
    return importlib.import_module(path)


@pytest.mark.parametrize("path", sorted(VETTED))
def test_every_vetted_name_exists_and_is_of_its_kind(path):
    module = _module_for(path)
    wrong = {}
    for name, kind in VETTED[path].items():
        if kind == MODULE:
            sub = _module_for(f"{path}.{name}")
            ok = f"{path}.{name}" in VETTED and isinstance(sub, types.ModuleType)
        elif not hasattr(module, name):
            ok = False
        else:
            obj = getattr(module, name)
            ok = not isinstance(obj, types.ModuleType)
            if kind == CLASS and path.startswith(("torch", "fla", "einops", "collections")):
                ok = ok and inspect.isclass(obj)
            elif kind == FUNCTION:
                ok = ok and callable(obj)
        if not ok:
            wrong[name] = kind
    assert not wrong, wrong


def test_asiarch_ops_vetted_names_are_its_public_api():
    import asiarch.job.ops as ops

    assert set(VETTED["asiarch.job.ops"]) == set(ops.__all__)


def test_unsafe_names_are_never_vetted():
    for dotted in vetted_api.UNSAFE:
        parent, _, name = dotted.rpartition(".")
        assert name not in VETTED.get(parent, {}), dotted


def test_the_compat_package_exposes_no_dangerous_module():
    import asiarch.job.compat as compat

    allowed = {"torch", "torch.nn", "torch.nn.functional"}
    found = {}
    for info in pkgutil.walk_packages(compat.__path__, prefix="asiarch.job.compat."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.startswith("_") or not isinstance(value, types.ModuleType):
                continue
            if value.__name__ not in allowed and not value.__name__.startswith("asiarch.job.compat."):
                found[f"{info.name}.{name}"] = value.__name__
            if name in FORBIDDEN_NAMES:
                found[f"{info.name}.{name}"] = value.__name__
    assert not found, found
