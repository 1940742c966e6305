{{/* Names, labels and the shared env blocks of the edu-platform chart. */}}

{{- define "edu-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "edu-platform.fullname" -}}
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

{{- define "edu-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels common to every resource. */}}
{{- define "edu-platform.labels" -}}
helm.sh/chart: {{ include "edu-platform.chart" . }}
{{ include "edu-platform.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "edu-platform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edu-platform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The edu-platform image reference. */}}
{{- define "edu-platform.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* How the cloud services reach the broker. */}}
{{- define "edu-platform.mqttUrl" -}}
{{- if .Values.mosquitto.enabled -}}
{{- printf "mqtt://%s-mosquitto:%d" (include "edu-platform.fullname" .) (int .Values.mosquitto.port) -}}
{{- else -}}
{{- required "mqtt.externalUrl is required when mosquitto.enabled is false" .Values.mqtt.externalUrl -}}
{{- end -}}
{{- end -}}

{{/*
A secretKeyRef to an existing Secret (cfg.existingSecret / cfg.existingSecretKey) or to the chart's
Secret under `key`. Call with (dict "root" $ "cfg" .Values.postgresql "key" "db-url").
*/}}
{{- define "edu-platform.secretKeyRef" -}}
secretKeyRef:
  {{- if .cfg.existingSecret }}
  name: {{ .cfg.existingSecret }}
  key: {{ .cfg.existingSecretKey }}
  {{- else }}
  name: {{ include "edu-platform.fullname" .root }}
  key: {{ .key }}
  {{- end }}
{{- end -}}

{{/* The same for the broker admin password (its own pair of value names). */}}
{{- define "edu-platform.adminPasswordRef" -}}
secretKeyRef:
  {{- if .Values.mqtt.adminExistingSecret }}
  name: {{ .Values.mqtt.adminExistingSecret }}
  key: {{ .Values.mqtt.adminExistingSecretKey }}
  {{- else }}
  name: {{ include "edu-platform.fullname" . }}
  key: mqtt-admin-password
  {{- end }}
{{- end -}}

{{/* Prometheus scrape annotations. Call with (dict "port" 8080). */}}
{{- define "edu-platform.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: "/metrics"
{{- end -}}

{{/* What both the API and the analytics workers read (EDU_*): database, cache, broker, topic prefix. */}}
{{- define "edu-platform.cloudEnv" -}}
- name: EDU_DB_URL
  valueFrom:
    {{- include "edu-platform.secretKeyRef" (dict "root" . "cfg" .Values.postgresql "key" "db-url") | nindent 4 }}
- name: EDU_CACHE_URL
  valueFrom:
    {{- include "edu-platform.secretKeyRef" (dict "root" . "cfg" .Values.redis "key" "cache-url") | nindent 4 }}
- name: EDU_MQTT_URL
  value: {{ include "edu-platform.mqttUrl" . | quote }}
- name: EDU_MQTT_USERNAME
  value: {{ .Values.mqtt.username | quote }}
- name: EDU_MQTT_PASSWORD
  valueFrom:
    {{- include "edu-platform.secretKeyRef" (dict "root" . "cfg" .Values.mqtt "key" "mqtt-password") | nindent 4 }}
- name: EDU_TOPIC_PREFIX
  value: {{ .Values.topicPrefix | quote }}
{{- end -}}
