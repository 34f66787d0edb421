"""The protobuf contracts: round trips, the no-floats rule, and generated code freshness."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

import residuals.v1
from residuals.cli import main
from residuals.platform import protogen
from residuals.v1 import common_pb2, usage_pb2

REPO = Path(__file__).resolve().parents[2]


def _residuals_files() -> list[FileDescriptor]:
    files = []
    for info in pkgutil.iter_modules(residuals.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"residuals.v1.{info.name}")
            files.append(module.DESCRIPTOR)
    return files


def _messages(descriptor: Descriptor) -> Iterator[Descriptor]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _messages(nested)


def test_every_proto_file_has_generated_module() -> None:
    names = {f.name for f in _residuals_files()}
    protos = {f"residuals/v1/{p.name}" for p in (REPO / "protos/residuals/v1").glob("*.proto")}
    assert names == protos


def test_usage_event_round_trip_keeps_presence_and_defaults() -> None:
    occurred = Timestamp()
    occurred.FromJsonString("2026-10-07T12:00:00Z")
    event = usage_pb2.UsageEvent(
        event_id="ad-rich",
        vendor_id="VEN-PIXEL",
        kind=common_pb2.USAGE_KIND_AD_IMPRESSION,
        licence_id="LIC-BO-PIXEL",
        avatar_id="AVA-BO-1",
        render_id="vid-1",
        category="product_demo",
        territory="GB",
        channel="social",
        occurred_at=occurred,
        quantity=1000,
        ad_revenue="12.40",
    )
    data = event.SerializeToString(deterministic=True)
    back = usage_pb2.UsageEvent.FromString(data)
    assert back == event
    assert back.quantity == 1000 and back.ad_revenue == "12.40"
    assert back.occurred_at.ToJsonString() == "2026-10-07T12:00:00Z"
    # Unset optional fields are distinguishable from explicit values (defaults 1/true/false).
    assert not back.HasField("viewable") and not back.HasField("ivt")
    explicit_zero = usage_pb2.UsageEvent(event_id="zero", quantity=0)
    assert usage_pb2.UsageEvent.FromString(explicit_zero.SerializeToString()).HasField("quantity")
    assert not usage_pb2.UsageEvent(event_id="x").HasField("quantity")


def test_signed_usage_event_round_trip_keeps_payload_bytes() -> None:
    payload = usage_pb2.UsageEvent(
        event_id="a1", vendor_id="VEN-ORBIT", kind=common_pb2.USAGE_KIND_RENDER
    ).SerializeToString(deterministic=True)
    signed = usage_pb2.SignedUsageEvent(
        payload=payload,
        signature=bytes(range(64)),
        key_id="key-1",
        trace=common_pb2.TraceContext(
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ),
    )
    back = usage_pb2.SignedUsageEvent.FromString(signed.SerializeToString())
    assert back == signed
    assert back.payload == payload  # signature covers these exact bytes
    assert usage_pb2.UsageEvent.FromString(back.payload).event_id == "a1"


def test_no_binary_floating_point_anywhere() -> None:
    floats = (descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,)
    floats += (descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,)
    offenders = []
    files = _residuals_files()
    assert len(files) >= 9
    for file in files:
        for top in file.message_types_by_name.values():
            for message in _messages(top):
                for fd in message.fields:
                    if fd.type in floats:
                        offenders.append(f"{message.full_name}.{fd.name}")
    assert offenders == []


def test_enums_follow_buf_standard_zero_values() -> None:
    for file in _residuals_files():
        enums = list(file.enum_types_by_name.values())
        for top in file.message_types_by_name.values():
            for message in _messages(top):
                enums.extend(message.enum_types)
        for enum in enums:
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.full_name


def test_services_import_with_package_layout() -> None:
    from residuals.v1 import (
        alert_service_pb2_grpc,
        ingest_pb2_grpc,
        licence_service_pb2_grpc,
        payout_service_pb2_grpc,
    )

    assert ingest_pb2_grpc.IngestServiceStub
    assert licence_service_pb2_grpc.LicenceServiceStub
    assert alert_service_pb2_grpc.AlertServiceStub
    assert payout_service_pb2_grpc.PayoutServiceStub


def test_protos_check_passes_on_clean_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protos", "check", "--root", str(REPO)]) == 0
    assert "matches" in capsys.readouterr().out


def test_protos_check_names_stale_and_extra_files(tmp_path: Path) -> None:
    fresh, committed = tmp_path / "fresh", tmp_path / "committed"
    fresh.mkdir()
    committed.mkdir()
    (fresh / "a_pb2.py").write_text("x = 1\n")
    (committed / "a_pb2.py").write_text("x = 2\n")
    (fresh / "b_pb2.pyi").write_text("")
    (committed / "gone_pb2_grpc.py").write_text("")
    (committed / "README.md").write_text("not ours")
    result = protogen.compare(fresh, committed)
    assert not result.ok
    assert result.changed == ["a_pb2.py"]
    assert result.missing == ["b_pb2.pyi"]
    assert result.extra == ["gone_pb2_grpc.py"]
    assert "stale: out/a_pb2.py" in result.lines("out")
