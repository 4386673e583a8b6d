"""asiarch: autonomous neural-architecture discovery as a batch toolkit for Slurm clusters.

Head side (agents, store, rendering, dispatch, analysis, CLI) lives in this package;
the job side (model shell, kernels, tasks, trainer, result files) lives in
:mod:`asiarch.job` and imports only torch, numpy, h5py and the standard library.
"""

__version__ = "0.1.0"
