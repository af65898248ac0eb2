"""Port blocks for benches and tests: free now, and out of the way of ports handed out later."""

import socket
from pathlib import Path

import pytest

from infra.core import ports


def test_a_block_is_free_and_outside_the_ranges_ray_and_the_kernel_pick_from() -> None:
    first = ports.free_ports(21, seed=1)
    low, high = ports.BLOCK_RANGE
    assert low <= first and first + 21 <= high
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert first + 21 <= ephemeral_low  # port-0 binds (Ray's gRPC servers among them) never land in it
    for port in range(first, first + 21):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_moves_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ports.free_ports(4, seed=7)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 2))
        taken.listen()
        again = ports.free_ports(4, seed=7)  # the same first pick is refused, the next one taken
        assert again != first and not (again <= first + 2 < again + 4)
    monkeypatch.setattr(ports, "BLOCK_RANGE", (first + 2, first + 2 + 4))  # room for one block only
    with socket.socket() as taken, pytest.raises(RuntimeError, match="no 4 consecutive free ports"):
        taken.bind(("127.0.0.1", first + 2))
        ports.free_ports(4, tries=3, seed=7)


def test_a_single_port_comes_from_the_same_range() -> None:
    low, high = ports.BLOCK_RANGE
    assert all(low <= ports.free_port() < high for _ in range(20))
