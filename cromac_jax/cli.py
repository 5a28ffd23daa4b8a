"""The ``cromac`` command line: thin argument parsing over the library's functions."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence


def _cmd_envs(args: argparse.Namespace) -> int:
    import envs

    rows = []
    for name in envs.preset_names():
        preset = envs.get_preset(name)
        d = envs.make(name).describe()
        rows.append((name, d["n_agents"], d["obs_dim"], d["state_dim"], d["n_actions"], d["episode_limit"], preset.description))
    header = ("preset", "agents", "obs", "state", "actions", "limit", "description")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    print(fmt.format(*header))
    for r in rows:
        print(fmt.format(*map(str, r)))
    return 0


def _config_from_args(args: argparse.Namespace):
    from cromac_jax import config

    overrides = list(args.overrides) + list(args.set or [])
    shortcuts = {
        "env": "env.name",
        "method": "train.method",
        "mixer": "model.mixer",
        "seeds": "train.num_seeds",
        "seed": "train.seed",
        "t_max": "train.t_max",
        "num_envs": "train.num_envs",
    }
    for attr, key in shortcuts.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    chose = args.config is not None or any(o.split("=", 1)[0] in ("env.name", "train.method") for o in overrides)
    if not chose:  # plain `cromac train`: the embedded quick default, user overrides on top
        return config.resolve(config.merge(config.QUICK_DEFAULT, config.parse_overrides(overrides)))
    return config.load(args.config, overrides)


def _join(args: argparse.Namespace) -> None:
    """``--distributed``: join the other processes before anything touches a JAX backend."""
    from cromac_jax import distributed

    distributed.initialize(distributed.DistributedSettings(
        args.coordinator, args.num_processes, args.process_id, args.init_timeout, args.heartbeat_timeout))


def _host_devices(args: argparse.Namespace, num_seeds: int, processes_here: int = 1) -> None:
    """Fix the CPU device count for ``num_seeds`` seeds (``--cpu-devices``); must run before the
    runner is imported, because importing it (jaxmarl) starts the JAX backend. ``processes_here``:
    how many processes share this host's cores (a sweep split with ``--share``:
    ``distributed.host_share_from_environment``)."""
    from cromac_jax import host_devices

    spec = args.cpu_devices
    if spec == "auto" and getattr(args, "distributed", False):
        spec = "off"  # each process's share of seeds is decided by the process layout
    n = host_devices.apply(spec, num_seeds, processes=processes_here)
    if n is not None:
        print(f"cromac: {num_seeds} seed(s) over {n} CPU devices (--cpu-devices {args.cpu_devices}; "
              f"no effect when an accelerator runs the job)", flush=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from cromac_jax import checkpoint

    if args.resume is not None:
        ignored = [flag for flag, given in (
            ("--config", args.config), ("--env", args.env), ("--method", args.method), ("--mixer", args.mixer),
            ("--seeds", args.seeds), ("--seed", args.seed), ("--num-envs", args.num_envs),
            ("--run-dir", args.run_dir), ("--set", args.set), ("overrides", args.overrides)) if given]
        if ignored:
            raise checkpoint.CheckpointError(
                f"--resume continues a run with the config saved in it; {', '.join(ignored)} cannot change it "
                "(start a new run for other settings; --t-max alone sets a new budget)")
        cfg = checkpoint.read_config(args.resume)
        if args.t_max is not None:  # a new budget: the one setting a resumed run may change
            from cromac_jax.config import replace

            cfg = replace(cfg, train={"t_max": args.t_max})
        _host_devices(args, cfg.train.num_seeds)
        from cromac_jax import runner, sweep

        # the sweep's claim: a run a sweep (or another --resume) is training is not written twice;
        # the processes of one distributed run all write it, so they take none
        with contextlib.ExitStack() as stack:
            try:
                mine = True if args.distributed else stack.enter_context(sweep.claim(Path(args.resume)))
            except OSError as e:  # a read-only run dir, say
                raise checkpoint.CheckpointError(f"cannot resume {args.resume!r}: {e.strerror or e} ({e.filename})") from None
            if not mine:
                raise checkpoint.CheckpointError(
                    f"{args.resume!r} is being trained by another process (its pid is in {sweep.CLAIM_FILE}); "
                    "wait for it to finish or stop it (SIGTERM saves a checkpoint), then resume")
            runner.train(cfg, run_dir=args.resume, resume=True, new_budget=args.t_max is not None)
        return 0
    cfg = _config_from_args(args)
    from cromac_jax.config import check_output_dir

    check_output_dir(args.run_dir or cfg.train.run_dir, "--run-dir" if args.run_dir else "train.run_dir")
    _host_devices(args, cfg.train.num_seeds)
    from cromac_jax import runner

    runner.train(cfg, run_dir=args.run_dir)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise SystemExit(f"cromac sweep: --seeds {args.seeds} is invalid: need at least one seed")
    extra = list(args.overrides)
    if args.t_max is not None:
        extra.append(f"train.t_max={args.t_max}")
    if args.num_envs is not None:
        extra.append(f"train.num_envs={args.num_envs}")
    if args.share == "auto":
        from cromac_jax.distributed import host_share_from_environment

        index, count, here = host_share_from_environment()
    else:
        from cromac_jax.config import ConfigError
        from cromac_jax.sweep import parse_share

        try:
            index, count = parse_share(args.share, forms="I/N, any/N or auto")
        except ConfigError as e:
            raise SystemExit(f"cromac sweep: {e}") from None
        here = count  # where the processes run is not known: assume all on this host
    from cromac_jax import config

    config.check_output_dir(args.out, "--out")
    _host_devices(args, args.seeds, processes_here=max(1, here))
    from cromac_jax import sweep

    sweep.sweep(args.out, args.envs, args.methods, args.mixers, args.seeds, extra, (index, count),
                extend="t_max" in config.parse_overrides(extra).get("train", {}))  # a budget the user gave
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (data only; see configs/)")
    p.add_argument("--env", help="environment preset (cromac envs lists them)")
    p.add_argument("--mixer", help="qmix | vdn | qplex")
    p.add_argument("--seeds", type=int, help="number of seeds, trained together (vmapped)")
    p.add_argument("--seed", type=int, help="base seed")
    p.add_argument("--t-max", dest="t_max", type=int, help="env steps per seed")
    p.add_argument("--num-envs", dest="num_envs", type=int, help="parallel envs per seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set cromac.eps=0.1 (repeatable)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. cromac.eps=0.1")
    _add_cpu_devices_arg(p)


def _add_cpu_devices_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu-devices", dest="cpu_devices", default="auto", metavar="auto|off|N",
                   help="split a CPU host into N JAX devices so the seeds run on every core (default auto: "
                        "chosen from the seed count and the cores; off: one device; ignored on GPU/TPU. "
                        "auto leaves a count set by XLA_FLAGS --xla_force_host_platform_device_count or "
                        "JAX_NUM_CPU_DEVICES alone; an N that contradicts it is an error)")


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-process (jax.distributed; see README 'Beyond one machine')")
    g.add_argument("--distributed", action="store_true", help="join other processes; seeds are laid over every process's devices")
    g.add_argument("--coordinator", help="HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS, or SLURM/Open MPI detection)")
    g.add_argument("--num-processes", dest="num_processes", type=int, help="default: $JAX_NUM_PROCESSES")
    g.add_argument("--process-id", dest="process_id", type=int, help="default: $JAX_PROCESS_ID")
    g.add_argument("--init-timeout", dest="init_timeout", type=int, default=120, help="seconds to wait for every process to join")
    g.add_argument("--heartbeat-timeout", dest="heartbeat_timeout", type=int, default=30,
                   help="seconds after which a silent peer counts as dead and every process stops")


class _Parser(argparse.ArgumentParser):
    """argparse with the house rule for bad input: one line naming the culprit (not the usage
    block first), exit code 2; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cromac", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("envs", help="list the registered environment presets with their sizes")
    p.set_defaults(func=_cmd_envs)

    p = sub.add_parser("train", help="train all seeds of one config (default: CroMAC on hallway 4x5x6)")
    _add_run_args(p)
    p.add_argument("--method", help="qmix | full_comm | cromac | cromac_no_robust | ame")
    p.add_argument("--run-dir", dest="run_dir", help="where config, metrics and checkpoints go")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its latest checkpoint (bit-for-bit); with --t-max N, to N env steps "
                        "per seed (train a finished run on)")
    _add_distributed_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sweep", help="train every env x method x mixer combination, all seeds vmapped, then summarise")
    p.add_argument("--envs", nargs="+", default=["hallway_4x5x6"])
    p.add_argument("--methods", nargs="+", default=["cromac", "cromac_no_robust", "full_comm", "qmix", "ame"])
    p.add_argument("--mixers", nargs="+", default=["qmix"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--t-max", dest="t_max", type=int)
    p.add_argument("--num-envs", dest="num_envs", type=int)
    p.add_argument("--out", default="runs/sweep", help="sweep directory (resumable)")
    p.add_argument("--share", default="0/1",
                   help="I/N: train only every N-th run starting at I; any/N: one of N processes that each take "
                        "the next run no other holds (runs of unequal cost keep every process busy); 'auto' reads "
                        "the process index and count from JAX_PROCESS_ID/JAX_NUM_PROCESSES, SLURM or Open MPI")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every run")
    _add_cpu_devices_arg(p)
    p.set_defaults(func=_cmd_sweep)

    from cromac_jax.evaluate import add_eval_parser

    add_eval_parser(sub)

    from cromac_jax.plot import add_plot_parser

    add_plot_parser(sub)

    from cromac_jax.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":  # before any import starts a jax backend: the bench parent only orchestrates
        from cromac_jax.bench import prepare_parent

        prepare_parent()
    if args.command == "train" and args.distributed:
        # before the imports below: jaxmarl touches the XLA backend when imported
        from cromac_jax.config import ConfigError
        from cromac_jax.distributed import DistributedError

        try:
            _join(args)
        except (ConfigError, DistributedError) as e:
            print(f"cromac: error: {e}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        from cromac_jax.stopping import TrainingStopped

        if isinstance(e, TrainingStopped):  # its line, naming the checkpoint it saved, is already printed
            return e.exit_code
        print("cromac: interrupted; the latest checkpoint is kept (continue with cromac train --resume RUN_DIR)", file=sys.stderr)
        return 130
    except Exception as e:
        from cromac_jax.distributed import DistributedError

        if isinstance(e, DistributedError):
            # A peer is gone: JAX's shutdown barrier would wait for it and then abort with pages of
            # C++ logs, so leave right after the one line that says what happened.
            print(f"cromac: error: {e}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(3)
        if isinstance(e, _one_line_errors()):
            print(f"cromac: error: {e}", file=sys.stderr)
            return 2
        raise


#: The user-facing errors, by the module that defines each.
_ONE_LINE_ERRORS = (("cromac_jax.config", "ConfigError"), ("cromac_jax.checkpoint", "CheckpointError"),
                    ("cromac_jax.runner", "TrainingError"), ("envs.base", "EnvConfigError"))


def _one_line_errors() -> tuple[type[Exception], ...]:
    """The user-facing error classes whose modules are loaded. An exception's class is loaded
    whenever it was raised, so nothing needs importing here: importing the runner or the envs to
    classify a bad input would start a JAX backend (jaxmarl) and make a one-line refusal take
    seconds."""
    return tuple(getattr(sys.modules[m], name) for m, name in _ONE_LINE_ERRORS if m in sys.modules)


if __name__ == "__main__":
    sys.exit(main())
