"""Plain-PyTorch stand-ins for the parts of flash-linear-attention (0.2.x) that ASI-Arch's
layers use, under fla's own module paths. Candidate code reaches them as ``fla.*`` where
the real package cannot run (see ``asiarch.job.compat``)."""
