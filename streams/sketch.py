"""DDSketch to and from plain JSON-able data, so open windows survive in a changelog and
instance sketches can travel to the service-wide merge.

The library's protobuf form needs the generated module and is slower than this; the fields
below are all a DDSketch with the default (logarithmic, dense, unbounded) layout holds.
Latencies are clamped at 0, so the negative store is always empty.
"""

from __future__ import annotations

from typing import Any

from ddsketch import DDSketch

SKETCH_RELATIVE_ACCURACY = 0.01


def new_sketch() -> DDSketch:
    return DDSketch(SKETCH_RELATIVE_ACCURACY)


def sketch_to_dict(sk: DDSketch) -> dict[str, Any]:
    st = sk._store
    out: dict[str, Any] = {"z": sk._zero_count, "c": sk._count, "s": sk._sum}
    if sk._count:
        out.update(mn=sk._min, mx=sk._max, o=st.offset, b=st.bins, k=[st.min_key, st.max_key], sc=st.count)
    return out


def sketch_from_dict(d: dict[str, Any]) -> DDSketch:
    sk = new_sketch()
    sk._zero_count = d["z"]
    sk._count = d["c"]
    sk._sum = d["s"]
    if d["c"]:
        sk._min, sk._max = d["mn"], d["mx"]
        st = sk._store
        st.offset, st.bins, st.count = d["o"], list(d["b"]), d["sc"]
        st.min_key, st.max_key = d["k"]
    return sk


def quantile(sk: DDSketch, q: float) -> float:
    return float(sk.get_quantile_value(q) or 0.0) if sk.count else 0.0
