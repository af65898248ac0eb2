"""`foresight faults record`, CI-sized: one service whose instance crashes, on a private stack (free ports, temp
folder; the shared stack is never touched). Its windows and its ground truth land in ClickHouse and the export
joins them."""

from __future__ import annotations

from pathlib import Path

from infra.fault_dataset import RecordPlan, load_dataset, record_dataset, service_name


def test_recording_one_crashing_service_exports_windows_joined_with_the_ground_truth(tmp_path: Path) -> None:
    said: list[str] = []
    seed = 6  # with a 40 s run: an instance crashes 17.6 s after it is ready
    summary = record_dataset(RecordPlan(seeds=[seed], duration_s=40, batch=1), tmp_path, heldout_from=1000,
                             say=said.append)
    windows, requests = load_dataset(tmp_path)
    name = service_name(seed)
    assert summary["windows"] == len(windows) > 0, said
    assert set(windows["service"]) == {name} and (windows["split"] == "train").all()
    per_instance = windows.drop_duplicates("instance").set_index("instance")
    assert len(per_instance) >= 4  # the pool's 4 (and the crashed one's replacement)
    faulty = per_instance[per_instance["fault_kind"] != ""]
    assert faulty["fault_kind"].tolist() == ["crash"], per_instance[["fault_kind", "failure_ms"]]
    failure_s = float(faulty["failure_ms"].iloc[0]) / 1000
    crashed = windows[windows["instance"] == faulty.index[0]]
    assert crashed["window_start"].min() < failure_s  # it served before it crashed
    assert windows["requests"].sum() > 0 and len(requests) > 0
    assert set(requests["instance"]) >= set(per_instance.index[per_instance["requests"] > 0])
    load = summary["batches"][0]["load"][name]
    assert load["scheduled"] > 0 and "overflow" not in load["errors"]
