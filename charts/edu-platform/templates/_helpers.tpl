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

{{/* Component labels: selector labels plus the component. Call with (dict "root" $ "component" "api"). */}}
{{- define "edu-platform.componentLabels" -}}
{{ include "edu-platform.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
checksum/secret: the chart's own Secret, plus the data of every existingSecret the pods read (lookup
reads it on a live install/upgrade, so rotating a credential and running `helm upgrade` rolls the pods;
offline renders see no data and fall back to the names and secrets.rolloutToken).
*/}}
{{- define "edu-platform.secretChecksum" -}}
{{- $parts := list (include (print .Template.BasePath "/secret.yaml") .) .Values.secrets.rolloutToken -}}
{{- $names := list .Values.postgresql.existingSecret .Values.influxdb.existingSecret .Values.redis.existingSecret .Values.mqtt.existingSecret .Values.mqtt.adminExistingSecret .Values.configSigning.existingSecret -}}
{{- if .Values.mosquitto.tls.enabled }}{{- $names = append $names .Values.mosquitto.tls.existingSecret -}}{{- end -}}
{{- range $name := $names | compact | uniq | sortAlpha -}}
{{- $found := lookup "v1" "Secret" $.Release.Namespace $name -}}
{{- $parts = append $parts (printf "%s=%s" $name (($found).data | default dict | toJson)) -}}
{{- end -}}
{{- $parts | join "\n" | sha256sum -}}
{{- end -}}

{{/* Pod-level settings every edu-platform pod shares: no service-account token, the pod security
context, pull secrets. */}}
{{- define "edu-platform.podCommon" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* affinity: the component's own, else preferred anti-affinity on the host name (replicas spread over
nodes). Call with (dict "root" $ "component" "api" "affinity" .Values.api.affinity). */}}
{{- define "edu-platform.affinity" -}}
{{- if .affinity -}}
{{- toYaml .affinity -}}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "edu-platform.componentLabels" (dict "root" .root "component" .component) | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* Broker memory arithmetic (docs/deployment.md, "Broker memory"). All in bytes. */}}
{{- define "edu-platform.broker.memoryLimit" -}}
{{- $m := .Values.mosquitto.memory -}}
{{- div (mul (int64 $m.limitMiB) 1048576 (int64 $m.heapPercent)) 100 -}}
{{- end -}}
{{- define "edu-platform.broker.bridgeSessions" -}}
{{- if .Values.bridge.hpa.enabled }}{{ int64 .Values.bridge.hpa.maxReplicas }}{{ else }}{{ int64 .Values.bridge.replicas }}{{ end -}}
{{- end -}}
{{/* One bridge session's share of the queue budget; 1/4 of it may be in flight (the bridge's Receive
Maximum lets the broker send it 10,000 messages before it acknowledges any), 3/4 queued behind. */}}
{{- define "edu-platform.broker.sessionBytes" -}}
{{- $heap := int64 (include "edu-platform.broker.memoryLimit" .) -}}
{{- div (div (mul $heap (int64 .Values.mosquitto.memory.queuePercent)) 100) (int64 (include "edu-platform.broker.bridgeSessions" .)) -}}
{{- end -}}
{{- define "edu-platform.broker.maxInflightBytes" -}}
{{- div (int64 (include "edu-platform.broker.sessionBytes" .)) 4 -}}
{{- end -}}
{{- define "edu-platform.broker.maxQueuedBytes" -}}
{{- sub (int64 (include "edu-platform.broker.sessionBytes" .)) (int64 (include "edu-platform.broker.maxInflightBytes" .)) -}}
{{- end -}}
{{- define "edu-platform.broker.maxConnections" -}}
{{- $heap := int64 (include "edu-platform.broker.memoryLimit" .) -}}
{{- $rest := sub $heap (div (mul $heap (int64 .Values.mosquitto.memory.queuePercent)) 100) -}}
{{- div $rest (mul (int64 .Values.mosquitto.memory.perConnectionKiB) 1024) -}}
{{- end -}}

{{/* Whether to render Prometheus Operator resources: true, false, or "auto" (the cluster serves the API). */}}
{{- define "edu-platform.monitoring.on" -}}
{{- $v := .value -}}
{{- if eq (toString $v) "auto" -}}
{{- if .root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end -}}
{{- else if $v -}}true{{- end -}}
{{- end -}}

{{/* One NetworkPolicy egress rule per external service. Call with (dict "rule" .Values.networkPolicy.egress.redis). */}}
{{- define "edu-platform.egressRule" -}}
- ports:
    {{- range .rule.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .rule.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* DNS egress (kube-dns in kube-system). */}}
{{- define "edu-platform.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}

{{/* The broker URL of the cloud services, as the NetworkPolicies see it: egress to the release's
Mosquitto (plain port) or to the external broker's ports. */}}
{{- define "edu-platform.brokerEgress" -}}
{{- if .Values.mosquitto.enabled -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "edu-platform.componentLabels" (dict "root" . "component" "mosquitto") | nindent 10 }}
  ports:
    - protocol: TCP
      port: {{ .Values.mosquitto.port }}
{{- else -}}
{{ include "edu-platform.egressRule" (dict "rule" .Values.networkPolicy.egress.mqtt) }}
{{- end -}}
{{- end -}}
