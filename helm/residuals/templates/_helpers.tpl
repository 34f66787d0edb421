{{/*
Names, labels and the per-service configuration every template shares.
The service list itself is not here: it comes from files/catalogue.json, generated from
the code (`residuals deploy generate`), merged with .Values.defaults and
.Values.services.<name>.
*/}}

{{- define "residuals.fullname" -}}
{{- if contains "residuals" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-residuals" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "residuals.catalogue" -}}
{{- .Files.Get "files/catalogue.json" -}}
{{- end -}}

{{/* Labels of every object; pass (dict "root" $ "component" "<name>"). */}}
{{- define "residuals.labels" -}}
app.kubernetes.io/name: residuals
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: residuals
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one service's pods. */}}
{{- define "residuals.selectorLabels" -}}
app.kubernetes.io/name: residuals
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "residuals.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The merged settings of one service as YAML: .Values.defaults overridden by
.Values.services.<name>. Call with (dict "root" $ "name" "<name>") and fromYaml it.
*/}}
{{- define "residuals.serviceValues" -}}
{{- $own := get .root.Values.services .name | default dict -}}
{{- $merged := mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $own) -}}
{{- if not (hasKey $merged "enabled") -}}{{- $_ := set $merged "enabled" true -}}{{- end -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* Name of the Strimzi KafkaUser (and its Secret) of a principal. */}}
{{- define "residuals.strimziNamespace" -}}
{{- .Values.kafka.strimzi.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* The hardened security context of every container. */}}
{{- define "residuals.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "residuals.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Where secret material is mounted in the containers (read-only Secret volumes). */}}
{{- define "residuals.grpcTlsDir" -}}/etc/residuals/grpc-tls{{- end -}}
{{- define "residuals.kafkaCaDir" -}}/etc/residuals/kafka-ca{{- end -}}
{{- define "residuals.postgresRolesDir" -}}/etc/residuals/postgres-roles{{- end -}}

{{/*
What a service's pods get for the secure defaults; (dict "root" $ "spec" <catalogue entry>)
-> YAML {kafka, sasl, kafkaCa, grpcTls, grpcTlsFiles, dbRole, receiptKey}: booleans the
templates share, so the ConfigMap, the pod template's env, volumes and probes cannot
disagree. kafka: the service has Kafka access at all (the HTTP gateway has none).
grpcTls: it serves gRPC over TLS; grpcTlsFiles: the Secret is mounted, for serving or (an
HTTP service calling the gRPC APIs) to trust ca.crt and present tls.crt.
*/}}
{{- define "residuals.security" -}}
{{- $v := .root.Values -}}
{{- $kafka := .spec.kafka | default false -}}
{{- $sasl := and $kafka $v.kafka.sasl.enabled -}}
kafka: {{ $kafka }}
sasl: {{ $sasl }}
kafkaCa: {{ and $sasl (hasSuffix "SSL" $v.kafka.sasl.securityProtocol) (ne $v.kafka.tls.caSecret "") }}
grpcTls: {{ and $v.grpcTls.enabled (eq .spec.kind "grpc") }}
grpcTlsFiles: {{ and $v.grpcTls.enabled (has .spec.kind (list "grpc" "http")) }}
dbRole: {{ and .spec.database $v.postgres.roles.enabled }}
receiptKey: {{ and .spec.receiptKey $v.receiptKey.enabled }}
{{- end -}}

{{/* The port a service serves on (its catalogue portEnv): httpPort for the HTTP kind,
grpcPort for the gRPC APIs and the workers (grpc.health). (dict "root" $ "spec" <entry>) */}}
{{- define "residuals.servicePort" -}}
{{- if eq .spec.kind "http" -}}{{ .root.Values.httpPort }}{{- else -}}{{ .root.Values.grpcPort }}{{- end -}}
{{- end -}}

{{/*
host:port of a gRPC service of this release, or "" when it is disabled (a client then
treats it as unconfigured). For env values: {{ include "residuals.grpcAddress" (list . "ingest") }}
*/}}
{{- define "residuals.grpcAddress" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $values := include "residuals.serviceValues" (dict "root" $root "name" $name) | fromYaml -}}
{{- if $values.enabled -}}
{{- printf "%s-%s:%v" (include "residuals.fullname" $root) $name $root.Values.grpcPort -}}
{{- end -}}
{{- end -}}
