"""A run's GIF: every frame redrawn with its final axis limits (each epoch's
own box, or one for the whole run: frame_axes), then written as one looping
GIF on a shared palette."""

import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import imageio.v3 as iio
import numpy as np
from PIL import Image

from clviz import frames, runfiles
from clviz.background import BackgroundRenderer
from clviz.config import Config
from clviz.runfiles import atomic_path

GIF_NAME = "features.gif"
TURNTABLE_NAME = "features_turntable.gif"  # 3-D runs: the last epoch, turned once around
TURNTABLE_STEP = 10  # degrees per turntable frame: 36 frames


def redraw(run_dir: Path, *, options: frames.FrameOptions = frames.FrameOptions(),
           renderer: Optional[BackgroundRenderer] = None) -> list:
    """Redraw every frame that has saved embeddings, with one set of axis limits
    for the whole run or one per epoch (options.axes). Returns the frame paths in epoch order."""
    run_dir = Path(run_dir)
    files = runfiles.embedding_files(run_dir)
    if not files:
        return []
    dim = frames.feature_dim(files[-1])
    projection = frames.run_projection(files)
    limits = frames.frame_limits(files, options.axes, projection, dim)
    (run_dir / runfiles.FRAMES).mkdir(exist_ok=True)
    pngs = [runfiles.frame_path(run_dir, runfiles.epoch_of(path)) for path in files]
    own = renderer is None
    renderer = renderer or BackgroundRenderer(workers=max(1, min(len(files) // 8, (os.cpu_count() or 1))))
    try:
        for npz, png, box in zip(files, pngs, limits):
            renderer.submit(frames.render_frame, str(npz), str(png), box, options, projection=projection)
        renderer.wait()
    finally:
        if own:
            renderer.close()
    return pngs


def write_gif(frame_paths: Sequence[Path], gif_path: Path, *, duration_ms: int, hold_last_ms: int) -> None:
    """An endlessly looping GIF. All frames are mapped onto one palette taken
    from the first, middle and last frame, so colours stay stable and Pillow
    does no per-frame colour quantisation (most of a naive GIF write's time).
    Durations in milliseconds: every frame, and the last one."""
    paths = list(frame_paths)
    if not paths:
        raise ValueError("no frames to put in a GIF")
    def read(path):
        return iio.imread(path)[..., :3]

    sample = np.concatenate([read(paths[k]) for k in sorted({0, len(paths) // 2, len(paths) - 1})], axis=0)
    palette = Image.fromarray(sample).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)

    def indexed(path):
        return np.asarray(Image.fromarray(read(path)).quantize(palette=palette, dither=Image.Dither.NONE))

    # Pillow decodes and maps outside the GIL: one thread per core halves this part on two cores.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        palette_frames = np.stack(list(pool.map(indexed, paths)))
    durations = [duration_ms] * (len(palette_frames) - 1) + [hold_last_ms]
    if len(durations) == 1:
        durations = durations[0]  # Pillow takes a list only for several frames
    with atomic_path(gif_path) as tmp:
        # Frames go in as "L" (palette indices) with the palette beside them: Pillow then
        # finds every palette colour at its own index. As "P" frames it would first try to
        # match our palette against a default grey one, a Python loop of ~30 ms per frame
        # (4.7 of 6.3 s for 150 frames, profiled; the LZW encoding itself took 0.25 s).
        # The pillow plugin takes durations in milliseconds; loop=0 loops forever.
        iio.imwrite(tmp, palette_frames, extension=".gif", plugin="pillow", mode="L", palette=palette.getpalette()[:768],
                    duration=durations, loop=0, optimize=False)


def make_gif(run_dir: Path, cfg: Config, *, options: Optional[frames.FrameOptions] = None,
             duration_ms: Optional[int] = None, hold_last_ms: Optional[int] = None,
             renderer: Optional[BackgroundRenderer] = None) -> Optional[Path]:
    """Redraw the frames with run-wide limits, then write features.gif. Options
    and durations not given are the run's config `cfg`."""
    pngs = redraw(run_dir, options=options or frames.FrameOptions.from_config(cfg), renderer=renderer)
    if not pngs:
        return None
    gif = Path(run_dir) / GIF_NAME
    write_gif(pngs, gif, duration_ms=duration_ms or cfg.frame_duration_ms,
              hold_last_ms=hold_last_ms or cfg.gif_hold_last_ms)
    if frames.feature_dim(runfiles.embedding_files(run_dir)[-1]) == 3:
        make_turntable(run_dir, options or frames.FrameOptions.from_config(cfg), duration_ms or cfg.frame_duration_ms)
    return gif


def make_turntable(run_dir: Path, options: frames.FrameOptions, duration_ms: int) -> Path:
    """features_turntable.gif: the last saved epoch of a 3-D run, the camera
    turned once around it (36 frames, 10 degrees apart), axes as in the GIF."""
    files = runfiles.embedding_files(run_dir)
    last = files[-1]
    box = frames.frame_limits(files, options.axes, dim=3)[-1]
    start = frames.azimuth_of(runfiles.epoch_of(last))
    with tempfile.TemporaryDirectory(prefix="clviz-turntable-") as folder:
        pngs = []
        for step in range(360 // TURNTABLE_STEP):
            pngs.append(Path(folder) / f"{step:03d}.png")
            frames.render_frame(str(last), str(pngs[-1]), box, options, azimuth=start + TURNTABLE_STEP * step)
        out = Path(run_dir) / TURNTABLE_NAME
        write_gif(pngs, out, duration_ms=duration_ms, hold_last_ms=duration_ms)
    return out
