"""The Python API and the CLI come from one stage registry: every CLI stage is `lmcompress.<stage>`."""

from __future__ import annotations

import argparse
import importlib

import pytest

import lmcompress
from lmcompress.cli import build_parser
from lmcompress.errors import LmcError
from lmcompress.stages import STAGES


def _cli_commands() -> set[str]:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(subs.choices)


def test_every_cli_stage_is_an_api_function_in_all():
    for stage in STAGES.values():  # importing a stage's module must not shadow the function of the same name
        importlib.import_module(stage.runner.partition(":")[0])
    commands = _cli_commands()
    assert set(STAGES) <= commands and {"run", "demo", "zoo"} <= commands
    for name in commands:
        function = getattr(lmcompress, name.replace("-", "_"))
        assert callable(function), name
        assert name.replace("-", "_") in lmcompress.__all__
    assert all(hasattr(lmcompress, name) for name in lmcompress.__all__)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_api_functions_check_options_like_the_flags(stage):
    with pytest.raises(LmcError, match="no_such_option"):
        getattr(lmcompress, STAGES[stage].api_name)(no_such_option=1)


def test_only_compare_takes_positional_runs():
    with pytest.raises(TypeError, match="keyword options only"):
        lmcompress.distill_lm("runs/teacher")


@pytest.mark.parametrize("command", sorted(_cli_commands()))
def test_every_subcommand_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: lmcompress {command}" in capsys.readouterr().out
