"""The command line speaks one language: every subcommand's parser uses the shared formatter,
every option has help and shows its default, and -o/--force/-q/--device/--param are the same
flags with the same meaning wherever they appear."""

import argparse

import pytest

from dlqsm.cli import common
from dlqsm.cli.main import build_parser, main


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


SUBS = _subparsers()
SHARED = {"out": ("-o", "--out"), "force": ("--force",), "quiet": ("-q", "--quiet"),
          "device": ("--device",), "param": ("--param",)}
PER_SCAN = ("reconstruct", "infer", "evaluate", "quickstart")


def _options(p):
    return [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_subcommand_is_walked():
    assert {"reconstruct", "infer", "evaluate", "quickstart", "train", "simulate"} <= set(SUBS)


@pytest.mark.parametrize("name", list(SUBS))
def test_every_option_has_help_and_shows_its_default(name):
    p = SUBS[name]
    assert p.formatter_class is common.HelpFormatter
    text = p.format_help()
    for a in _options(p):
        assert a.help, f"dlqsm {name} {a.option_strings}: no help"
        if not (a.default is None or a.default is False or a.default == []
                or a.default is argparse.SUPPRESS):  # 0 and 0.0 are shown too
            shown = p._get_formatter()._get_help_string(a)
            assert "%(default)" in shown, f"dlqsm {name} {a.option_strings}: default not shown"
            assert shown.replace("%(default)s", "").count("default") == 1, \
                f"dlqsm {name} {a.option_strings}: default given twice (by hand and by the " \
                "formatter)"
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("name", list(SUBS))
def test_shared_options_are_one_definition(name):
    """Each shared flag, where present, has the same option strings, default, help and
    metavar as in every other subcommand."""
    ref = {a.dest: a for a in _options(SUBS["reconstruct"])}
    for a in _options(SUBS[name]):
        if a.dest not in SHARED:
            continue
        assert tuple(a.option_strings) == SHARED[a.dest], (name, a.option_strings)
        r = ref[a.dest]
        assert (type(a), a.metavar) == (type(r), r.metavar), (name, a.dest)
        if a.dest in ("force", "quiet", "device"):
            assert (a.default, a.help) == (r.default, r.help), (name, a.dest)
    if name in PER_SCAN:
        assert {"out", "force", "quiet", "device"} <= {a.dest for a in _options(SUBS[name])}
    assert ref["device"].default == "auto"
    assert ref["param"].metavar == common.PARAM_METAVAR


def test_param_grammar_is_one():
    assert common.split_params(["alpha=1e-3", "bfr.radii=[8, 4]", "tv.x=true",
                                "a.b.c=v"]) == [
        (None, "alpha", 1e-3, "alpha=1e-3"), ("bfr", "radii", [8, 4], "bfr.radii=[8, 4]"),
        ("tv", "x", True, "tv.x=true"), ("a", "b.c", "v", "a.b.c=v")]  # the first dot splits
    from dlqsm.errors import InputError

    for bad in ("alpha", "=3", ".x=1"):
        with pytest.raises(InputError, match=r"\[TARGET\.\]KEY=VALUE"):
            common.split_params([bad])


def test_evaluate_param_targets_methods(tmp_path):
    from dlqsm.cli.evaluate import _apply_params

    ms = _apply_params(["tkd", "tv", "unet=best.ckpt"], ["tv.max_iter=5", "padding_x=1"])
    assert ms[1]["params"] == {"max_iter": 5, "padding_x": 1}  # tv: its own and the shared
    assert ms[0]["params"] == {"padding_x": 1}  # no prefix: every classical method
    assert ms[2] == "unet=best.ckpt"  # learned methods are left alone


def test_train_answers_flags_with_the_override(capsys):
    assert main(["train", "--max-epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "usage: train.py" not in err
    assert "takes Hydra overrides" in err and "trainer.max_epochs=1" in err
    assert main(["train", "--lr=0.01"]) == 2
    assert "optimizer.lr=0.01" in capsys.readouterr().err


@pytest.mark.parametrize("argv, hint", [(["--n-samples", "3"], "write n_samples=3"),
                                        (["n_samples=[oops"], "invalid simulate overrides")])
def test_simulate_answers_in_one_line(capsys, argv, hint):
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and hint in err and "Fix:" in err


@pytest.mark.parametrize("override", ["hydra/launcher=slurm", "hparams_search=optuna"])
def test_train_names_the_cluster_extra(monkeypatch, capsys, override):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n.startswith("hydra_plugins.") else real(n, *a))
    assert main(["train", "-m", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "dlqsm[cluster]"' in err and override in err
