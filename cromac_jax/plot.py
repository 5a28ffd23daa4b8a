"""Plots of trained runs (matplotlib, PNG): learning curves like the paper's Figure 3, and win
rate (or return) against the attack budget from ``cromac eval``'s tables.

Typical use::

    cromac plot runs/sweep                       # a sweep directory: every run directory in it
    cromac plot runs/a runs/b --out plots --metric return

or from Python::

    curves = [load_curves(d) for d in run_dirs]   # reads config.yaml and metrics.jsonl
    fig = learning_curves_figure(curves)          # a matplotlib Figure; nothing is drawn on screen
    paths = plot(run_dirs, out_dir="plots")       # both figures as PNG files

What is drawn.

* **Learning curves** (``learning_curves_<metric>.png``): the periodic greedy test episodes that
  ``cromac train`` writes into ``metrics.jsonl`` (``kind: "test"`` rows), test win rate (or
  return) against env steps; natural episodes solid, under FGSM at the run's ``cromac.eps``
  dashed (methods that read no messages, i.e. qmix, have no attacked curve: an attack cannot
  change their decisions). Line: mean over seeds; band: the standard error of that mean (sample
  std / sqrt(seeds); no band for one seed; a win rate's band clipped to [0, 1]). One colour per method, one subplot per env (preset
  and its ``env.overrides``: a changed env is another env). The x
  value of a test row is the mean env step of the seeds (they differ by less than a chunk).
  Run directories with the same env and method (and mixer) are pooled: their seeds are
  interpolated onto the grid of the run with most test rows, within each seed's own range
  (plus half its test spacing); outside it a seed does not count.
* **Budget curves** (``budget_<metric>.png``): from the newest ``eval_<step>.json`` of each run
  (every channel attacked; the ``_teammates`` table only when it is the only one), win rate
  against the absolute perturbation radius eps, one subplot per attack (and env), one colour
  per method, starting from the natural episodes at eps = 0; mean and standard error over
  seeds, the config eps marked. Run directories without eval tables are skipped with a message
  saying so.

Rendering uses matplotlib's Agg canvas through ``matplotlib.figure.Figure`` (pyplot is never
imported, so no display and no global figure state are involved).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from cromac_jax.config import METHODS, Config, ConfigError, check_output_dir

if TYPE_CHECKING:  # matplotlib is imported by the functions that draw (building the CLI parser stays cheap)
    from matplotlib.figure import Figure

METRICS = ("won", "return")
_Y_LABEL = {"won": "test win rate", "return": "test return"}
_EVAL_FIELD = {"won": "win", "return": "return"}
#: Fixed colours so that a method has the same colour in every figure.
METHOD_COLOURS = {
    "cromac": "tab:red",
    "cromac_no_robust": "tab:orange",
    "full_comm": "tab:blue",
    "ame": "tab:green",
    "qmix": "tab:purple",
}
_SPARE_COLOURS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "black")
_ATTACK_TITLES = {"fgsm": "FGSM", "pgd": "PGD", "random": "random noise"}


def _plot_error(message: str) -> Exception:
    """The error ``cromac`` prints as one line (``CheckpointError``, as evaluate and runner use
    for a path that is not a usable run directory). Imported lazily: it pulls in orbax."""
    from cromac_jax.checkpoint import CheckpointError

    return CheckpointError(message)


# ============================================================================== reading run dirs
@dataclass
class RunCurves:
    """The test rows of one run directory: ``t_env`` [T, S] and, per prefix (``test``,
    ``test_fgsm``) and metric (``won``, ``return``), the per-seed values [T, S]."""

    run_dir: Path
    cfg: Config
    t_env: np.ndarray
    series: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def env(self) -> str:
        return env_label(self.cfg)

    @property
    def method(self) -> str:
        return self.cfg.train.method

    @property
    def label(self) -> str:
        """The method, with the mixer when it is not the default QMIX one (``cromac/vdn``)."""
        mixer = self.cfg.model.mixer
        return self.method if mixer == "qmix" else f"{self.method}/{mixer}"

    @property
    def eps(self) -> float:
        return float(self.cfg.cromac.eps)

    @property
    def n_seeds(self) -> int:
        return int(self.t_env.shape[1])

    @property
    def steps(self) -> np.ndarray:
        """The x value of every test row: the mean env step over seeds."""
        return self.t_env.mean(axis=1)


def env_label(cfg: Config) -> str:
    """The env preset, with its constructor overrides when there are any (they change the env:
    ``hallway_4x5x6 (state_numbers=[2, 2])``); runs are grouped into subplots by this."""
    over = dict(cfg.env.overrides)
    if not over:
        return cfg.env.name
    return f"{cfg.env.name} ({', '.join(f'{k}={v}' for k, v in sorted(over.items()))})"


def _read_config(run_dir: Path) -> Config:
    """``checkpoint.read_config`` (the one reader of a run's config), imported here: it pulls in orbax."""
    from cromac_jax.checkpoint import read_config

    return read_config(run_dir)


def expand_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (holding ``config.yaml``) as given; a sweep directory stands for the run
    directories directly inside it. A missing path, or one that is neither, is one clear error."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            raise _plot_error(f"run directory {str(path)!r} " + ("is a file" if path.exists() else "does not exist"))
        if (path / "config.yaml").is_file():
            found = [path]
        else:
            found = sorted(d for d in path.iterdir() if d.is_dir() and (d / "config.yaml").is_file())
            if not found:
                raise _plot_error(f"{str(path)!r} is not a run directory (no config.yaml) nor a sweep directory holding any")
        for d in found:
            if d.resolve() not in {o.resolve() for o in out}:
                out.append(d)
    if not out:
        raise _plot_error("no run directories given")
    return out


def _test_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The ``kind: "test"`` rows in the order written; after a resume, the rows a resumed run
    wrote again replace the earlier ones at the same or later env steps."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise _plot_error(f"run directory {str(run_dir)!r} has no metrics.jsonl: train it first (cromac train)")
    rows: list[dict[str, Any]] = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the line a run killed mid-write leaves: the rows before it stand
                break
            raise _plot_error(f"{str(path)!r} line {n} is not JSON") from None
        if not isinstance(rec, dict) or rec.get("kind") != "test":
            continue
        try:
            t = min(rec["t_env"])
        except (KeyError, TypeError, ValueError):
            raise _plot_error(f"{str(path)!r} line {n}: a test row without a list of env steps ('t_env')") from None
        while rows and min(rows[-1]["t_env"]) >= t:
            rows.pop()
        rows.append(rec)
    if not rows:
        raise _plot_error(f"run directory {str(run_dir)!r} has no test results yet (no 'test' rows in metrics.jsonl)")
    return rows


def load_curves(run_dir: str | Path) -> RunCurves:
    """Read one run directory's config and the test rows of its ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise _plot_error(f"run directory {str(run_dir)!r} " + ("is a file" if run_dir.exists() else "does not exist"))
    if not (run_dir / "config.yaml").is_file():
        raise _plot_error(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    cfg = _read_config(run_dir)
    rows = _test_rows(run_dir)
    series: dict[str, dict[str, np.ndarray]] = {}
    try:  # one value per seed in every row, or the file is not what cromac train writes
        t_env = np.asarray([r["t_env"] for r in rows], np.float64)
        for prefix in ("test", "test_fgsm"):
            if all(f"{prefix}_won_mean" in r for r in rows):
                series[prefix] = {m: np.asarray([r[f"{prefix}_{m}_mean"] for r in rows], np.float64) for m in METRICS}
    except (KeyError, TypeError, ValueError) as e:
        raise _plot_error(f"{str(run_dir / 'metrics.jsonl')!r} has test rows that are not one number per seed "
                          f"({type(e).__name__}: {str(e)[:80]})") from None
    if "test" not in series:
        raise _plot_error(f"{str(run_dir / 'metrics.jsonl')!r} has test rows without 'test_won_mean'")
    return RunCurves(run_dir, cfg, t_env, series)


@dataclass
class BudgetCurves:
    """One run's eval table (``eval_<step>.json``): rows as ``eval_grid`` writes them."""

    run_dir: Path
    path: Path
    env: str
    method: str
    label: str
    config_eps: float
    step: int
    seeds: int
    attack_own: bool
    rows: list[dict[str, Any]]


_EVAL_NAME = re.compile(r"^eval_(\d+)(_teammates)?\.json$")


def find_eval_json(run_dir: str | Path) -> Path | None:
    """The newest eval table of a run (highest step; every-channel before teammates-only)."""
    found = []
    for p in Path(run_dir).glob("eval_*.json"):
        m = _EVAL_NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), m.group(2) is None, p))
    return max(found)[2] if found else None


def load_budget_curves(run_dir: str | Path) -> BudgetCurves | None:
    """The newest eval table of ``run_dir``, or None when ``cromac eval`` has not been run."""
    run_dir = Path(run_dir)
    path = find_eval_json(run_dir)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise _plot_error(f"cannot read {str(path)!r}: {e}".replace("\n", " ")) from None
    try:
        mixer = data.get("mixer", "qmix")
        label = data["method"] if mixer == "qmix" else f"{data['method']}/{mixer}"
        env = data["env"]
        fields = (float(data["config_eps"]), int(data["step"]), int(data["seeds"]), bool(data.get("attack_own", True)))
        rows = data["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError("'rows' is not a list of rows")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e) if isinstance(e, TypeError) else type(e).__name__
        raise _plot_error(f"{str(path)!r} is not an eval table of cromac eval ({what})") from None
    if (run_dir / "config.yaml").is_file():  # the env's overrides are in the config, not the table
        cfg = _read_config(run_dir)
        if cfg.env.name == env:
            env = env_label(cfg)
    return BudgetCurves(run_dir, path, env, data["method"], label, *fields, rows)


# ============================================================================== statistics
def mean_and_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the last axis, ignoring NaN: mean, standard error of the mean (sample std /
    sqrt(n); 0 where n < 2) and the count n."""
    values = np.asarray(values, np.float64)
    n = np.sum(np.isfinite(values), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=-1) / np.where(n > 0, n, 1)
        mean = np.where(n > 0, mean, np.nan)
        dev = np.where(np.isfinite(values), values - mean[..., None], 0.0)
        var = np.sum(dev**2, axis=-1) / np.maximum(n - 1, 1)
        se = np.where(n >= 2, np.sqrt(var / np.maximum(n, 1)), 0.0)
    return mean, se, n


def _band(mean: np.ndarray, se: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """mean -+ se; a win rate's band is clipped to [0, 1] (it cannot leave that range)."""
    lo, hi = mean - se, mean + se
    return (np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)) if metric == "won" else (lo, hi)


def _pooled(runs: Sequence[RunCurves], prefix: str, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """x [T] and the seeds' values [T, S_total] of runs of one method, on the grid of the run with
    most test rows (its own seeds exact; other runs interpolated within each seed's range)."""
    runs = [r for r in runs if prefix in r.series]
    if not runs:
        return None
    base = max(runs, key=lambda r: len(r.steps))
    x = base.steps
    cols = []
    for r in runs:
        y = r.series[prefix][metric]
        if r is base:
            cols.append(y)
            continue
        steps = r.steps
        tol = 0.5 * (float(np.min(np.diff(steps))) if len(steps) > 1 else r.cfg.train.test_interval)
        for s in range(r.n_seeds):
            xs, ys = r.t_env[:, s], y[:, s]
            col = np.interp(x, xs, ys)  # constant beyond the ends, within half a test spacing
            col[(x < xs.min() - tol) | (x > xs.max() + tol)] = np.nan
            cols.append(col[:, None])
    return x, np.concatenate(cols, axis=1)


# ============================================================================== drawing helpers
def method_colours(labels: Iterable[str]) -> dict[str, str]:
    """A colour per method label: fixed for the known methods, spare colours for the rest."""
    out, spare = {}, iter(_SPARE_COLOURS * 4)
    for lab in labels:
        if lab not in out:
            out[lab] = METHOD_COLOURS.get(lab) or next(spare)
    return out


def _order(labels: Iterable[str]) -> list[str]:
    def key(lab: str) -> tuple[int, str]:
        base = lab.split("/")[0]
        return (METHODS.index(base) if base in METHODS else len(METHODS), lab)

    return sorted(set(labels), key=key)


def _steps_formatter(x: float, _pos: Any = None) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _new_figure(n_panels: int) -> tuple[Figure, list[Any]]:
    from matplotlib.figure import Figure

    rows, cols = _grid(n_panels)
    fig = Figure(figsize=(max(5.6 * cols, 7.5), 4.2 * rows + 0.6), layout="constrained", dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _finish(fig: Figure, handles: list[Any], title: str, subtitle: str) -> None:
    """A legend below the panels (as many columns as fit; the figure grows by its rows) and a
    two-line title."""
    width, height = fig.get_size_inches()
    longest = max(len(h.get_label()) for h in handles)
    ncols = max(1, min(len(handles), int(width / (0.9 + 0.075 * longest))))
    rows = math.ceil(len(handles) / ncols)
    fig.set_size_inches(width, height + 0.22 * rows)
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False, fontsize=9)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)


def _steps_label(x: float) -> str:
    """Env steps, 3 significant digits: 20006 -> '20k', 1_234_567 -> '1.23M'."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{float(f'{x / div:.3g}'):g}{suffix}"
    return f"{x:g}"


def _seeds_text(counts: Iterable[int]) -> str:
    """'3 seeds', '1 seed', or '1–5 seeds' when the envs' panels differ."""
    counts = sorted(set(counts))
    if not counts:
        return "no seeds"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{n} seed{'' if counts == [1] else 's'}"


def _eps_text(values: Iterable[float]) -> str:
    values = sorted(set(values))
    return f"eps {values[0]:g}" if len(values) == 1 else "each run's cromac.eps"


# ============================================================================== the figures
def learning_curves_figure(curves: Sequence[RunCurves], metric: str = "won") -> Figure:
    """Test ``metric`` against env steps: one subplot per env, one colour per method; natural
    solid, under FGSM dashed; mean over seeds with a standard-error band. Every line carries a
    gid ``"<method label>:natural"`` or ``"<method label>:fgsm"``, its band that gid + ``":se"``."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is invalid: choose one of {', '.join(METRICS)}")
    if not curves:
        raise ConfigError("no runs to plot")
    envs = list(dict.fromkeys(c.env for c in curves))
    labels = _order(c.label for c in curves)
    colours = method_colours(labels)
    fig, axes = _new_figure(len(envs))
    any_attacked = False
    seeds_of: dict[str, set[int]] = {}
    for ax, env in zip(axes, envs, strict=False):
        here = [c for c in curves if c.env == env]
        for lab in _order(c.label for c in here):
            group = [c for c in here if c.label == lab]
            for prefix, style, kind, alpha in (("test", "-", "natural", 0.2), ("test_fgsm", "--", "fgsm", 0.12)):
                pooled = _pooled(group, prefix, metric)
                if pooled is None:
                    continue
                x, ys = pooled
                mean, se, _ = mean_and_se(ys)
                ok = np.isfinite(mean)
                marker = "o" if ok.sum() <= 25 else None
                (line,) = ax.plot(x[ok], mean[ok], linestyle=style, color=colours[lab], marker=marker, markersize=3,
                                  linewidth=1.6, label=f"{lab} ({kind})")
                line.set_gid(f"{lab}:{kind}")
                if np.any(se[ok] > 0):
                    lo, hi = _band(mean, se, metric)
                    band = ax.fill_between(x[ok], lo[ok], hi[ok], color=colours[lab], alpha=alpha, linewidth=0)
                    band.set_gid(f"{lab}:{kind}:se")
                if kind == "natural":
                    seeds_of.setdefault(lab, set()).add(int(ys.shape[1]))
                any_attacked |= kind == "fgsm"
        ax.set_title(env)
        ax.set_xlabel("env steps")
        ax.set_ylabel(_Y_LABEL[metric])
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
        if metric == "won":
            ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colours[lab], linewidth=2.5, label=f"{lab} ({_seeds_text(seeds_of.get(lab, ()))})")
               for lab in labels]
    handles.append(Line2D([], [], color="0.3", linestyle="-", label="natural"))
    if any_attacked:
        handles.append(Line2D([], [], color="0.3", linestyle="--", label=f"FGSM ({_eps_text(c.eps for c in curves if 'test_fgsm' in c.series)})"))
    subtitle = "greedy test episodes; line: mean over seeds, band: ± standard error"
    no_msgs = [lab for lab in labels if not any("test_fgsm" in c.series for c in curves if c.label == lab)]
    if no_msgs and any_attacked:
        subtitle += f"\n{', '.join(no_msgs)} read{'s' if len(no_msgs) == 1 else ''} no messages: no attacked curve (an attack cannot change it)"
    _finish(fig, handles, f"{_Y_LABEL[metric].capitalize()} during training", subtitle)
    return fig


def budget_figure(evals: Sequence[BudgetCurves], metric: str = "won") -> Figure:
    """``metric`` against the perturbation radius eps from the eval tables: one subplot per
    (env, attack) -- envs in rows, attacks in columns -- and one colour per method; each curve
    starts at the natural episodes (eps 0); mean over seeds with a standard-error band; the
    config eps marked. Every line carries a gid ``"<method label>:<attack>"``, its band that gid
    + ``":se"``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is invalid: choose one of {', '.join(METRICS)}")
    if not evals:
        raise ConfigError("no eval tables to plot")
    field_ = _EVAL_FIELD[metric]
    envs = list(dict.fromkeys(e.env for e in evals))
    labels = _order(e.label for e in evals)
    colours = method_colours(labels)
    attacks = list(dict.fromkeys(r["attack"] for e in evals for r in e.rows if r["attack"] != "natural"))
    if not attacks:
        raise ConfigError("the eval tables hold natural episodes only: no attack budget to plot")
    n_rows, n_cols = len(envs), len(attacks)
    fig = Figure(figsize=(max(4.4 * n_cols, 7.5), 3.6 * n_rows + 0.8), layout="constrained", dpi=100)
    grid = fig.subplots(n_rows, n_cols, squeeze=False, sharex="row", sharey="row")
    teammates = any(not e.attack_own for e in evals)
    for row, env in enumerate(envs):
        here = [e for e in evals if e.env == env]
        max_eps = max([float(r["eps"]) for e in here for r in e.rows] + [1e-9])
        for col, attack in enumerate(attacks):
            ax = grid[row, col]
            for lab in _order(e.label for e in here):
                group = [e for e in here if e.label == lab]
                if not any(r["attack"] == attack for e in group for r in e.rows):
                    continue
                pts: dict[float, list[float]] = {}
                for e in group:
                    for r in e.rows:
                        if r["attack"] in (attack, "natural"):
                            vals = (r.get("per_seed") or {}).get(field_)
                            vals = vals if vals is not None else [r[f"{field_}_mean"]]
                            pts.setdefault(float(r["eps"]), []).extend(np.nan if v is None else float(v) for v in vals)
                xs = sorted(pts)
                ys = np.full((len(xs), max(len(v) for v in pts.values())), np.nan)
                for i, x in enumerate(xs):
                    ys[i, : len(pts[x])] = pts[x]
                mean, se, _ = mean_and_se(ys)
                (line,) = ax.plot(xs, mean, marker="o", markersize=4, color=colours[lab], linewidth=1.6)
                line.set_gid(f"{lab}:{attack}")
                if np.any(se > 0):
                    lo, hi = _band(mean, se, metric)
                    band = ax.fill_between(xs, lo, hi, color=colours[lab], alpha=0.15, linewidth=0)
                    band.set_gid(f"{lab}:{attack}:se")
            for eps in sorted({e.config_eps for e in here}):
                ax.axvline(eps, color="0.5", linestyle=(0, (1, 2)), linewidth=1, zorder=0)
            if row == 0:
                ax.set_title(_ATTACK_TITLES.get(attack, attack))
            if row == n_rows - 1:
                ax.set_xlabel("perturbation radius eps (l-inf)")
            if col == 0:
                ax.set_ylabel(f"{env}\n{_Y_LABEL[metric].replace('test ', 'eval ')}", fontsize=9 if len(env) > 20 else 10)
            if metric == "won":
                ax.set_ylim(-0.03, 1.03)
            ax.set_xlim(-0.03 * max_eps, 1.03 * max_eps)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
            ax.grid(True, alpha=0.3)
    handles = []
    for lab in labels:
        mine = [e for e in evals if e.label == lab]
        seeds = {sum(e.seeds for e in mine if e.env == env) for env in envs} - {0}
        steps = "/".join(dict.fromkeys(_steps_label(e.step) for e in mine))
        handles.append(Line2D([], [], color=colours[lab], linewidth=2.5, marker="o", markersize=4,
                              label=f"{lab} ({_seeds_text(seeds)}, checkpoint {steps})"))
    handles.append(Line2D([], [], color="0.5", linestyle=(0, (1, 2)), label="config eps (training budget)"))
    who = "teammates' messages attacked only" if teammates else "every message channel attacked"
    _finish(fig, handles, f"{_Y_LABEL[metric].replace('test ', 'Evaluation ').capitalize()} under message attacks",
            f"{who}; eps 0 = natural; line: mean over seeds, band: ± standard error")
    return fig


# ============================================================================== files and CLI
def default_out_dir(run_dirs: Sequence[str | Path]) -> Path:
    """One path given: that directory (a run or a sweep dir); several: their common parent."""
    paths = [Path(p).resolve() for p in run_dirs]
    if len(paths) == 1:
        return paths[0]
    common = Path(*_common_parts(paths))
    return common if str(common) else Path(".")


def _common_parts(paths: Sequence[Path]) -> list[str]:
    parts = [p.parts for p in paths]
    out = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        out.append(items[0])
    return out


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (Agg; no display) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    metric: str = "won",
    out: TextIO | None | str = "stdout",
) -> list[Path]:
    """Read the run directories (a sweep directory stands for the runs in it), write
    ``learning_curves_<metric>.png`` and, when at least one run has an eval table,
    ``budget_<metric>.png`` into ``out_dir`` (default: :func:`default_out_dir`). Returns the paths
    written; runs without eval tables are named on ``out``."""
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is invalid: choose one of {', '.join(METRICS)}")
    out = sys.stdout if out == "stdout" else out
    dirs = expand_run_dirs(run_dirs)
    curves = [load_curves(d) for d in dirs]  # every run and eval table is checked before anything is written
    budgets = {d: load_budget_curves(d) for d in dirs}
    target = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    written = [save_png(learning_curves_figure(curves, metric), target / f"learning_curves_{metric}.png")]
    evals = []
    for d, e in budgets.items():
        if e is None:
            _log(out, f"skip budget curve of {d}: no eval_<step>.json (run `cromac eval {d}` first)")
        else:
            evals.append(e)
    if evals:
        written.append(save_png(budget_figure(evals, metric), target / f"budget_{metric}.png"))
    else:
        _log(out, "no run has eval results: budget plot not written")
    for p in written:
        _log(out, f"wrote {p}")
    return written


def add_plot_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cromac plot RUN_DIR... [--out DIR] [--metric won|return]`` to a
    ``parser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "plot",
        help="plot learning curves (natural and under FGSM) and win rate vs attack budget as PNG",
        description="Draw test win rate (or return) vs env steps, natural and under FGSM, mean and standard "
                    "error over seeds, one colour per method (learning_curves_<metric>.png), and, from the eval "
                    "tables of cromac eval, win rate vs attack budget (budget_<metric>.png).",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of cromac train, or a sweep directory")
    p.add_argument("--out", default=None,
                   help="output directory (default: the one RUN_DIR given, or the common parent of several)")
    p.add_argument("--metric", choices=METRICS, default="won", help="test win rate (default) or test return")
    p.set_defaults(func=_cmd_plot)
    return p


def _cmd_plot(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_output_dir(args.out, "--out")
    plot(args.run_dirs, args.out, args.metric)
    return 0


def _log(out: TextIO | None, line: str) -> None:
    if out is not None:
        print(line, file=out, flush=True)


__all__ = [
    "METRICS",
    "BudgetCurves",
    "RunCurves",
    "add_plot_parser",
    "budget_figure",
    "default_out_dir",
    "env_label",
    "expand_run_dirs",
    "find_eval_json",
    "learning_curves_figure",
    "load_budget_curves",
    "load_curves",
    "mean_and_se",
    "plot",
    "save_png",
]
