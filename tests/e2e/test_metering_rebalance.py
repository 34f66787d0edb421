"""Scaling the meter out and in while a month flows, on the real stack.

Three meters take turns: a second one joins (half the partitions, and their state, move to
it), the first is stopped gracefully (its partitions move at once), a third joins, and the
second is killed with SIGKILL (its partitions move when its session expires). Each move is
a faust rebalance with state restored from the changelog, the situations in which faust
has dropped fetched records. After catch-up every record is in the ledger exactly once and
the ledger's statement equals the offline replay, to the cent.
"""

from __future__ import annotations

import time
from pathlib import Path

from residuals.stack.settings import StackSettings
from tests.support.metering import Service, pipeline
from tests.support.month_run import assert_ledger_is_the_replay, prepare_month

EVENTS = 48_000
LICENCES = 1_000
VENDORS = 10
CHUNKS = 8
CATCH_UP_TIMEOUT = 600.0  # each restart after a detected hole waits ~60 s for a session


def _rated_partitions(meter: Service) -> set[int]:
    """Partitions this meter rated (its "input partitions resumed" log lines)."""
    import json

    found: set[int] = set()
    for start in range(1, meter.starts + 1):
        path = meter.log_dir / f"{meter.name}-{start}.log"
        for line in path.read_text(errors="replace").splitlines():
            if "input partitions resumed" in line:
                found.update(int(p) for p in json.loads(line)["first_delivered"])
    return found


def _until_rating(meter: Service, timeout: float = 120.0) -> None:
    """Wait until a meter that joined has been given partitions and rated from them: the
    rebalance it causes takes a group round trip and a state restore, longer on a busy
    machine, and the schedule's next step (killing it) must move partitions it really held."""
    deadline = time.monotonic() + timeout
    while not _rated_partitions(meter):
        assert time.monotonic() < deadline, f"{meter.name} rated nothing within {timeout:.0f} s"
        time.sleep(0.5)


def _kill_once_rating(meter: Service) -> None:
    """SIGKILL a meter that really holds partitions (a kill before its rebalance finished
    would move nothing, and the test would prove nothing)."""
    _until_rating(meter)
    meter.kill9()


def test_meters_scaled_out_and_in_while_a_month_flows(stack: StackSettings, tmp_path: Path) -> None:
    started = time.monotonic()
    with pipeline(stack, tmp_path) as run:
        month = prepare_month(run, events=EVENTS, licences=LICENCES, vendors=VENDORS)
        first, second, third = (
            run.meter(f"meter-{n}", METER_STALL_SECONDS="60") for n in ("a", "b", "c")
        )
        ledger = run.ledger()
        first.start()
        ledger.start()
        # After which chunk, what happens to the meters.
        schedule = {
            1: ("meter-b joined", second.start),
            3: ("meter-a stopped (SIGTERM)", first.stop),
            4: ("meter-c joined", third.start),
            6: ("meter-b killed (SIGKILL)", lambda: _kill_once_rating(second)),
        }
        steps: list[str] = []
        try:
            for i, part in enumerate(month.chunks(CHUNKS)):
                run.produce(part)
                time.sleep(1.5)
                if i in schedule:
                    step, act = schedule[i]
                    act()
                    steps.append(step)
            rows = run.wait_ledgered(
                len(month.records), CATCH_UP_TIMEOUT, [third, ledger], supervise=True
            )
            time.sleep(2.0)  # anything late and duplicated would show up now
            rows = run.stored_positions()
        finally:
            for service in (first, second, third, ledger):
                service.stop()

        assert_ledger_is_the_replay(run, month, rows, tmp_path)
        # Partitions really moved: each meter rated some, and the last one took over what
        # the killed one held.
        rated = {m.name: _rated_partitions(m) for m in (first, second, third)}
        assert all(rated.values()), rated
        assert rated["meter-c"] | rated["meter-b"] == set(range(run.partitions)), rated
        print(
            f"\n{EVENTS} events, steps: {steps}; partitions rated: "
            f"{ {k: sorted(v) for k, v in rated.items()} }; exits: "
            f"meter-c {third.exit_codes}, ledger {ledger.exit_codes}; "
            f"{time.monotonic() - started:.0f} s"
        )
