{{/* Labels on every object of the chart. */}}
{{- define "istiod-compat.labels" -}}
app.kubernetes.io/name: istiod-compat
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Pod selector labels. */}}
{{- define "istiod-compat.selectorLabels" -}}
app: istiod-compat
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference. */}}
{{- define "istiod-compat.image" -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | default .Chart.AppVersion -}}
{{- printf "%s/%s:%s" $hub .Values.image $tag -}}
{{- end }}

{{/* `<namespace>/<name>` of the node proxy account. */}}
{{- define "istiod-compat.trustedNodeAccount" -}}
{{- printf "%s/%s" (.Values.trustedZtunnelNamespace | default .Release.Namespace) .Values.trustedZtunnelName -}}
{{- end }}
