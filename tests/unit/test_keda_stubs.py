"""The committed gRPC stubs are what grpcio-tools makes from the committed .proto (see its header)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEDA = Path("lb_adapters/keda")


def test_stubs_match_the_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    (tmp_path / KEDA).mkdir(parents=True)
    shutil.copy(ROOT / KEDA / "externalscaler.proto", tmp_path / KEDA)
    rc = protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                      f"--grpc_python_out={tmp_path}", str(tmp_path / KEDA / "externalscaler.proto")])
    assert rc == 0
    for name in ("externalscaler_pb2.py", "externalscaler_pb2.pyi", "externalscaler_pb2_grpc.py"):
        assert (tmp_path / KEDA / name).read_text() == (ROOT / KEDA / name).read_text(), \
            f"{name} is out of date: regenerate with the command in externalscaler.proto"


def test_service_is_the_one_keda_calls() -> None:
    from lb_adapters.keda import externalscaler_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert service.full_name == "externalscaler.ExternalScaler"
    assert {m.name for m in service.methods} == {"IsActive", "StreamIsActive", "GetMetricSpec", "GetMetrics"}
    assert service.methods_by_name["StreamIsActive"].server_streaming
