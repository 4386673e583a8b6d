"""The fla routing of asiarch.job.ops against the plain-PyTorch kernels, forward and backward.

Runs only where flash-linear-attention and Triton import (`pip install -e .[fla]` plus triton);
skipped otherwise, as in CI. On CUDA it runs fla's kernels for real; on a CPU-only machine it
runs them under Triton's interpreter (TRITON_INTERPRET=1) with two test-only shims that the
interpreter needs (see _interpreter_shims), in fp32 (the interpreter's bf16 is wrong).
"""

import ast
import os

import pytest
import torch
import torch.nn.functional as F

ON_CUDA = torch.cuda.is_available()
if not ON_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton
pytest.importorskip("triton")
pytest.importorskip("fla.ops.simple_gla")

from asiarch.job.ops import chunk_delta_rule, chunk_linear_attn, chunk_ssd  # noqa: E402
from asiarch.job.ops import fla_route  # noqa: E402


def _interpreter_shims() -> None:
    """Under TRITON_INTERPRET: the autotuner cannot benchmark without a driver (keep the first
    config), and loop variables of `for i in range(n)` are Python ints that fla calls `.to()` on
    (rebind each as an interpreter tensor)."""
    import triton.runtime.autotuner as autotuner
    import triton.runtime.interpreter as interp

    prune = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs, *a, **k: prune(self, kwargs, *a, **k)[:1]

    def visit_For(self, node):
        node = self.generic_visit(node)
        it = node.iter
        if isinstance(node.target, ast.Name) and isinstance(it, ast.Call) and getattr(it.func, "id", "") == "range":
            node.body.insert(0, ast.Assign(
                targets=[ast.Name(id=node.target.id, ctx=ast.Store())],
                value=ast.Call(func=ast.Attribute(value=ast.Name(id="interpreter_semantic", ctx=ast.Load()),
                                                  attr="to_tensor", ctx=ast.Load()),
                               args=[ast.Name(id=node.target.id, ctx=ast.Load()), ast.Constant(value=False)],
                               keywords=[])))
        return node

    interp.ASTTransformer.visit_For = visit_For


if not ON_CUDA:
    _interpreter_shims()

DEVICE = "cuda" if ON_CUDA else "cpu"
B, H, T, D = 1, 2, 100, 16  # T not a multiple of fla's chunk of 64


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g)
    k = F.normalize(torch.randn(B, H, T, D, generator=g), dim=-1)
    v = torch.randn(B, H, T, D, generator=g)
    beta = torch.rand(B, H, T, generator=g) * 0.9 + 0.05
    gate = F.logsigmoid(torch.randn(B, H, T, generator=g) + 2.0)
    return [x.to(DEVICE) for x in (q, k, v, beta, gate)]


CASES = {
    "linear": lambda q, k, v, b, g: chunk_linear_attn(q, k, v),
    "simple_gla": lambda q, k, v, b, g: chunk_linear_attn(q, k, v, g),
    "delta": lambda q, k, v, b, g: chunk_delta_rule(q, k, v, b),
    "gated_delta": lambda q, k, v, b, g: chunk_delta_rule(q, k, v, b, g),
    "mamba2": lambda q, k, v, b, g: chunk_ssd(v, b, -torch.ones(H, device=v.device), k, q, torch.ones(H, device=v.device)),
}


def _run(fn, inputs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    grads = torch.autograd.grad((out.float() * w).sum(), leaves, allow_unused=True)
    return out.float(), [None if gr is None else gr.float() for gr in grads]


@pytest.mark.parametrize("case", list(CASES))
def test_fla_route_matches_the_plain_kernels(case, monkeypatch):
    inputs = _inputs()
    monkeypatch.setenv(fla_route.DISABLE_ENV, "1")
    ref_out, ref_grads = _run(CASES[case], inputs)
    monkeypatch.delenv(fla_route.DISABLE_ENV)
    monkeypatch.setenv(fla_route.CPU_ENV, "1")
    assert fla_route.use_fla(inputs[0])
    out, grads = _run(CASES[case], inputs)
    scale = ref_out.abs().max().item()
    assert (out - ref_out).abs().max().item() <= 1e-4 * scale, case
    for name, gr, ref in zip("q k v beta g".split(), grads, ref_grads):
        if ref is None:
            continue
        assert (gr - ref).abs().max().item() <= 1e-4 * max(ref.abs().max().item(), 1e-3), f"{case}: d{name}"
