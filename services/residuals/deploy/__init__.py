"""Deployment: the facts Kubernetes, Helm and docker-compose files are generated from.

Nothing here runs inside a service. It turns the code's own catalogues (topics, service
settings, who reads and writes which topic) into deployment artefacts and checks that the
committed artefacts still match them, so a topic, a setting or an ACL is declared once:

* :mod:`.services` - the services, their kind (gRPC API, stream worker or HTTP API) and
  their Kafka access, plus discovery of each service's settings dataclass;
* :mod:`.catalogue` - ``helm/residuals/files/catalogue.json`` (topics and access), read
  by the chart's KafkaTopic / KafkaUser templates;
* :mod:`.kafka_admin` - the one-shot topic set-up for clusters without an operator and the
  ACL script for clusters without Strimzi;
* :mod:`.chart` - ``helm template`` into ``deploy/k8s`` and the checks CI runs;
* :mod:`.settings_doc` - ``residuals deploy settings``: every service's variables.
"""
