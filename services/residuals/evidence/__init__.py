"""Evidence bundles: the events behind a closed statement, portable and verifiable offline.

* :mod:`~residuals.evidence.format`: the archive (members, encodings, streaming writer and
  reader); documented there and in docs/EVIDENCE.md;
* :mod:`~residuals.evidence.export`: a bundle of a statement or a payee's part, streamed
  from the ledger and the registry (the one module here that reads a database);
* :mod:`~residuals.evidence.verify`: ``residuals verify``, with only the bundle;
* :mod:`~residuals.evidence.compare`: where two statement documents differ, by name.
"""
