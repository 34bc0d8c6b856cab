{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "referral-attribution.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>", or the release name when it already
contains the chart name. Truncated to 52 characters so that "-aggregator" still fits in
a 63-character DNS label.
*/}}
{{- define "referral-attribution.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"name-version" of the chart, for the helm.sh/chart label.
*/}}
{{- define "referral-attribution.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "referral-attribution.labels" -}}
helm.sh/chart: {{ include "referral-attribution.chart" . }}
{{ include "referral-attribution.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: referral-attribution
{{- end }}

{{/*
Selector labels shared by every component.
*/}}
{{- define "referral-attribution.selectorLabels" -}}
app.kubernetes.io/name: {{ include "referral-attribution.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component. Call with (dict "root" $ "component" "ingest").
*/}}
{{- define "referral-attribution.componentLabels" -}}
{{ include "referral-attribution.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "root" $ "component" "ingest").
*/}}
{{- define "referral-attribution.componentSelectorLabels" -}}
{{ include "referral-attribution.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The container image: repository@digest, or repository:tag (tag defaults to appVersion).
*/}}
{{- define "referral-attribution.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
ServiceAccount of the Deployments.
*/}}
{{- define "referral-attribution.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "referral-attribution.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
ServiceAccount of the migration Job (a pre-install hook runs before the release's own
ServiceAccount exists).
*/}}
{{- define "referral-attribution.migrationServiceAccountName" -}}
{{- if .Values.migration.serviceAccountName }}
{{- .Values.migration.serviceAccountName }}
{{- else if .Values.serviceAccount.create }}
{{- "default" }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding REFERRAL_API_TOKENS and REFERRAL_CLICKHOUSE_PASSWORD.
*/}}
{{- define "referral-attribution.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "referral-attribution.fullname" . }}
{{- end }}
{{- end }}

{{/*
Checks that cannot be written in values.schema.json. Included by every workload template,
so a bad combination fails `helm install`, `helm upgrade` and `helm template` alike.
*/}}
{{- define "referral-attribution.validate" -}}
{{- if gt (int .Values.aggregator.replicas) (int .Values.kafka.partitions) }}
{{- fail (printf "aggregator.replicas (%d) must not exceed kafka.partitions (%d): a consumer group member beyond the partition count of topic %q gets no partition and idles. Lower aggregator.replicas, or add partitions to the topic first and raise kafka.partitions to match." (int .Values.aggregator.replicas) (int .Values.kafka.partitions) .Values.kafka.topic) }}
{{- end }}
{{- if and .Values.existingSecret (or .Values.auth.apiTokens .Values.clickhouse.password .Values.kafka.sasl.password) }}
{{- fail "existingSecret is set: leave auth.apiTokens, clickhouse.password and kafka.sasl.password empty and put them into that Secret (keys secretKeys.apiTokens, secretKeys.clickhousePassword, secretKeys.kafkaSaslPassword)" }}
{{- end }}
{{- if not (or .Values.existingSecret .Values.auth.apiTokens .Values.auth.allowAnonymous) }}
{{- fail "no API tokens: without them anyone who reaches the API can confirm and delete attributions and change referral codes, so referral-api refuses to start. Set auth.apiTokens (TOKEN=read[+write][+admin],... or sha256:<hex of the token's SHA-256>=scopes), or existingSecret with the key secretKeys.apiTokens; or set auth.allowAnonymous: true to run an open API on purpose" }}
{{- end }}
{{- if and (or .Values.ingress.enabled .Values.httpRoute.enabled) (not .Values.config.trustedProxies) (gt (int .Values.config.rateLimit.perIp) 0) }}
{{- fail "ingress.enabled or httpRoute.enabled with an empty config.trustedProxies: every click would seem to come from the proxy's address, and the per-IP limit (config.rateLimit.perIp) would throttle all clicks of the edge as one visitor. Set config.trustedProxies to the ingress controller's or gateway's pod range (IPs/CIDRs, comma-separated), or set config.rateLimit.perIp: 0 to turn the per-IP limit off" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.ingressFrom) }}
{{- fail "networkPolicy.enabled with an empty networkPolicy.ingressFrom would drop every request to the edge and the API: list the ingress controller's or gateway's namespace (NetworkPolicyPeers) in networkPolicy.ingressFrom" }}
{{- end }}
{{- if include "referral-attribution.kafkaSasl" . }}
{{- if not (and .Values.kafka.sasl.mechanism .Values.kafka.sasl.username) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.mechanism and kafka.sasl.username (and the password, in kafka.sasl.password or the existingSecret)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- else if or .Values.kafka.sasl.mechanism .Values.kafka.sasl.username .Values.kafka.sasl.password }}
{{- fail "kafka.sasl.* is set but kafka.securityProtocol is not sasl-plaintext or sasl-ssl" }}
{{- end }}
{{- if and .Values.kafka.tls.caSecret (not (has .Values.kafka.securityProtocol (list "ssl" "sasl-ssl"))) }}
{{- fail "kafka.tls.caSecret is set but kafka.securityProtocol is not ssl or sasl-ssl" }}
{{- end }}
{{- if and (gt (int64 .Values.clickhouse.insertQuorum) 0) (not .Values.clickhouse.cluster) }}
{{- fail (printf "clickhouse.insertQuorum (%d) needs clickhouse.cluster: a quorum counts the replicas of a cluster, and with one server every binary refuses --clickhouse-insert-quorum. Set clickhouse.cluster to the remote_servers cluster of the replicas, or leave clickhouse.insertQuorum at 0 (on ClickHouse Cloud leave both unset)" (int64 .Values.clickhouse.insertQuorum)) }}
{{- end }}
{{- end }}

{{/*
Pod annotations that roll the pods when their configuration changes. For an existingSecret
the chart cannot see the content: restart the Deployments after rotating it.
*/}}
{{- define "referral-attribution.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if .Values.existingSecret }}
checksum/secret: {{ printf "%s/%s/%s/%s" .Values.existingSecret .Values.secretKeys.apiTokens .Values.secretKeys.clickhousePassword .Values.secretKeys.kafkaSaslPassword | sha256sum }}
{{- else }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/*
The REFERRAL_* settings that are not secret, as "NAME: value" pairs: the ConfigMap's data,
and the migration Job's env (the Job runs before the ConfigMap exists).
*/}}
{{- define "referral-attribution.configData" -}}
REFERRAL_LISTEN: "0.0.0.0:8080"
REFERRAL_KAFKA_BROKERS: {{ .Values.kafka.brokers | quote }}
REFERRAL_KAFKA_TOPIC: {{ .Values.kafka.topic | quote }}
REFERRAL_KAFKA_CODES_TOPIC: {{ .Values.kafka.codesTopic | quote }}
REFERRAL_KAFKA_DEAD_LETTER_TOPIC: {{ .Values.kafka.deadLetterTopic | quote }}
REFERRAL_KAFKA_GROUP_ID: {{ .Values.kafka.groupId | quote }}
REFERRAL_KAFKA_MESSAGE_TIMEOUT: {{ .Values.kafka.messageTimeout | quote }}
REFERRAL_KAFKA_LINGER: {{ .Values.kafka.linger | quote }}
REFERRAL_KAFKA_QUEUE_MAX_MESSAGES: {{ .Values.kafka.queueMaxMessages | int64 | quote }}
REFERRAL_KAFKA_SESSION_TIMEOUT: {{ .Values.kafka.sessionTimeout | quote }}
REFERRAL_KAFKA_FETCH_WAIT: {{ .Values.kafka.fetchWait | quote }}
REFERRAL_KAFKA_SECURITY_PROTOCOL: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "referral-attribution.kafkaSasl" . }}
REFERRAL_KAFKA_SASL_MECHANISM: {{ .Values.kafka.sasl.mechanism | quote }}
REFERRAL_KAFKA_SASL_USERNAME: {{ .Values.kafka.sasl.username | quote }}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
REFERRAL_KAFKA_SSL_CA_LOCATION: {{ printf "/etc/referral/kafka-ca/%s" .Values.kafka.tls.caSecretKey | quote }}
{{- end }}
REFERRAL_CLICKHOUSE_URL: {{ .Values.clickhouse.url | quote }}
REFERRAL_CLICKHOUSE_DATABASE: {{ .Values.clickhouse.database | quote }}
REFERRAL_CLICKHOUSE_USER: {{ .Values.clickhouse.user | quote }}
REFERRAL_CLICKHOUSE_INSERT_TIMEOUT: {{ .Values.clickhouse.insertTimeout | quote }}
REFERRAL_CLICKHOUSE_INSERT_SPLIT_ROWS: {{ .Values.clickhouse.insertSplitRows | int64 | quote }}
REFERRAL_CLICKHOUSE_READ_THREADS: {{ .Values.clickhouse.readThreads | quote }}
{{- /* Only when set: the binaries take an empty variable for a set (empty) cluster. */}}
{{- with .Values.clickhouse.cluster }}
REFERRAL_CLICKHOUSE_CLUSTER: {{ . | quote }}
{{- end }}
{{- if gt (int64 .Values.clickhouse.insertQuorum) 0 }}
REFERRAL_CLICKHOUSE_INSERT_QUORUM: {{ .Values.clickhouse.insertQuorum | int64 | quote }}
{{- end }}
{{- if .Values.clickhouse.sequentialReads }}
REFERRAL_CLICKHOUSE_SEQUENTIAL_READS: "true"
{{- end }}
REFERRAL_ATTRIBUTION_WINDOW: {{ .Values.config.attributionWindow | quote }}
REFERRAL_DEDUP_WINDOW: {{ .Values.config.dedupWindow | quote }}
REFERRAL_TRUSTED_PROXIES: {{ .Values.config.trustedProxies | quote }}
{{- with .Values.config.fallbackUrl }}
REFERRAL_FALLBACK_URL: {{ . | quote }}
{{- end }}
REFERRAL_ALLOW_ANONYMOUS: {{ .Values.auth.allowAnonymous | quote }}
REFERRAL_ACK_TIMEOUT: {{ .Values.config.ackTimeout | quote }}
REFERRAL_READ_AFTER_WRITE_WAIT: {{ .Values.config.readAfterWriteWait | quote }}
REFERRAL_HEADER_READ_TIMEOUT: {{ .Values.config.headerReadTimeout | quote }}
REFERRAL_MAX_CONNECTIONS: {{ .Values.config.maxConnections | int64 | quote }}
{{- if and (or .Values.ingress.enabled .Values.httpRoute.enabled) (not .Values.config.trustedProxies) }}
{{- /* Every connection comes from the proxy, which is not known as one: no per-client cap. */}}
REFERRAL_MAX_CONNECTIONS_PER_CLIENT: "0"
{{- else }}
REFERRAL_MAX_CONNECTIONS_PER_CLIENT: {{ .Values.config.maxConnectionsPerClient | int64 | quote }}
{{- end }}
REFERRAL_MAX_IN_FLIGHT: {{ .Values.config.maxInFlight | int64 | quote }}
REFERRAL_DRAIN_TIMEOUT: {{ .Values.config.drainTimeout | quote }}
REFERRAL_RATE_LIMIT_PER_IP: {{ .Values.config.rateLimit.perIp | int64 | quote }}
REFERRAL_RATE_LIMIT_PER_IP_BURST: {{ .Values.config.rateLimit.perIpBurst | int64 | quote }}
REFERRAL_RATE_LIMIT_PER_CODE: {{ .Values.config.rateLimit.perCode | int64 | quote }}
REFERRAL_RATE_LIMIT_PER_CODE_BURST: {{ .Values.config.rateLimit.perCodeBurst | int64 | quote }}
REFERRAL_RATE_LIMIT_GLOBAL: {{ .Values.config.rateLimit.global | int64 | quote }}
REFERRAL_RATE_LIMIT_GLOBAL_BURST: {{ .Values.config.rateLimit.globalBurst | int64 | quote }}
REFERRAL_BATCH_MAX_ROWS: {{ .Values.config.batch.maxRows | int64 | quote }}
REFERRAL_BATCH_MAX_BYTES: {{ .Values.config.batch.maxBytes | int64 | quote }}
REFERRAL_BATCH_MAX_WAIT: {{ .Values.config.batch.maxWait | quote }}
REFERRAL_COMMAND_MAX_WAIT: {{ .Values.config.batch.commandMaxWait | quote }}
RUST_LOG: {{ .Values.config.logLevel | quote }}
{{- range $name, $value := .Values.config.extraEnv }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/*
Env entries reading one key of the Secret. Call with (dict "root" $ "name" "REFERRAL_API_TOKENS" "key" "api-tokens").
*/}}
{{- define "referral-attribution.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "referral-attribution.secretName" .root }}
      key: {{ .key }}
{{- end }}

{{/*
The /tmp emptyDir (the root filesystem is read-only).
*/}}
{{- define "referral-attribution.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caSecretKey }}
        path: {{ .Values.kafka.tls.caSecretKey }}
{{- end }}
{{- end }}

{{- define "referral-attribution.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/referral/kafka-ca
  readOnly: true
{{- end }}
{{- end }}

{{/*
"true" when the Kafka clients authenticate with SASL (empty otherwise, for `if`).
*/}}
{{- define "referral-attribution.kafkaSasl" -}}
{{- if has .Values.kafka.securityProtocol (list "sasl-plaintext" "sasl-ssl") }}true{{ end }}
{{- end }}

{{/*
Startup, liveness and readiness probes on the container's "http" port.
*/}}
{{- define "referral-attribution.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  successThreshold: {{ .Values.probes.readiness.successThreshold }}
{{- end }}

{{/*
Scheduling fields of a pod spec. Call with the component's values.
*/}}
{{- define "referral-attribution.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/*
Prometheus label selector of one component's series: (dict "root" $ "component" "ingest").
The Prometheus Operator sets job to the Service name.
*/}}
{{- define "referral-attribution.promSelector" -}}
namespace="{{ .root.Release.Namespace }}",job="{{ include "referral-attribution.fullname" .root }}-{{ .component }}"
{{- end }}
