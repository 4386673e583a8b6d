"""Job side: runs on compute nodes under torchrun.

Imports torch, numpy, h5py and the standard library only -- never openai, jinja2 or
submitit -- so the container image stays small and the head's dependencies never leak
into training.
"""
