{{/* Labels on every object of the chart. */}}
{{- define "redirect-ebpf.labels" -}}
app.kubernetes.io/name: redirect-ebpf
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The image reference. */}}
{{- define "redirect-ebpf.image" -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | default .Chart.AppVersion -}}
{{- printf "%s/%s:%s" $hub .Values.image $tag -}}
{{- end }}
