#!/usr/bin/env bash
# Deploy nexus-actors to a Kubernetes cluster (AKS, GKE, EKS or any other) from
# deploy/kubernetes: namespace, Secret, Deployment, Service, PodDisruptionBudget; or, with
# --scaled, from deploy/kubernetes-scaled: three replicas behind an ingress-nginx Ingress.
# docs/deploy.md explains each step.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=_common.sh
. "$REPO_ROOT/scripts/deploy/_common.sh"

usage() {
  cat <<'EOF'
Usage: scripts/deploy/kubernetes.sh --image IMAGE [options] [up | logs]

  up    (default) apply deploy/kubernetes with the image and a Secret holding DATABASE_URL
        (through a generated kustomize overlay), then wait for the rollout; the pod is
        replaced when the image or the Secret changed
  logs  follow the server's log

Options:
  --image IMAGE          image to run, e.g. myregistry.azurecr.io/nexus-actors:TAG (required
                         for up; build and push it first, docs/deploy.md)
  --namespace NS         namespace (default nexus; created if missing)
  --context CONTEXT      kubectl context (default: the current one)
  --cors-origin ORIGINS  browser origins allowed, comma-separated (env CORS_ORIGIN)
  --scaled               several replicas (deploy/kubernetes-scaled, docs/scaling.md): set
                         its Ingress host and NEXUS_TRUSTED_PROXIES first
  --dry-run              print the commands and the generated files (secrets as ***) and
                         run nothing
  -h, --help             this help

Environment:
  DATABASE_URL        PostgreSQL URL, e.g. with ?sslmode=verify-full&sslrootcert=system
                      (required for up)
  METRICS_AUTH_TOKEN  bearer token required by GET /metrics

Requires kubectl (1.27 or newer) and access to the cluster.
EOF
}

IMAGE=""
NAMESPACE=nexus
CONTEXT=""
CORS=${CORS_ORIGIN:-}
ACTION=up
BASE=kubernetes

while [ $# -gt 0 ]; do
  case $1 in
    --image) need_value "$@"; IMAGE=$2; shift 2 ;;
    --namespace) need_value "$@"; NAMESPACE=$2; shift 2 ;;
    --context) need_value "$@"; CONTEXT=$2; shift 2 ;;
    --cors-origin) need_value "$@"; CORS=$2; shift 2 ;;
    --scaled) BASE=kubernetes-scaled; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h | --help) usage; exit 0 ;;
    up | logs) ACTION=$1; shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

cd "$REPO_ROOT"
need_tool kubectl "install kubectl (https://kubernetes.io/docs/tasks/tools/)"
KUBECTL=(kubectl)
[ -z "$CONTEXT" ] || KUBECTL+=(--context "$CONTEXT")

if [ "$ACTION" = logs ]; then
  run "${KUBECTL[@]}" --namespace "$NAMESPACE" logs deployment/nexus-actors --follow
  exit 0
fi

require --image "$IMAGE" "the image to run (see --help)"
DB_URL=${DATABASE_URL:-}
if [ -z "$DB_URL" ]; then
  $DRY_RUN || die "set DATABASE_URL; see --help"
  DB_URL="postgresql://nexus:CHANGE-ME@db.example.com:5432/nexus?sslmode=verify-full"
fi
secret "$DB_URL" "${METRICS_AUTH_TOKEN:-}"

yaml_quote() {
  printf "'%s'" "${1//\'/\'\'}"
}

# The overlay: a copy of deploy/kubernetes (and deploy/kubernetes-scaled, which builds on it)
# as its base (kustomize takes no absolute paths), plus the namespace, the image, and the
# Secret from a generator: its name carries a hash of its content, so a changed DATABASE_URL
# rolls the pods as a changed image does.
for value in "$DB_URL" "${METRICS_AUTH_TOKEN:-}" "$CORS"; do
  [[ $value != *$'\n'* ]] || die "DATABASE_URL, METRICS_AUTH_TOKEN and CORS_ORIGIN are one line each"
done
make_work_dir
cp -R deploy/kubernetes "$WORK_DIR/kubernetes"
[ "$BASE" = kubernetes ] || cp -R "deploy/$BASE" "$WORK_DIR/$BASE"
cat >"$WORK_DIR/namespace.yaml" <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $(yaml_quote "$NAMESPACE")
EOF
{
  printf 'DATABASE_URL=%s\n' "$DB_URL"
  [ -z "${METRICS_AUTH_TOKEN:-}" ] || printf 'METRICS_AUTH_TOKEN=%s\n' "$METRICS_AUTH_TOKEN"
  [ -z "$CORS" ] || printf 'CORS_ORIGIN=%s\n' "$CORS"
} >"$WORK_DIR/secret.env"
cat >"$WORK_DIR/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $(yaml_quote "$NAMESPACE")
resources:
  - namespace.yaml
  - $BASE
secretGenerator:
  - name: nexus-actors
    envs:
      - secret.env
    options:
      labels:
        app.kubernetes.io/name: nexus-actors
images:
  - name: nexus-actors
    newName: $(yaml_quote "$IMAGE")
EOF
show_file "$WORK_DIR/kustomization.yaml"
show_file "$WORK_DIR/secret.env"

run "${KUBECTL[@]}" apply --kustomize "$WORK_DIR"
run "${KUBECTL[@]}" --namespace "$NAMESPACE" rollout status deployment/nexus-actors \
  --timeout 5m

if [ "$BASE" = kubernetes ]; then
  note "address: kubectl --namespace $NAMESPACE get service nexus-actors (EXTERNAL-IP, port 80)"
else
  note "address: kubectl --namespace $NAMESPACE get ingress nexus-actors"
fi
note "logs: kubectl --namespace $NAMESPACE logs deployment/nexus-actors --follow"
