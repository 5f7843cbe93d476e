"""Decision regions, the angular view and class names, against the model itself."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from clviz import frames, gif
from nets import Head


@pytest.mark.parametrize("kind, bias", [("linear", False), ("linear", True), ("cosface", False), ("arcface", False)])
def test_decision_regions_are_the_heads_own_argmax(kind, bias):
    torch.manual_seed(3)
    head = Head(2, 10, kind, bias=bias)
    limits = np.array([-7.0, 5.0, -4.0, 8.0])
    regions = frames.decision_regions(limits, kind, head.weight.detach().numpy(),
                                         None if head.bias is None else head.bias.detach().numpy(), resolution=50)
    xs, ys = np.linspace(-7, 5, 50), np.linspace(-4, 8, 50)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=torch.float32)
    with torch.no_grad():
        expected = head(grid).argmax(1).numpy().reshape(50, 50)  # row 0 = lowest y, as drawn with origin="lower"
    assert (regions == expected).mean() > 0.995  # ties on exact boundaries may go either way


def test_normalized_heads_have_sector_regions():
    """For a cosine head the class depends on the direction only: scaling a point keeps its class."""
    weight = np.random.default_rng(0).normal(size=(10, 2))
    points = np.random.default_rng(1).normal(size=(200, 2))
    near = frames.class_scores(points, "cosface", weight).argmax(1)
    far = frames.class_scores(points * 37.0, "cosface", weight).argmax(1)
    assert (near == far).all()


def fake_embedding(head="linear", names=tuple("0123456789")):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30).astype(np.uint8)
    angles = labels * (2 * np.pi / 10) + rng.normal(0, 0.1, 300)
    features = np.stack([np.cos(angles), np.sin(angles)], 1) * rng.uniform(2, 8, (300, 1))
    weight = np.stack([np.cos(np.arange(10) * 2 * np.pi / 10), np.sin(np.arange(10) * 2 * np.pi / 10)], 1)
    return dict(train_features=features.astype(np.float16), train_labels=labels, test_features=features.astype(np.float16),
                test_labels=labels, centers=(weight * 5).astype(np.float32), head=np.str_(head),
                head_scale=np.float64(30.0), head_margin=np.float64(0.15), head_weight=weight.astype(np.float32),
                class_names=np.array(names), epoch=np.int32(1), epochs=np.int32(5), test_acc=np.float32(99.0),
                dataset=np.str_("mnist"), center_loss_weight=np.float64(0.01), center_update=np.str_("sgd"),
                limits=frames.robust_limits(features, weight * 5))


def test_the_title_is_composed_from_the_fields():
    assert frames.frame_title(fake_embedding()) == ("epoch 1/5  ·  test acc 99.00%  ·  λ = 0.01  ·  sgd centers  ·  "
                                                    "linear head  ·  mnist")
    assert "arcface s=30 m=0.15" in frames.frame_title(fake_embedding("arcface"))


def test_angular_view_adds_the_angle_histogram_and_names_the_classes(tmp_path):
    emb = fake_embedding("arcface", names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                           "Sneaker", "Bag", "Ankle boot"))
    options = frames.FrameOptions()
    assert options.view_for("arcface") == "angular" and options.view_for("linear") == "plane"
    renderer = frames.FrameRenderer(options, "angular")
    renderer.draw(emb, emb["limits"], tmp_path / "a.png")
    assert [t.get_text() for t in renderer.legend.get_texts()][:2] == ["T-shirt/top", "Trouser"]
    # Every class's histogram peaks at the angle of its weight (the features were built that way).
    for digit, stairs in enumerate(renderer.hists):
        peak = renderer.bins[np.argmax(stairs.get_data().values)]
        expected = np.degrees(np.arctan2(emb["head_weight"][digit, 1], emb["head_weight"][digit, 0]))
        assert abs((peak - expected + 180) % 360 - 180) < 10
    plane = frames.FrameRenderer(options, "plane")
    plane.draw(emb, frames.square_limits([emb["limits"]]), tmp_path / "p.png")
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "p.png") as p:
        assert a.width > p.width * 1.3  # the third panel


def test_regions_are_shaded_only_when_asked(tmp_path):
    emb = fake_embedding()
    limits = frames.square_limits([emb["limits"]])
    for regions in (True, False):
        renderer = frames.FrameRenderer(frames.FrameOptions(regions=regions), "plane")
        renderer.draw(emb, limits, tmp_path / f"{regions}.png")
        assert renderer.regions["test"].get_visible() == regions
    with Image.open(tmp_path / "True.png") as on, Image.open(tmp_path / "False.png") as off:
        # The shading tints the empty plane: far fewer pure white pixels.
        white = lambda im: (np.asarray(im.convert("RGB")) == 255).all(-1).mean()
        assert white(on) < white(off) - 0.1


def full_redraw_pixels(renderer):
    """The figure as matplotlib draws it from scratch, every artist in zorder."""
    renderer.fig.canvas.draw()
    return np.asarray(renderer.fig.canvas.buffer_rgba())[..., :3].copy()


@pytest.mark.parametrize("view, head", [("plane", "linear"), ("angular", "arcface")])
def test_cached_background_frames_match_a_full_redraw(tmp_path, view, head):
    first = fake_embedding(head)
    second = dict(fake_embedding(head), epoch=np.int32(2))
    second["test_features"] = (second["test_features"] * 1.7).astype(np.float16)  # other points, other limits
    second["test_labels"] = second["test_labels"][::-1].copy()
    second["centers"] = second["centers"] * -1
    renderer = frames.FrameRenderer(frames.FrameOptions(), view)
    renderer.draw(first, frames.square_limits([first["limits"]]), tmp_path / "1.png")
    limits = frames.square_limits([first["limits"] * 2])  # grown limits: the background must be redone
    renderer.draw(second, limits, tmp_path / "2.png")
    with Image.open(tmp_path / "2.png") as png:
        reused = np.asarray(png.convert("RGB")).astype(int)
    fresh = frames.FrameRenderer(frames.FrameOptions(), view)
    fresh.draw(second, limits, tmp_path / "3.png")
    with Image.open(tmp_path / "3.png") as png:
        assert np.array_equal(reused, np.asarray(png.convert("RGB")))  # nothing of the first frame is left
    # Against matplotlib's own full draw: only the grid lines under the shading may differ.
    differs = np.abs(reused - full_redraw_pixels(renderer).astype(int)).max(-1) > 40
    assert differs.mean() < 0.01
    assert renderer.fig.axes[0].get_title() in ("train (300 points)",)


def read_gif(path):
    return iio.imread(path, index=None, plugin="pillow", mode="RGB").astype(int)


def test_gif_of_few_colours_is_exact(tmp_path):
    """Four flat colours fit any palette: the GIF must give back the very pixels
    (the palette is mostly padding here, which Pillow must not mix up)."""
    colours = np.array([[255, 255, 255], [31, 119, 180], [214, 39, 40], [0, 0, 0]], dtype=np.uint8)
    rng = np.random.default_rng(0)
    pictures = [colours[rng.integers(0, 4, (40, 60))] for _ in range(5)]
    paths = []
    for k, frame in enumerate(pictures):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(frame).save(paths[-1])
    gif.write_gif(paths, tmp_path / "few.gif", duration_ms=50, hold_last_ms=300)
    back = read_gif(tmp_path / "few.gif")
    assert back.shape == (5, 40, 60, 3)
    assert np.array_equal(back, np.stack(pictures).astype(int))


def test_gif_keeps_real_frames_close_to_their_pngs(tmp_path):
    emb = fake_embedding()
    renderer = frames.FrameRenderer(frames.FrameOptions(), "plane")
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"{k}.png")
        renderer.draw(dict(emb, epoch=np.int32(k + 1)), frames.square_limits([emb["limits"] * (1 + k)]), paths[-1])
    gif.write_gif(paths, tmp_path / "real.gif", duration_ms=200, hold_last_ms=1500)
    back = read_gif(tmp_path / "real.gif")
    for k, path in enumerate(paths):
        with Image.open(path) as png:
            error = np.abs(back[k] - np.asarray(png.convert("RGB")).astype(int)).max(-1)
        assert error.mean() < 3 and (error <= 24).mean() > 0.99  # 256 shared colours, no dithering
    assert not np.array_equal(back[0], back[2])
