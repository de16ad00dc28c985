{{/* Labels on every object of the chart. */}}
{{- define "ztunnel.labels" -}}
app.kubernetes.io/name: ztunnel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The image reference. */}}
{{- define "ztunnel.image" -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | default .Chart.AppVersion -}}
{{- printf "%s/%s:%s" $hub .Values.image $tag -}}
{{- end }}

{{/* istiod-compat's TLS gRPC address (xDS and CA). */}}
{{- define "ztunnel.istiod" -}}
{{- printf "istiod-compat.%s.svc:15012" (.Values.istioNamespace | default .Release.Namespace) -}}
{{- end }}
