"""A /24 for a run's bridge that overlaps nothing on this machine."""

import contextlib
import ipaddress
import json
import random

from tests.harness.procs import run
from tests.harness.testhosts import TestHostError

# Test networks are /24s carved out of this range, skipping any that overlap
# an address or route already on this machine.
TEST_NET_POOL = ipaddress.ip_network("10.213.0.0/16")


def _used_networks():
    used = []
    for cmd in (["ip", "-j", "-4", "addr"], ["ip", "-j", "-4", "route", "show", "table", "all"]):
        for entry in json.loads(run(cmd) or "[]"):
            for info in entry.get("addr_info", []):
                used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
            dst = entry.get("dst")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.ip_network(dst, strict=False))
    return used


def pick_subnet():
    """A free /24 of TEST_NET_POOL; callers hold a lock until its bridge exists, so no two runs pick the same."""
    used = _used_networks()
    candidates = list(TEST_NET_POOL.subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise TestHostError(f"no free /24 left in {TEST_NET_POOL}")
