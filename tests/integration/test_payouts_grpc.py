"""PayoutService over a real gRPC socket, with API keys, PostgreSQL and Kafka."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from residuals.domain.closing import content_hash
from residuals.payouts.app import PayoutsApp
from residuals.payouts.rails import TestRail
from residuals.platform.auth import Principal, Role, StaticAuthenticator, bearer_metadata
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_consumer, topic_name
from residuals.platform.topics import PAYOUTS
from residuals.replay.casefile import load_case
from residuals.stack.settings import StackSettings
from residuals.v1 import payout_service_pb2 as ps
from residuals.v1 import payout_service_pb2_grpc, payouts_pb2
from tests.support.alerts import unique
from tests.support.bad_request import INJECTIONS, UNSTORABLE, bad_field
from tests.support.payouts import MemoryEvents, case_sources, migrated_database, running_payouts

CASE = Path(__file__).parents[1] / "data" / "royalty-cases" / "07-advance-and-threshold.yaml"


@dataclass
class Env:
    app: PayoutsApp
    stub: payout_service_pb2_grpc.PayoutServiceStub
    channel: grpc.Channel
    rail: TestRail
    events: MemoryEvents
    kafka: KafkaSettings
    keys: dict[str, str]

    def md(self, who: str) -> Any:
        return bearer_metadata(self.keys[who])


@pytest.fixture(scope="module")
def env(stack: StackSettings) -> Iterator[Env]:
    sources, events = case_sources(CASE)
    auth = StaticAuthenticator()
    keys = {
        "finance": auth.add(Principal("p-fin", Role.FINANCE)),
        "admin": auth.add(Principal("p-admin", Role.ADMIN)),
        "gus": auth.add(Principal("p-gus", Role.TALENT, talent_id="TAL-GUS")),
        "mo": auth.add(Principal("p-mo", Role.TALENT, talent_id="AGT-MO")),
        "acme": auth.add(Principal("p-acme", Role.VENDOR, vendor_id="VEN-ACME")),
    }
    rail = TestRail()
    with (
        migrated_database(stack) as dsn,
        running_payouts(
            stack,
            dsn,
            "payouts",
            sources=sources,
            authenticator=auth,
            rail=rail,
            thresholds_text="USD=25.00",
            poll_seconds=0.05,
            heartbeat_seconds=5.0,
        ) as app,
    ):
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        try:
            yield Env(
                app,
                payout_service_pb2_grpc.PayoutServiceStub(channel),
                channel,
                rail,
                events,
                app.settings.kafka,
                keys,
            )
        finally:
            channel.close()


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    code: grpc.StatusCode = info.value.code()
    return code


def test_roles_and_closing(env: Env) -> None:
    req = ps.ClosePeriodRequest(period="2026-10", force=True)
    assert _code(lambda: env.stub.ClosePeriod(req)) is grpc.StatusCode.UNAUTHENTICATED
    for who in ("gus", "acme"):
        assert _code(lambda w=who: env.stub.ClosePeriod(req, metadata=env.md(w))) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
    # force is for admins; finance closes after the grace period (2026-10 is long past).
    forced = lambda: env.stub.ClosePeriod(req, metadata=env.md("finance"))  # noqa: E731
    assert _code(forced) is grpc.StatusCode.PERMISSION_DENIED
    bad = ps.ClosePeriodRequest(period="2026-13")
    assert _code(lambda: env.stub.ClosePeriod(bad, metadata=env.md("finance"))) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    first = env.stub.ClosePeriod(
        ps.ClosePeriodRequest(period="2026-10"), metadata=env.md("finance")
    )
    again = env.stub.ClosePeriod(ps.ClosePeriodRequest(period="2026-10"), metadata=env.md("admin"))
    assert not first.already_closed and again.already_closed
    assert first.statement.content_hash == again.statement.content_hash
    assert len(first.statement.licences) == 2
    gus = next(p for p in first.statement.payees if p.payee_id == "TAL-GUS")
    assert (gus.payable.units, gus.payable.nanos) == (115, 650_000_000)
    future = ps.ClosePeriodRequest(period="2099-01")
    assert _code(lambda: env.stub.ClosePeriod(future, metadata=env.md("finance"))) is (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def _closed(env: Env) -> None:
    env.stub.ClosePeriod(ps.ClosePeriodRequest(period="2026-10"), metadata=env.md("finance"))


def test_statement_views_by_role(env: Env) -> None:
    _closed(env)
    get = ps.GetStatementRequest(period="2026-10")
    full = env.stub.GetStatement(get, metadata=env.md("finance")).statement
    vendor = env.stub.GetStatement(get, metadata=env.md("acme")).statement
    talent = env.stub.GetStatement(get, metadata=env.md("mo")).statement
    assert [x.licence_id for x in full.licences] == ["LIC-GUS-ACME", "LIC-GUS-PIXEL"]
    assert [x.licence_id for x in vendor.licences] == ["LIC-GUS-ACME"]
    assert list(vendor.payees) == [] and list(vendor.violations) == []
    assert [x.licence_id for x in talent.licences] == ["LIC-GUS-ACME"]  # the agent's split
    assert [p.payee_id for p in talent.payees] == ["AGT-MO"]
    assert full.violations[0].count == 1
    missing = ps.GetStatementRequest(period="2030-01")
    assert _code(lambda: env.stub.GetStatement(missing, metadata=env.md("finance"))) is (
        grpc.StatusCode.NOT_FOUND
    )
    listed = env.stub.ListStatements(ps.ListStatementsRequest(), metadata=env.md("gus"))
    assert [s.period for s in listed.statements] == ["2026-10"]


def test_exports_json_is_the_section_10_document_and_csv_has_every_line(env: Env) -> None:
    _closed(env)
    as_json = env.stub.ExportStatement(
        ps.ExportStatementRequest(period="2026-10", format=ps.EXPORT_FORMAT_JSON),
        metadata=env.md("finance"),
    )
    doc = json.loads(as_json.content)
    expected = load_case(CASE).expected
    assert expected is not None
    assert doc["payees"] == [
        {k: str(v) for k, v in p.items()} for p in expected["payees"]
    ]  # same numbers as the worked case
    assert hashlib.sha256(as_json.content).hexdigest() == as_json.sha256 == content_hash(doc)
    assert as_json.filename == "residuals-2026-10.json"
    as_csv = env.stub.ExportStatement(
        ps.ExportStatementRequest(period="2026-10", format=ps.EXPORT_FORMAT_CSV),
        metadata=env.md("acme"),
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.content.decode())))
    assert {r["licence_id"] for r in rows} == {"LIC-GUS-ACME"}
    lines = [r for r in rows if r["record"] == "line"]
    assert [(r["kind"], r["units"], r["rate"], r["amount"]) for r in lines] == [
        ("RENDER", "300", "0.60", "180.00"),
        ("VIEW", "12000", "3.00", "36.00"),
    ]
    assert sum(Decimal(r["amount"]) for r in lines) == Decimal("216.00")


def test_payouts_scoped_paid_once_watched_and_published(env: Env) -> None:
    _closed(env)
    fin, gus = env.md("finance"), env.md("gus")
    assert _code(
        lambda: env.stub.ListPayouts(ps.ListPayoutsRequest(), metadata=env.md("acme"))
    ) is (grpc.StatusCode.PERMISSION_DENIED)
    other = ps.ListPayoutsRequest(payee_id="AGT-MO")
    assert (
        _code(lambda: env.stub.ListPayouts(other, metadata=gus))
        is grpc.StatusCode.PERMISSION_DENIED
    )
    own = env.stub.ListPayouts(ps.ListPayoutsRequest(), metadata=gus).payouts
    assert [(p.payee_id, p.state) for p in own] == [("TAL-GUS", payouts_pb2.PAYOUT_STATE_PENDING)]
    assert env.stub.ListPayouts(ps.ListPayoutsRequest(), metadata=env.md("mo")).payouts == []

    items: queue.Queue[Any] = queue.Queue()
    call = env.stub.WatchPayouts(ps.WatchPayoutsRequest(heartbeat_seconds=1), metadata=gus)

    def read() -> None:
        try:
            for item in call:
                items.put(item)
        except grpc.RpcError as error:
            items.put(error)

    threading.Thread(target=read, daemon=True).start()
    first = items.get(timeout=10)
    assert first.payout.state == payouts_pb2.PAYOUT_STATE_PENDING

    env.rail.fail_next = 1
    req = ps.PayPayoutsRequest(period="2026-10")
    assert (
        _code(lambda: env.stub.PayPayouts(req, metadata=gus)) is grpc.StatusCode.PERMISSION_DENIED
    )
    failed = env.stub.PayPayouts(req, metadata=fin)
    assert (failed.paid, failed.failed) == (0, 1)
    paid = env.stub.PayPayouts(req, metadata=fin)
    assert (paid.paid, paid.failed) == (1, 0)
    assert env.stub.PayPayouts(req, metadata=fin).payouts == []  # nothing left to pay
    assert list(env.rail.paid) == ["payout:2026-10:TAL-GUS:USD"]

    seen = [first.payout]
    heartbeat = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and heartbeat is None:
        item = items.get(timeout=10)
        assert not isinstance(item, grpc.RpcError), item
        if item.HasField("payout"):
            seen.append(item.payout)
        else:
            heartbeat = item.heartbeat
    call.cancel()
    states = [p.state for p in seen]
    assert states == [
        payouts_pb2.PAYOUT_STATE_PENDING,
        payouts_pb2.PAYOUT_STATE_FAILED,
        payouts_pb2.PAYOUT_STATE_RETRIED,
        payouts_pb2.PAYOUT_STATE_PAID,
    ]
    sequences = [p.sequence for p in seen]
    assert sequences == sorted(sequences)
    assert heartbeat is not None and heartbeat.latest_sequence >= sequences[-1]
    # resume after the second change: exactly the rest, in order
    resumed = env.stub.WatchPayouts(
        ps.WatchPayoutsRequest(after_sequence=sequences[1], heartbeat_seconds=1), metadata=fin
    )
    rest = []
    for item in resumed:
        if item.HasField("heartbeat"):
            break
        rest.append(item.payout.sequence)
    resumed.cancel()
    assert rest == sequences[2:]

    # the same changes reach residuals.payouts.v1, keyed by payee
    consumer = make_consumer(env.kafka, unique("payouts-test"))
    consumer.subscribe([topic_name(env.kafka, PAYOUTS)])
    got: list[payouts_pb2.PayoutEvent] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < 4 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            assert msg.key() == b"TAL-GUS"
            got.append(payouts_pb2.PayoutEvent.FromString(msg.value()))
    finally:
        consumer.close()
    assert [e.sequence for e in got] == sequences


def test_reconcile_rpc(env: Env) -> None:
    _closed(env)
    req = ps.ReconcileRequest(period="2026-10")
    assert _code(lambda: env.stub.Reconcile(req, metadata=env.md("gus"))) is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    report = env.stub.Reconcile(req, metadata=env.md("finance"))
    assert report.ok, [c for c in report.checks if not c.ok]
    names = [c.name for c in report.checks]
    assert "2026-10: every journal entry balances" in names
    assert "2026-10: accepted = ledgered + held + dead + duplicates" in names


def test_bad_filters_and_page_tokens_are_invalid_argument(env: Env) -> None:
    _closed(env)
    fin = env.md("finance")
    payouts_before = list(env.stub.ListPayouts(ps.ListPayoutsRequest(), metadata=fin).payouts)
    for value in INJECTIONS:  # bound as parameters: they match nothing
        for request in (
            ps.ListPayoutsRequest(payee_id=value),
            ps.ListPayoutsRequest(page_token=value),
        ):
            assert env.stub.ListPayouts(request, metadata=fin).payouts == [], (request, value)
        view = env.stub.GetStatement(
            ps.GetStatementRequest(period="2026-10", filter=ps.StatementFilter(vendor_id=value)),
            metadata=fin,
        ).statement
        assert list(view.licences) == []
    statement = "2026-10"
    cases: list[tuple[str, Any, str]] = [
        ("ListPayouts", ps.ListPayoutsRequest(states=[99]), "states[0]"),  # type: ignore[list-item]
        ("WatchPayouts", ps.WatchPayoutsRequest(after_sequence=2**64 - 1), "after_sequence"),
        ("ListStatements", ps.ListStatementsRequest(page_token="2026-13"), "page_token"),
    ]
    for v in UNSTORABLE:
        cases += [
            ("ListPayouts", ps.ListPayoutsRequest(payee_id=v), "payee_id"),
            ("ListPayouts", ps.ListPayoutsRequest(page_token=v), "page_token"),
            ("ListPayouts", ps.ListPayoutsRequest(period=v), "period"),
            ("ListStatements", ps.ListStatementsRequest(page_token=v), "page_token"),
            ("ListStatements", ps.ListStatementsRequest(from_period=v), "from_period"),
            ("WatchPayouts", ps.WatchPayoutsRequest(payee_id=v), "payee_id"),
            ("WatchPayouts", ps.WatchPayoutsRequest(period=v), "period"),
            ("PayPayouts", ps.PayPayoutsRequest(payout_ids=["ok", v]), "payout_ids[1]"),
            (
                "GetStatement",
                ps.GetStatementRequest(
                    period=statement, filter=ps.StatementFilter(licence_ids=[v])
                ),
                "filter.licence_ids[0]",
            ),
            (
                "ExportStatement",
                ps.ExportStatementRequest(period=statement, filter=ps.StatementFilter(payee_id=v)),
                "filter.payee_id",
            ),
        ]
    for method, request, field in cases:
        call = getattr(env.stub, method)
        assert bad_field(lambda c=call, r=request: c(r, metadata=fin, timeout=5)) == field, method
    # Nothing was paid or changed by any of it.
    assert list(env.stub.ListPayouts(ps.ListPayoutsRequest(), metadata=fin).payouts) == (
        payouts_before
    )
