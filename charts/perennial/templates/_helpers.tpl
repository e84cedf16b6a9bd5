{{/*
The chart's short name: the chart name, or nameOverride.
*/}}
{{- define "perennial.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of the release's namespaced objects: fullnameOverride, else the release name
(suffixed with the chart name unless it already contains it).
*/}}
{{- define "perennial.fullname" -}}
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
The name of objects outside the release namespace (ClusterRoles, ClusterRoleBindings and
Roles in other namespaces): prefixed with the release namespace, so that releases of the
same name in two namespaces do not collide.
*/}}
{{- define "perennial.globalName" -}}
{{- printf "%s-%s" .Release.Namespace (include "perennial.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "perennial.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "perennial.labels" -}}
helm.sh/chart: {{ include "perennial.chart" . }}
{{ include "perennial.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels that select the operator's pods.
*/}}
{{- define "perennial.selectorLabels" -}}
app.kubernetes.io/name: {{ include "perennial.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "perennial.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "perennial.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The leader Lease, in the release namespace.
*/}}
{{- define "perennial.leaseName" -}}
{{- default (printf "%s-leader" (include "perennial.fullname" .)) .Values.leaderElection.leaseName | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "perennial.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
RBAC rules for what the operator reads and writes in the namespaces it watches, each verb
one the code uses (src/controller.rs watches, src/act writes):
- resilientservices: list and watch (the controller's watch); status: patch (server-side
  apply of the status); finalizers: update, which the OwnerReferencesPermissionEnforcement
  admission plugin requires to set blockOwnerDeletion in the owner references of children.
- pods, persistentvolumeclaims: list/watch (caches), create, delete (also force-delete).
- services, poddisruptionbudgets: list/watch, and patch with server-side apply; an apply that
  creates the object is also authorized as create.
- controllerrevisions: list/watch, create, delete, patch (marking a failed revision).
- events.k8s.io events: create, and patch to count a repeated event in a series.
No get: every read comes from a watch cache.
*/}}
{{- define "perennial.namespacedRules" -}}
- apiGroups: ["perennial.dev"]
  resources: ["resilientservices"]
  verbs: ["list", "watch"]
- apiGroups: ["perennial.dev"]
  resources: ["resilientservices/status"]
  verbs: ["patch"]
- apiGroups: ["perennial.dev"]
  resources: ["resilientservices/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods", "persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "delete"]
# The readiness gate (pods/status), in-place upgrades (pods: images, labels, annotations;
# pods/resize: CPU and memory).
- apiGroups: [""]
  resources: ["pods", "pods/status", "pods/resize"]
  verbs: ["patch"]
# What a drain waits on: whether any EndpointSlice still shows a pod ready.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
RBAC rules for cluster-scoped objects, whatever namespaces are watched: nodes (list/watch
for domains and health; get and patch to taint a lost node out-of-service, only with
rbac.nodeFencing), persistentvolumes (list/watch, to see where a claim's volume lives) and
the ResilientService CRD itself (get, by name: the start-up check that it is the CRD this
version of the operator was built with).
*/}}
{{- define "perennial.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes", "persistentvolumes"]
  verbs: ["list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["resilientservices.perennial.dev"]
  verbs: ["get"]
{{- if .Values.rbac.nodeFencing }}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "patch"]
{{- end }}
{{- end }}
