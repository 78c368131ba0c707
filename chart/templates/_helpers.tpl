{{/*
Helpers of the nexus chart. All names are namespaced `nexus.`.
*/}}

{{/* Chart name, truncated to 63 characters. */}}
{{- define "nexus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified app name: fullnameOverride, else release name (+ chart name unless the release
name already contains it), truncated to 63 characters (the DNS label limit).
*/}}
{{- define "nexus.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Chart label value. */}}
{{- define "nexus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: name + instance only, so selectors stay immutable across upgrades. */}}
{{- define "nexus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nexus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard labels of every object. */}}
{{- define "nexus.labels" -}}
helm.sh/chart: {{ include "nexus.chart" . }}
{{ include "nexus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nexus
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Common annotations of every object (a mapping, possibly empty). */}}
{{- define "nexus.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{/* Names of the chart's objects. */}}
{{- define "nexus.secretName" -}}
{{- default (include "nexus.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "nexus.configMapName" -}}
{{- default (printf "%s-config" (include "nexus.fullname" .)) .Values.existingConfig -}}
{{- end -}}

{{- define "nexus.headlessServiceName" -}}
{{- printf "%s-headless" (include "nexus.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nexus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nexus.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The Nexus image: global.imageRegistry wins over image.registry; the tag is image.tag, else the
top-level `version` (the guide's `--set version=`), else the chart's appVersion; a digest wins
over the tag.
*/}}
{{- define "nexus.image" -}}
{{- $registry := .Values.image.registry -}}
{{- if and .Values.global .Values.global.imageRegistry -}}
{{- $registry = .Values.global.imageRegistry -}}
{{- end -}}
{{- $repository := .Values.image.repository -}}
{{- $tag := .Values.image.tag | default .Values.version | default .Chart.AppVersion | toString -}}
{{- $ref := ternary (printf "%s:%s" $repository $tag) (printf "%s@%s" $repository .Values.image.digest) (empty .Values.image.digest) -}}
{{- if $registry -}}
{{- printf "%s/%s" $registry $ref -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end -}}

{{/*
imagePullSecrets from global.imagePullSecrets and imagePullSecrets, deduplicated; entries may be
strings or {name: x}.
*/}}
{{- define "nexus.imagePullSecrets" -}}
{{- $names := list -}}
{{- $global := list -}}
{{- if .Values.global -}}
{{- $global = .Values.global.imagePullSecrets | default list -}}
{{- end -}}
{{- range (concat $global (.Values.imagePullSecrets | default list)) -}}
{{- $name := "" -}}
{{- if kindIs "map" . -}}
{{- $name = .name | default "" | toString -}}
{{- else -}}
{{- $name = . | toString -}}
{{- end -}}
{{- if and $name (not (has $name $names)) -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- if $names }}
imagePullSecrets:
{{- range $names }}
  - name: {{ . | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The database SSL flag, in either spelling (enableSSL in the guide's table, enableSsl in its example). */}}
{{- define "nexus.db.ssl" -}}
{{- if or .Values.nexus.db.enableSSL .Values.nexus.db.enableSsl -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "nexus.db.port" -}}
{{- .Values.nexus.db.port | default 5432 | toString -}}
{{- end -}}

{{- define "nexus.db.name" -}}
{{- .Values.nexus.db.name | default "nexus" -}}
{{- end -}}

{{/* Percent-encode a URL userinfo part (QueryEscape, then its `+` for space back to %20). */}}
{{- define "nexus.urlEncode" -}}
{{- . | toString | urlquery | replace "+" "%20" -}}
{{- end -}}

{{/*
NEXUS_DB_URL with the given password part: postgresql://user:password@host:port/db[?ssl=true].
Call with (dict "ctx" $ "password" "...").
*/}}
{{- define "nexus.db.url" -}}
{{- $v := .ctx.Values.nexus.db -}}
{{- $host := required "nexus.db.host is required" $v.host -}}
{{- printf "postgresql://%s:%s@%s:%s/%s" (include "nexus.urlEncode" (required "nexus.db.user is required" $v.user)) .password $host (include "nexus.db.port" .ctx) (include "nexus.db.name" .ctx) -}}
{{- if eq (include "nexus.db.ssl" .ctx) "true" -}}?ssl=true{{- end -}}
{{- end -}}

{{/*
NEXUS_FQDN: nexus.fqdn, else redirectProtocol + the first ingress host, else the Service's DNS name.
*/}}
{{- define "nexus.fqdn" -}}
{{- if .Values.nexus.fqdn -}}
{{- .Values.nexus.fqdn -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts -}}
{{- $first := first .Values.ingress.hosts -}}
{{- printf "%s%s" .Values.nexus.redirectProtocol (default $first.name $first.host) -}}
{{- else -}}
{{- printf "%s%s.%s.svc" .Values.nexus.redirectProtocol (include "nexus.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
The engine's signing secret: nexus.secret, else the value already in the release's Secret (so it
survives upgrades), else a new random one.
*/}}
{{- define "nexus.secretValue" -}}
{{- if .Values.nexus.secret -}}
{{- .Values.nexus.secret -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "nexus.fullname" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "nexus-secret") -}}
{{- index $existing.data "nexus-secret" | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels selecting the main Service (not the headless one) for the ServiceMonitor. */}}
{{- define "nexus.serviceComponent" -}}
app.kubernetes.io/component: server
{{- end -}}

{{/* Fail early on values that cannot work together. */}}
{{- define "nexus.validateValues" -}}
{{- if not (has .Values.deploymentType (list "Deployment" "StatefulSet")) -}}
{{- fail (printf "deploymentType must be Deployment or StatefulSet, not %q" .Values.deploymentType) -}}
{{- end -}}
{{- if and (not .Values.nexus.redis.enabled) (or (gt (int .Values.replicaCount) 1) (gt (int .Values.nexus.workers) 1)) -}}
{{- fail "nexus.redis.enabled=false keeps live state in one process: it needs replicaCount=1 and nexus.workers=1" -}}
{{- end -}}
{{- if and .Values.nexus.redis.enabled (not .Values.nexus.redis.nodes) -}}
{{- fail "nexus.redis.nodes is required when nexus.redis.enabled is true" -}}
{{- end -}}
{{- if and .Values.monitoring.enabled (not .Values.service.enabled) -}}
{{- fail "monitoring.enabled needs service.enabled: the ServiceMonitor scrapes the Service's metrics port" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.service.enabled) -}}
{{- fail "ingress.enabled needs service.enabled: the Ingress routes to the Service" -}}
{{- end -}}
{{- end -}}
