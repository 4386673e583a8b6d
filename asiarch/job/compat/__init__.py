"""flash-linear-attention compatibility: ASI-Arch's layers, unmodified, on any device.

ASI-Arch's published layers import ``fla.modules`` (RMSNorm, FusedRMSNormGated,
ShortConvolution), ``fla.modules.l2norm``, ``fla.layers.utils``, ``fla.models.utils``
and ``transformers.processing_utils``, and wrap their kernels in ``@torch.compile``.
Where flash-linear-attention is installed and the layer runs on CUDA, a candidate gets
the real packages. Everywhere else (CPU, or fla absent) its imports of those names
resolve to plain-PyTorch equivalents with fla 0.2.x semantics, which live here under
the same module paths (``asiarch.job.compat.fla.modules`` mirrors ``fla.modules``).

The routing is scoped to candidate code: each candidate module gets its own
``__builtins__`` whose ``__import__`` resolves ``fla.*`` and ``transformers.*`` here
(``imports.candidate_builtins``), so imports inside methods resolve the same way and
nothing else in the process -- a user's real fla or transformers -- is shadowed.
Job side: torch and the standard library only.
"""

from asiarch.job.compat.imports import (
    COMPAT_PACKAGE,
    STAND_INS,
    backend_for,
    candidate_builtins,
    fla_usable,
    torch_compile_disabled,
)

__all__ = ["COMPAT_PACKAGE", "STAND_INS", "backend_for", "candidate_builtins", "fla_usable",
           "torch_compile_disabled"]
