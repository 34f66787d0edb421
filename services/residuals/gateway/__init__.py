"""The HTTP/JSON gateway: the gRPC APIs for callers on any stack.

Routes come from the ``google.api.http`` annotations in the contracts' descriptors (the
single source, shared with the OpenAPI document), bodies are converted with protobuf's
own ``json_format``, and every call is forwarded over gRPC to the service that owns it
with the caller's ``authorization`` and trace context, so keys, roles and verdicts are
exactly the gRPC services' own.
"""
