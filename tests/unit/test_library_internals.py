"""The private internals of libraries that the compat modules reach still look as they expect.

Each `check()` builds real objects of the installed library and inspects them; when an upgrade
changes one, the failure names the library and its version, and the compat module to update.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version

import pytest
from ddsketch import DDSketch

from infra.core import ray_loopback
from infra.core.internals import LibraryInternalsChanged, require
from infra.core.settings import ServingSettings
from ingest.compat import kafka_python
from serving.compat import ray_serve
from serving.front import serve_env
from streams.compat import ddsketch, faust


@pytest.mark.parametrize(("library", "check"), [
    ("kafka-python", kafka_python.check),
    ("faust-streaming", faust.check),
    ("ddsketch", ddsketch.check),
    ("ray", lambda: ray_serve.check(serve_env(ServingSettings(front="haproxy")))),
    ("ray", ray_serve.check_replica_grpc),
    ("ray", ray_loopback.check),
], ids=["kafka-python", "faust", "ddsketch", "ray-serve", "ray-serve-replica-grpc", "ray-loopback-head"])
def test_the_installed_library_still_has_the_internals_we_use(library: str, check: Callable[[], None]) -> None:
    try:
        check()
    except LibraryInternalsChanged as e:
        pytest.fail(str(e))
    except (AttributeError, TypeError, ImportError) as e:  # changed so much that the check itself broke
        pytest.fail(f"{library} {version(library)}: its internals changed ({e!r}); update its compat module")


def test_a_changed_internal_names_the_library_its_version_and_the_module() -> None:
    with pytest.raises(LibraryInternalsChanged) as raised:
        ray_serve.check(["RAY_SERVE_NO_SUCH_SETTING"])
    message = str(raised.value)
    assert f"ray {version('ray')}" in message
    assert "RAY_SERVE_NO_SUCH_SETTING" in message and "serving.compat.ray_serve" in message
    with pytest.raises(LibraryInternalsChanged, match=f"ddsketch {version('ddsketch')}: gone"):
        require("ddsketch", False, "gone", "streams.compat.ddsketch")


def test_ddsketch_totals_round_trip_through_the_private_fields() -> None:
    sk = DDSketch(0.01)
    for value in (0.0, 2.0, 5.0):
        sk.add(value)
    t = ddsketch.totals(sk)
    assert t == (1.0, 3.0, 7.0, 0.0, 5.0)  # zero count, count, sum, min, max
    other = DDSketch(0.01)
    ddsketch.set_totals(other, *t)
    assert (other.count, other.sum) == (3.0, 7.0)


def test_faust_committed_offsets_reads_the_consumer_mapping_and_tolerates_a_consumer_without_one() -> None:
    class Consumer:
        _committed_offset = {"tp": 41}

    assert faust.committed_offsets(Consumer()).get("tp") == 41
    assert faust.committed_offsets(object()).get("tp") is None
