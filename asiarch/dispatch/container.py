"""The Apptainer job image: build and check it, driven through spython (no sudo: fakeroot).

spython calls the `singularity` command, which Apptainer installs as a compatibility name.
Library functions: they return what they made or saw and raise :class:`ContainerError` with
a message saying what to do; the command (`asiarch container build|check`) is
:mod:`asiarch.cli.container`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "containers" / "asiarch.def"
#: the image built and checked when none is named (relative: in the current directory)
DEFAULT_IMAGE = Path("asiarch.sif")

# What a job needs from its image: the job side of asiarch, torch, h5py; and whether a GPU shows.
CHECK = ("import torch, h5py, asiarch.job.train; "
         "print('asiarch job image ok: torch', torch.__version__, '| h5py', h5py.__version__, "
         "'| cuda', torch.cuda.is_available(), torch.cuda.device_count())")


class ContainerError(RuntimeError):
    """The image cannot be built or checked here; the message says why and what to do."""


def _client():
    if not (shutil.which("singularity") or shutil.which("apptainer")):
        raise ContainerError("neither apptainer nor singularity is on PATH: build and check images on a machine "
                             "that has Apptainer (most clusters' login nodes), e.g. after `module load apptainer`")
    if not shutil.which("singularity"):
        raise ContainerError("spython calls `singularity`; this Apptainer has no such compatibility command: "
                             "link it (ln -s \"$(command -v apptainer)\" ~/bin/singularity)")
    from spython.main import Client

    return Client


def build(definition: Path = DEFINITION, image: Path = DEFAULT_IMAGE, *, force: bool = False) -> Path:
    """Build the job image without root (--fakeroot), from the project root so %files finds it;
    returns the image's absolute path."""
    import os

    definition = Path(definition).resolve()
    if not definition.is_file():
        raise ContainerError(f"{definition}: no such definition file")
    image = Path(image).resolve()
    client = _client()
    cwd = os.getcwd()
    os.chdir(definition.parent.parent)  # the repository root: %files copies "."
    try:
        client.build(recipe=str(definition), image=str(image), sudo=False, options=["--fakeroot"], force=force,
                     quiet=False, return_result=True)
    finally:
        os.chdir(cwd)
    if not image.exists():
        raise ContainerError(f"the build did not produce {image}; see the messages above")
    return image


def check(image: Path, *, python: str = "python3", nv: bool = False) -> str:
    """Run the job side's imports inside the image; returns what it printed."""
    image = Path(image)
    if not image.is_file():
        raise ContainerError(f"{image}: no such image")
    client = _client()
    out = client.execute(str(image), [python, "-c", CHECK], nv=nv, return_result=True, quiet=True)
    message = out.get("message") if isinstance(out, dict) else out
    message = "".join(message) if isinstance(message, list) else str(message)
    if isinstance(out, dict) and out.get("return_code", 0) != 0 or "asiarch job image ok" not in message:
        raise ContainerError(f"{image} cannot run asiarch jobs: {message.strip()[-2000:]}")
    return message.strip()
