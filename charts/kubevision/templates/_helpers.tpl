{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "kubevision.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, or release-chart when they differ. */}}
{{- define "kubevision.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Name of the operator's Deployment, Service, PDB, ClusterRole and peering object. */}}
{{- define "kubevision.operatorName" -}}
{{- printf "%s-operator" (include "kubevision.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubevision.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubevision.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kubevision.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubevision.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels the operator puts on every worker pod (operator/builders.py labels()). */}}
{{- define "kubevision.workerSelectorLabels" -}}
app.kubernetes.io/name: kubevision-worker
app.kubernetes.io/component: worker
{{- end }}

{{- define "kubevision.serviceAccountName" -}}
{{- default (include "kubevision.operatorName" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The operator image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "kubevision.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* A worker image; call with (list $ "gpu" "-cuda"): flavour and default tag suffix. */}}
{{- define "kubevision.workerImage" -}}
{{- $root := index . 0 }}
{{- $image := index $root.Values.workerImages (index . 1) }}
{{- printf "%s:%s" $image.repository ($image.tag | default (printf "%s%s" $root.Chart.AppVersion (index . 2))) }}
{{- end }}

{{/* NetworkPolicy peer: the Prometheus pods allowed to scrape (networkPolicy.monitoring). */}}
{{- define "kubevision.monitoringPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.monitoring.namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .Values.networkPolicy.monitoring.podSelector | nindent 4 }}
{{- end }}
{{/* NetworkPolicy egress rule: DNS in any namespace. */}}
{{- define "kubevision.dnsEgress" -}}
- to:
    - namespaceSelector: {}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}
