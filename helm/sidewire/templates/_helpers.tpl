{{- define "sidewire.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sidewire.labels" -}}
app.kubernetes.io/name: sidewire
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
