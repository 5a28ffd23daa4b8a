"""Run claims: whoever trains or evaluates a run holds an advisory lock on its directory, the OS
drops it when the process dies, and ``--share any/N`` processes take the runs nobody holds."""

import io
import subprocess
import sys
import textwrap

import pytest

from cromac_jax import sweep
from cromac_jax.config import ConfigError


def test_a_held_claim_is_refused_and_free_again_once_released(tmp_path):
    run_dir = tmp_path / "a" / "run"
    with sweep.claim(run_dir) as first:
        assert first and run_dir.is_dir()  # the claim creates the run directory
        with sweep.claim(run_dir) as second:
            assert not second
    with sweep.claim(run_dir) as again:
        assert again



def test_claim_unless_done_says_why_it_skips_and_asks_again_once_held(tmp_path):
    out = io.StringIO()
    calls = []

    def done_after(n):  # done() answers False for its first n calls, then True
        def done():
            calls.append(1)
            return len(calls) > n
        return done

    with sweep.claim_unless_done(tmp_path, done_after(0), "[1/3] a", out) as todo:
        assert not todo  # done before any claim: nothing held
    with sweep.claim(tmp_path) as mine:
        assert mine  # ... so the claim is free
    calls.clear()
    with sweep.claim(tmp_path):  # someone else holds it
        with sweep.claim_unless_done(tmp_path, done_after(1), "[2/3] b", out, held_note="held, not evaluated") as todo:
            assert not todo
    calls.clear()
    with sweep.claim_unless_done(tmp_path, done_after(1), "[3/3] c", out) as todo:
        assert not todo  # the holder finished it while this process waited: skipped without a line
    calls.clear()
    with sweep.claim_unless_done(tmp_path, done_after(5), "d", out, done_note=None) as todo:
        assert todo
        with sweep.claim(tmp_path) as other:
            assert not other  # the claim is held while the work runs
    assert out.getvalue().splitlines() == ["[1/3] a: already finished, skipped", "[2/3] b: held, not evaluated"]


@pytest.mark.timeout(60)
def test_a_killed_holder_leaves_the_run_free(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from cromac_jax import sweep
            with sweep.claim({str(tmp_path)!r}) as held:
                print("held" if held else "refused", flush=True)
                time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with sweep.claim(tmp_path) as mine:
            assert not mine
        assert (tmp_path / sweep.CLAIM_FILE).read_text().strip() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    with sweep.claim(tmp_path) as mine:
        assert mine


def test_share_parsing_and_any_takes_every_run():
    assert sweep.parse_share("1/3") == (1, 3)
    assert sweep.parse_share("any/2") == (sweep.ANY, 2)
    runs = sweep.plan(["hallway_4x5x6"], ["qmix", "cromac", "ame"], ["qmix"])
    assert sweep.my_share(runs, sweep.ANY, 2) == runs and sweep.my_share(runs, 1, 2) == runs[1:2]
    for bad, needle in (("half", "must look like I/N or any/N"), ("2/2", "need 0 <= index < count"),
                        ("any/0", "need 0 <= index < count"), ("any", "must look like")):
        with pytest.raises(ConfigError, match=needle):
            sweep.parse_share(bad)


@pytest.fixture
def fake_train(monkeypatch):
    """runner.train replaced by a recorder: the claim logic is under test, not training."""
    from cromac_jax import runner

    trained = []
    monkeypatch.setattr(runner, "train", lambda cfg, run_dir, **kw: trained.append(run_dir.name))
    return trained


def test_sweep_any_share_skips_a_run_another_process_holds(tmp_path, fake_train):
    out = io.StringIO()
    with sweep.claim(tmp_path / "hallway_4x5x6_cromac_qmix"):
        sweep.sweep(tmp_path, ["hallway_4x5x6"], ["qmix", "cromac", "ame"], ["qmix"], 1,
                    share=(sweep.ANY, 2), out=out)
    assert fake_train == ["hallway_4x5x6_qmix_qmix", "hallway_4x5x6_ame_qmix"]
    assert "hallway_4x5x6_cromac_qmix: held by another process, skipped" in out.getvalue()


def test_cli_sweep_names_the_share_forms_on_a_bad_share():
    from cromac_jax import cli

    with pytest.raises(SystemExit, match="--share must look like I/N, any/N or auto, got 'half'"):
        cli.main(["sweep", "--share", "half"])
    with pytest.raises(SystemExit, match="--share any/0 is invalid: need 0 <= index < count"):
        cli.main(["sweep", "--share", "any/0"])


def test_sweep_command_passes_every_option_to_the_sweep(tmp_path, monkeypatch):
    from cromac_jax import cli

    seen = {}
    monkeypatch.setattr(sweep, "sweep", lambda *a, **kw: seen.update(args=a))
    argv = ["sweep", "--out", str(tmp_path), "--envs", "lbf_3p1f", "--methods", "cromac", "--mixers", "vdn", "qplex",
            "--seeds", "2", "--t-max", "500", "--num-envs", "3", "--share", "1/2", "--cpu-devices", "off", "train.lr=0.01"]
    assert cli.main(argv) == 0
    out, envs_, methods, mixers, seeds, extra, share = seen["args"]
    assert (str(out), envs_, methods, mixers, seeds) == (str(tmp_path), ["lbf_3p1f"], ["cromac"], ["vdn", "qplex"], 2)
    assert extra == ["train.lr=0.01", "train.t_max=500", "train.num_envs=3"] and share == (1, 2)
    assert [r.name for r in sweep.plan(envs_, methods, mixers)] == ["lbf_3p1f_cromac_vdn", "lbf_3p1f_cromac_qplex"]
