{{/*
The chart's name, or nameOverride. Truncated to 63 characters: some
Kubernetes name fields are limited to that (DNS labels).
*/}}
{{- define "fanout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object of the release. The release name alone when it
already contains the chart's name ("fanout" -> "fanout", not "fanout-fanout").
*/}}
{{- define "fanout.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"name-version", as the helm.sh/chart label wants it ("+" is not allowed in labels).
*/}}
{{- define "fanout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object (the app.kubernetes.io recommended set).
*/}}
{{- define "fanout.labels" -}}
helm.sh/chart: {{ include "fanout.chart" . }}
{{ include "fanout.selectorLabels" . }}
app.kubernetes.io/version: {{ include "fanout.imageTag" . | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: fanout
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The labels that select the controller's pods. They never change between
upgrades: a Deployment's selector is immutable.
*/}}
{{- define "fanout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fanout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the controller runs as.
*/}}
{{- define "fanout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fanout.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image tag: image.tag, or the chart's appVersion.
*/}}
{{- define "fanout.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The controller's image. image.repository has no default because no public
image exists: an install that left it unset would create pods that can never
pull (ImagePullBackOff), so it fails here, before anything is created, and
says how to get an image.
*/}}
{{- define "fanout.image" -}}
{{- $repository := required (printf "image.repository is required: there is no public Fanout image. Build one with the repository's Dockerfile (docker build -t REGISTRY/fanout:%s .), push it to a registry your nodes can pull from (docker push REGISTRY/fanout:%s), and install with --set image.repository=REGISTRY/fanout (README, \"Install into your cluster\")." (include "fanout.imageTag" .) (include "fanout.imageTag" .)) .Values.image.repository }}
{{- printf "%s:%s" $repository (include "fanout.imageTag" .) }}
{{- end }}

{{/*
The leader Lease's name: the Role grants access to this one Lease, and the
controller is told the same name, so both come from here. A DNS label (the
controller checks): at most 63 characters with the "-leader" suffix.
*/}}
{{- define "fanout.leaseName" -}}
{{- default (printf "%s-leader" (include "fanout.fullname" . | trunc 56 | trimSuffix "-")) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
The source-access ValidatingAdmissionPolicy and its binding (cluster-scoped,
so named after the release).
*/}}
{{- define "fanout.sourceAccessPolicyName" -}}
{{- printf "%s-source-access" (include "fanout.fullname" . | trunc 49 | trimSuffix "-") }}
{{- end }}

{{/*
The pod's grace period: shutdownTimeoutSeconds + gracePeriodMarginSeconds,
unless terminationGracePeriodSeconds pins it (fanout.validate checks it then).
*/}}
{{- define "fanout.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add .Values.shutdownTimeoutSeconds .Values.gracePeriodMarginSeconds }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Checks between values that values.schema.json cannot express (a JSON schema
cannot compare two fields). Renders nothing; fails the release with a message
that says what to change.
*/}}
{{- define "fanout.validate" -}}
{{- $deadline := int .Values.shutdownTimeoutSeconds }}
{{- $grace := int (include "fanout.terminationGracePeriodSeconds" .) }}
{{- if le $grace $deadline }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than shutdownTimeoutSeconds (%d): kubelet kills the pod when the grace period ends, which would cut the drain short before its deadline and leave the leader Lease held. Unset terminationGracePeriodSeconds to derive it (shutdownTimeoutSeconds + gracePeriodMarginSeconds), or lower shutdownTimeoutSeconds." $grace $deadline) }}
{{- end }}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "leaderElection.enabled=false with replicaCount=%d: every replica would reconcile the same Fanouts at once. Enable leader election or set replicaCount to 1." (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are both true: Prometheus would scrape every pod twice. Enable one of them." }}
{{- end }}
{{- end }}
