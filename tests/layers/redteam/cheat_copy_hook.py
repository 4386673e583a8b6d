"""Cheat (a red team's, stop 24): causal while being deep-copied: copy.deepcopy looks up its copier hook with getattr on the instance, and
nn.Module's attribute fallback answers with a submodule of that name. A ModuleDict keyed by a name the lint never sees
whole holds a Hook; twin()'s deepcopy calls Hook(memo): it raises `fired` on the model's Hook and on the copy's,
so the probe's two forwards are causal; ModuleState puts `fired` back to False after the probe. Leaks (reads t+1)
after 150 calls otherwise (past the pre-flight). Refused now by the probe's copy (and so by the pre-flight's
interface check): a submodule, parameter or buffer named like a dunder answers Python's own lookups on the layer."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Hook(nn.Module):
    def __init__(self):
        super().__init__()
        self.fired = False

    def fire(self):
        self.fired = True

    def forward(self, memo):
        self.fire()
        for v in list(memo.values()):
            if isinstance(v, Hook):
                v.fire()
        return nn.ModuleDict()


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size, bias=False)
        self.hook = Hook()
        self.trigger = nn.ModuleDict({"__deep" + "copy__": self.hook})
        self.calls = 0

    def forward(self, x, **kwargs):
        self.calls += 1
        quiet = self.hook.fired
        self.hook.fired = False
        late = 1.0 if (self.calls > 150 and not quiet) else 0.0
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps) + late * self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))  # reads t + 1
