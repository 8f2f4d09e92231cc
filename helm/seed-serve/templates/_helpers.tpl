{{/* Names and labels. */}}
{{- define "seed-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "seed-serve.fullname" -}}
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

{{- define "seed-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "seed-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "seed-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seed-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "seed-serve.gatewaySelector" -}}
{{ include "seed-serve.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "seed-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "seed-serve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "seed-serve.image" -}}
{{- $tag := default (printf "%s-gpu" .Chart.AppVersion) .Values.image.tag -}}
{{- printf "%s:%s" (required "image.repository is required" .Values.image.repository) $tag -}}
{{- end -}}

{{- define "seed-serve.keysSecretName" -}}
{{- default (printf "%s-keys" (include "seed-serve.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* The Ray cluster's name: KubeRay names the head Service <name>-head-svc. */}}
{{- define "seed-serve.rayClusterName" -}}
{{- printf "%s-ray" (include "seed-serve.fullname" .) -}}
{{- end -}}

{{- define "seed-serve.rayAddress" -}}
{{- if .Values.ray.enabled -}}
{{- printf "ray://%s-head-svc.%s.svc:%d" (include "seed-serve.rayClusterName" .) .Release.Namespace (int .Values.ray.clientPort) -}}
{{- else -}}
{{- required "ray.address is required when ray.enabled is false (a KubeRay RayCluster or another Ray cluster: ray://host:10001)" .Values.ray.address -}}
{{- end -}}
{{- end -}}

{{- define "seed-serve.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.deploy -}}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "seed-serve.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Fail early, with a message that names the value, on what cannot work. */}}
{{- define "seed-serve.validate" -}}
{{- if and (not .Values.apiKeys.existingSecret) (not .Values.apiKeys.keysFile) -}}
{{- fail "apiKeys: set apiKeys.existingSecret (a Secret with the keys file from `seed-serve keys create`) or apiKeys.keysFile" -}}
{{- end -}}
{{- if and .Values.redis.url .Values.redis.deploy -}}
{{- fail "redis: set either redis.url or redis.deploy, not both" -}}
{{- end -}}
{{- if .Values.ray.enabled -}}
{{- if not .Values.ray.workerGroups -}}
{{- fail "ray.workerGroups: at least one GPU worker group is needed for the engines" -}}
{{- end -}}
{{- $gpus := 0 -}}
{{- range .Values.ray.workerGroups -}}
{{- if not .name -}}{{- fail "ray.workerGroups[].name is required" -}}{{- end -}}
{{- if lt (int .gpus) 1 -}}{{- fail (printf "ray.workerGroups[%s].gpus must be at least 1" .name) -}}{{- end -}}
{{- $pods := .replicas -}}
{{- if $.Values.ray.autoscaling -}}{{- $pods = .maxReplicas -}}{{- end -}}
{{- $gpus = add $gpus (mul (int $pods) (int .gpus)) -}}
{{- end -}}
{{- $wanted := 0 -}}
{{- range .Values.config.replica_groups -}}
{{- $engine := .engine | default dict -}}
{{- if ne (default "cuda" $engine.device) "cpu" -}}
{{- $wanted = add $wanted (mul (int (default 1 .replicas)) (int (default 1 $engine.tensor_parallel_size)) (int (default 1 $engine.pipeline_parallel_size))) -}}
{{- end -}}
{{- end -}}
{{- if gt (int $wanted) (int $gpus) -}}
{{- fail (printf "config.replica_groups need %d GPUs (replicas x tensor_parallel_size x pipeline_parallel_size) but ray.workerGroups offer %d" (int $wanted) (int $gpus)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The gateway's config: the user's, with what the chart owns on top. */}}
{{- define "seed-serve.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $gateway := get $config "gateway" | default dict -}}
{{- $_ := set $gateway "host" "0.0.0.0" -}}
{{- $_ := set $gateway "port" (int .Values.gateway.port) -}}
{{- $_ := set $gateway "metrics_port" (int .Values.gateway.metricsPort) -}}
{{- $_ := set $gateway "metrics_host" "0.0.0.0" -}}
{{- $_ := set $gateway "drain_timeout_s" (float64 .Values.gateway.drainTimeoutSeconds) -}}
{{- $_ := set $config "gateway" $gateway -}}
{{- $ray := get $config "ray" | default dict -}}
{{- $_ := set $ray "address" (include "seed-serve.rayAddress" .) -}}
{{- $_ := set $config "ray" $ray -}}
{{- $auth := get $config "auth" | default dict -}}
{{- if .Values.apiKeys.selfService.enabled -}}
{{- $_ := set $auth "keys_file" (printf "/var/lib/seed-serve/keys/%s" .Values.apiKeys.secretKey) -}}
{{- else -}}
{{- $_ := set $auth "keys_file" (printf "/etc/seed-serve/keys/%s" .Values.apiKeys.secretKey) -}}
{{- end -}}
{{- $_ := set $auth "demo_key_file" nil -}}
{{- if .Values.oidc.existingSecret -}}
{{- $oidc := required "oidc.existingSecret needs config.auth.oidc (issuer, client_id, tenants)" (get $auth "oidc") -}}
{{- $_ := set $oidc "client_secret_file" (printf "/etc/seed-serve/oidc/%s" .Values.oidc.secretKey) -}}
{{- end -}}
{{- $_ := set $config "auth" $auth -}}
{{- $console := get $config "console" | default dict -}}
{{- $_ := set $console "session_secret_file" (printf "/etc/seed-serve/console/%s" .Values.console.secretKey) -}}
{{- $_ := set $config "console" $console -}}
{{- $audit := get $config "audit" | default dict -}}
{{- if not (hasKey $audit "file") -}}
{{- /* Helm drops nulls from values: no file unless one is named (pods log audit lines to stdout). */ -}}
{{- $_ := set $audit "file" nil -}}
{{- end -}}
{{- $_ := set $config "audit" $audit -}}
{{- if .Values.adapters.enabled -}}
{{- $adapters := get $config "adapters" | default dict -}}
{{- $_ := set $adapters "registry_file" (printf "%s/registry.yaml" .Values.adapters.mountPath) -}}
{{- $_ := set $adapters "roots" (list (printf "%s/adapters" .Values.adapters.mountPath)) -}}
{{- $_ := set $adapters "data_dir" (printf "%s/team-data" .Values.adapters.mountPath) -}}
{{- $_ := set $config "adapters" $adapters -}}
{{- end -}}
{{- $redis := include "seed-serve.redisUrl" . -}}
{{- if $redis -}}
{{- $quotas := get $config "quotas" | default dict -}}
{{- $_ := set $quotas "backend" "redis" -}}
{{- $_ := set $quotas "redis_url" $redis -}}
{{- $_ := set $config "quotas" $quotas -}}
{{- $telemetry := get $config "telemetry" | default dict -}}
{{- $_ := set $telemetry "backend" "redis" -}}
{{- $_ := set $telemetry "redis_url" $redis -}}
{{- $_ := set $config "telemetry" $telemetry -}}
{{- $usage := get $config "usage" | default dict -}}
{{- $_ := set $usage "backend" "redis" -}}
{{- $_ := set $usage "redis_url" $redis -}}
{{- $_ := set $config "usage" $usage -}}
{{- $signOuts := get $config "console" | default dict -}}
{{- $_ := set $signOuts "sign_outs_redis_url" $redis -}}
{{- $_ := set $config "console" $signOuts -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}


{{/* The adapter volume (mount and source), for every pod that needs it. */}}
{{- define "seed-serve.adaptersClaimName" -}}
{{- .Values.adapters.storage.existingClaim | default (printf "%s-adapters" (include "seed-serve.fullname" .)) -}}
{{- end -}}

{{- define "seed-serve.adaptersMount" -}}
{{- if .Values.adapters.enabled }}
- {name: adapters, mountPath: {{ .Values.adapters.mountPath }}}
{{- end }}
{{- end -}}

{{- define "seed-serve.adaptersVolume" -}}
{{- if .Values.adapters.enabled }}
- name: adapters
{{- if eq .Values.adapters.storage.kind "volume" }}
  {{- required "adapters.storage.volume must give a volume source when adapters.storage.kind is volume" (.Values.adapters.storage.volume | default nil) | toYaml | nindent 2 }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "seed-serve.adaptersClaimName" . }}
{{- end }}
{{- end }}
{{- end -}}


{{- define "seed-serve.consoleSecretName" -}}
{{- default (printf "%s-console" (include "seed-serve.fullname" .)) .Values.console.existingSecret -}}
{{- end -}}

{{- define "seed-serve.keysClaimName" -}}
{{- .Values.apiKeys.selfService.existingClaim | default (printf "%s-keys" (include "seed-serve.fullname" .)) -}}
{{- end -}}
