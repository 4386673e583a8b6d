"""`asiarch container build|check [IMAGE]`: the job image, through :mod:`asiarch.dispatch.container`."""

from __future__ import annotations

import sys
from pathlib import Path


def container_command(action: str, image: str | None = None, *, definition: str | None = None,
                      force: bool = False, python: str = "python3", nv: bool = False) -> int:
    """Build the image (``action = 'build'``, from ``definition``) or check that it runs the job side
    (``'check'``, with ``python`` inside it, ``nv``: with the host's GPUs); prints what happened.
    Returns the exit code: 0, or 1 with the reason on stderr."""
    from asiarch.dispatch.container import DEFAULT_IMAGE, DEFINITION, ContainerError, build, check

    target = Path(image) if image else DEFAULT_IMAGE
    try:
        if action == "build":
            print(f"built {build(Path(definition) if definition else DEFINITION, target, force=force)}")
        else:
            print(check(target, python=python, nv=nv))
    except ContainerError as exc:
        print(f"asiarch container: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_container(args) -> int:
    return container_command(args.action, args.image, definition=args.definition, force=args.force,
                             python=args.python, nv=args.nv)


def register(sub) -> None:
    """Add the parser of `asiarch container`."""
    s = sub.add_parser("container", help="build or check the Apptainer job image (through spython)")
    s.add_argument("action", choices=("build", "check"))
    s.add_argument("image", nargs="?", default=None, help="the .sif to build or check (default: asiarch.sif)")
    s.add_argument("--definition", default=None, help="definition file (default: containers/asiarch.def)")
    s.add_argument("--force", action="store_true", help="build: overwrite an existing image")
    s.add_argument("--python", default="python3", help="check: the interpreter inside the image")
    s.add_argument("--nv", action="store_true", help="check: with the host's GPUs (--nv)")
    s.set_defaults(func=cmd_container)
