"""The licence registry service: talent, avatars, vendors, payees, licences with versions,
suspensions and revocations, vendor signing keys and API keys, published to Kafka through
a transactional outbox (``residuals.licences.v1``, ``residuals.signing-keys.v1``)."""
