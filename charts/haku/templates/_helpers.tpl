{{/*
Helm's own labels, on every object's metadata (never in selectors or the pod template, which
stay those of deploy/).
*/}}
{{- define "haku.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "haku.labels" -}}
app.kubernetes.io/name: haku
{{ include "haku.helmLabels" . }}
{{- end -}}

{{/* The operator's selector: the labels of its pods, as in deploy/operator.yaml. */}}
{{- define "haku.operatorSelector" -}}
app.kubernetes.io/name: haku
app.kubernetes.io/component: operator
{{- end -}}

{{- define "haku.operatorLabels" -}}
{{ include "haku.operatorSelector" . }}
{{ include "haku.helmLabels" . }}
{{- end -}}

{{- define "haku.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The port of a HOST:PORT or :PORT bind address; "0" when it is "0" (disabled). */}}
{{- define "haku.port" -}}
{{- if eq (toString .) "0" -}}
0
{{- else -}}
{{- $port := splitList ":" (toString .) | last -}}
{{- if not (regexMatch "^[0-9]+$" $port) -}}
{{- fail (printf "%q is not HOST:PORT or :PORT" (toString .)) -}}
{{- end -}}
{{- $port -}}
{{- end -}}
{{- end -}}

{{/* A list of settings as the admission ConfigMap holds it: one per line. */}}
{{- define "haku.lines" -}}
{{- if . }}{{ printf "%s\n" (join "\n" .) }}{{ end -}}
{{- end -}}
