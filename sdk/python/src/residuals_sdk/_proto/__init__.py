"""Generated protobuf and gRPC code of ``residuals.v1`` for the vendor SDK. Do not edit.

A copy of the contracts the SDK needs (SDK_PROTOS) with imports rewritten to
this package. Regenerate with `residuals protos gen`; `residuals protos check` fails
when these files are stale.
"""
