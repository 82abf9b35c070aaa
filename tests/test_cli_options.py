"""Options derived from typed configs: ``edgecnn finetune`` takes every field of the distill
config with the config's own defaults and limits, so the command line and a recipe's
``distill`` stage cannot drift apart."""

from __future__ import annotations

from typing import Literal, Optional

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from edgecnn.cli_options import config_values, field_option
from edgecnn.commands.finetune import DISTILL_FLAGS, finetune
from edgecnn.errors import UserError
from edgecnn.train.distill import DistillConfig


def _config(tmp_path, *args: str) -> DistillConfig:
    """The DistillConfig that ``edgecnn finetune squeezenet ARGS`` would train with (nothing is run)."""
    ctx = finetune.make_context("finetune", ["squeezenet", "--data", str(tmp_path), "-o", str(tmp_path / "s.pth"), *args])
    return config_values(DistillConfig, dict(ctx.params), DISTILL_FLAGS, progress=True)


def test_every_distill_field_is_a_finetune_option():
    flags = {opt for p in finetune.params for opt in p.opts}
    for field in DistillConfig.model_fields:
        if field != "progress":  # follows --json
            assert DISTILL_FLAGS.get(field, "--" + field.replace("_", "-")) in flags, field


def test_finetune_defaults_are_the_configs(tmp_path):
    assert _config(tmp_path) == DistillConfig()


def test_finetune_options_set_config_fields(tmp_path):
    config = _config(tmp_path, "--epochs", "3", "--lr", "0.01", "--optimizer", "sgd", "--freeze-bn", "--workers", "2",
                     "--feature-layers", "features.3", "--feature-layers", "features.7", "--grad-clip", "1.5")
    assert (config.epochs, config.lr, config.optimizer, config.freeze_bn, config.num_workers) == (3, 0.01, "sgd", True, 2)
    assert config.feature_layers == ["features.3", "features.7"] and config.grad_clip == 1.5


@pytest.mark.parametrize("args,flag", [(["--lr", "0"], "--lr"), (["--temperature", "-1"], "--temperature"),
                                       (["--alpha", "1.5"], "--alpha"), (["--workers", "-1"], "--workers")])
def test_out_of_range_values_are_one_line_errors_naming_the_flag(tmp_path, args, flag):
    with pytest.raises(UserError) as err:
        _config(tmp_path, *args)
    assert str(err.value).startswith(f"{flag} ") and "\n" not in str(err.value)


def test_literal_choices_keep_their_type_and_unsupported_fields_are_refused():
    class Typed(BaseModel):
        bits: Literal[4, 8] = 8
        nested: Optional[DistillConfig] = None

    @click.command()
    @field_option(Typed, "bits")
    def cmd(bits):
        click.echo(repr(bits))

    assert CliRunner().invoke(cmd, ["--bits", "4"]).output.strip() == "4"
    assert CliRunner().invoke(cmd, []).output.strip() == "None"  # not given: the config's default applies
    assert CliRunner().invoke(cmd, ["--bits", "5"]).exit_code == 2
    with pytest.raises(TypeError, match="no command-line form"):
        field_option(Typed, "nested")


def test_a_command_module_that_fails_to_import_is_an_error_not_a_missing_command(monkeypatch, tmp_path, capsys):
    """An edgecnn module that is missing is a bug (raised); a missing third-party package is the install (one line)."""
    from edgecnn import cli

    monkeypatch.setitem(cli.COMMANDS, "ghost", ("edgecnn.commands.ghost", "ghost", "Not shipped."))
    with pytest.raises(ModuleNotFoundError, match="edgecnn.commands.ghost"):
        cli.main(["ghost"])
    (tmp_path / "needs_missing_pkg.py").write_text("import edgecnn_no_such_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "needy", ("needs_missing_pkg", "needy", "Needs a package."))
    assert "ghost" in cli.cli.list_commands(None)
    with pytest.raises(SystemExit) as exc:
        cli.main(["needy"])
    assert exc.value.code == 2
    assert "needs the package 'edgecnn_no_such_package_xyz'" in capsys.readouterr().err


def test_passes_are_registered_under_their_config_type():
    from edgecnn.passes.quantize import QuantConfig
    from edgecnn.passes.registry import available_passes, get_pass, pass_for, register_pass

    assert set(available_passes()) == {"fold_bn", "prune", "channel_prune", "shift", "quantize", "weight_share"}
    for name in available_passes():
        info = get_pass(name)
        assert pass_for(info.config_cls()) is info
    with pytest.raises(ValueError, match="registered twice"):
        register_pass("quantize_again", config=QuantConfig)(lambda model, config, ctx: model)
