{{- define "regcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "regcache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "regcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "regcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "regcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Where the pod's files are. */}}
{{- define "regcache.configDir" -}}/etc/regcache/config{{- end }}
{{- define "regcache.authDir" -}}/etc/regcache/auth{{- end }}
{{- define "regcache.tokenDir" -}}/etc/regcache/token{{- end }}
{{- define "regcache.storeDir" -}}/var/lib/regcache{{- end }}
{{- define "regcache.clusterDir" -}}/etc/regcache/cluster{{- end }}

{{/*
The config file: values.config with the keys the chart owns set from the
pod's layout, so they cannot disagree with the mounts and ports.
*/}}
{{- define "regcache.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $_ := set $cfg "listen" (printf ":%d" (int .Values.containerPort)) }}
{{- $storage := deepCopy (get $cfg "storage" | default dict) }}
{{- $_ := set $storage "root" (include "regcache.storeDir" .) }}
{{- $_ := set $cfg "storage" $storage }}
{{- if .Values.clientAuth.enabled }}
{{- if not .Values.clientAuth.htpasswdSecret }}
{{- fail "clientAuth.enabled needs clientAuth.htpasswdSecret: an existing Secret holding an htpasswd file" }}
{{- end }}
{{- $ca := dict "htpasswd" (printf "%s/%s" (include "regcache.authDir" .) .Values.clientAuth.htpasswdKey) }}
{{- with .Values.clientAuth.anonymousRegistries }}
{{- $_ := set $ca "anonymous_registries" . }}
{{- end }}
{{- if .Values.clientAuth.tokenKeySecret }}
{{- $_ := set $ca "token_key_file" (printf "%s/%s" (include "regcache.tokenDir" .) .Values.clientAuth.tokenKeyKey) }}
{{- end }}
{{- $_ := set $cfg "client_auth" $ca }}
{{- end }}
{{- if .Values.cluster.enabled }}
{{- if not .Values.cluster.redis }}
{{- fail "cluster.enabled needs cluster.redis: the host:port of the Redis the replicas share" }}
{{- end }}
{{- if not .Values.cluster.secretName }}
{{- fail "cluster.enabled needs cluster.secretName: an existing Secret with a key of at least 32 bytes shared by the replicas" }}
{{- end }}
{{- if not (get $storage "s3") }}
{{- fail "cluster.enabled needs config.storage.s3: the replicas share one object store" }}
{{- end }}
{{- $cl := dict "redis" .Values.cluster.redis "advertise_env" "REGCACHE_ADVERTISE" "secret_file" (printf "%s/%s" (include "regcache.clusterDir" .) .Values.cluster.secretKey) }}
{{- if .Values.cluster.redisPasswordSecret }}
{{- $_ := set $cl "password_env" "REGCACHE_REDIS_PASSWORD" }}
{{- end }}
{{- $_ := set $cfg "cluster" $cl }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
