{{/*
The Nexus container's environment, per DESIGN §3. Secret material only ever comes from
secretKeyRef (the chart's Secret or `existingSecret`); NEXUS_DB_URL is the chart Secret's
`db-url` key, or, with `existingSecret`, composed from $(NEXUS_DB_PASSWORD) by the kubelet.
*/}}
{{- define "nexus.env" -}}
{{- $secret := include "nexus.secretName" . -}}
- name: NEXUS_CONFIG
  value: /etc/nexus/config
- name: NEXUS_FQDN
  value: {{ include "nexus.fqdn" . | quote }}
- name: NEXUS_REDIRECT_PROTOCOL
  value: {{ .Values.nexus.redirectProtocol | quote }}
- name: NEXUS_WORKERS
  value: {{ .Values.nexus.workers | toString | quote }}
- name: NEXUS_LOG_FORMAT
  value: {{ .Values.nexus.logFormat | quote }}
- name: NEXUS_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: db-password
{{- if .Values.existingSecret }}
- name: NEXUS_DB_URL
  value: {{ include "nexus.db.url" (dict "ctx" . "password" "$(NEXUS_DB_PASSWORD)") | quote }}
{{- else }}
- name: NEXUS_DB_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: db-url
{{- end }}
- name: NEXUS_REDIS_URL
  value: {{ ternary .Values.nexus.redis.nodes "memory://" (and .Values.nexus.redis.enabled (not (empty .Values.nexus.redis.nodes))) | quote }}
- name: NEXUS_REDIS_CLUSTER
  value: {{ .Values.nexus.redis.useCluster | toString | quote }}
- name: NEXUS_REDIS_TLS
  value: {{ .Values.nexus.redis.enableTls | toString | quote }}
- name: NEXUS_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: redis-password
      optional: true
- name: NEXUS_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: nexus-secret
- name: NEXUS_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: client-secret
      optional: true
- name: NEXUS_SOCIAL_APIKEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: social-apikey
      optional: true
- name: NEXUS_SOCIAL_RETRY_TIMEOUT
  value: {{ .Values.nexus.social.retryTimeout | default 10000 | toString | quote }}
{{- with .Values.extraEnvVars }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The pod template shared by the Deployment and the StatefulSet. */}}
{{- define "nexus.podTemplate" -}}
metadata:
  labels:
    {{- include "nexus.labels" . | nindent 4 }}
    {{- include "nexus.serviceComponent" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- if .Values.monitoring.enabled }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.containerPorts.metrics | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "nexus.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with (include "nexus.imagePullSecrets" .) }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: nexus
      image: {{ include "nexus.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --host
        - 0.0.0.0
        - --port
        - {{ .Values.containerPorts.http | quote }}
        - --metrics-port
        - {{ .Values.containerPorts.metrics | quote }}
      {{- with .Values.containerSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.containerPorts.http }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.containerPorts.metrics }}
          protocol: TCP
      env:
        {{- include "nexus.env" . | nindent 8 }}
      {{- if or .Values.extraEnvVarsSecret .Values.extraEnvVarsCM }}
      envFrom:
        {{- with .Values.extraEnvVarsCM }}
        - configMapRef:
            name: {{ . }}
        {{- end }}
        {{- with .Values.extraEnvVarsSecret }}
        - secretRef:
            name: {{ . }}
        {{- end }}
      {{- end }}
      {{- if .Values.startupProbe.enabled }}
      startupProbe:
        httpGet:
          path: /health
          port: http
        {{- omit .Values.startupProbe "enabled" | toYaml | nindent 8 }}
      {{- end }}
      {{- if .Values.livenessProbe.enabled }}
      livenessProbe:
        httpGet:
          path: /health
          port: http
        {{- omit .Values.livenessProbe "enabled" | toYaml | nindent 8 }}
      {{- end }}
      {{- if .Values.readinessProbe.enabled }}
      readinessProbe:
        httpGet:
          path: /health/detail
          port: http
        {{- omit .Values.readinessProbe "enabled" | toYaml | nindent 8 }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/nexus/config
          readOnly: true
        - name: var
          mountPath: /app/var
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ include "nexus.configMapName" . }}
    {{- if not (and (eq .Values.deploymentType "StatefulSet") .Values.persistence.enabled) }}
    - name: var
      emptyDir: {}
    {{- end }}
    - name: tmp
      emptyDir: {}
{{- end -}}
