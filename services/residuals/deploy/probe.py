"""``residuals probe grpc|http``: container health checks without extra binaries.

Kubernetes probes gRPC health natively; docker-compose health checks run a command inside
the container, and the image has no ``grpc_health_probe``. This asks the standard
``grpc.health.v1.Health/Check`` (or GETs a URL) and exits 0 only on SERVING / HTTP 2xx.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="health check a gRPC server or an HTTP endpoint (container health checks)",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    grpc_parser = kinds.add_parser("grpc", help="grpc.health.v1 Check; exit 0 when SERVING")
    grpc_parser.add_argument("address", help="host:port")
    grpc_parser.add_argument("--service", default="", help="service name ('' = the server)")
    grpc_parser.add_argument("--timeout", type=float, default=3.0)
    grpc_parser.set_defaults(handler=_grpc)
    http_parser = kinds.add_parser("http", help="GET a URL; exit 0 on a 2xx answer")
    http_parser.add_argument("url")
    http_parser.add_argument("--timeout", type=float, default=3.0)
    http_parser.set_defaults(handler=_http)


def check_grpc(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The health status name (``SERVING``, ``NOT_SERVING``...) reported for ``service``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _grpc(args: argparse.Namespace) -> int:
    try:
        status = check_grpc(args.address, args.service, args.timeout)
    except Exception as exc:
        print(f"probe: {args.address}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


def _http(args: argparse.Namespace) -> int:
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
            status = int(response.status)
    except Exception as exc:
        print(f"probe: {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.url}: HTTP {status}")
    return 0 if 200 <= status < 300 else 1
