"""Translations between the wire contracts (protobuf ``residuals.v1``) and the domain.

Kept apart from both: the domain stays free of generated code, and every service that
reads or writes a licence or a usage event translates it the same way.
"""
