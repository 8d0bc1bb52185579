#!/usr/bin/env bash
# Deploy nexus-actors to Azure Container Instances, with Azure Database for PostgreSQL
# (flexible server) and Azure Container Registry. docs/deploy.md explains each step.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=_common.sh
. "$REPO_ROOT/scripts/deploy/_common.sh"

usage() {
  cat <<'EOF'
Usage: scripts/deploy/azure-aci.sh [options] [up | logs [--follow] | down]

  up    (default) create or update: resource group, container registry and image, an
        identity that may pull from it, the PostgreSQL flexible server and its database
        (unless DATABASE_URL is set), and the container group (deploy/azure/aci.yaml)
  logs  print the server's log
  down  delete the container group (the database, registry and group stay)

Options:
  --registry NAME        Azure Container Registry, 5-50 letters and digits, unique in Azure
                         (required; env AZ_REGISTRY)
  --resource-group NAME  resource group (env AZ_RESOURCE_GROUP, default nexus-actors)
  --location REGION      Azure region (env AZ_LOCATION, default westeurope)
  --name NAME            container group name (default nexus-actors)
  --dns-label LABEL      public name LABEL.REGION.azurecontainer.io (default NAME-REGISTRY)
  --db-server NAME       PostgreSQL flexible server name, unique in Azure (default REGISTRY-pg)
  --db-tls MODE          require (default) or verify-full (checks the server certificate
                         against the image's CA bundle: sslmode=verify-full&sslrootcert=system)
  --tag TAG              image tag to build (default: the git commit)
  --image IMAGE          deploy this image from the registry instead of building one
  --tls-cert FILE        PEM certificate chain for DNS-LABEL.REGION.azurecontainer.io: the
  --tls-key FILE         server then serves wss:// and https:// itself (both or neither)
  --cors-origin ORIGINS  browser origins allowed, comma-separated (env CORS_ORIGIN)
  --follow               with logs: keep streaming
  --dry-run              print the commands (secrets as ***) and run nothing
  -h, --help             this help

Environment:
  NEXUS_DB_PASSWORD   administrator password of the PostgreSQL server to create (or of the
                      existing one); 8-128 characters from three of: upper, lower, digits,
                      symbols. Example: export NEXUS_DB_PASSWORD="$(openssl rand -base64 24)"
  DATABASE_URL        use this database instead (no PostgreSQL server is created)
  METRICS_AUTH_TOKEN  bearer token required by GET /metrics (a secure variable)

Requires the Azure CLI (az login first). Re-running `up` updates what exists.
EOF
}

RESOURCE_GROUP=${AZ_RESOURCE_GROUP:-nexus-actors}
LOCATION=${AZ_LOCATION:-westeurope}
REGISTRY=${AZ_REGISTRY:-}
NAME=nexus-actors
DNS_LABEL=""
DB_SERVER=""
DB_TLS=require
DB_ADMIN=nexusadmin
DB_NAME=nexus
TAG=""
IMAGE=""
TLS_CERT_FILE=""
TLS_KEY_FILE=""
CORS=${CORS_ORIGIN:-}
FOLLOW=false
ACTION=up

while [ $# -gt 0 ]; do
  case $1 in
    --registry) need_value "$@"; REGISTRY=$2; shift 2 ;;
    --resource-group) need_value "$@"; RESOURCE_GROUP=$2; shift 2 ;;
    --location) need_value "$@"; LOCATION=$2; shift 2 ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --dns-label) need_value "$@"; DNS_LABEL=$2; shift 2 ;;
    --db-server) need_value "$@"; DB_SERVER=$2; shift 2 ;;
    --db-tls) need_value "$@"; DB_TLS=$2; shift 2 ;;
    --tag) need_value "$@"; TAG=$2; shift 2 ;;
    --image) need_value "$@"; IMAGE=$2; shift 2 ;;
    --tls-cert) need_value "$@"; TLS_CERT_FILE=$2; shift 2 ;;
    --tls-key) need_value "$@"; TLS_KEY_FILE=$2; shift 2 ;;
    --cors-origin) need_value "$@"; CORS=$2; shift 2 ;;
    --follow) FOLLOW=true; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h | --help) usage; exit 0 ;;
    up | logs | down) ACTION=$1; shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

cd "$REPO_ROOT"
need_tool az "install the Azure CLI (https://learn.microsoft.com/cli/azure/install-azure-cli)"

case $ACTION in
  logs)
    if $FOLLOW; then
      run az container logs --resource-group "$RESOURCE_GROUP" --name "$NAME" --follow
    else
      run az container logs --resource-group "$RESOURCE_GROUP" --name "$NAME"
    fi
    exit 0
    ;;
  down)
    run az container delete --resource-group "$RESOURCE_GROUP" --name "$NAME" --yes --output none
    note "the container group is deleted; everything else: az group delete --name $RESOURCE_GROUP"
    exit 0
    ;;
esac

require --registry "$REGISTRY" "the Azure Container Registry name (see --help)"
[[ $REGISTRY =~ ^[A-Za-z0-9]{5,50}$ ]] || die "--registry must be 5-50 letters and digits"
case $DB_TLS in
  require) SSL_PARAMS="sslmode=require" ;;
  verify-full) SSL_PARAMS="sslmode=verify-full&sslrootcert=system" ;;
  *) die "--db-tls must be require or verify-full" ;;
esac
if [ -n "$TLS_CERT_FILE$TLS_KEY_FILE" ]; then
  [ -n "$TLS_CERT_FILE" ] && [ -n "$TLS_KEY_FILE" ] || die "--tls-cert and --tls-key go together"
  [ -r "$TLS_CERT_FILE" ] && [ -r "$TLS_KEY_FILE" ] || die "cannot read the TLS files"
fi

REGISTRY_LOWER=$(lowercase "$REGISTRY")
REGISTRY_SERVER="$REGISTRY_LOWER.azurecr.io"
DB_SERVER=${DB_SERVER:-$REGISTRY_LOWER-pg}
DNS_LABEL=${DNS_LABEL:-$NAME-$REGISTRY_LOWER}
TAG=${TAG:-$(default_tag)}
BUILD=true
if [ -n "$IMAGE" ]; then
  BUILD=false
else
  IMAGE="$REGISTRY_SERVER/nexus-actors:$TAG"
fi

database_choice
if $CREATE_DB; then
  DB_URL="postgresql://$DB_ADMIN:$(url_encode "$DB_PASSWORD")@$DB_SERVER.postgres.database.azure.com:5432/$DB_NAME?$SSL_PARAMS"
else
  DB_URL=$DATABASE_URL
fi
secret "$DB_URL" "${METRICS_AUTH_TOKEN:-}"

make_work_dir

# 1. Resource group and registry; the image is built in the registry (no local engine).
run az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none
run az acr create --resource-group "$RESOURCE_GROUP" --name "$REGISTRY" --location "$LOCATION" \
  --sku Basic --admin-enabled false --output none
if $BUILD; then
  run az acr build --registry "$REGISTRY" --image "nexus-actors:$TAG" --file Containerfile \
    --build-arg "REVISION=$TAG" .
fi

# 2. An identity that may pull from the registry (no registry password in the deployment).
run az identity create --resource-group "$RESOURCE_GROUP" --name "$NAME-pull" \
  --location "$LOCATION" --output none
IDENTITY_ID=$(capture identity-id az identity show --resource-group "$RESOURCE_GROUP" \
  --name "$NAME-pull" --query id --output tsv)
PRINCIPAL_ID=$(capture identity-principal-id az identity show --resource-group "$RESOURCE_GROUP" \
  --name "$NAME-pull" --query principalId --output tsv)
REGISTRY_ID=$(capture registry-id az acr show --resource-group "$RESOURCE_GROUP" \
  --name "$REGISTRY" --query id --output tsv)
run az role assignment create --assignee-object-id "$PRINCIPAL_ID" \
  --assignee-principal-type ServicePrincipal --role AcrPull --scope "$REGISTRY_ID" --output none

# 3. PostgreSQL 16, reachable from Azure services only (firewall rule 0.0.0.0), TLS required
#    by the server (require_secure_transport is on by default).
if $CREATE_DB; then
  if exists az postgres flexible-server show --resource-group "$RESOURCE_GROUP" \
    --name "$DB_SERVER" --output none; then
    note "PostgreSQL server $DB_SERVER exists: keeping it (NEXUS_DB_PASSWORD must be its password)"
  else
    run az postgres flexible-server create --resource-group "$RESOURCE_GROUP" \
      --name "$DB_SERVER" --location "$LOCATION" --version 16 --tier Burstable \
      --sku-name Standard_B1ms --storage-size 32 --admin-user "$DB_ADMIN" \
      --admin-password "$DB_PASSWORD" --public-access 0.0.0.0 --yes --output none
  fi
  run az postgres flexible-server db create --resource-group "$RESOURCE_GROUP" \
    --server-name "$DB_SERVER" --name "$DB_NAME" --output none
fi

# 4. The container group, from deploy/azure/aci.yaml: DATABASE_URL (and METRICS_AUTH_TOKEN) as
#    secure values, probes on /health and /ready, port 5000 under the DNS label.
TLS_DIR="" TLS_CERT="" TLS_KEY="" PROBE_SCHEME=http SCHEME=ws
if [ -n "$TLS_CERT_FILE" ]; then
  TLS_DIR=/mnt/tls PROBE_SCHEME=https SCHEME=wss
  TLS_CERT=$(base64_file "$TLS_CERT_FILE")
  TLS_KEY=$(base64_file "$TLS_KEY_FILE")
  secret "$TLS_KEY"
fi
render deploy/azure/aci.yaml "$WORK_DIR/aci.yaml" yaml \
  "NAME=$NAME" "LOCATION=$LOCATION" "IDENTITY_ID=$IDENTITY_ID" \
  "REGISTRY_SERVER=$REGISTRY_SERVER" "DNS_LABEL=$DNS_LABEL" "IMAGE=$IMAGE" \
  "DATABASE_URL=$DB_URL" "METRICS_AUTH_TOKEN=${METRICS_AUTH_TOKEN:-}" "CORS_ORIGIN=$CORS" \
  "TLS_DIR=$TLS_DIR" "TLS_CERT=$TLS_CERT" "TLS_KEY=$TLS_KEY" "PROBE_SCHEME=$PROBE_SCHEME"
show_file "$WORK_DIR/aci.yaml"
# A new role assignment can take a minute to reach the registry: retry the first pull.
run_retry 4 "${NEXUS_DEPLOY_RETRY_DELAY:-30}" az container create \
  --resource-group "$RESOURCE_GROUP" --file "$WORK_DIR/aci.yaml" --output none
FQDN=$(capture fqdn az container show --resource-group "$RESOURCE_GROUP" --name "$NAME" \
  --query ipAddress.fqdn --output tsv)

note "rooms: $SCHEME://$FQDN:5000/ws   health: ${SCHEME/ws/http}://$FQDN:5000/ready"
note "logs: az container logs --resource-group $RESOURCE_GROUP --name $NAME --follow"
