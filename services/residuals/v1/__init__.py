"""Generated protobuf and gRPC code for package ``residuals.v1``. Do not edit.

Source: protos/residuals/v1/*.proto. Regenerate with `residuals protos gen`;
`residuals protos check` (run in CI) fails when these files are stale.
"""
