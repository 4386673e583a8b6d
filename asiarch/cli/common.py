"""What the command modules share: the error line, an experiment's config, the experiment check.

Standard library only at import time (like every module of asiarch.cli): `asiarch --help`
must not wait for torch or the store.
"""

from __future__ import annotations

import sys
from pathlib import Path


def die(msg: str, code: int = 2) -> int:
    """Print ``asiarch: MSG`` on stderr and return ``code`` (2: the command was used wrongly)."""
    print(f"asiarch: {msg}", file=sys.stderr)
    return code


def load_experiment_config(root: Path, config: str | None = None):
    """The config of the experiment in ``root``: ``config`` when given, else ROOT/config.toml.
    Raises FileNotFoundError naming the `asiarch init` that creates it, ConfigError when invalid."""
    from asiarch.config import load_config

    path = Path(config) if config else root / "config.toml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config; create one with `asiarch init {root}`")
    return load_config(path)


def not_an_experiment(exp) -> str | None:
    """Why the ExperimentDir ``exp`` is no experiment yet (neither config.toml nor a store), or None."""
    if exp.config.exists() or exp.exists():
        return None
    return f"{exp.root} is not an experiment directory; create one with `asiarch init {exp.root}`"
