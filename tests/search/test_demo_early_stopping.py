"""`asiarch demo --early-stopping`: early stopping is off in the demo unless the flag is given."""

from asiarch.cli.main import build_parser, demo_setup
from asiarch.config import load_config


def test_the_demo_keeps_early_stopping_off_unless_asked(tmp_path):
    _, plain = demo_setup(build_parser().parse_args(["demo", str(tmp_path / "plain")]))
    assert not plain.early_stopping.enabled
    root, on = demo_setup(build_parser().parse_args(["demo", str(tmp_path / "es"), "--early-stopping"]))
    assert on.early_stopping.enabled and load_config(root / "config.toml").early_stopping.enabled
    # a resumed demo keeps what its config says
    _, again = demo_setup(build_parser().parse_args(["demo", str(root)]))
    assert again.early_stopping.enabled
