{{/* Names, labels and the pieces every Pylon pod shares. */}}

{{- define "pylon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pylon.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pylon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: include "pylon.selectorLabels" (list $ "gateway") */}}
{{- define "pylon.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "pylon.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "pylon.labels" -}}
{{- $ := index . 0 -}}
{{ include "pylon.selectorLabels" . }}
helm.sh/chart: {{ include "pylon.chart" $ }}
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $.Release.Service }}
app.kubernetes.io/part-of: pylon
{{- end -}}

{{- define "pylon.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pylon.gpuImage" -}}
{{- if .Values.ray.gpuImage.repository -}}
{{- printf "%s:%s" .Values.ray.gpuImage.repository (default .Chart.AppVersion .Values.ray.gpuImage.tag) -}}
{{- else -}}
{{- include "pylon.image" . -}}
{{- end -}}
{{- end -}}

{{- define "pylon.secretName" -}}
{{- default (include "pylon.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "pylon.configName" -}}
{{- printf "%s-config" (include "pylon.fullname" .) -}}
{{- end -}}

{{- define "pylon.rayClusterName" -}}
{{- printf "%s-ray" (include "pylon.fullname" .) -}}
{{- end -}}

{{/* The Ray GCS address (KubeRay names the head's Service <cluster>-head-svc). */}}
{{- define "pylon.rayAddress" -}}
{{- printf "%s-head-svc:6379" (include "pylon.rayClusterName" .) -}}
{{- end -}}

{{- define "pylon.redisHost" -}}
{{- printf "%s-redis" (include "pylon.fullname" .) -}}
{{- end -}}

{{- define "pylon.minioHost" -}}
{{- printf "%s-minio" (include "pylon.fullname" .) -}}
{{- end -}}

{{/* The address of one service inside the cluster: include "pylon.serviceAddress" (list $ "registry") */}}
{{- define "pylon.serviceAddress" -}}
{{- $ := index . 0 -}}
{{- $svc := index . 1 -}}
{{- printf "%s-%s.%s.svc:%d" (include "pylon.fullname" $) $svc $.Release.Namespace (int (index $.Values.services $svc).port) -}}
{{- end -}}

{{/*
The Redis URL, without its password: Kubernetes puts the password in at start ($(REDIS_PASSWORD),
an env var from the Secret), so the URL with the password never appears in a manifest.
*/}}
{{- define "pylon.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "pylon.redisHost" .) -}}
{{- else -}}
{{- regexReplaceAll "^(rediss?://)" .Values.external.redis.url "${1}:$(REDIS_PASSWORD)@" -}}
{{- end -}}
{{- end -}}

{{/* Secret-backed environment of platform processes (never of Ray workers). */}}
{{- define "pylon.secretEnv" -}}
{{- $secret := include "pylon.secretName" . -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: redis-password}
- name: PYLON_REDIS_URL
  value: {{ include "pylon.redisUrl" . | quote }}
- name: PYLON_ADMIN_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: admin-key}
- name: PYLON_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: s3-access-key}
- name: PYLON_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: s3-secret-key}
- name: PYLON_INTERNAL_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: internal-key, optional: true}
{{- end -}}

{{/* Ray's token authentication for a process that joins Ray: the token is a file from the Secret. */}}
{{- define "pylon.rayAuthEnv" -}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN_PATH
  value: /etc/pylon/ray/token
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- end -}}

{{- define "pylon.rayTokenVolume" -}}
- name: ray-token
  secret:
    secretName: {{ include "pylon.secretName" . }}
    defaultMode: 0400
    items:
      - key: ray-auth-token
        path: token
{{- end -}}

{{- define "pylon.rayTokenMount" -}}
- name: ray-token
  mountPath: /etc/pylon/ray
  readOnly: true
{{- end -}}

{{- define "pylon.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A Kubernetes-native gRPC health probe on the service's port. */}}
{{- define "pylon.grpcProbes" -}}
startupProbe:
  grpc: {port: {{ . }}}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  grpc: {port: {{ . }}}
  periodSeconds: 5
  timeoutSeconds: 3
livenessProbe:
  grpc: {port: {{ . }}}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- end -}}

{{/* The GPU pools as PYLON_SCHED_POOLS: accelerator -> node bounds and shape. */}}
{{- define "pylon.schedPools" -}}
{{- $pools := dict -}}
{{- range (fromYaml (include "pylon.gpuPools" .)).pools -}}
{{- $_ := set $pools .accelerator (dict "min_nodes" (int .minReplicas) "max_nodes" (int .maxReplicas) "gpus_per_node" (int .gpusPerNode) "cpus_per_node" (int .cpusPerNode)) -}}
{{- end -}}
{{- if $pools }}{{ toJson $pools }}{{ end -}}
{{- end -}}

{{/* Refuse values the schema cannot express: duplicate pool names or accelerators, min > max. */}}
{{- define "pylon.checkValues" -}}
{{- $names := dict -}}
{{- $accels := dict -}}
{{- range .Values.gpuPools -}}
{{- if hasKey $names .name -}}{{- fail (printf "gpuPools: the name %q is used twice" .name) -}}{{- end -}}
{{- if hasKey $accels .accelerator -}}{{- fail (printf "gpuPools: the accelerator %q has two pools; one worker group per GPU type" .accelerator) -}}{{- end -}}
{{- $_ := set $names .name true -}}
{{- $_ := set $accels .accelerator true -}}
{{- if gt (int (default 0 .minReplicas)) (int (default 1 .maxReplicas)) -}}{{- fail (printf "gpuPools[%s]: minReplicas is above maxReplicas" .name) -}}{{- end -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.external.redis.url) -}}
{{- fail "redis.enabled is false: set external.redis.url (redis://host:6379/0, no credentials)" -}}
{{- end -}}
{{- if and (not .Values.minio.enabled) (not .Values.external.s3.bucket) -}}
{{- fail "minio.enabled is false: set external.s3.bucket (and external.s3.endpoint unless AWS)" -}}
{{- end -}}
{{- end -}}

{{/* The GPU pools with their defaults filled in, as YAML: fromYaml gives {"pools": [...]}. */}}
{{- define "pylon.gpuPools" -}}
{{- $out := list -}}
{{- range .Values.gpuPools -}}
{{- $d := dict "gpusPerNode" 1 "cpusPerNode" 8 "memory" "32Gi" "minReplicas" 0 "maxReplicas" 1 "priority" 0 "nodeSelector" (dict) "tolerations" (list) "rayResources" (dict) "labels" (dict) "shmSize" "8Gi" -}}
{{- $p := mergeOverwrite $d (deepCopy .) -}}
{{- if not (hasKey . "replicas") -}}{{- $_ := set $p "replicas" $p.minReplicas -}}{{- end -}}
{{- $out = append $out $p -}}
{{- end -}}
{{- toYaml (dict "pools" $out) -}}
{{- end -}}

{{/*
A Ray pod template (head or worker). Ray pods run user code: no service-account token, no
platform secret; only Ray's token, as a file, which Ray reads and user code's environment does not
carry (scheduler/worker/isolation.py).
*/}}
{{- define "pylon.rayPod" -}}
{{- $ := .root -}}
metadata:
  labels:
    {{- include "pylon.labels" (list $ (printf "ray-%s" .role)) | nindent 4 }}
    pylon.dev/ray-node: "true"
    {{- if eq .role "worker" }}
    pylon.dev/ray-worker: "true"
    pylon.dev/redis-client: "true"
    pylon.dev/s3-client: "true"
    {{- end }}
    {{- with .labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- include "pylon.imagePullSecrets" $ | nindent 2 }}
  serviceAccountName: {{ include "pylon.fullname" $ }}-ray
  automountServiceAccountToken: false
  securityContext:
    {{- toYaml $.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: ray-{{ .role }}
      image: {{ .image }}
      imagePullPolicy: {{ $.Values.image.pullPolicy }}
      env:
        {{- include "pylon.rayAuthEnv" $ | nindent 8 }}
      {{- if eq .role "head" }}
      ports:
        - {name: gcs, containerPort: 6379, protocol: TCP}
        - {name: client, containerPort: 10001, protocol: TCP}
        - {name: dashboard, containerPort: 8265, protocol: TCP}
      {{- end }}
      # Our own probes (the image has no wget for KubeRay's default ones): the GCS answers with
      # the token.
      readinessProbe:
        exec:
          command: ["ray", "health-check", "--address={{ if eq .role "head" }}localhost:6379{{ else }}{{ include "pylon.rayAddress" $ }}{{ end }}"]
        periodSeconds: 10
        timeoutSeconds: 10
        failureThreshold: 6
      {{- if eq .role "head" }}
      livenessProbe:
        exec:
          command: ["ray", "health-check", "--address=localhost:6379"]
        initialDelaySeconds: 30
        periodSeconds: 15
        timeoutSeconds: 10
        failureThreshold: 6
      {{- end }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        - {name: dshm, mountPath: /dev/shm}
        {{- include "pylon.rayTokenMount" $ | nindent 8 }}
  volumes:
    - name: tmp
      emptyDir: {}
    - name: dshm
      emptyDir: {medium: Memory, sizeLimit: {{ .shm }}}
    {{- include "pylon.rayTokenVolume" $ | nindent 4 }}
  {{- with .nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
