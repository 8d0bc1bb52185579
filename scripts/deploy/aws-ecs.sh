#!/usr/bin/env bash
# Deploy nexus-actors to AWS: ECR image, RDS for PostgreSQL, the database URL in Secrets
# Manager, an ECS service on Fargate behind a Network Load Balancer. docs/deploy.md explains
# each step.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=_common.sh
. "$REPO_ROOT/scripts/deploy/_common.sh"

usage() {
  cat <<'EOF'
Usage: scripts/deploy/aws-ecs.sh [options] [up | logs]

  up    (default) create or update: ECR repository and image, security groups, RDS
        PostgreSQL 16 (unless DATABASE_URL is set), the secret NAME/database-url, the task
        execution role, log group, ECS cluster, task definition
        (deploy/aws/task-definition.json), Network Load Balancer and ECS service
  logs  follow the server's log (aws logs tail)

Options:
  --region REGION          AWS region (env AWS_REGION or AWS_DEFAULT_REGION; required)
  --name NAME              name of the cluster, service, repository, load balancer, ...
                           (default nexus-actors; at most 28 characters)
  --vpc-id VPC             VPC to use (default: the region's default VPC)
  --subnets A,B,...        its subnets, in two zones or more (default: the default VPC's)
  --certificate-arn ARN    an ACM certificate: the load balancer then listens with TLS on
                           443 (wss://) instead of TCP on 80 (ws://)
  --db-instance-class C    RDS instance class (default db.t4g.micro)
  --tag TAG                image tag to build (default: the git commit)
  --image IMAGE            deploy this image instead of building and pushing one
  --engine ENGINE          container engine that builds and pushes (env CONTAINER_ENGINE,
                           default docker; podman works too)
  --cors-origin ORIGINS    browser origins allowed, comma-separated (env CORS_ORIGIN)
  --dry-run                print the commands (secrets as ***) and run nothing
  -h, --help               this help

Environment:
  NEXUS_DB_PASSWORD  master password of the RDS instance to create (or of the existing
                     one): 8-128 printable characters except / " @ and space
  DATABASE_URL       use this database instead (no RDS instance is created)

Requires the AWS CLI v2 with credentials, and a container engine unless --image is given.
Re-running `up` updates what exists and rolls the service to the new task definition.
EOF
}

REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
NAME=nexus-actors
VPC=""
SUBNETS=""
CERTIFICATE_ARN=""
DB_CLASS=db.t4g.micro
TAG=""
IMAGE=""
ENGINE=${CONTAINER_ENGINE:-docker}
CORS=${CORS_ORIGIN:-}
ACTION=up

while [ $# -gt 0 ]; do
  case $1 in
    --region) need_value "$@"; REGION=$2; shift 2 ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --vpc-id) need_value "$@"; VPC=$2; shift 2 ;;
    --subnets) need_value "$@"; SUBNETS=$2; shift 2 ;;
    --certificate-arn) need_value "$@"; CERTIFICATE_ARN=$2; shift 2 ;;
    --db-instance-class) need_value "$@"; DB_CLASS=$2; shift 2 ;;
    --tag) need_value "$@"; TAG=$2; shift 2 ;;
    --image) need_value "$@"; IMAGE=$2; shift 2 ;;
    --engine) need_value "$@"; ENGINE=$2; shift 2 ;;
    --cors-origin) need_value "$@"; CORS=$2; shift 2 ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h | --help) usage; exit 0 ;;
    up | logs) ACTION=$1; shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

cd "$REPO_ROOT"
export AWS_PAGER=""
require --region "$REGION" "the AWS region (see --help)"
[[ $NAME =~ ^[a-z][a-z0-9-]{0,27}$ ]] || die "--name: lower-case letters, digits and -, at most 28"
need_tool aws "install the AWS CLI v2 (https://docs.aws.amazon.com/cli/)"
# Global services (IAM, STS) take the region from here; the others get --region.
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"
LOG_GROUP=/ecs/$NAME

if [ "$ACTION" = logs ]; then
  run aws logs tail "$LOG_GROUP" --region "$REGION" --follow
  exit 0
fi

TAG=${TAG:-$(default_tag)}
BUILD=true
[ -n "$IMAGE" ] && BUILD=false
$BUILD && need_tool "$ENGINE" "install docker or podman, or pass --image"

database_choice

make_work_dir

# 1. The image, in ECR.
ACCOUNT=$(capture account-id aws sts get-caller-identity --query Account --output text)
REGISTRY="$ACCOUNT.dkr.ecr.$REGION.amazonaws.com"
if $BUILD; then
  IMAGE="$REGISTRY/$NAME:$TAG"
  if ! exists aws ecr describe-repositories --region "$REGION" --repository-names "$NAME"; then
    run aws ecr create-repository --region "$REGION" --repository-name "$NAME" \
      --image-scanning-configuration scanOnPush=true --query repository.repositoryUri \
      --output text
  fi
  ECR_PASSWORD=$(capture ecr-password aws ecr get-login-password --region "$REGION")
  secret "$ECR_PASSWORD"
  run_stdin "$ECR_PASSWORD" "the ECR password" \
    "$ENGINE" login --username AWS --password-stdin "$REGISTRY"
  # Fargate runs x86_64 here (runtimePlatform in the task definition).
  run "$ENGINE" build --platform linux/amd64 --file Containerfile \
    --build-arg "REVISION=$TAG" --tag "$IMAGE" .
  run "$ENGINE" push "$IMAGE"
fi

# 2. Network: the VPC and subnets, and three security groups: the load balancer's (open to
#    the clients), the service's (port 5000 from the load balancer only), the database's
#    (5432 from the service only).
if [ -z "$VPC" ]; then
  VPC=$(capture vpc-id aws ec2 describe-vpcs --region "$REGION" \
    --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)
  [ "$VPC" != None ] || die "no default VPC in $REGION: pass --vpc-id and --subnets"
fi
if [ -z "$SUBNETS" ]; then
  SUBNETS=$(capture subnet-ids aws ec2 describe-subnets --region "$REGION" \
    --filters "Name=vpc-id,Values=$VPC" Name=default-for-az,Values=true \
    --query 'Subnets[].SubnetId' --output text)
fi
read -r -a SUBNET_LIST <<<"${SUBNETS//,/ }"
[ "${#SUBNET_LIST[@]}" -gt 0 ] || die "no subnets: pass --subnets"
SUBNET_CSV=$(IFS=,; printf '%s' "${SUBNET_LIST[*]}")

# ensure_security_group VARIABLE NAME DESCRIPTION: its id in VARIABLE, and CREATED=true when
# it is new (so its ingress rule is added once).
CREATED=false
LB_SG="" SERVICE_SG="" DB_SG=""
ensure_security_group() {
  local id
  id=$(capture "$2-id" aws ec2 describe-security-groups --region "$REGION" \
    --filters "Name=vpc-id,Values=$VPC" "Name=group-name,Values=$2" \
    --query 'SecurityGroups[0].GroupId' --output text)
  CREATED=false
  if $DRY_RUN || [ "$id" = None ] || [ -z "$id" ]; then
    id=$(capture "$2-id" aws ec2 create-security-group --region "$REGION" --vpc-id "$VPC" \
      --group-name "$2" --description "$3" --query GroupId --output text)
    CREATED=true
  fi
  printf -v "$1" '%s' "$id"
}

LISTEN_PORT=80
if [ -n "$CERTIFICATE_ARN" ]; then
  LISTEN_PORT=443
fi
ensure_security_group LB_SG "$NAME-lb" "nexus-actors load balancer"
if $CREATED; then
  run aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$LB_SG" \
    --protocol tcp --port "$LISTEN_PORT" --cidr 0.0.0.0/0 --query Return --output text
fi
ensure_security_group SERVICE_SG "$NAME-service" "nexus-actors server tasks"
if $CREATED; then
  run aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SERVICE_SG" \
    --protocol tcp --port 5000 --source-group "$LB_SG" --query Return --output text
fi

# 3. PostgreSQL 16 on RDS: encrypted, private (no public address), TLS enforced by default
#    (rds.force_ssl); the URL says sslmode=require.
if $CREATE_DB; then
  ensure_security_group DB_SG "$NAME-db" "nexus-actors database"
  if $CREATED; then
    run aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$DB_SG" \
      --protocol tcp --port 5432 --source-group "$SERVICE_SG" --query Return --output text
  fi
  if ! exists aws rds describe-db-subnet-groups --region "$REGION" \
    --db-subnet-group-name "$NAME"; then
    run aws rds create-db-subnet-group --region "$REGION" --db-subnet-group-name "$NAME" \
      --db-subnet-group-description "nexus-actors database" --subnet-ids "${SUBNET_LIST[@]}" \
      --query DBSubnetGroup.DBSubnetGroupName --output text
  fi
  if ! exists aws rds describe-db-instances --region "$REGION" \
    --db-instance-identifier "$NAME-db"; then
    run aws rds create-db-instance --region "$REGION" --db-instance-identifier "$NAME-db" \
      --engine postgres --engine-version 16 --db-instance-class "$DB_CLASS" \
      --allocated-storage 20 --storage-type gp3 --storage-encrypted \
      --master-username nexus --master-user-password "$DB_PASSWORD" --db-name nexus \
      --db-subnet-group-name "$NAME" --vpc-security-group-ids "$DB_SG" \
      --no-publicly-accessible --backup-retention-period 7 --copy-tags-to-snapshot \
      --query DBInstance.DBInstanceStatus --output text
  fi
  run aws rds wait db-instance-available --region "$REGION" --db-instance-identifier "$NAME-db"
  DB_HOST=$(capture db-host aws rds describe-db-instances --region "$REGION" \
    --db-instance-identifier "$NAME-db" --query 'DBInstances[0].Endpoint.Address' --output text)
  DATABASE_URL="postgresql://nexus:$(url_encode "$DB_PASSWORD")@$DB_HOST:5432/nexus?sslmode=require"
  secret "$DATABASE_URL"
fi

# 4. The database URL in Secrets Manager: the task gets it as DATABASE_URL at start.
SECRET_NAME="$NAME/database-url"
(umask 077 && printf '%s' "$DATABASE_URL" >"$WORK_DIR/database-url")
if exists aws secretsmanager describe-secret --region "$REGION" --secret-id "$SECRET_NAME"; then
  run aws secretsmanager put-secret-value --region "$REGION" --secret-id "$SECRET_NAME" \
    --secret-string "file://$WORK_DIR/database-url" --query VersionId --output text
else
  run aws secretsmanager create-secret --region "$REGION" --name "$SECRET_NAME" \
    --description "nexus-actors DATABASE_URL" \
    --secret-string "file://$WORK_DIR/database-url" --query ARN --output text
fi
SECRET_ARN=$(capture secret-arn aws secretsmanager describe-secret --region "$REGION" \
  --secret-id "$SECRET_NAME" --query ARN --output text)

# 5. The task execution role: pull from ECR, write logs, read that one secret.
ROLE="$NAME-execution"
if ! exists aws iam get-role --role-name "$ROLE"; then
  run aws iam create-role --role-name "$ROLE" \
    --assume-role-policy-document file://deploy/aws/execution-role-trust.json \
    --query Role.Arn --output text
fi
run aws iam attach-role-policy --role-name "$ROLE" \
  --policy-arn arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy
render deploy/aws/execution-role-secret.json "$WORK_DIR/execution-role-secret.json" json \
  "SECRET_ARN=$SECRET_ARN"
run aws iam put-role-policy --role-name "$ROLE" --policy-name read-database-url \
  --policy-document "file://$WORK_DIR/execution-role-secret.json"
ROLE_ARN=$(capture execution-role-arn aws iam get-role --role-name "$ROLE" \
  --query Role.Arn --output text)

# 6. Logs, cluster, task definition.
LOG_GROUPS=$(capture log-group-count aws logs describe-log-groups --region "$REGION" \
  --log-group-name-prefix "$LOG_GROUP" \
  --query "length(logGroups[?logGroupName=='$LOG_GROUP'])" --output text)
if [ "$LOG_GROUPS" != 1 ]; then
  run aws logs create-log-group --region "$REGION" --log-group-name "$LOG_GROUP"
fi
run aws logs put-retention-policy --region "$REGION" --log-group-name "$LOG_GROUP" \
  --retention-in-days 30
run aws ecs create-cluster --region "$REGION" --cluster-name "$NAME" \
  --query cluster.clusterArn --output text
render deploy/aws/task-definition.json "$WORK_DIR/task-definition.json" json \
  "NAME=$NAME" "IMAGE=$IMAGE" "EXECUTION_ROLE_ARN=$ROLE_ARN" "CORS_ORIGIN=$CORS" \
  "DATABASE_URL_SECRET_ARN=$SECRET_ARN" "LOG_GROUP=$LOG_GROUP" "REGION=$REGION"
show_file "$WORK_DIR/task-definition.json"
TASK_DEFINITION=$(capture task-definition-arn aws ecs register-task-definition \
  --region "$REGION" --cli-input-json "file://$WORK_DIR/task-definition.json" \
  --query taskDefinition.taskDefinitionArn --output text)

# 7. The Network Load Balancer: TCP (or TLS) to port 5000, health check GET /ready, the
#    clients' addresses kept (the per-address limits count them), and 15 s for a stopping
#    task to leave before ECS sends it SIGTERM.
LB_ARN=$(capture load-balancer-arn aws elbv2 create-load-balancer --region "$REGION" \
  --name "$NAME" --type network --scheme internet-facing --subnets "${SUBNET_LIST[@]}" \
  --security-groups "$LB_SG" --query 'LoadBalancers[0].LoadBalancerArn' --output text)
TG_ARN=$(capture target-group-arn aws elbv2 create-target-group --region "$REGION" \
  --name "$NAME" --protocol TCP --port 5000 --vpc-id "$VPC" --target-type ip \
  --health-check-protocol HTTP --health-check-path /ready --health-check-port traffic-port \
  --health-check-interval-seconds 10 --healthy-threshold-count 2 \
  --unhealthy-threshold-count 2 --query 'TargetGroups[0].TargetGroupArn' --output text)
run aws elbv2 modify-target-group-attributes --region "$REGION" --target-group-arn "$TG_ARN" \
  --attributes Key=deregistration_delay.timeout_seconds,Value=15 \
  Key=preserve_client_ip.enabled,Value=true --query 'Attributes[0].Key' --output text
if [ -n "$CERTIFICATE_ARN" ]; then
  run aws elbv2 create-listener --region "$REGION" --load-balancer-arn "$LB_ARN" \
    --protocol TLS --port 443 --certificates "CertificateArn=$CERTIFICATE_ARN" \
    --ssl-policy ELBSecurityPolicy-TLS13-1-2-2021-06 \
    --default-actions "Type=forward,TargetGroupArn=$TG_ARN" \
    --query 'Listeners[0].ListenerArn' --output text
  SCHEME=wss
else
  run aws elbv2 create-listener --region "$REGION" --load-balancer-arn "$LB_ARN" \
    --protocol TCP --port 80 --default-actions "Type=forward,TargetGroupArn=$TG_ARN" \
    --query 'Listeners[0].ListenerArn' --output text
  SCHEME=ws
fi

# 8. The service: one task (rooms live in one process until the scale-out work), and a
#    deployment that stops the old task (it drains) before it starts the new one.
DEPLOYMENT="maximumPercent=100,minimumHealthyPercent=0,deploymentCircuitBreaker={enable=true,rollback=true}"
SERVICES=$(capture service-count aws ecs describe-services --region "$REGION" \
  --cluster "$NAME" --services "$NAME" \
  --query "length(services[?status=='ACTIVE'])" --output text)
if [ "$SERVICES" = 1 ]; then
  run aws ecs update-service --region "$REGION" --cluster "$NAME" --service "$NAME" \
    --task-definition "$TASK_DEFINITION" --deployment-configuration "$DEPLOYMENT" \
    --query service.serviceArn --output text
else
  run aws ecs create-service --region "$REGION" --cluster "$NAME" --service-name "$NAME" \
    --task-definition "$TASK_DEFINITION" --desired-count 1 --launch-type FARGATE \
    --network-configuration \
    "awsvpcConfiguration={subnets=[$SUBNET_CSV],securityGroups=[$SERVICE_SG],assignPublicIp=ENABLED}" \
    --load-balancers "targetGroupArn=$TG_ARN,containerName=server,containerPort=5000" \
    --health-check-grace-period-seconds 90 --deployment-configuration "$DEPLOYMENT" \
    --query service.serviceArn --output text
fi
run aws ecs wait services-stable --region "$REGION" --cluster "$NAME" --services "$NAME"
DNS=$(capture load-balancer-dns aws elbv2 describe-load-balancers --region "$REGION" \
  --load-balancer-arns "$LB_ARN" --query 'LoadBalancers[0].DNSName' --output text)

note "rooms: $SCHEME://$DNS/ws (point your DNS name at it for TLS)"
note "logs: aws logs tail $LOG_GROUP --region $REGION --follow"
