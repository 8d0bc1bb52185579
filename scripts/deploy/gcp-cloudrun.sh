#!/usr/bin/env bash
# Deploy nexus-actors to Google Cloud Run, with Cloud SQL for PostgreSQL, Artifact Registry
# and Secret Manager. docs/deploy.md explains each step.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=_common.sh
. "$REPO_ROOT/scripts/deploy/_common.sh"

usage() {
  cat <<'EOF'
Usage: scripts/deploy/gcp-cloudrun.sh [options] [up | logs]

  up    (default) create or update: the APIs, an Artifact Registry repository and the image
        (built by Cloud Build), a service account, Cloud SQL PostgreSQL 16 with database and
        user (unless DATABASE_URL is set), the secret NAME-database-url, and the Cloud Run
        service
  logs  follow the server's log

Options:
  --project PROJECT      Google Cloud project (env GOOGLE_CLOUD_PROJECT or
                         CLOUDSDK_CORE_PROJECT; required)
  --region REGION        region (env CLOUDSDK_RUN_REGION, default europe-west1)
  --name NAME            service name; also names the database instance, secret and
                         service account (default nexus-actors)
  --repository NAME      Artifact Registry repository (default nexus)
  --db-tier TIER         Cloud SQL machine type (default db-f1-micro)
  --tag TAG              image tag to build (default: the git commit)
  --image IMAGE          deploy this image instead of building one
  --cors-origin ORIGINS  browser origins allowed, comma-separated (env CORS_ORIGIN)
  --dry-run              print the commands (secrets as ***) and run nothing
  -h, --help             this help

Environment:
  NEXUS_DB_PASSWORD  password of the database user nexus (set on every run)
  DATABASE_URL       use this database instead (no Cloud SQL instance is created)

Requires the Google Cloud CLI (gcloud auth login; billing enabled on the project).
EOF
}

PROJECT=${GOOGLE_CLOUD_PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}
REGION=${CLOUDSDK_RUN_REGION:-europe-west1}
NAME=nexus-actors
REPOSITORY=nexus
DB_TIER=db-f1-micro
TAG=""
IMAGE=""
CORS=${CORS_ORIGIN:-}
ACTION=up

while [ $# -gt 0 ]; do
  case $1 in
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --region) need_value "$@"; REGION=$2; shift 2 ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --repository) need_value "$@"; REPOSITORY=$2; shift 2 ;;
    --db-tier) need_value "$@"; DB_TIER=$2; shift 2 ;;
    --tag) need_value "$@"; TAG=$2; shift 2 ;;
    --image) need_value "$@"; IMAGE=$2; shift 2 ;;
    --cors-origin) need_value "$@"; CORS=$2; shift 2 ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h | --help) usage; exit 0 ;;
    up | logs) ACTION=$1; shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

cd "$REPO_ROOT"
require --project "$PROJECT" "the Google Cloud project id (see --help)"
[[ $NAME =~ ^[a-z][a-z0-9-]{1,25}$ ]] || die "--name: lower-case letters, digits and -, at most 26"
need_tool gcloud "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
GCLOUD=(gcloud --project "$PROJECT")

if [ "$ACTION" = logs ]; then
  run "${GCLOUD[@]}" beta run services logs tail "$NAME" --region "$REGION"
  exit 0
fi

TAG=${TAG:-$(default_tag)}
BUILD=true
if [ -n "$IMAGE" ]; then
  BUILD=false
else
  IMAGE="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/nexus-actors:$TAG"
fi

database_choice

# 1. APIs, repository, image (built by Cloud Build: no local container engine).
run "${GCLOUD[@]}" services enable run.googleapis.com sqladmin.googleapis.com \
  artifactregistry.googleapis.com cloudbuild.googleapis.com secretmanager.googleapis.com \
  iam.googleapis.com
if $BUILD; then
  if ! exists "${GCLOUD[@]}" artifacts repositories describe "$REPOSITORY" \
    --location "$REGION"; then
    run "${GCLOUD[@]}" artifacts repositories create "$REPOSITORY" \
      --repository-format docker --location "$REGION" --description "nexus-actors images"
  fi
  run "${GCLOUD[@]}" builds submit --config deploy/gcp/cloudbuild.yaml \
    --substitutions "_IMAGE=$IMAGE,_REVISION=$TAG" .
fi

# 2. The service's own account: it may connect to Cloud SQL and read one secret.
SERVICE_ACCOUNT="$NAME-run@$PROJECT.iam.gserviceaccount.com"
if ! exists "${GCLOUD[@]}" iam service-accounts describe "$SERVICE_ACCOUNT"; then
  run "${GCLOUD[@]}" iam service-accounts create "$NAME-run" \
    --display-name "nexus-actors on Cloud Run"
fi

# 3. Cloud SQL for PostgreSQL 16. Cloud Run reaches it through the Cloud SQL connector's Unix
#    socket (/cloudsql/PROJECT:REGION:INSTANCE): encrypted and authorized by IAM, with no
#    authorized networks on the instance.
CONNECTION=""
if $CREATE_DB; then
  INSTANCE="$NAME-db"
  CONNECTION="$PROJECT:$REGION:$INSTANCE"
  if ! exists "${GCLOUD[@]}" sql instances describe "$INSTANCE"; then
    run "${GCLOUD[@]}" sql instances create "$INSTANCE" --region "$REGION" \
      --database-version POSTGRES_16 --edition enterprise --tier "$DB_TIER" \
      --storage-size 10 --storage-auto-increase --backup-start-time 03:00
  fi
  if ! exists "${GCLOUD[@]}" sql databases describe nexus --instance "$INSTANCE"; then
    run "${GCLOUD[@]}" sql databases create nexus --instance "$INSTANCE"
  fi
  USERS=$(capture db-users "${GCLOUD[@]}" sql users list --instance "$INSTANCE" \
    --filter name=nexus --format 'value(name)')
  if [ "$USERS" = nexus ]; then
    run "${GCLOUD[@]}" sql users set-password nexus --instance "$INSTANCE" \
      --password "$DB_PASSWORD"
  else
    run "${GCLOUD[@]}" sql users create nexus --instance "$INSTANCE" --password "$DB_PASSWORD"
  fi
  run "${GCLOUD[@]}" projects add-iam-policy-binding "$PROJECT" \
    --member "serviceAccount:$SERVICE_ACCOUNT" --role roles/cloudsql.client \
    --condition None --format none
  DATABASE_URL="postgresql://nexus:$(url_encode "$DB_PASSWORD")@/nexus?host=/cloudsql/$CONNECTION"
  secret "$DATABASE_URL"
fi

# 4. The database URL in Secret Manager (a new version on every run), readable by the
#    service account only.
SECRET_NAME="$NAME-database-url"
if ! exists "${GCLOUD[@]}" secrets describe "$SECRET_NAME"; then
  run "${GCLOUD[@]}" secrets create "$SECRET_NAME" --replication-policy automatic
fi
run_stdin "$DATABASE_URL" "DATABASE_URL" \
  "${GCLOUD[@]}" secrets versions add "$SECRET_NAME" --data-file=-
run "${GCLOUD[@]}" secrets add-iam-policy-binding "$SECRET_NAME" \
  --member "serviceAccount:$SERVICE_ACCOUNT" --role roles/secretmanager.secretAccessor \
  --format none

# 5. The service. WebSockets work on Cloud Run over HTTP/1.1 with no setting; --no-use-http2
#    keeps it so (end-to-end HTTP/2 would send h2c, which this server does not speak). A
#    WebSocket is one request: --timeout (at most 60 min) closes it, and the client resumes;
#    --concurrency counts sockets. One instance: rooms live in one process (until the
#    scale-out work). Cloud Run gives 10 s from SIGTERM to SIGKILL: the drain gets 8.
#    Every client reaches the server through Google's front end, so the per-address limits
#    see the front end's address, not the players': they are raised to whole-service limits.
ENV_VARS="NEXUS_LOG_FORMAT=json|NEXUS_DRAIN_TIMEOUT=8|NEXUS_DRAIN_SPREAD=2"
ENV_VARS+="|NEXUS_ADDRESS_CONNECT_RATE=200|NEXUS_ADDRESS_CONNECT_BURST=1000"
ENV_VARS+="|NEXUS_ADDRESS_FAILURE_RATE=20|NEXUS_ADDRESS_FAILURE_BURST=200"
[ -n "$CORS" ] && ENV_VARS+="|CORS_ORIGIN=$CORS"
DEPLOY=("${GCLOUD[@]}" run deploy "$NAME" --region "$REGION" --image "$IMAGE" --port 5000
  --service-account "$SERVICE_ACCOUNT"
  --set-secrets "DATABASE_URL=$SECRET_NAME:latest"
  --set-env-vars "^|^$ENV_VARS"
  --session-affinity --timeout 3600 --concurrency 1000
  --min-instances 1 --max-instances 1 --no-cpu-throttling --cpu 1 --memory 1Gi
  --execution-environment gen2 --no-use-http2
  --startup-probe "httpGet.path=/ready,httpGet.port=5000,periodSeconds=5,timeoutSeconds=3,failureThreshold=24"
  --liveness-probe "httpGet.path=/health,httpGet.port=5000,periodSeconds=15,timeoutSeconds=5,failureThreshold=3"
  --allow-unauthenticated)
if [ -n "$CONNECTION" ]; then
  DEPLOY+=(--set-cloudsql-instances "$CONNECTION")
fi
run "${DEPLOY[@]}"
URL=$(capture service-url "${GCLOUD[@]}" run services describe "$NAME" --region "$REGION" \
  --format 'value(status.url)')

note "rooms: ${URL/https:/wss:}/ws   health: $URL/ready"
note "logs: gcloud --project $PROJECT beta run services logs tail $NAME --region $REGION"
