"""``fla.modules``: ShortConvolution, RMSNorm, FusedRMSNormGated (and ``fla.modules.l2norm``)."""

from asiarch.job.compat.fla.modules.convolution import ShortConvolution, causal_conv1d
from asiarch.job.compat.fla.modules.fused_norm_gate import FusedRMSNormGated
from asiarch.job.compat.fla.modules.layernorm import RMSNorm, rms_norm

__all__ = ["ShortConvolution", "causal_conv1d", "FusedRMSNormGated", "RMSNorm", "rms_norm"]
