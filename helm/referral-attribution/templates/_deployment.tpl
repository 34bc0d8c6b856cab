{{/*
One component's Deployment. Call with a dict:
  root       the chart's root context ($)
  component  ingest | api | aggregator | deliverer
  values     the component's values (.Values.ingest, ...)
  command    the container command (a list)
  tokens     true: the container gets REFERRAL_API_TOKENS from the Secret
  password   true: the container gets REFERRAL_CLICKHOUSE_PASSWORD from the Secret
  (every container gets REFERRAL_KAFKA_SASL_PASSWORD from it with a SASL protocol)
  env        optional: the component's own env entries (a list of EnvVar), after the
             secrets and before values.extraEnv; they win over the ConfigMap's
  replicas   optional: a fixed spec.replicas, instead of values.replicas
  autoscaled true: an HPA owns spec.replicas
  strategy   the Deployment strategy (a dict)
*/}}
{{- define "referral-attribution.deployment" -}}
{{- $root := .root -}}
{{- $values := .values -}}
{{- $component := .component -}}
{{- include "referral-attribution.validate" $root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "referral-attribution.fullname" $root }}-{{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "referral-attribution.componentLabels" (dict "root" $root "component" $component) | nindent 4 }}
spec:
  {{- if hasKey . "replicas" }}
  replicas: {{ .replicas }}
  {{- else if not .autoscaled }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml .strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "referral-attribution.componentSelectorLabels" (dict "root" $root "component" $component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "referral-attribution.componentSelectorLabels" (dict "root" $root "component" $component) | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "referral-attribution.checksums" $root | nindent 8 }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "referral-attribution.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      {{- with (include "referral-attribution.scheduling" $values) }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ $component }}
          image: {{ include "referral-attribution.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          ports:
            - name: http
              containerPort: 8080
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "referral-attribution.fullname" $root }}
          {{- $sasl := include "referral-attribution.kafkaSasl" $root }}
          {{- if or .tokens .password .env $values.extraEnv $sasl }}
          env:
            {{- if .tokens }}
            {{- include "referral-attribution.secretEnv" (dict "root" $root "name" "REFERRAL_API_TOKENS" "key" $root.Values.secretKeys.apiTokens) | nindent 12 }}
            {{- end }}
            {{- if .password }}
            {{- include "referral-attribution.secretEnv" (dict "root" $root "name" "REFERRAL_CLICKHOUSE_PASSWORD" "key" $root.Values.secretKeys.clickhousePassword) | nindent 12 }}
            {{- end }}
            {{- if $sasl }}
            {{- include "referral-attribution.secretEnv" (dict "root" $root "name" "REFERRAL_KAFKA_SASL_PASSWORD" "key" $root.Values.secretKeys.kafkaSaslPassword) | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          {{- include "referral-attribution.probes" $root | nindent 10 }}
          {{- if $values.preStopSleepSeconds }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $values.preStopSleepSeconds }}
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "referral-attribution.tmpVolumeMount" $root | nindent 12 }}
      volumes:
        {{- include "referral-attribution.tmpVolume" $root | nindent 8 }}
{{- end }}
