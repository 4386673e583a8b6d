"""The fla compatibility layer: each plain-PyTorch stand-in tied to a reference (forward and
backward), and the routing that gives candidate code -- and only candidate code -- these
modules under fla's names, with torch.compile a no-op off CUDA."""

from __future__ import annotations

import builtins
import sys
import textwrap

import pytest
import torch
from torch.nn import functional as F

from asiarch.job import compat
from asiarch.job.candidate import CandidateError, build_layer, call_layer, load_layer_class, load_module
from asiarch.job.compat.fla.layers.utils import get_unpad_data, index_first_axis, pad_input
from asiarch.job.compat.fla.models.utils import Cache
from asiarch.job.compat.fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
from asiarch.job.compat.fla.modules.l2norm import l2norm
from asiarch.job.compat.transformers.processing_utils import Unpack

_PROCESS_IMPORT = builtins.__import__


def _grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.float().pow(2).sum().backward()
    return out.detach(), [t.grad for t in inputs]


# ----------------------------------------------------------------------------------
# ShortConvolution


def conv_reference(x, weight, bias, activation):
    """The definition, one position at a time: y[t] = act(sum_j w[:, j] x[t - W + 1 + j] + b)."""
    _, t_len, _ = x.shape
    w = weight.shape[-1]
    outs = []
    for t in range(t_len):
        acc = torch.zeros_like(x[:, 0])
        for j in range(w):
            s = t - w + 1 + j
            if s >= 0:
                acc = acc + weight[:, j] * x[:, s]
        if bias is not None:
            acc = acc + bias
        outs.append(F.silu(acc) if activation else acc)
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("kernel_size, bias, activation", [(4, False, "silu"), (3, True, None), (1, False, "swish")])
def test_short_convolution_equals_the_explicit_causal_conv_forward_and_backward(kernel_size, bias, activation):
    torch.manual_seed(0)
    conv = ShortConvolution(12, kernel_size, bias=bias, activation=activation)
    x = torch.randn(2, 9, 12)
    y, y_grads = _grads(lambda x: conv(x)[0], x)
    w_grad = conv.weight.grad.clone()
    conv.zero_grad()
    ref, ref_grads = _grads(lambda x: conv_reference(x, conv.weight.squeeze(1), conv.bias, activation), x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(y_grads[0], ref_grads[0])
    torch.testing.assert_close(w_grad, conv.weight.grad)
    assert conv.weight.shape == (12, 1, kernel_size)  # nn.Conv1d's layout, as fla's (checkpoints interchange)


def test_short_convolution_is_causal():
    torch.manual_seed(0)
    conv = ShortConvolution(8, 4)
    x = torch.randn(1, 16, 8)
    x2 = x.clone()
    x2[:, 10:] += 1.0
    y, _ = conv(x)
    y2, _ = conv(x2)
    assert torch.equal(y[:, :10], y2[:, :10]) and not torch.equal(y[:, 10:], y2[:, 10:])


def test_short_convolution_state_continues_the_sequence_and_decodes_token_by_token():
    torch.manual_seed(0)
    conv = ShortConvolution(6, 4, bias=True)
    x = torch.randn(2, 11, 6)
    full, final = conv(x, output_final_state=True)
    assert final.shape == (2, 6, 4)  # [N, D, W]: the last W inputs
    torch.testing.assert_close(final, x[:, -4:].transpose(1, 2))
    # prefill 5 tokens, then feed the rest one at a time: the cache is updated in place
    head, cache = conv(x[:, :5], output_final_state=True)
    outs = [head]
    for t in range(5, 11):
        y_t, returned = conv(x[:, t:t + 1], cache=cache)
        assert returned is cache
        outs.append(y_t)
    torch.testing.assert_close(torch.cat(outs, dim=1), full)
    # a shorter prefill than the kernel pads the state in front with zeros
    _, short = conv(x[:, :2], output_final_state=True)
    assert torch.equal(short[..., :2], torch.zeros(2, 6, 2)) and torch.equal(short[..., 2:], x[:, :2].transpose(1, 2))
    # and continuing from a state equals convolving the concatenation
    rest, _ = conv(x[:, 2:], cache=short)
    torch.testing.assert_close(rest, full[:, 2:])


def test_short_convolution_keeps_packed_sequences_apart():
    torch.manual_seed(0)
    conv = ShortConvolution(5, 3)
    a, b = torch.randn(1, 4, 5), torch.randn(1, 7, 5)
    packed, states = conv(torch.cat([a, b], dim=1), cu_seqlens=torch.tensor([0, 4, 11]), output_final_state=True)
    torch.testing.assert_close(packed, torch.cat([conv(a)[0], conv(b)[0]], dim=1))
    assert states.shape == (2, 5, 3)


def test_short_convolution_mask_residual_and_dtype():
    torch.manual_seed(0)
    conv = ShortConvolution(4, 2)
    x, residual = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    masked, _ = conv(x, mask=mask)
    torch.testing.assert_close(masked, conv(x * mask.unsqueeze(-1))[0])
    torch.testing.assert_close(conv(x, residual=residual)[0], conv(x)[0] + residual)  # added after the activation
    assert conv(x.bfloat16())[0].dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computed in fp32 inside; returns the input's dtype
        assert conv(x)[0].dtype == torch.float32
    with pytest.raises(ValueError, match="not supported"):
        ShortConvolution(4, 2, activation="gelu")


# ----------------------------------------------------------------------------------
# norms


def test_rmsnorm_formula_and_prenorm_residual():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, r = torch.randn(3, 8), torch.randn(3, 8)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), ref)
    y, summed = norm(x, residual=r, prenorm=True)
    torch.testing.assert_close(summed, x + r)
    torch.testing.assert_close(y, norm(x + r))
    assert norm(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("activation", ["swish", "silu", "sigmoid"])
def test_fused_rmsnorm_gated_formula_in_fp32(activation):
    torch.manual_seed(0)
    norm = FusedRMSNormGated(16, eps=1e-5, activation=activation)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    o, g = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    act = torch.sigmoid(g) if activation == "sigmoid" else g * torch.sigmoid(g)
    ref = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight * act
    out, grads = _grads(norm, o, g)
    _, ref_grads = _grads(lambda o, g: o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
                          * (torch.sigmoid(g) if activation == "sigmoid" else g * torch.sigmoid(g)), o, g)
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    # bf16 inputs: computed in fp32, rounded once at the end
    ob, gb = o.bfloat16(), g.bfloat16()
    of, gf = ob.float(), gb.float()
    expected = (of / torch.sqrt(of.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
                * (torch.sigmoid(gf) if activation == "sigmoid" else gf * torch.sigmoid(gf))).bfloat16()
    assert torch.equal(norm(ob, gb), expected)


def test_l2norm_formula():
    x = torch.randn(2, 3, 7)
    out, (grad,) = _grads(l2norm, x)
    ref, (ref_grad,) = _grads(lambda x: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6), x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)
    assert l2norm(x.bfloat16()).dtype == torch.bfloat16 and l2norm(x, output_dtype=torch.float64).dtype == torch.float64


# ----------------------------------------------------------------------------------
# padding helpers, Cache, Unpack


def test_unpad_then_pad_round_trip():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    x = torch.randn(3, 4, 5, requires_grad=True)
    indices, cu_seqlens, max_len = get_unpad_data(mask)
    assert cu_seqlens.tolist() == [0, 3, 5, 9] and cu_seqlens.dtype == torch.int32 and max_len == 4
    packed = index_first_axis(x.reshape(12, 5), indices)  # [nnz, D]
    assert packed.shape == (9, 5)
    torch.testing.assert_close(packed, x[mask.bool()])
    restored = pad_input(packed, indices, 3, 4)
    torch.testing.assert_close(restored, x * mask.unsqueeze(-1))
    restored.sum().backward()
    torch.testing.assert_close(x.grad, mask.unsqueeze(-1).expand(3, 4, 5).float())


def test_cache_keeps_states_per_layer():
    cache = Cache()
    assert len(cache) == 0 and cache.get_seq_length() == 0
    state = cache.update(recurrent_state="s0", conv_state=("q", "k", "v"), layer_idx=0, offset=5)
    cache.update(recurrent_state="t0", layer_idx=1, offset=5)
    assert cache[0] is state and cache[0]["conv_state"] == ("q", "k", "v") and cache[1]["recurrent_state"] == "t0"
    cache.update(recurrent_state="s1", layer_idx=0, offset=1)
    assert cache[0]["recurrent_state"] == "s1" and cache[0]["conv_state"] == ("q", "k", "v")
    assert len(cache) == 2 and cache.get_seq_length() == 6
    with pytest.raises(KeyError):
        cache[2]


def test_unpack_is_the_typing_construct():
    from typing import Unpack as typing_unpack

    assert Unpack is typing_unpack


# ----------------------------------------------------------------------------------
# routing candidate imports


USES_FLA = textwrap.dedent('''
    import torch
    import torch.nn as nn
    from einops import rearrange
    from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
    from fla.modules.l2norm import l2norm
    from fla.layers.utils import get_unpad_data, index_first_axis, pad_input
    from fla.models.utils import Cache
    from transformers.processing_utils import Unpack
    import fla.modules as fm

    SCALE = {scale}

    @torch.compile
    def kernel(q, k):
        return q * k.sigmoid()

    @torch.compile(fullgraph=True, mode="max-autotune")
    def other(x):
        return x

    class DeltaNet(nn.Module):
        def __init__(self, hidden_size=64, num_heads=4, layer_idx=None, **kwargs: Unpack[dict]):
            super().__init__()
            from fla.modules import RMSNorm as LazyNorm  # imports inside methods resolve the same way
            self.conv = ShortConvolution(hidden_size, 4)
            self.norm = LazyNorm(hidden_size)
            self.gnorm = fm.FusedRMSNormGated(hidden_size)

        def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
            x, _ = self.conv(hidden_states)
            x = l2norm(kernel(x, x)) * SCALE
            return self.gnorm(self.norm(rearrange(x, "b t d -> b t d")), x), None, past_key_values
''')


def test_candidate_gets_the_compat_modules_under_fla_names_on_cpu():
    module = load_module(USES_FLA.format(scale=1.0), device="cpu")
    assert module.__asiarch_fla__ == "compat"
    assert module.ShortConvolution is ShortConvolution and module.l2norm is l2norm and module.Cache is Cache
    assert module.fm.__name__ == "asiarch.job.compat.fla.modules"
    layer = build_layer(module.DeltaNet, 16, 2)
    assert isinstance(layer.norm, RMSNorm)  # the import inside __init__
    x = torch.randn(2, 9, 16, requires_grad=True)
    call_layer(layer, x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_candidate_routing_does_not_shadow_fla_or_transformers_outside_candidates():
    before = {m for m in sys.modules if m == "fla" or m.startswith("fla.") or m.startswith("transformers")}
    load_module(USES_FLA.format(scale=2.0), device="cpu")
    after = {m for m in sys.modules if m == "fla" or m.startswith("fla.") or m.startswith("transformers")}
    assert after == before
    assert builtins.__import__ is _PROCESS_IMPORT  # the process's import machinery is untouched


def test_real_fla_absent_means_compat_everywhere(monkeypatch):
    monkeypatch.setattr(compat.imports, "_fla_importable", lambda: False)
    assert compat.backend_for("cpu") == "compat"
    assert compat.backend_for("cuda") == "compat"
    assert load_module(USES_FLA.format(scale=3.0), device="cuda").__asiarch_fla__ == "compat"


def test_real_fla_is_used_where_it_can_run(monkeypatch, tmp_path):
    # A stand-in "real" fla on sys.path: on CUDA the candidate gets it, on CPU the compat modules.
    pkg = tmp_path / "fla"
    (pkg / "modules").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "modules" / "__init__.py").write_text("ShortConvolution = 'the real fla'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(compat.imports, "_fla_importable", lambda: True)
    source = "from fla.modules import ShortConvolution\n"
    try:
        assert load_module(source, device="cuda", module_name="cand_real").ShortConvolution == "the real fla"
        assert load_module(source, device="cpu", module_name="cand_compat").ShortConvolution is ShortConvolution
        assert compat.backend_for("cpu") == "compat"
    finally:
        for name in [m for m in sys.modules if m == "fla" or m.startswith("fla.") or m.startswith("cand_")]:
            del sys.modules[name]


def test_fla_names_without_a_stand_in_fail_with_what_is_provided():
    with pytest.raises(CandidateError, match="fla.ops.delta_rule is not available here.*fla.modules"):
        load_module("from fla.ops.delta_rule import chunk_delta_rule\n", device="cpu")
    with pytest.raises(CandidateError, match="fla.modules.LayerNorm is not available here"):
        load_module("from fla.modules import LayerNorm\n", device="cpu")


def test_two_candidates_with_the_same_class_name_keep_their_globals():
    a = load_layer_class(USES_FLA.format(scale=1.0), device="cpu")
    b = load_layer_class(USES_FLA.format(scale=-1.0), device="cpu")
    assert a is not b and a.__module__ != b.__module__
    torch.manual_seed(0)
    la = build_layer(a, 16, 2)
    torch.manual_seed(0)
    lb = build_layer(b, 16, 2)
    x = torch.randn(1, 5, 16)
    ya, yb = call_layer(la, x), call_layer(lb, x)
    assert not torch.allclose(ya, yb)  # each sees its own SCALE
    assert sys.modules[a.__module__].SCALE == 1.0 and sys.modules[b.__module__].SCALE == -1.0


def test_torch_compile_is_a_no_op_while_loading_off_cuda():
    original = torch.compile
    module = load_module(USES_FLA.format(scale=1.0), device="cpu")
    assert torch.compile is original  # restored after the load
    # the decorated functions are the plain functions, not compiled wrappers
    assert type(module.kernel).__name__ == "function" and module.kernel.__code__.co_name == "kernel"
    assert module.other.__code__.co_name == "other"
    with compat.torch_compile_disabled():
        linear = torch.nn.Linear(2, 2)
        assert torch.compile(linear) is linear and torch.compile(mode="reduce-overhead")(len) is len
    assert torch.compile is original


@pytest.mark.parametrize("backend", ["compat", "fla"])
def test_a_candidates_functools_caches_do_not_cache(backend, monkeypatch):
    """A memo in a layer's file is state no instance holds (a store the probes' copies cannot see: `@lru_cache def
    box(k): return []` keeps anything across calls); in a candidate, cache and lru_cache leave the function as it is,
    under either backend, and the rest of functools is the standard one. Outside candidates functools caches."""
    import functools

    from asiarch.job import candidate

    monkeypatch.setattr(candidate, "backend_for", lambda device: backend)
    module = candidate.load_module(
        "import functools\nfrom functools import lru_cache, partial, reduce\n"
        "@functools.lru_cache(maxsize=32)\ndef a(k):\n    return []\n"
        "@lru_cache\ndef b(k):\n    return []\n"
        "@functools.cache\ndef c(k):\n    return []\n", device="cpu")
    for box in (module.a, module.b, module.c):
        assert box(1) is not box(1)  # a new list each call: nothing kept
    assert module.partial is functools.partial and module.reduce is functools.reduce
    kept = functools.lru_cache(maxsize=2)(lambda k: [])
    assert kept(1) is kept(1)  # the defence off: the standard lru_cache keeps its box
