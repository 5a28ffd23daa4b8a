"""The ``cromac`` command line: thin argument parsing over the library's functions."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cromac", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("envs", help="list the registered environment presets with their sizes")
    p.set_defaults(func=_cmd_envs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
