"""The meter: faust-streaming processor that validates, de-duplicates, scopes, meters and
prices usage events as they arrive (``python -m residuals.meter``)."""
