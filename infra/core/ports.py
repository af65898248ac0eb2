"""Free loopback ports, for benches and tests that start a server of their own."""

from __future__ import annotations

import random
import socket

# Blocks come from below the kernel's ephemeral range and above Ray's worker ports (10002-19999 by
# default): every port Ray or the OS hands out on its own (port 0) lands outside them, so a block
# picked now is not taken by a Ray process started after it.
BLOCK_RANGE = (20000, 32768)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now (it may be taken again later, but not by a port-0 bind)."""
    return free_ports(1)


def free_ports(count: int, tries: int = 50, seed: int | None = None) -> int:
    """First of `count` consecutive loopback ports nothing listens on right now (for a block)."""
    rng = random.Random(seed)
    low, high = BLOCK_RANGE
    for _ in range(tries):
        first = rng.randrange(low, high - count + 1)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found in {tries} tries in {low}-{high - 1}")
