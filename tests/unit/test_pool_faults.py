"""Fault scenarios: the pure effect over time, the ground truth, the generator, and a real backend
(aiohttp on loopback) playing them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from infra.core.ports import free_port
from infra.pool.backend import Backend, BackendConfig
from infra.pool.faults import Fault, Scenario, dump_scenario, effect_at, generate, load_scenario


def test_a_fault_ramps_in_lasts_and_ends() -> None:
    f = Fault(instance="a", kind="slowdown", start_s=10, ramp_s=10, duration_s=5, factor=3)
    assert [f.level(t) for t in (0, 10, 15, 20, 24.9, 25)] == [0, 0, 0.5, 1, 1, 0]
    assert effect_at([f], 15).service_factor == pytest.approx(2.0)
    assert effect_at([f], 30).service_factor == 1.0


def test_effects_combine_slowdowns_multiply_losses_add_worst_error_wins() -> None:
    faults = [Fault(instance="a", kind="slowdown", start_s=0, factor=2),
              Fault(instance="a", kind="slowdown", start_s=0, factor=3),
              Fault(instance="a", kind="capacity_loss", start_s=0, workers_lost=1),
              Fault(instance="a", kind="capacity_loss", start_s=0, workers_lost=2),
              Fault(instance="a", kind="errors", start_s=0, error_fraction=0.2),
              Fault(instance="a", kind="errors", start_s=0, error_fraction=0.4)]
    e = effect_at(faults, 1)
    assert (e.service_factor, e.workers_lost, e.error_fraction, e.hang, e.crash) == (6.0, 3, 0.4, False, False)


def test_the_ground_truth_follows_the_label() -> None:
    assert Fault(instance="a", kind="crash", start_s=50).failure_s() == 50
    assert Fault(instance="a", kind="hang", start_s=40).failure_s() == 40
    assert Fault(instance="a", kind="leak", start_s=10, lead_s=90).failure_s() == 100
    # errors ramp to 50 % over 100 s: 1 % is reached 2 s in
    assert Fault(instance="a", kind="errors", start_s=10, ramp_s=100, error_fraction=0.5).failure_s() == 12
    assert Fault(instance="a", kind="slowdown", start_s=10).failure_s() is None
    assert Fault(instance="a", kind="capacity_loss", start_s=10).failure_s() is None


def test_a_leak_creeps_before_it_crashes() -> None:
    leak = Fault(instance="a", kind="leak", start_s=0, lead_s=60, factor=4)
    early, late, after = effect_at([leak], 15), effect_at([leak], 45), effect_at([leak], 60)
    assert 0 < early.resource < late.resource < 1 and not late.crash
    assert 1 < early.service_factor < late.service_factor < 4
    assert after.crash


def test_the_generator_is_reproducible_and_spares_an_instance() -> None:
    assert generate(3, 4, 300, faults=2) == generate(3, 4, 300, faults=2)
    assert generate(3, 4, 300) != generate(4, 4, 300)
    many = generate(5, 3, 300, faults=10)
    assert len({f.instance for f in many.faults}) == 2
    assert all(75 <= f.start_s <= 150 for f in generate(9, 4, 300, faults=3).faults)
    with pytest.raises(ValueError, match="at least 2 instances"):
        generate(1, 1, 300)


def test_a_scenario_round_trips_through_yaml_and_bad_files_say_why(tmp_path: Path) -> None:
    scenario = generate(11, 5, 600, faults=3)
    path = tmp_path / "s.yml"
    path.write_text(dump_scenario(scenario))
    assert load_scenario(path) == scenario
    assert scenario.for_instance("web-x", int(scenario.faults[0].instance[1:])) == [scenario.faults[0]]
    path.write_text("faults: [{instance: a, kind: meltdown, start_s: 1}]\nname: x\n")
    with pytest.raises(ValueError, match="kind"):
        load_scenario(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not YAML"):
        load_scenario(path)


async def _serve(backend: Backend, requests: int, timeout_s: float = 5.0) -> list[int | str]:
    server = asyncio.create_task(backend.run())
    url = f"http://127.0.0.1:{backend.cfg.port}"
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        while not backend.ready:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.15)  # one turn of the fault loop

        async def one() -> int | str:
            try:
                return (await client.get(f"{url}/x")).status_code
            except httpx.TimeoutException:
                return "timeout"

        out: list[int | str] = []
        for start in range(0, requests, 20):  # 20 at a time: a busy machine must not turn load into timeouts
            out += await asyncio.gather(*(one() for _ in range(min(20, requests - start))))
    backend._stop.set()
    await server
    return out


def _backend(faults: list[Fault], workers: int = 4) -> Backend:
    cfg = BackendConfig(service="web", instance="a", port=free_port(), workers=workers, mean_service_s=0.002,
                        distribution="constant", startup_delay_s=0.0, stop_grace_s=1.0)
    return Backend(cfg, seed=1, faults=faults)


def test_a_backend_answers_500_for_the_share_an_error_fault_sets() -> None:
    statuses = asyncio.run(_serve(_backend([Fault(instance="a", kind="errors", start_s=0, error_fraction=0.3)]), 400,
                                  timeout_s=30))
    share = statuses.count(500) / len(statuses)
    assert set(statuses) == {200, 500}
    assert 0.2 < share < 0.4


def test_a_hung_backend_accepts_and_never_answers() -> None:
    statuses = asyncio.run(_serve(_backend([Fault(instance="a", kind="hang", start_s=0)]), 3, timeout_s=0.5))
    assert statuses == ["timeout"] * 3


def test_a_capacity_loss_holds_workers() -> None:
    backend = _backend([Fault(instance="a", kind="capacity_loss", start_s=0, workers_lost=3)], workers=4)
    statuses = asyncio.run(_serve(backend, 20))
    assert statuses == [200] * 20
    assert backend._phantom == 3


def test_an_injected_crash_ends_the_process(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio
        from infra.pool.backend import Backend, BackendConfig
        from infra.pool.faults import Fault
        cfg = BackendConfig(service="web", instance="a", port={free_port()}, startup_delay_s=0.0)
        asyncio.run(Backend(cfg, faults=[Fault(instance="a", kind="crash", start_s=0.3)]).run())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 70, proc.stderr
    assert "injected crash" in proc.stderr


def test_ground_truth_rows_put_the_scenario_on_the_wall_clock() -> None:
    from infra.pool.ground_truth import COLUMNS, fault_rows

    faults = [Fault(instance="#0", kind="errors", start_s=10, ramp_s=100, error_fraction=0.5),
              Fault(instance="#0", kind="slowdown", start_s=5, ramp_s=5, duration_s=20)]
    rows = [dict(zip(COLUMNS, r, strict=True)) for r in
            fault_rows(Scenario(name="s", seed=3, faults=faults), faults, "web", "web-1", ready_ms=1_000_000)]
    errors, slow = rows
    assert (errors["start_ms"], errors["full_ms"], errors["failure_ms"], errors["end_ms"]) == \
        (1_010_000, 1_110_000, 1_012_000, None)
    assert (slow["start_ms"], slow["full_ms"], slow["end_ms"], slow["failure_ms"]) == (1_005_000, 1_010_000,
                                                                                        1_030_000, None)
    assert errors["seed"] == 3 and errors["instance"] == "web-1" and '"error_fraction":0.5' in errors["params"]


def test_faults_injected_into_a_running_instance_take_effect_and_are_reported() -> None:
    told: list[tuple[list[Fault], int]] = []
    cfg = BackendConfig(service="web", instance="a", port=free_port(), workers=2, mean_service_s=0.002,
                        distribution="constant", startup_delay_s=0.0, stop_grace_s=1.0)
    backend = Backend(cfg, seed=1, on_faults=lambda faults, t0: told.append((faults, t0)))

    async def scenario() -> tuple[list[int], int, int, list[int]]:
        server = asyncio.create_task(backend.run())
        url = f"http://127.0.0.1:{cfg.port}"
        async with httpx.AsyncClient(timeout=10) as client:
            while not backend.ready:
                await asyncio.sleep(0.01)
            before = [(await client.get(f"{url}/x")).status_code for _ in range(5)]
            bad = await client.post(f"{url}/admin/faults", json=[{"kind": "meltdown", "start_s": 0}])
            ok = await client.post(f"{url}/admin/faults", json=[{"kind": "errors", "start_s": 0,
                                                                 "error_fraction": 1.0}])
            await asyncio.sleep(0.2)  # a turn of the fault loop
            after = [(await client.get(f"{url}/x")).status_code for _ in range(5)]
        backend._stop.set()
        await server
        return before, bad.status_code, ok.status_code, after

    before, bad, ok, after = asyncio.run(scenario())
    assert (before, bad, ok, after) == ([200] * 5, 422, 202, [500] * 5)
    assert len(told) == 1 and told[0][0][0].kind == "errors" and told[0][0][0].instance == "a"
