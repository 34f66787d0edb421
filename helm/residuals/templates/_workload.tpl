{{/*
What the Deployments (deployment.yaml) and StatefulSets (statefulset.yaml) of the services
share: which kind runs a service, the checks on its values, and the whole pod template.
Each takes (dict "root" $ "name" "<name>" "spec" <catalogue entry> "values" <merged values>).
*/}}

{{/*
StatefulSet when the service can be a static consumer-group member (its catalogue entry
names the variable, memberIdEnv) and services.<name>.staticMembership is on: each replica
then needs an id of its own that survives its restarts and rollouts, which only a
StatefulSet's pod name (<release>-<service>-<ordinal>) gives. Deployment otherwise.
*/}}
{{- define "residuals.workloadKind" -}}
{{- if and .spec.memberIdEnv .values.staticMembership -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}

{{/* Values no workload may be rendered with; fails the install with the fix. */}}
{{- define "residuals.workloadChecks" -}}
{{- $name := .name -}}
{{- $values := .values -}}
{{- $partitions := int .root.Values.kafka.partitions -}}
{{- if and $values.autoscaling $values.autoscaling.enabled (gt (int $values.autoscaling.maxReplicas) $partitions) }}
{{- fail (printf "services.%s.autoscaling.maxReplicas (%v) exceeds kafka.partitions (%v): a stream processor cannot use more replicas than partitions" $name $values.autoscaling.maxReplicas $partitions) }}
{{- end }}
{{- if and (eq .spec.kind "worker") (gt (int $values.replicas) $partitions) }}
{{- fail (printf "services.%s.replicas (%v) exceeds kafka.partitions (%v): replicas beyond the partition count own nothing" $name $values.replicas $partitions) }}
{{- end }}
{{- with .spec.memberIdEnv }}
{{- if or (hasKey ($values.env | default dict) .) (hasKey ($values.secretEnv | default dict) .) }}
{{- fail (printf "services.%s: %s must be unique per replica and stable across its restarts; do not set it, set services.%s.staticMembership (true: the pod name of a StatefulSet; false: dynamic membership)" $name . $name) }}
{{- end }}
{{- end }}
{{- if hasKey ($values.env | default dict) .spec.portEnv }}
{{- fail (printf "services.%s.env.%s: the port is the chart's (%s), which the container port, Service and probes follow; set that instead" $name .spec.portEnv (ternary "httpPort" "grpcPort" (eq .spec.kind "http"))) }}
{{- end }}
{{- if hasKey ($values.env | default dict) "RESIDUALS_RECEIPT_KEY" }}
{{- fail (printf "services.%s.env.RESIDUALS_RECEIPT_KEY: a secret does not belong in a ConfigMap; use receiptKey (a Secret)" $name) }}
{{- end }}
{{- end -}}

{{/* metadata, and the start of spec, of a service's Deployment or StatefulSet. */}}
{{- define "residuals.workloadHead" }}
metadata:
  name: {{ include "residuals.fullname" .root }}-{{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "residuals.labels" (dict "root" .root "component" .name) | nindent 4 }}
  annotations:
    residuals.io/summary: {{ .spec.summary | quote }}
spec:
  {{- if not (and .values.autoscaling .values.autoscaling.enabled) }}
  replicas: {{ .values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
{{- end -}}

{{/* The pod template (metadata and spec) of one service. */}}
{{- define "residuals.podTemplate" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $spec := .spec -}}
{{- $values := .values -}}
{{- $static := eq (include "residuals.workloadKind" .) "StatefulSet" -}}
{{- $secure := include "residuals.security" (dict "root" $root "spec" $spec) | fromYaml -}}
{{- $probePort := ternary $root.Values.grpcTls.healthPort $root.Values.grpcPort $secure.grpcTls -}}
{{- $http := eq $spec.kind "http" -}}
metadata:
  labels:
    {{- include "residuals.labels" (dict "root" $root "component" $name) | nindent 4 }}
  annotations:
    checksum/config: {{ include "residuals.configData" . | sha256sum }}
    {{- if $root.Values.telemetry.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $root.Values.telemetry.metricsPort | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "residuals.fullname" $root }}-{{ $name }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "residuals.podSecurityContext" $root | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "residuals.selectorLabels" (dict "root" $root "component" $name) | nindent 10 }}
  containers:
    - name: {{ $name }}
      image: {{ include "residuals.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["python", "-m", {{ $spec.module | quote }}]
      ports:
        {{- if $http }}
        - name: http
          containerPort: {{ $root.Values.httpPort }}
          protocol: TCP
        {{- else }}
        - name: grpc
          containerPort: {{ $root.Values.grpcPort }}
          protocol: TCP
        {{- end }}
        - name: metrics
          containerPort: {{ $root.Values.telemetry.metricsPort }}
          protocol: TCP
        {{- if $secure.grpcTls }}
        - name: health
          containerPort: {{ $root.Values.grpcTls.healthPort }}
          protocol: TCP
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "residuals.fullname" $root }}-{{ $name }}
      {{- $secretEnv := $values.secretEnv | default dict }}
      {{- if or $spec.database $secretEnv $secure.sasl $secure.receiptKey $static }}
      env:
        {{- if $static }}
        # Static consumer-group membership: this replica's pod name, the same after every
        # restart and rollout, so it takes its partitions back without a rebalance.
        - name: {{ $spec.memberIdEnv }}
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- if $spec.database }}
        - name: DATABASE_URL
          valueFrom:
            secretKeyRef:
              name: {{ $root.Values.postgres.secretName }}
              key: {{ $root.Values.postgres.secretKey }}
        {{- end }}
        {{- if $secure.dbRole }}
        # The service's own role (DATABASE_USER in its ConfigMap); the migration Job
        # sets its password from the same key.
        - name: DATABASE_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $root.Values.postgres.roles.passwordSecret }}
              key: {{ $name }}
        {{- end }}
        {{- if $secure.sasl }}
        - name: KAFKA_SASL_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $spec.principal }}
              key: {{ $root.Values.kafka.sasl.passwordKey }}
        {{- end }}
        {{- if $secure.receiptKey }}
        # The secret the gateway stamps receipt times with and the meter verifies them by.
        - name: RESIDUALS_RECEIPT_KEY
          valueFrom:
            secretKeyRef:
              name: {{ $root.Values.receiptKey.secretName }}
              key: {{ $root.Values.receiptKey.secretKey }}
        {{- end }}
        {{- range $var, $ref := $secretEnv }}
        - name: {{ $var }}
          valueFrom:
            secretKeyRef:
              name: {{ $ref.secret }}
              key: {{ $ref.key }}
              optional: {{ $ref.optional | default false }}
        {{- end }}
      {{- end }}
      {{- if $http }}
      # An HTTP API: /healthz answers while the process serves; /readyz once it listens,
      # 503 again while it stops (it leaves the Service first). Plain HTTP: TLS ends at an
      # Ingress or mesh.
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 2
        failureThreshold: 90
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      {{- else }}
      # grpc.health.v1: the APIs report SERVING once their dependencies answer; the
      # stream workers (meter, ledger) serve health only, SERVING once they consume.
      # With TLS the kubelet asks the plaintext health-only port (its gRPC probe
      # cannot speak TLS).
      startupProbe:
        grpc:
          port: {{ $probePort }}
        periodSeconds: 2
        failureThreshold: 90
      readinessProbe:
        grpc:
          port: {{ $probePort }}
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        grpc:
          port: {{ $probePort }}
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      {{- end }}
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      securityContext:
        {{- include "residuals.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if $secure.kafkaCa }}
        - name: kafka-ca
          mountPath: {{ include "residuals.kafkaCaDir" $root }}
          readOnly: true
        {{- end }}
        {{- if $secure.grpcTlsFiles }}
        - name: grpc-tls
          mountPath: {{ include "residuals.grpcTlsDir" $root }}
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    {{- if $secure.kafkaCa }}
    - name: kafka-ca
      secret:
        secretName: {{ $root.Values.kafka.tls.caSecret }}
        items:
          - key: {{ $root.Values.kafka.tls.caKey }}
            path: ca.crt
        defaultMode: 0444
    {{- end }}
    {{- if $secure.grpcTlsFiles }}
    - name: grpc-tls
      secret:
        secretName: {{ $root.Values.grpcTls.secretName }}
        defaultMode: 0440
    {{- end }}
  {{- with $values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
