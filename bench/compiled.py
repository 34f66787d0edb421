"""A copy of the ``residuals`` package with the rating path compiled by mypyc.

    python -m bench.compiled            # prints the directory to put first on PYTHONPATH
    PYTHONPATH=$(python -m bench.compiled):$PYTHONPATH python -m bench.meter_cpu
    python -m bench.pipeline --quick --compiled

Why: after faust's per-record path went (issue 20), the meter's CPU per event is its own
Python: admission, the rules and the records it builds. They are fully type-hinted, so
mypyc (shipped with mypy, a dev dependency) compiles them to C extensions unchanged; the
types become runtime checks. This is a measured lever, not yet how the services are
deployed: the image would compile the same modules, and the test tiers would run against
the compiled copy as well (three unit tests monkeypatch module functions, which compiled
callers do not look up again).

The sources are copied, never compiled in place (a stale extension next to an edited
``.py`` would silently win the import). The copy is cached by a digest of the sources.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "services" / "residuals"
CACHE = ROOT / "bench" / ".data" / "compiled"

#: The modules a usage record passes through in the meter and the ledger writer; the rest
#: of the package (I/O adapters, faust and Kafka wiring, generated protobuf) stays Python.
HOT_MODULES = (
    "admission.py",
    "codecs/merkle.py",
    "codecs/receipt.py",
    "codecs/signed.py",
    "codecs/timestamps.py",
    "codecs/usage.py",
    "codecs/wire.py",
    "domain/bounds.py",
    "domain/events.py",
    "domain/identity.py",
    "domain/licences.py",
    "domain/metering.py",
    "domain/money.py",
    "domain/period.py",
    "domain/pricing.py",
    "domain/scope.py",
    "domain/validation.py",
    "meter/core.py",
    "meter/messages.py",
    "meter/state.py",
)


def digest() -> str:
    """Of every source file of the package and of the module list."""
    h = hashlib.sha256(repr(HOT_MODULES).encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build() -> Path:
    """The directory holding the compiled copy of ``residuals`` (built if not cached)."""
    target = CACHE / digest()
    if (target / "done").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(PACKAGE, target / "residuals", ignore=shutil.ignore_patterns("__pycache__"))
    mypyc = Path(sys.executable).with_name("mypyc")
    subprocess.run(
        [str(mypyc), *(f"residuals/{m}" for m in HOT_MODULES)],
        cwd=target,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (target / "done").write_text("compiled\n")
    return target


def main() -> int:
    print(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
