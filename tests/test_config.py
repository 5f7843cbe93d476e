"""Defaults < YAML file < flags, and every mistake is one clear line."""

import os
import re

import pytest

from clviz import config as configlib
from clviz.config import Config, ConfigError
from tests.conftest import REPO


def resolve(argv):
    return configlib.resolve(configlib.parse_unknown(configlib.make_parser("test"), argv))


def test_every_field_has_a_doc_and_a_flag():
    parser = configlib.make_parser("test")
    flags = {s for a in parser._actions for s in a.option_strings}
    for spec in configlib.fields(Config):
        assert spec.metadata["doc"], spec.name
        assert configlib.flag(spec.name) in flags


def test_defaults_then_file_then_flags(tmp_path):
    cfg, name = resolve([])
    assert name == "default" and cfg == configlib.expand_paths(Config())  # a bare run is the dataclass (data_dir made absolute)
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 7\ncenter_update: paper\ncenter_loss_weight: 0.1\n")
    cfg, name = resolve(["--config", str(path), "--epochs", "3", "--center-update", "sgd", "--train-subset", "null"])
    assert (name, cfg.epochs, cfg.center_update, cfg.center_loss_weight, cfg.train_subset) == ("mine", 3, "sgd", 0.1, None)
    assert cfg.lr == Config().lr  # untouched fields keep the dataclass default


SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_folder_is_what_the_tests_know():
    assert [p.stem for p in SHIPPED] == ["arcface", "arcface3d", "best", "cosface", "cosface3d", "mnist_sample", "paper", "seed",
                                        "softmax_only"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_differs_from_the_defaults(path):
    """Each file validates, and holds only keys whose values differ from the dataclass."""
    values = configlib.read_yaml(path)
    cfg, name = resolve(["--config", str(path)])
    assert name == path.stem and values
    for key, value in values.items():
        assert getattr(cfg, key) == value and getattr(Config(), key) != value, key


def test_what_the_shipped_configs_are_for():
    load = lambda name: resolve(["--config", str(REPO / "configs" / f"{name}.yaml")])[0]  # noqa: E731
    assert load("paper").center_update == "paper" and load("softmax_only").center_loss_weight == 0
    seed = load("seed")
    assert (seed.epochs, seed.lr, seed.train_subset) == (150, 0.001, None)
    assert load("cosface").head == "cosface" and load("arcface").head == "arcface"
    best = load("best")
    assert best.augment_shift > 0 and best.lr_schedule == "cosine" and best.center_loss_weight > 0 and best.feat_dim == 2
    for name, head, margin in (("arcface3d", "arcface", 0.5), ("cosface3d", "cosface", 0.35)):  # the papers' margins
        cfg = load(name)
        assert (cfg.feat_dim, cfg.head, cfg.head_margin) == (3, head, margin)
    sample = load("mnist_sample")
    assert sample.dataset == "mnist-sample" and sample.epochs > Config().epochs


def test_help_prints_the_defaults_that_apply():
    text = configlib.make_parser("test").format_help()
    assert f"(default: {Config().epochs})" in text and f"(default: {Config().lr})" in text


@pytest.mark.parametrize("text, message", [
    ("center_los_weight: 1\n", "unknown config key 'center_los_weight'.*did you mean 'center_loss_weight'"),
    ("epochs: ten\n", "'epochs' must be int"),
    ("epochs: 2.5\n", "'epochs' must be int"),
    ("lr: true\n", "'lr' must be float"),
    ("lr: 0\n", r"'lr' must be > 0.0"),
    ("center_loss_weight: -1\n", "'center_loss_weight' must be >= 0.0"),
    ("center_alpha: 1.5\n", r"'center_alpha' must be in \(0.0, 1.0\]"),
    ("center_alpha: 0\n", r"'center_alpha' must be in \(0.0, 1.0\]"),
    ("epochs: 0\n", r"'epochs' must be in \[1, 100000\]"),
    ("batch_size: 0\n", "'batch_size' must be >= 1"),
    ("feat_dim: 0\n", r"'feat_dim' must be in \[2, 4096\]"),
    ("center_update: momentum\n", "'center_update' must be one of sgd, paper"),
    ("- a\n- b\n", "mapping"),
    ("epochs: [\n", "not valid YAML"),
])
def test_bad_file_values(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve(["--config", str(path)])


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "x"], "'epochs' must be int"),
    (["--center-loss-weight", "-0.5"], "'center_loss_weight' must be >= 0"),
    (["--center-los-weight", "1"], "unknown option --center-los-weight.*did you mean '--center-loss-weight'"),
    (["--config", "nope.yaml"], "does not exist"),
])
def test_bad_flags(argv, message):
    with pytest.raises(ConfigError, match=message):
        resolve(argv)


def test_cli_bad_config_exits_2_with_one_line_and_creates_nothing(run, tmp_path):
    proc = run("train.py", "--lr", "-1", "--output-dir", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "'lr' must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--head-margin", "0.3"], "applies to the cosface and arcface heads"),
    (["--head-scale", "10"], "applies to the cosface and arcface heads"),
    (["--head", "arcface", "--classifier-bias", "true"], "has no bias"),
    (["--head", "sphereface"], "must be one of linear, cosface, arcface"),
    (["--head", "cosface", "--head-margin", "2"], "must be in [0.0, 1.5]"),
])
def test_head_settings_are_checked_together(argv, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve(argv)


def test_a_later_layer_may_fix_an_earlier_ones_head_setting(tmp_path):
    path = tmp_path / "arc.yaml"
    path.write_text("head: arcface\nhead_margin: 0.2\n")
    cfg, _ = resolve(["--config", str(path)])
    assert (cfg.head, cfg.head_margin) == ("arcface", 0.2)
    cfg, _ = resolve(["--config", str(path), "--head", "cosface"])  # the margin now applies to cosface
    assert (cfg.head, cfg.head_margin) == ("cosface", 0.2)


@pytest.mark.parametrize("argv, message", [
    (["--feat-dim", "1"], "'feat_dim' must be in [2, 4096]"),
    (["--seed", "100000000000000000000000"], "'seed' must be in [0, 9223372036854775807]"),
    (["--epochs", "3000000000"], "'epochs' must be in [1, 100000]"),
    (["--run-name", "../../x"], "must be a folder name, not a path"),
    (["--run-name", "sub/dir/x"], "must be a folder name, not a path"),
    (["--run-name", "/tmp/x"], "must be a folder name, not a path"),
])
def test_settings_that_used_to_break_later_are_refused_up_front(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(argv)


def test_home_folder_is_expanded():
    cfg, _ = resolve(["--output-dir", "~/runs", "--data-dir", "~/mnist"])
    assert cfg.output_dir == os.path.expanduser("~/runs") and not cfg.output_dir.startswith("~")
    assert cfg.data_dir == os.path.expanduser("~/mnist")


def test_duplicate_keys_and_foreign_encodings_name_the_file(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("epochs: 3\nlr: 0.1\nepochs: 4\n")
    with pytest.raises(ConfigError, match=r"twice.yaml.*'epochs' is given twice \(lines 1 and 3\)"):
        resolve(["--config", str(twice)])
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# r\xe9sum\xe9\nepochs: 3\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml.*not UTF-8"):
        resolve(["--config", str(latin)])


def test_a_short_run_gets_small_batches_and_the_short_recipe():
    """10,000 images x 3 epochs are 300 steps of 100: too few for the warm-up, so 1,200 steps of 25."""
    tuned, changed = configlib.for_short_run(Config(epochs=3), 10_000)
    assert (tuned.batch_size, tuned.lr, tuned.lr_warmup, tuned.center_loss_ramp) == (25, 0.05, 0.3, 1.0)
    assert changed == {"batch_size": (100, 25), "lr": (0.01, 0.05), "lr_warmup": (0.0, 0.3)}
    assert configlib.planned_steps(tuned, 10_000) == 1200
    assert configlib.for_short_run(Config(epochs=3), 20_000)[0].batch_size == 50  # only as small as needed


def test_the_short_run_rule_keeps_what_the_user_set_and_long_runs():
    assert configlib.for_short_run(Config(epochs=3, lr=0.02), 10_000)[0].lr == 0.02
    assert configlib.for_short_run(Config(epochs=3, batch_size=50), 10_000) == (Config(epochs=3, batch_size=50), {})
    assert configlib.for_short_run(Config(epochs=3, short_run="off"), 10_000)[1] == {}
    assert configlib.for_short_run(Config(), 60_000)[1] == {}  # the default full-MNIST run is unchanged
    assert configlib.for_short_run(Config(epochs=2), 60_000)[1] == {}  # 1,200 steps: enough
    seed = configlib.build(configlib.read_yaml(REPO / "configs" / "seed.yaml"))
    assert configlib.for_short_run(seed, 60_000)[1] == {}
    sample = configlib.build(configlib.read_yaml(REPO / "configs" / "mnist_sample.yaml"))
    assert configlib.for_short_run(sample, 4_000)[1] == {}  # the sample's recipe is fitted to its 600 steps
    assert configlib.for_short_run(Config(epochs=1), 100)[0].batch_size == 25  # never below 25


def test_a_run_too_short_for_the_warm_up_says_so_with_the_fix():
    assert configlib.warmup_warning(Config(), 60_000) is None
    assert configlib.warmup_warning(Config(epochs=3, batch_size=25), 10_000) is None
    few = configlib.warmup_warning(Config(epochs=2, batch_size=50), 10_000)
    assert "400 training steps are too few" in few and "--epochs 6" in few
    never = configlib.warmup_warning(Config(epochs=1), 60_000)
    assert "lambda stays 0 for the whole run" in never and "--epochs" in never
    assert configlib.warmup_warning(Config(epochs=1, center_loss_weight=0.0), 60_000) is None  # no pull to warm up
