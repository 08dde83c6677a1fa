{{/*
Name prefix of every object: "keygate" unless fullnameOverride says otherwise.
Deliberately not derived from the release name, so that the defaults match
config/default and the manager's flag defaults (docs/injection.md).
*/}}
{{- define "keygate.fullname" -}}
{{- default "keygate" .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "keygate.managerName" -}}{{ include "keygate.fullname" . }}-manager{{- end -}}
{{- define "keygate.serviceAccountName" -}}{{ include "keygate.fullname" . }}-manager{{- end -}}
{{- define "keygate.injectorName" -}}{{ include "keygate.fullname" . }}-injector{{- end -}}
{{- define "keygate.leaderElectionName" -}}{{ include "keygate.fullname" . }}-leader-election{{- end -}}
{{- define "keygate.webhookServiceName" -}}{{ include "keygate.fullname" . }}-webhook-service{{- end -}}
{{- define "keygate.webhookCertSecret" -}}{{ include "keygate.fullname" . }}-webhook-cert{{- end -}}
{{- define "keygate.webhookConfigName" -}}{{ include "keygate.fullname" . }}-sidecar-injector{{- end -}}
{{- define "keygate.issuerName" -}}{{ include "keygate.fullname" . }}-selfsigned{{- end -}}

{{/* Directory of the webhook serving certificate (--webhook-cert-dir), under the /tmp emptyDir. */}}
{{- define "keygate.certDir" -}}/tmp/k8s-webhook-server/serving-certs{{- end -}}

{{- define "keygate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "keygate.labels" -}}
helm.sh/chart: {{ include "keygate.chart" . }}
app.kubernetes.io/name: keygate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: keygate
{{- end -}}

{{/* Selector of the manager's pods (the Deployment and the webhook Service). */}}
{{- define "keygate.selectorLabels" -}}
app.kubernetes.io/name: keygate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end -}}

{{/* image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "keygate.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if eq (splitList "@" $tag | first) "latest" -}}
{{- fail (printf "%s: the tag \"latest\" is refused; pin a version" .image.repository) -}}
{{- end -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{/* Namespaces the webhook never sees. */}}
{{- define "keygate.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-public" .Release.Namespace -}}
{{- range .Values.webhook.excludeNamespaces -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- toJson ($ns | uniq) -}}
{{- end -}}
