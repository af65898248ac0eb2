"""DDSketch to and from plain JSON-able data, so open windows survive in a changelog and
instance sketches can travel to the service-wide merge.

The library's protobuf form needs the generated module and is slower than this; the fields
below are all a DDSketch with the default (logarithmic, dense, unbounded) layout holds. They are
private: `streams.compat.ddsketch` reads and writes them. Latencies are clamped at 0, so the
negative store is always empty.
"""

from __future__ import annotations

from typing import Any

from ddsketch import DDSketch

from streams.compat import ddsketch as internals

SKETCH_RELATIVE_ACCURACY = 0.01


def new_sketch() -> DDSketch:
    return DDSketch(SKETCH_RELATIVE_ACCURACY)


def sketch_to_dict(sk: DDSketch) -> dict[str, Any]:
    zero_count, count, total, low, high = internals.totals(sk)
    out: dict[str, Any] = {"z": zero_count, "c": count, "s": total}
    if count:
        st: Any = internals.store(sk)
        out.update(mn=low, mx=high, o=st.offset, b=st.bins, k=[st.min_key, st.max_key], sc=st.count)
    return out


def sketch_from_dict(d: dict[str, Any]) -> DDSketch:
    sk = new_sketch()
    if d["c"]:
        internals.set_totals(sk, d["z"], d["c"], d["s"], d["mn"], d["mx"])
        st: Any = internals.store(sk)
        st.offset, st.bins, st.count = d["o"], list(d["b"]), d["sc"]
        st.min_key, st.max_key = d["k"]
    else:  # min and max stay those of an empty sketch
        _, _, _, low, high = internals.totals(sk)
        internals.set_totals(sk, d["z"], d["c"], d["s"], low, high)
    return sk


def quantile(sk: DDSketch, q: float) -> float:
    return float(sk.get_quantile_value(q) or 0.0) if sk.count else 0.0
