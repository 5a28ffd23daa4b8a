"""Bad input gets one clear line naming the culprit, a non-zero exit, and touches no saved work.

These are the cases a review probed by hand (each once printed a traceback, trained on anyway or
named nothing); the CLI tests that need a trained run are in test_train.py and test_evaluate.py.
"""

from pathlib import Path

import pytest
import yaml

from cromac_jax import cli
from cromac_jax import config as C
from cromac_jax.checkpoint import CheckpointError, read_config


def one_line(capsys, argv, rc=2):
    assert cli.main(argv) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("overrides, needle", [
    (["train.lr=["], "override 'train.lr=[': the value is not valid YAML"),
    (["train.lr=1", "train.lr.x=2"], "override 'train.lr.x=2' reaches into train.lr, which an earlier override set"),
    (["train..lr=1"], "must look like section.key=value"),
    (["train.lr=" + "9" * 400], "is out of range for float"),
    (["train.seed=" + "9" * 30], "is out of range for int"),
    (["train.seed=2147483648"], "train.seed=2147483648 is invalid: must be < 2**31"),
    (["train.t_max=3000000000"], "train.t_max=3000000000 is invalid: must be < 2**30 (1,073,741,824): env steps are counted in int32"),
    (["cromac.robust_start=2000000000"], "cromac.robust_start=2000000000 is invalid: must be < 2**30"),
    (["train.buffer_size=3000000000"], "train.buffer_size=3000000000 is invalid: must be < 2**31"),
    (["train.lr=.nan"], "train.lr=nan must be a finite number"),
    (["cromac.eps=-.inf"], "cromac.eps=-inf must be a finite number"),
    (["cromac.loss_reduction=mean"], "cromac.loss_reduction='mean' is invalid: choose one of official, episode_limit"),
])
def test_bad_overrides_are_one_config_error(overrides, needle):
    with pytest.raises(C.ConfigError, match=None) as info:
        C.load(None, overrides)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg and len(msg) < 300, msg


def test_a_float_written_without_a_dot_is_a_float_in_overrides_and_files(tmp_path):
    assert C.load(None, ["cromac.eps=1e-3"]).cromac.eps == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as text
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-4\n")
    assert C.load(path).train.lr == pytest.approx(5e-4)
    with pytest.raises(C.ConfigError, match="train.t_max='1e6' has the wrong type: expected int"):
        C.load(None, ["train.t_max=1e6"])  # an int field takes no float text
    with pytest.raises(C.ConfigError, match="cromac.eps='fast' has the wrong type"):
        C.load(None, ["cromac.eps=fast"])


def test_unreadable_config_files_name_the_file(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert f"cannot read config file {str(binary)!r}" in one_line(capsys, ["train", "--config", str(binary)])
    assert f"config file {str(tmp_path)!r} is a directory, not a file" in one_line(capsys, ["train", "--config", str(tmp_path)])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_config(run)
    (run / "config.yaml").write_text("- a\n- list\n")
    line = one_line(capsys, ["train", "--resume", str(run)])
    assert str(run / "config.yaml") in line and "must hold a mapping" in line


def test_runs_saved_before_a_setting_existed_read_as_they_trained(tmp_path):
    """``cromac.loss_reduction`` came after runs existed: a saved config without it trained with
    "episode_limit", so resuming, evaluating or plotting it must not switch it to today's default."""
    data = C.resolve({}).to_dict()
    assert data["cromac"].pop("loss_reduction") == "official"
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    assert read_config(run).cromac.loss_reduction == "episode_limit"
    assert C.from_dict(data).cromac.loss_reduction == "official"  # a user's file gets the default
    records = [p for p in Path(__file__).parents[1].glob("benchmarks/results/table1_runs/*/*/*/config.yaml")
               if "loss_reduction" not in p.read_text()]  # the committed runs trained before the key existed
    assert records and {read_config(p.parent).cromac.loss_reduction for p in records} == {"episode_limit"}


def test_resume_refuses_settings_it_would_ignore(tmp_path, capsys):
    line = one_line(capsys, ["train", "--resume", str(tmp_path), "--env", "lbf_3p1f", "--seeds", "2", "train.lr=0.1"])
    assert "--env, --seeds, overrides cannot change it" in line


def test_sweep_refuses_no_seeds_and_unknown_envs_before_training_anything(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--seeds 0 is invalid: need at least one seed"):
        cli.main(["sweep", "--out", str(tmp_path), "--seeds", "0"])
    line = one_line(capsys, ["sweep", "--out", str(tmp_path / "s"), "--envs", "hallway_4x5x6", "nosuchenv",
                             "--methods", "qmix", "--seeds", "1"])
    assert "unknown environment 'nosuchenv'" in line
    assert not (tmp_path / "s").exists()  # not even the valid env's run was started


def test_eval_refuses_a_seed_it_cannot_use_and_a_file_for_a_run_dir(tmp_path, capsys):
    assert "--seed 4294967296 is invalid" in one_line(capsys, ["eval", str(tmp_path), "--seed", str(2**32)])
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    assert "is a file, not a run directory" in one_line(capsys, ["eval", str(afile)])


def test_a_file_where_output_goes_is_refused_before_anything_runs(tmp_path, capsys):
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    said = f"cannot be a directory: {str(afile)!r} is a file"
    assert said in one_line(capsys, ["train", "--run-dir", str(afile), "--t-max", "1000"])
    assert said in one_line(capsys, ["train", "--run-dir", str(afile / "sub"), "--t-max", "1000"])
    assert said in one_line(capsys, ["sweep", "--t-max", "1000", "--out", str(afile)])
    assert said in one_line(capsys, ["plot", str(tmp_path), "--out", str(afile)])
    assert f"run directory {str(afile)!r} is a file" in one_line(capsys, ["plot", str(afile)])
    assert afile.read_text() == "x" and sorted(tmp_path.iterdir()) == [afile]


def test_bench_checks_its_overrides_and_out_before_measuring(tmp_path):
    with pytest.raises(SystemExit, match="cromac bench: error: unknown config key 'train.t_maxx' \\(did you mean train.t_max"):
        cli.main(["bench", "--parts", "train", "--envs", "hallway_4x5x6", "--methods", "qmix", "--set", "train.t_maxx=1",
                  "--out", str(tmp_path / "b")])
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit, match="is a file"):
        cli.main(["bench", "--parts", "train", "--out", str(tmp_path / "f" / "b")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--t-max", "abc"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "cromac train: error: argument --t-max: invalid int value: 'abc' (see cromac train --help)"]


def test_jaxmarl_import_leaves_the_callers_stderr_in_place():
    """jaxmarl resets sys.stderr while importing; a redirect (a test's capture, a caller's log) must
    still receive the error lines printed after the first env import."""
    import subprocess
    import sys

    code = ("import io, sys; fake = io.StringIO(); sys.stderr = fake; import cromac_jax.runner; "
            "print(sys.stderr is fake, file=sys.__stdout__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "True", proc.stderr[-2000:]


def test_a_refused_config_imports_neither_the_runner_nor_jaxmarl():
    """Telling a bad config from a crash must not import the runner (jaxmarl, a JAX backend): that
    made a one-line refusal take 7-42 s on a busy machine."""
    import subprocess
    import sys

    code = ("import sys; from cromac_jax import cli; rc = cli.main(['train', 'train.lr=abc']); "
            "print(rc, sorted(m for m in ('cromac_jax.runner', 'jaxmarl') if m in sys.modules), file=sys.__stdout__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "2 []", proc.stdout + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["cromac: error: config train.lr='abc' has the wrong type: expected float"]
