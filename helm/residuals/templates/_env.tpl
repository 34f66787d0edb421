{{/*
Plain settings of one service, as a name -> value map in YAML (the ConfigMap's data).
Call with (dict "root" $ "name" "<name>" "spec" <catalogue entry> "values" <merged values>).
Every variable must be one the service's settings dataclass declares: the unit tests
render the chart and compare with residuals.platform.config.describe (`residuals deploy settings` prints them).
*/}}
{{- define "residuals.configData" -}}
{{- $root := .root -}}
{{- $secure := include "residuals.security" (dict "root" $root "spec" .spec) | fromYaml -}}
{{- $data := dict
  "OTEL_SERVICE_NAME" .name
  "METRICS_PORT" (toString $root.Values.telemetry.metricsPort)
  "LOG_LEVEL" $root.Values.telemetry.logLevel
  "LOG_FORMAT" $root.Values.telemetry.logFormat
-}}
{{- /* The port it serves: GRPC_PORT, or an HTTP service's own variable (catalogue portEnv). */ -}}
{{- $_ := set $data .spec.portEnv (include "residuals.servicePort" (dict "root" $root "spec" .spec)) -}}
{{- if $secure.kafka }}
{{- $_ := set $data "KAFKA_BOOTSTRAP_SERVERS" $root.Values.kafka.bootstrapServers -}}
{{- $_ := set $data "RESIDUALS_TOPIC_PREFIX" $root.Values.kafka.topicPrefix -}}
{{- $_ := set $data "RESIDUALS_TOPIC_PARTITIONS" (toString $root.Values.kafka.partitions) -}}
{{- end }}
{{- with $root.Values.telemetry.otlpEndpoint }}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" . -}}
{{- end }}
{{- if $secure.sasl }}
{{- $_ := set $data "KAFKA_SECURITY_PROTOCOL" $root.Values.kafka.sasl.securityProtocol -}}
{{- $_ := set $data "KAFKA_SASL_MECHANISM" $root.Values.kafka.sasl.mechanism -}}
{{- $_ := set $data "KAFKA_SASL_USERNAME" .spec.principal -}}
{{- end }}
{{- if $secure.kafkaCa }}
{{- $_ := set $data "KAFKA_SSL_CA_LOCATION" (printf "%s/ca.crt" (include "residuals.kafkaCaDir" $root)) -}}
{{- end }}
{{- if $secure.grpcTls }}
{{- $dir := include "residuals.grpcTlsDir" $root -}}
{{- $_ := set $data "GRPC_TLS_CERT" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $data "GRPC_TLS_KEY" (printf "%s/tls.key" $dir) -}}
{{- if $root.Values.grpcTls.clientAuth }}
{{- $_ := set $data "GRPC_TLS_CLIENT_CA" (printf "%s/ca.crt" $dir) -}}
{{- end }}
{{- $_ := set $data "GRPC_HEALTH_PORT" (toString $root.Values.grpcTls.healthPort) -}}
{{- end }}
{{- if $secure.dbRole }}
{{- $_ := set $data "DATABASE_USER" .spec.databaseRole -}}
{{- end }}
{{- range $key, $value := .values.env }}
{{- $_ := set $data $key (tpl (toString $value) $root) -}}
{{- end }}
{{- toYaml $data -}}
{{- end -}}
