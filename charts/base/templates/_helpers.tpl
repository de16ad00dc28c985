{{/* Labels on every object of the chart. */}}
{{- define "base.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A workload selector (shared by both kinds). */}}
{{- define "base.selectorSchema" -}}
selector:
  description: >-
    Pods the policy applies to, by label. Absent: every pod of the namespace (of the
    mesh, in the root namespace).
  type: object
  properties:
    matchLabels:
      description: Pods whose labels include all of these.
      type: object
      additionalProperties:
        type: string
      maxProperties: 4096
{{- end }}
