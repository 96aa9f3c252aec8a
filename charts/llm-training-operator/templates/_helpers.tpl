{{/* Chart name, overridable with nameOverride. */}}
{{- define "llmto.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name prefix of every object: fullnameOverride, else the release name if it contains the chart name, else <release>-<chart>. */}}
{{- define "llmto.fullname" -}}
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

{{- define "llmto.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels selecting the operator pod. */}}
{{- define "llmto.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmto.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object the chart creates. */}}
{{- define "llmto.labels" -}}
helm.sh/chart: {{ include "llmto.chart" . }}
{{ include "llmto.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-training-operator
{{- end -}}

{{- define "llmto.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llmto.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "llmto.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The operator's RBAC rules: files/rbac-rules.yaml, the one place they are written. */}}
{{- define "llmto.rbacRules" -}}
{{- $rules := .Files.Get "files/rbac-rules.yaml" | fromYaml -}}
{{- if or (not $rules) (hasKey $rules "Error") -}}
{{- fail "files/rbac-rules.yaml is missing or not valid YAML" -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}
