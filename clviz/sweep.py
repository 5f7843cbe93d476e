"""Sweeps: one run per value of a config field (or per combination of several),
trained one after another into one folder and drawn side by side.

    python train.py --sweep center_loss_weight=0,0.003,0.01,0.1,1
    python train.py --sweep center_loss_weight=0,0.01 --sweep center_update=sgd,paper --sweep seed=0,1,2
    python train.py --resume outputs/<sweep>          # finish the members that did not finish

Each member is an ordinary run folder inside the sweep folder; the sweep's own
files (sweep.yaml, summary.csv, results.md, the grid pictures, the page) are
listed in docs/run_folder.md.

Members train one after another in this process, or several at once:
`--workers N` on this machine (workers.py), `--ray-address` on a Ray cluster
(cluster.py); member.py trains one member in whichever process runs it. A
member that diverges is recorded as such and the sweep goes on; Ctrl-C stops
the sweep after saving the members' finished epochs, and --resume picks up
where it stopped.
"""

import dataclasses
import itertools
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from clviz import cluster, errors, grid, report, run, runfiles, workers
from clviz import config as configlib
from clviz import member as memberlib
from clviz.background import BackgroundRenderer
from clviz.config import ConfigError
from clviz.grid import value_text
from clviz.member import Status
from clviz.runfiles import RunError

NOT_SWEEPABLE = ("output_dir", "run_name")
FINAL_COLUMNS = ("test_acc", "nearest_center_acc", "intra", "inter", "intra_inter_ratio", "open_auroc",
                 "open_auroc_softmax", "open_tnr95", "verify_eer", "verify_tar_at_far1e-3", "verify_auc")
# results.md: (column, header, digits); the open-set and verification ones only where a member has them.
RESULT_COLUMNS = (("test_acc", "test acc %", 2), ("nearest_center_acc", "nearest-center acc %", 2),
                  ("intra_inter_ratio", "intra / inter", 3), ("open_auroc", "open AUROC", 3),
                  ("open_auroc_softmax", "open AUROC (softmax)", 3), ("open_tnr95", "TNR@95 %", 1),
                  ("verify_eer", "verify EER %", 2), ("verify_tar_at_far1e-3", "TAR@FAR 0.1% %", 1))
ALWAYS_SHOWN = 3  # the first three RESULT_COLUMNS


def parse_axes(specs: list) -> list:
    """["key=v1,v2", ...] -> [(key, [typed values]), ...], every value checked."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not values.strip():
            raise ConfigError(f"--sweep {spec!r} must look like KEY=V1,V2,... e.g. --sweep center_loss_weight=0,0.01,0.1")
        if key in NOT_SWEEPABLE:
            raise ConfigError(f"--sweep cannot vary {key!r}: the sweep names its members' folders itself")
        if any(key == seen for seen, _ in axes):
            raise ConfigError(f"--sweep names {key!r} twice; give all its values in one --sweep {key}=...")
        texts = [v.strip() for v in values.split(",")]
        if "" in texts:
            raise ConfigError(f"--sweep {spec!r} has an empty value; separate values by single commas")
        typed = [configlib.coerce(key, text, from_text=True) for text in texts]
        if len(set(map(str, typed))) != len(typed):
            raise ConfigError(f"--sweep {key} repeats a value ({values}); list each value once")
        axes.append((key, typed))
    return axes


def member_name(values: dict) -> str:
    return "__".join(f"{key}={value_text(value)}" for key, value in values.items()).replace("/", "_")


def members_of(axes: list) -> list:
    """Every combination, first axis varying slowest: [{"name", "values"}, ...]."""
    keys = [key for key, _ in axes]
    return [{"name": member_name(dict(zip(keys, combo))), "values": dict(zip(keys, combo))}
            for combo in itertools.product(*[values for _, values in axes])]


def start(args) -> tuple:
    """A new sweep folder with its sweep.yaml; (folder, shared config, members)."""
    axes = parse_axes(args.sweep)
    for key, _ in axes:
        if hasattr(args, key):
            raise ConfigError(f"{configlib.flag(key)} and --sweep {key}=... both set {key!r}; keep one")
    base, config_name = configlib.resolve(args)
    members = members_of(axes)
    for member in members:  # every combination must be a valid config before anything is written
        configlib.check_together(dataclasses.replace(base, **member["values"]))
    runfiles.check_writable(Path(base.output_dir))
    sweep_dir = runfiles.make_folder(base.output_dir, base.run_name, f"sweep-{'-'.join(key for key, _ in axes)}")
    meta = {"axes": [{"key": key, "values": values} for key, values in axes], "members": members,
            "config_file": config_name, "config": configlib.to_dict(base)}
    try:
        runfiles.write_sweep_meta(sweep_dir, meta)
    except BaseException:  # a folder without its sweep.yaml would only block the next attempt
        shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    return sweep_dir, base, members


def main(args) -> int:
    """Train every member that has not finished; then summary, grid and page."""
    resume_dir = getattr(args, "resume", None)
    spread = configlib.sweep_spread(args, sweeping=True)
    ray = cluster.connect(spread.ray_address) if spread.ray_address else None
    try:
        return train_sweep(args, resume_dir, spread, ray)
    finally:
        if ray is not None:
            ray.shutdown()


def train_sweep(args, resume_dir, spread, ray) -> int:
    if resume_dir:
        sweep_dir = Path(resume_dir)
        overrides = run.resume_overrides(args)
        meta = runfiles.read_sweep_meta(sweep_dir)
        base = configlib.build(overrides, from_text=True, base=configlib.build(meta["config"]))
        members = meta["members"]
        check_work_left(sweep_dir, members, base.epochs)
        if overrides:  # the sweep remembers, e.g., a longer --epochs for its next resume
            runfiles.write_sweep_meta(sweep_dir, {**meta, "config": configlib.to_dict(base)})
    else:
        sweep_dir, base, members = start(args)
        overrides = {}
    state = SweepState.read(sweep_dir, members)
    where = (f", on the Ray cluster at {spread.ray_address}" if spread.ray_address else
             f", {spread.workers} at a time" if spread.workers > 1 else "")
    print(f"sweep {sweep_dir}: {len(members)} members, {base.epochs} epochs each{where}")
    if spread.workers > 1 and base.num_threads == 0:
        print(thread_note(workers.threads_per_worker(spread.workers), torch.get_num_threads()))
    try:
        if spread.ray_address or spread.workers > 1:
            code = train_spread(state, base, overrides, spread, ray)
        else:
            code = train_members(state, base, overrides)
    except KeyboardInterrupt as stop:  # between members (a member's own epochs handle Ctrl-C themselves)
        code = errors.stop_code(stop)
    try:
        finish(sweep_dir)
    except (MemoryError, OSError, RuntimeError) as err:  # the machine's fault while drawing: say what to redraw
        drawn_code, line = errors.explain(err, when=" while drawing the sweep's grid and page",
                                          kept="every member's finished epochs are kept",
                                          then=f"redraw with python visualize.py {sweep_dir}")
        print(line, file=sys.stderr)
        return drawn_code
    if code in errors.STOPPED:
        print(f"sweep interrupted; resume with: python train.py --resume {sweep_dir}")
        return code
    failed = [name for name, status in SweepState.read(sweep_dir, members).statuses.items() if status and status.failed]
    if failed:
        print(f"error: {len(failed)} member{'s' if len(failed) != 1 else ''} failed ({', '.join(failed[:3])}"
              f"{', ...' if len(failed) > 3 else ''}); its console says why ({sweep_dir / memberlib.CONSOLE_DIR}/"
              f"<member>.txt, or above); fix that and resume with: python train.py --resume {sweep_dir}",
              file=sys.stderr)
        return errors.EXIT_FAULT
    return 0


def thread_note(member_threads: int, alone_threads: int) -> str:
    """What a split of the CPU threads means for the results (README, "Members in parallel")."""
    if member_threads == alone_threads:
        return f"each member trains on {member_threads} CPU thread{'s' if member_threads != 1 else ''}, as it would alone"
    return (f"each member trains on {member_threads} of the {alone_threads} CPU threads a member alone would use: the "
            "metrics then match a one-after-another sweep to the last bit only on thread-count-independent paths "
            f"(fp32 FFT convs on AVX2); add --num-threads {member_threads} to both for the same bits on any CPU")


def check_work_left(sweep_dir: Path, members: list, epochs: int) -> None:
    """Refuse to resume a sweep whose every member has finished (or diverged), as a finished run is refused."""
    state = SweepState.read(sweep_dir, members)
    for member in members:
        done = memberlib.epochs_done(Path(sweep_dir) / member["name"])
        if state.of(member) != Status.DIVERGED and done < epochs:
            return
    raise RunError(f"sweep {sweep_dir} already finished all {epochs} epochs of every member; pass --epochs N "
                   f"(N > {epochs}) to train further, or redraw it with python visualize.py {sweep_dir}")


def train_members(state: "SweepState", base, overrides: dict) -> int:
    """One member after another in this process, with one drawing process and one copy of the data for all."""
    datasets, code = {}, 0
    renderer = BackgroundRenderer()
    members = state.members
    try:
        for number, member in enumerate(members, start=1):
            if state.of(member) == Status.DIVERGED:
                print(f"[{number}/{len(members)}] {member['name']}: diverged before, skipped")
                continue
            if left_to_train(state.folder, base, member, overrides) == 0:
                continue
            print(f"[{number}/{len(members)}] {member['name']}")
            code = memberlib.train_member(state.folder, base, member, overrides, renderer=renderer, datasets=datasets)
            code = errors.EXIT_OK if code is None else code
            state.set(member, Status.of(code))
            state.write()
            if code in errors.STOPPED:
                break
    finally:
        renderer.close()
    return code


def left_to_train(sweep_dir: Path, base, member: dict, overrides: dict) -> int:
    """Epochs the member still has to train (its own config.yaml's count once it has started)."""
    member_dir = Path(sweep_dir) / member["name"]
    if (member_dir / runfiles.CHECKPOINT).is_file():
        cfg, checkpoint = run.resumed_config(runfiles.existing_run_dir(member_dir), overrides)
        return max(0, cfg.epochs - checkpoint["epoch"])
    return base.epochs


def train_spread(state: "SweepState", base, overrides: dict, spread, ray=None) -> int:
    """Members in worker processes (--workers) or as Ray tasks (--ray-address); the summary,
    results table, grid picture and page are redrawn as each member ends."""
    sweep_dir = state.folder
    todo = [m for m in state.members if state.of(m) != Status.DIVERGED
            and left_to_train(sweep_dir, base, m, overrides) > 0]
    progress = memberlib.Progress(sweep_dir, state.members)
    for member in todo:
        state.set(member, Status.TRAINING)

    def on_done(member, code):
        status = Status.of(code)
        if status == Status.INTERRUPTED and memberlib.epochs_done(sweep_dir / member["name"]) == 0:
            status = Status.NOT_STARTED  # cancelled while queued, or stopped in its first epoch: nothing kept
        state.set(member, status)
        progress.ended(member, status)
        draw_progress(state)

    try:
        draw_progress(state)
        if spread.ray_address:
            return cluster.train_on_ray(ray, sweep_dir, base, todo, overrides, spread, progress, on_done,
                                        expected_datasets(sweep_dir, base, todo))
        return workers.train_in_workers(sweep_dir, base, todo, overrides, spread.workers, progress, on_done)
    finally:  # members that never ran (stopped before their turn) are "not started", as in a sequential sweep
        for member in state.members:
            if state.of(member) == Status.TRAINING:
                state.set(member, None)
        state.write()


def expected_datasets(sweep_dir: Path, base, todo: list) -> dict:
    """{member name: the data this machine finds for it}. Every node must find the same (one without the
    data folder would fall back to the sample); each distinct data setting is loaded once."""
    found, expected = {}, {}
    for member in todo:
        cfg = memberlib.member_config(base, sweep_dir, member)
        key = memberlib.data_key(cfg)
        if key not in found:
            found[key] = run.load_dataset(cfg).name
        expected[member["name"]] = found[key]
    return expected


def draw_progress(state: "SweepState") -> None:
    """summary.csv, results.md, the newest grid picture and the live page, while members still train."""
    sweep_dir, members = state.folder, state.members
    rows = state.write()
    runfiles.write_text(sweep_dir / "results.md", results_table(runfiles.read_sweep_meta(sweep_dir), rows))
    done = sum(row["status"] not in (Status.NOT_STARTED, Status.TRAINING) for row in rows)
    grid.make_grid(sweep_dir, configlib.build(runfiles.read_sweep_meta(sweep_dir)["config"]), newest_only=True)
    report.write_sweep_report(sweep_dir, running=(done, len(members)))


def finish(sweep_dir: Path) -> None:
    """Summary, results table, grid GIF and page from what is on disk."""
    meta = runfiles.read_sweep_meta(sweep_dir)
    rows = SweepState.read(sweep_dir, meta["members"]).write()
    table = results_table(meta, rows)
    runfiles.write_text(sweep_dir / "results.md", table)
    print(table)
    made = grid.make_grid(sweep_dir, configlib.build(meta["config"]))
    report.write_sweep_report(sweep_dir)
    if made:
        print(f"wrote {sweep_dir / 'grid.gif'}, grid.png, metrics.png and {sweep_dir / 'index.html'} (open it in a browser)")


# ---------- summary ----------

@dataclass
class SweepState:
    """Each member's Status while a sweep runs, and summary.csv written from it. None: not known
    here; the member's own files decide (not started, interrupted or finished)."""
    folder: Path
    members: list
    statuses: dict  # member name -> Optional[Status]

    @classmethod
    def read(cls, folder, members: list) -> "SweepState":
        """The statuses summary.csv holds (none for a new sweep)."""
        saved = {row["member"]: Status.parse(row["status"]) for row in runfiles.read_summary(folder)}
        return cls(Path(folder), members, {m["name"]: saved.get(m["name"]) for m in members})

    def of(self, member: dict) -> Optional[Status]:
        return self.statuses.get(member["name"])

    def set(self, member: dict, status: Optional[Status]) -> None:
        self.statuses[member["name"]] = status

    def write(self) -> list:
        """summary.csv: one row per member from its metrics.csv (the last finished epoch); the rows."""
        rows = []
        for member in self.members:
            member_dir = self.folder / member["name"]
            metrics = runfiles.read_metrics(member_dir) if (member_dir / runfiles.METRICS).is_file() else []
            last = metrics[-1] if metrics else {}
            epochs = runfiles.read_config(member_dir).get("epochs", "")
            status = self.of(member) or (Status.INTERRUPTED if metrics else Status.NOT_STARTED)
            if metrics and epochs and len(metrics) >= epochs:
                status = Status.FINISHED
            row = {"member": member["name"], **{k: value_text(v) for k, v in member["values"].items()},
                   "status": status.value, "epochs_done": len(metrics), "epochs": epochs,
                   "dataset": last.get("dataset", "")}
            row.update({column: last.get(column, "") for column in FINAL_COLUMNS})
            rows.append(row)
        runfiles.write_summary(self.folder, rows)
        return rows


def _number(text) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _mean_std(values: list, digits: int) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def results_table(meta: dict, rows: list) -> str:
    """Markdown: one line per setting; over a `seed` axis, mean ± sample std of the finished seeds."""
    keys = [axis["key"] for axis in meta["axes"]]
    group_keys = [key for key in keys if key != "seed"] if "seed" in keys else keys
    groups = {}
    for row in rows:
        groups.setdefault(tuple(str(row[key]) for key in group_keys), []).append(row)
    seeds = "seed" in keys
    columns = [c for i, c in enumerate(RESULT_COLUMNS) if i < ALWAYS_SHOWN or any(_number(r.get(c[0])) is not None
                                                                                  for r in rows)]
    header = group_keys + ["runs"] + [name for _, name, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for setting, members in groups.items():
        done = [m for m in members if m["status"] == Status.FINISHED]
        other = [m for m in members if m["status"] != Status.FINISHED]
        runs = f"{len(done)}/{len(members)}" + (f" ({', '.join(sorted({m['status'] for m in other}))})" if other else "")
        cells = [_mean_std([_number(m.get(col)) for m in done if _number(m.get(col)) is not None], digits)
                 for col, _, digits in columns]
        lines.append("| " + " | ".join(list(setting) + [runs] + cells) + " |")
    note = " Mean ± sample standard deviation over the seeds." if seeds else ""
    config = meta["config"]
    dataset = next((row["dataset"] for row in rows if row["dataset"]), config["dataset"])
    source = (f"\nFinal epoch of each run; test set of {dataset}, {config['epochs']} epochs"
              f"{', ' + str(config['train_subset']) + ' training images' if config.get('train_subset') else ''}.{note}"
              " Unfinished runs are counted but left out of the numbers.\n")
    return "\n".join(lines) + "\n" + source
