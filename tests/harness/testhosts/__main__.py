"""The command line: ``python -m tests.harness.testhosts {rootfs,up,down,prune,inventory}``."""

import argparse
import json
import sys

from tests.harness import testhosts
from tests.harness.cache import cache_dir
from tests.harness.procs import CommandError
from tests.harness.testhosts.boot import up
from tests.harness.testhosts.inventory import ansible_inventory
from tests.harness.testhosts.rootfs import build_rootfs
from tests.harness.testhosts.state_file import State
from tests.harness.testhosts.teardown import down, prune


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.harness.testhosts", description=testhosts.__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("rootfs", help="build the cached rootfs and print its path")
    up_parser = sub.add_parser("up", help="boot hosts and serve package sources")
    up_parser.add_argument("--state", required=True, help="JSON state file to write")
    up_parser.add_argument("--host", action="append", required=True, help="host name (repeat)")
    up_parser.add_argument("--deb", action="append", default=[], help="Debian package for the repository (repeat)")
    up_parser.add_argument("--wheel", action="append", default=[], help="requirement to download as a wheel (repeat)")
    up_parser.add_argument("--build-wheel", action="append", default=[], help="requirement to build with pip wheel (repeat)")
    up_parser.add_argument("--reuse", action="store_true",
                           help="return the run the state file describes when it is complete and alive, with the same lists")
    down_parser = sub.add_parser("down", help="tear down what a state file records")
    down_parser.add_argument("--state", required=True)
    sub.add_parser("prune", help="tear down runs whose processes are all gone (their state file may be lost)")
    inventory_parser = sub.add_parser("inventory", help="print an Ansible inventory (JSON) of a run that is up")
    inventory_parser.add_argument("--state", required=True)
    inventory_parser.add_argument("--group", action="append", default=[], metavar="NAME=HOST[,HOST...]",
                                  help="a group and its hosts (repeat)")
    inventory_parser.add_argument("--vars-only", action="store_true", help="only the package-source variables")
    args = parser.parse_args(argv)
    try:
        if args.command == "rootfs":
            print(build_rootfs(log=cache_dir("rootfs") / "debootstrap.log"))
        elif args.command == "up":
            data = up(args.state, args.host, args.deb, args.wheel, args.build_wheel, reuse=args.reuse)
            print(json.dumps(data, indent=2, sort_keys=True))
        elif args.command == "inventory":
            print(json.dumps(_inventory(args), indent=2, sort_keys=True))
        elif args.command == "prune":
            for run_id in prune():
                print(run_id)
        else:
            down(args.state)
    except (testhosts.TestHostError, CommandError, ValueError) as error:
        print(f"testhosts: {error}", file=sys.stderr)
        return 1
    return 0


def _inventory(args):
    state = State.load(args.state)
    if state is None or "package_sources" not in state.data:
        raise testhosts.TestHostError(f"{args.state} describes no run that is up: run up first")
    groups = {}
    for spec in args.group:
        name, sep, members = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--group {spec!r}: write NAME=HOST[,HOST...]")
        groups[name] = [member for member in members.split(",") if member]
    return ansible_inventory(state.data, groups, vars_only=args.vars_only)


if __name__ == "__main__":
    sys.exit(main())
