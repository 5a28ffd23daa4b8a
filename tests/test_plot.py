"""``cromac plot``: learning curves and budget curves from run directories.

The run directories are synthetic but written by the project's own writers, so their format
cannot drift from what ``cromac train`` / ``cromac eval`` write: ``runner.write_config``,
``runner._test_summary`` of ``TestMetrics`` and ``runner.append_record`` for ``metrics.jsonl``, and
``evaluate.eval_grid`` (with its episode player and certificate replaced by stand-ins, so that
nothing is compiled) for ``eval_<step>.json``. The record layout of a test row,
``{"kind": "test", "t_env": [...], **tests}``, is the one ``runner.train`` writes.
"""

from __future__ import annotations

import argparse
import json

import matplotlib.image
import numpy as np
import pytest

from cromac_jax import attacks as A
from cromac_jax import config as C
from cromac_jax import evaluate as ev
from cromac_jax import plot as P
from cromac_jax import runner
from cromac_jax.checkpoint import CheckpointError
from cromac_jax.config import ConfigError
from cromac_jax.train import TestMetrics as _TestMetrics

ENV = "hallway_4x5x6"


def _cfg(method, seeds, env=ENV, mixer="qmix", overrides=None):
    return C.resolve({"env": {"name": env, "overrides": overrides or {}}, "train": {"method": method, "num_seeds": seeds},
                      "model": {"mixer": mixer}})


def _metrics(values):  # TestMetrics is imported under another name: pytest must not collect it
    v = np.asarray(values, np.float64)
    return _TestMetrics(return_mean=2 * v - 1, return_std=np.full_like(v, 0.1), won_mean=v, ep_length_mean=np.full_like(v, 10.0))


def make_run(path, method="cromac", seeds=3, env=ENV, steps=(0, 1000, 2000, 3000), mixer="qmix", offset=0.0, tests=True,
             overrides=None):
    """A run directory as ``cromac train`` leaves it: config.yaml and metrics.jsonl (train and
    test rows). Seed s's natural win rate at row k is ``offset + 0.1 * k + 0.02 * s``; under
    FGSM half of it. Returns the per-row per-seed natural values [T, S]."""
    cfg = _cfg(method, seeds, env, mixer, overrides)
    path.mkdir(parents=True)
    runner.write_config(path, cfg)
    values = np.asarray([[offset + 0.1 * k + 0.02 * s for s in range(seeds)] for k in range(len(steps))])
    reads = cfg.train.method != "qmix"
    for k, step in enumerate(steps):
        t_env = [step + 7 * s for s in range(seeds)]  # seeds stop at slightly different env steps
        if tests:
            parts = {"test": _metrics(values[k])}
            if reads:
                parts["test_fgsm"] = _metrics(values[k] / 2)
            runner.append_record(path / "metrics.jsonl", {"kind": "test", "t_env": t_env, **runner._test_summary(parts)})
        runner.append_record(path / "metrics.jsonl", {"kind": "train", "t_env": t_env, "won_mean": [0.5] * seeds})
    return values


def write_eval(path, method="cromac", seeds=3, env=ENV, budgets=(0.25, 1.0, 4.0), attack_own=True, monkeypatch=None, step=3000):
    """``eval_<step>.json`` written by the real ``eval_grid``; win rate = 0.8 - slope * eps per
    attack (pgd steepest, random flat) + 0.01 * seed; qmix: 0.5 everywhere."""
    cfg = _cfg(method, seeds, env)
    run = ev.Run(cfg, None, None, {"w": np.zeros((seeds, 1))}, None, step, path)
    slope = {A.natural: 0.0, A.random_noise: 0.2, A.fgsm: 3.0, A.pgd: 4.0}

    def fake_evaluate(run_, fn, episodes, eps, key, attack_own_):
        s = np.arange(seeds) * 0.01
        win = np.clip((0.5 if method == "qmix" else 0.8 - slope[fn] * eps) + s, 0, 1)
        z = np.zeros((seeds, episodes))
        return ev.EvalResult(fn.__name__, eps, episodes, attack_own_, win, 2 * win - 1, np.zeros(seeds),
                             np.full(seeds, 10.0), z, z.astype(int), z.astype(bool))

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    monkeypatch.setattr(ev, "certified_rate", lambda *a, **k: np.full(seeds, 0.5))
    monkeypatch.setattr(ev, "evaluate_state_latent", lambda run_, episodes, key: fake_evaluate(run_, A.natural, episodes, 0.0, key, True))
    ev.eval_grid(run, budgets=list(budgets), episodes=4, attack_own=attack_own, out=None)
    monkeypatch.undo()
    return ev.report_paths(run, attack_own)["json"]


def _lines(ax):
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}


# ---------------------------------------------------------------------------------- learning curves
def test_learning_curves_one_line_per_method_mean_and_band(tmp_path):
    vc = make_run(tmp_path / "c", "cromac", seeds=3)
    vq = make_run(tmp_path / "q", "qmix", seeds=2, offset=0.3)
    curves = [P.load_curves(tmp_path / "c"), P.load_curves(tmp_path / "q")]
    assert curves[0].t_env.shape == (4, 3) and set(curves[0].series) == {"test", "test_fgsm"}
    assert set(curves[1].series) == {"test"}  # qmix reads no messages: no attacked test
    fig = P.learning_curves_figure(curves)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    lines = _lines(ax)
    assert set(lines) == {"cromac:natural", "cromac:fgsm", "qmix:natural"}  # one natural line per method
    assert lines["cromac:natural"].get_linestyle() == "-" and lines["cromac:fgsm"].get_linestyle() == "--"
    assert lines["cromac:natural"].get_color() == lines["cromac:fgsm"].get_color() != lines["qmix:natural"].get_color()
    np.testing.assert_allclose(lines["cromac:natural"].get_ydata(), vc.mean(axis=1))
    np.testing.assert_allclose(lines["cromac:fgsm"].get_ydata(), vc.mean(axis=1) / 2)
    np.testing.assert_allclose(lines["qmix:natural"].get_ydata(), vq.mean(axis=1))
    np.testing.assert_allclose(lines["cromac:natural"].get_xdata(), [7, 1007, 2007, 3007])  # mean env step of the seeds
    # standard-error band: sample std / sqrt(n) around the mean
    bands = {c.get_gid(): c for c in ax.collections}
    assert set(bands) == {"cromac:natural:se", "cromac:fgsm:se", "qmix:natural:se"}
    band = bands["cromac:natural:se"].get_paths()[0].vertices[:, 1]
    se = vc.std(axis=1, ddof=1) / np.sqrt(3)
    assert np.isclose(band.max(), (vc.mean(axis=1) + se).max()) and np.isclose(band.min(), (vc.mean(axis=1) - se).min())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["qmix (2 seeds)", "cromac (3 seeds)"] or legend[:2] == ["cromac (3 seeds)", "qmix (2 seeds)"]
    assert "natural" in legend and "FGSM (eps 0.05)" in legend
    assert "qmix reads no messages: no attacked curve" in fig.get_suptitle()
    assert ax.get_ylabel() == "test win rate" and ax.get_title() == ENV


def test_return_metric_pooling_and_one_subplot_per_env(tmp_path):
    a = make_run(tmp_path / "a", "cromac", seeds=2)
    b = make_run(tmp_path / "b", "cromac", seeds=3, steps=(0, 1000, 2000), offset=0.05)
    make_run(tmp_path / "l", "cromac", seeds=1, env="lbf_3p1f")
    make_run(tmp_path / "v", "cromac", seeds=1, mixer="vdn")
    make_run(tmp_path / "s", "cromac", seeds=1, overrides={"state_numbers": [2, 2]})  # another env
    curves = [P.load_curves(tmp_path / d) for d in "ablvs"]
    fig = P.learning_curves_figure(curves, metric="return")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [ENV, "lbf_3p1f", f"{ENV} (state_numbers=[2, 2])"]
    lines = _lines(axes[0])
    assert set(lines) == {"cromac:natural", "cromac:fgsm", "cromac/vdn:natural", "cromac/vdn:fgsm"}
    # a and b pooled on a's grid (the longer one); b's seeds interpolated, absent past its last row
    y = lines["cromac:natural"].get_ydata()
    assert len(y) == 4
    first3 = np.concatenate([2 * a[:3] - 1, 2 * b - 1], axis=1).mean(axis=1)
    np.testing.assert_allclose(y[:3], first3, atol=0.02)  # interpolation across a few env steps of offset
    np.testing.assert_allclose(y[3], (2 * a[3] - 1).mean())
    assert axes[0].get_ylabel() == "test return"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "cromac (1–5 seeds)" in legend and "cromac/vdn (1 seed)" in legend  # 2 + 3 pooled; 1 on lbf
    assert len(_lines(axes[1])) == 2 and len(_lines(axes[2])) == 2
    with pytest.raises(ConfigError, match="metric 'x' is invalid"):
        P.learning_curves_figure(curves, metric="x")


def test_resumed_run_rows_are_not_drawn_twice(tmp_path):
    make_run(tmp_path / "r", "cromac", seeds=2)
    # a resumed run re-runs from its last checkpoint and writes the later test rows again
    for step, v in ((2000, 0.9), (3000, 0.95)):
        runner.append_record(tmp_path / "r" / "metrics.jsonl",
                      {"kind": "test", "t_env": [step, step], **runner._test_summary({"test": _metrics([v, v])})})
    c = P.load_curves(tmp_path / "r")
    assert c.steps.tolist() == [3.5, 1003.5, 2000, 3000]
    assert c.series["test"]["won"][2:].tolist() == [[0.9, 0.9], [0.95, 0.95]]
    assert "test_fgsm" not in c.series  # the rewritten rows lack it: never half a curve


# ---------------------------------------------------------------------------------- budget curves
def test_budget_figure_from_eval_tables(tmp_path, monkeypatch):
    make_run(tmp_path / "c", "cromac", seeds=3)
    make_run(tmp_path / "q", "qmix", seeds=2)
    path = write_eval(tmp_path / "c", "cromac", 3, monkeypatch=monkeypatch)
    write_eval(tmp_path / "q", "qmix", 2, monkeypatch=monkeypatch)
    assert P.find_eval_json(tmp_path / "c") == path and path.name == "eval_3000.json"
    evals = [P.load_budget_curves(tmp_path / "c"), P.load_budget_curves(tmp_path / "q")]
    assert evals[0].config_eps == 0.05 and evals[0].seeds == 3
    fig = P.budget_figure(evals)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["random noise", "FGSM", "PGD"]  # one subplot per attack
    lines = {k: v for ax in axes for k, v in _lines(ax).items()}
    for ax, attack in zip(axes, ("random", "fgsm", "pgd"), strict=True):
        assert set(_lines(ax)) == {f"cromac:{attack}", f"qmix:{attack}"}  # one line per method
    fg = lines["cromac:fgsm"]
    np.testing.assert_allclose(fg.get_xdata(), [0.0, 0.0125, 0.05, 0.2])  # natural at eps 0, then the budgets
    np.testing.assert_allclose(fg.get_ydata(), np.clip(0.8 - 3.0 * np.array([0, 0.0125, 0.05, 0.2]), 0, 1) + 0.01)
    assert lines["cromac:pgd"].get_ydata()[-1] <= fg.get_ydata()[-1]
    np.testing.assert_allclose(lines["qmix:fgsm"].get_ydata(), 0.505)
    assert {lines["cromac:fgsm"].get_color(), lines["qmix:fgsm"].get_color()} == {P.METHOD_COLOURS["cromac"], P.METHOD_COLOURS["qmix"]}
    assert [line.get_xdata()[0] for line in axes[1].get_lines() if line.get_gid() is None] == [0.05]  # config eps marker
    band = {c.get_gid(): c for c in axes[1].collections}["cromac:fgsm:se"].get_paths()[0].vertices[:, 1]
    se = np.std([0.0, 0.01, 0.02], ddof=1) / np.sqrt(3)  # the seeds' spread in write_eval
    assert np.isclose(band.max(), 0.81 + se)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["qmix (2 seeds, checkpoint 3k)", "cromac (3 seeds, checkpoint 3k)", "config eps (training budget)"]
    assert axes[0].get_ylabel() == f"{ENV}\neval win rate"
    # the teammates-only table is used only when it is the only one
    write_eval(tmp_path / "c", "cromac", 3, attack_own=False, monkeypatch=monkeypatch)
    assert P.find_eval_json(tmp_path / "c") == path
    write_eval(tmp_path / "c", "cromac", 3, attack_own=False, monkeypatch=monkeypatch, step=4000)
    assert P.find_eval_json(tmp_path / "c").name == "eval_4000_teammates.json"  # newer checkpoint wins


# ---------------------------------------------------------------------------------- files and CLI
def _parser():
    parser = argparse.ArgumentParser(prog="cromac")
    P.add_plot_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _check_png(path, fig_size_in, dpi=100):
    assert path.is_file() and path.stat().st_size > 5000
    img = matplotlib.image.imread(path)
    w, h = fig_size_in
    assert img.shape[:2] == (round(h * dpi), round(w * dpi))
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_cli_plot_writes_pngs_and_skips_runs_without_eval(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    make_run(sweep / "hallway_4x5x6_cromac_qmix", "cromac", seeds=3)
    make_run(sweep / "hallway_4x5x6_qmix_qmix", "qmix", seeds=3)
    write_eval(sweep / "hallway_4x5x6_cromac_qmix", "cromac", 3, monkeypatch=monkeypatch)
    (sweep / "summary.md").write_text("not a run\n")
    args = _parser().parse_args(["plot", str(sweep)])  # a sweep directory stands for its runs
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"skip budget curve of {sweep / 'hallway_4x5x6_qmix_qmix'}: no eval_<step>.json" in out
    curves = [P.load_curves(d) for d in P.expand_run_dirs([sweep])]
    _check_png(sweep / "learning_curves_won.png", P.learning_curves_figure(curves).get_size_inches())
    evals = [P.load_budget_curves(sweep / "hallway_4x5x6_cromac_qmix")]
    _check_png(sweep / "budget_won.png", P.budget_figure(evals).get_size_inches())
    assert f"wrote {sweep / 'learning_curves_won.png'}" in out and f"wrote {sweep / 'budget_won.png'}" in out

    # several run dirs, --out and --metric return; no eval tables at all: no budget PNG
    make_run(tmp_path / "x", "ame", seeds=2)
    args = _parser().parse_args(["plot", str(tmp_path / "x"), str(sweep / "hallway_4x5x6_qmix_qmix"),
                                 "--out", str(tmp_path / "plots"), "--metric", "return"])
    args.func(args)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["learning_curves_return.png"]
    assert "no run has eval results: budget plot not written" in capsys.readouterr().out
    assert P.default_out_dir([tmp_path / "x", sweep / "a"]) == tmp_path.resolve()
    assert _parser().parse_args(["plot", "r"]).metric == "won"
    with pytest.raises(SystemExit):
        _parser().parse_args(["plot", "r", "--metric", "loss"])


def test_bad_run_dirs_are_one_clear_error(tmp_path):
    def fails(needle, path):
        args = _parser().parse_args(["plot", str(path)])
        with pytest.raises(CheckpointError) as info:  # what cli.main prints as one line
            args.func(args)
        msg = str(info.value)
        assert needle in msg and "\n" not in msg, msg

    fails(f"run directory {str(tmp_path / 'missing')!r} does not exist", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    fails("is not a run directory (no config.yaml) nor a sweep directory holding any", tmp_path / "empty")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    runner.write_config(fresh, _cfg("cromac", 1))
    fails(f"run directory {str(fresh)!r} has no metrics.jsonl: train it first", fresh)
    make_run(tmp_path / "early", tests=False)  # train rows only, no test yet
    fails("has no test results yet (no 'test' rows in metrics.jsonl)", tmp_path / "early")
    with (tmp_path / "early" / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "te')  # a run killed mid-write: its last line is cut, the rows before it stand
    fails("has no test results yet (no 'test' rows in metrics.jsonl)", tmp_path / "early")
    with (tmp_path / "early" / "metrics.jsonl").open("a") as f:
        f.write('\n{"kind": "train"}\n')  # ... and no longer the last line
    fails("line 5 is not JSON", tmp_path / "early")
    make_run(tmp_path / "shapes")
    metrics = tmp_path / "shapes" / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '[1, 2]\n{"kind": "test", "t_env": 5}\n')
    fails("line 10: a test row without a list of env steps ('t_env')", tmp_path / "shapes")
    for row in ('{"kind": "test", "t_env": [10000000]}', '{"kind": "test", "t_env": [1, 2, 3], "test_won_mean": "x"}'):
        metrics.write_text(good + row + "\n")  # a row of one seed among three; a row without numbers
        fails("has test rows that are not one number per seed", tmp_path / "shapes")
    metrics.write_text(good)
    for table, needle in (("[1, 2]", "AttributeError"), ('{"rows": 5}', "missing 'method'"),
                          ('{"method": "cromac", "env": "e", "config_eps": 0.1, "step": 1, "seeds": 1, "rows": 5}',
                           "'rows' is not a list of rows")):
        (tmp_path / "shapes" / "eval_7.json").write_text(table)
        fails(f"{str(tmp_path / 'shapes' / 'eval_7.json')!r} is not an eval table of cromac eval ({needle})", tmp_path / "shapes")
    assert not list(tmp_path.rglob("*.png"))  # nothing written on error
    with pytest.raises(CheckpointError, match="does not exist"):
        P.load_curves(tmp_path / "missing")


def test_mean_and_se():
    mean, se, n = P.mean_and_se(np.array([[1.0, 3.0], [2.0, np.nan], [np.nan, np.nan]]))
    np.testing.assert_allclose(mean[:2], [2.0, 2.0])
    assert np.isnan(mean[2]) and n.tolist() == [2, 1, 0]
    np.testing.assert_allclose(se, [np.sqrt(2) / np.sqrt(2), 0.0, 0.0])
    assert json.dumps(P.METRICS) == '["won", "return"]'
