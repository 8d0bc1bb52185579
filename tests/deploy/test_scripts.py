"""The deploy scripts, run with fake cloud CLIs on PATH (tests/deploy/deploy_support.py).

Each script is run twice: with --dry-run, where it must print its commands and call
nothing, and for real against the fakes, which record every call. The recorded calls must
be exactly the printed ones (the fakes' answers standing in for the dry run's <placeholders>),
and the tests check what matters in them: images, ports, environment, secrets that stay out
of command lines and printed output, probes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from deploy_support import (
    ROOT,
    Call,
    FakeClis,
    Rule,
    find_call,
    load_yaml,
    load_yaml_all,
    normalized,
    printed_commands,
)

DB_PASSWORD = "Pa55:w/rd@Nexus!"  # characters a URL must escape
DB_PASSWORD_IN_URL = "Pa55%3Aw%2Frd%40Nexus%21"
METRICS_TOKEN = "metrics-token-5cd8a1"
CORS = "https://table.example.com,https://beta.example.com"


def assert_no_secret(text: str, *secrets: str) -> None:
    for value in secrets:
        assert value not in text, f"a secret was printed: {value!r}"


def same_commands(dry_run_stdout: str, calls: Sequence[Call], answers: dict[str, str],
                  secrets: Sequence[str] = ()) -> None:
    """The calls are the dry run's commands, its placeholders standing for the fakes'
    answers and its *** for the secrets."""
    printed = normalized(printed_commands(dry_run_stdout), answers)
    ran = normalized([call.argv for call in calls])
    for words in ran:
        for n, word in enumerate(words):
            for value in sorted(secrets, key=len, reverse=True):
                word = word.replace(value, "***")
            words[n] = word
    assert ran == printed


@pytest.fixture
def fake(tmp_path: Path) -> FakeClis:
    return FakeClis(tmp_path)


@pytest.mark.parametrize("script", ["azure-aci.sh", "aws-ecs.sh", "gcp-cloudrun.sh",
                                    "kubernetes.sh"])
def test_usage_and_bad_arguments(fake: FakeClis, script: str) -> None:
    shown = fake.run(script, "--help")
    assert shown.returncode == 0
    assert shown.stdout.startswith(f"Usage: scripts/deploy/{script}")
    assert "--dry-run" in shown.stdout
    wrong = fake.run(script, "--no-such-option", "--dry-run")
    assert wrong.returncode == 2
    assert "Usage:" in wrong.stderr
    assert "unknown argument: --no-such-option" in wrong.stderr
    missing = fake.run(script, "--name", env={})
    assert missing.returncode == 2
    assert "--name needs a value" in missing.stderr or "unknown argument" in missing.stderr
    assert fake.calls() == []


def test_scripts_stop_before_calling_a_cli_when_a_required_input_is_missing(
        fake: FakeClis) -> None:
    cases: list[tuple[str, list[str], dict[str, str], str]] = [
        ("azure-aci.sh", [], {}, "--registry is required"),
        ("azure-aci.sh", ["--registry", "NexusReg01"], {}, "set NEXUS_DB_PASSWORD"),
        ("azure-aci.sh", ["--registry", "bad-name"], {}, "5-50 letters and digits"),
        ("aws-ecs.sh", [], {}, "--region is required"),
        ("aws-ecs.sh", ["--region", "eu-west-1"], {}, "set NEXUS_DB_PASSWORD"),
        ("gcp-cloudrun.sh", [], {}, "--project is required"),
        ("kubernetes.sh", [], {}, "--image is required"),
        ("kubernetes.sh", ["--image", "x/nexus-actors:1"], {}, "set DATABASE_URL"),
    ]
    for script, args, env, message in cases:
        done = fake.run(script, *args, env=env)
        assert done.returncode == 2, (script, args)
        assert message in done.stderr, (script, done.stderr)
    assert fake.calls() == []


# --- Azure Container Instances -------------------------------------------------------------

AZURE_ANSWERS = {
    "identity-id": "/subscriptions/sub-1/resourceGroups/nexus-actors/providers/"
                   "Microsoft.ManagedIdentity/userAssignedIdentities/nexus-actors-pull",
    "identity-principal-id": "11111111-2222-3333-4444-555555555555",
    "registry-id": "/subscriptions/sub-1/resourceGroups/nexus-actors/providers/"
                   "Microsoft.ContainerRegistry/registries/NexusReg01",
    "fqdn": "nexus-actors-nexusreg01.westeurope.azurecontainer.io",
}

AZURE_RULES = [
    Rule("az", ("identity", "show", "id"), AZURE_ANSWERS["identity-id"] + "\n"),
    Rule("az", ("identity", "show", "principalId"), AZURE_ANSWERS["identity-principal-id"]),
    Rule("az", ("acr", "show", "id"), AZURE_ANSWERS["registry-id"] + "\n"),
    Rule("az", ("postgres", "flexible-server", "show"), exit=3),
    Rule("az", ("container", "show"), AZURE_ANSWERS["fqdn"] + "\n"),
]

AZURE_ARGS = ("--registry", "NexusReg01", "--tag", "1f2e3d4c5b6a", "--cors-origin", CORS)
AZURE_ENV = {"NEXUS_DB_PASSWORD": DB_PASSWORD, "METRICS_AUTH_TOKEN": METRICS_TOKEN}
AZURE_URL = (f"postgresql://nexusadmin:{DB_PASSWORD_IN_URL}@nexusreg01-pg.postgres.database"
             ".azure.com:5432/nexus?sslmode=require")


def test_azure_dry_run_prints_every_command_and_calls_nothing(fake: FakeClis) -> None:
    done = fake.run("azure-aci.sh", *AZURE_ARGS, "--dry-run", env=AZURE_ENV)
    assert done.returncode == 0, done.stderr
    assert fake.calls() == []
    assert_no_secret(done.stdout + done.stderr, DB_PASSWORD, DB_PASSWORD_IN_URL, METRICS_TOKEN)
    commands = printed_commands(done.stdout)
    assert commands[0] == ["az", "group", "create", "--name", "nexus-actors",
                           "--location", "westeurope", "--output", "none"]
    assert ["az", "acr", "build", "--registry", "NexusReg01", "--image",
            "nexus-actors:1f2e3d4c5b6a", "--file", "Containerfile", "--build-arg",
            "REVISION=1f2e3d4c5b6a", "."] in commands
    assert ["az", "postgres", "flexible-server", "create", "--resource-group", "nexus-actors",
            "--name", "nexusreg01-pg", "--location", "westeurope", "--version", "16",
            "--tier", "Burstable", "--sku-name", "Standard_B1ms", "--storage-size", "32",
            "--admin-user", "nexusadmin", "--admin-password", "***", "--public-access",
            "0.0.0.0", "--yes", "--output", "none"] in commands
    create = [c for c in commands if c[:3] == ["az", "container", "create"]]
    assert len(create) == 1
    assert create[0][3:5] == ["--resource-group", "nexus-actors"]
    assert create[0][5] == "--file"
    assert create[0][6].endswith("/aci.yaml")
    # The generated deployment file is shown, secrets masked.
    assert "image: 'nexusreg01.azurecr.io/nexus-actors:1f2e3d4c5b6a'" in done.stdout
    assert "secureValue: 'postgresql://nexusadmin:***@nexusreg01-pg" in done.stdout
    assert "az container logs --resource-group nexus-actors --name nexus-actors" in done.stdout


def test_azure_deploys_with_secure_database_url_probes_and_registry_identity(
        fake: FakeClis) -> None:
    fake.set_rules(AZURE_RULES)
    dry = fake.run("azure-aci.sh", *AZURE_ARGS, "--dry-run", env=AZURE_ENV)
    done = fake.run("azure-aci.sh", *AZURE_ARGS, env=AZURE_ENV)
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    same_commands(dry.stdout, calls, AZURE_ANSWERS, [DB_PASSWORD])
    assert_no_secret(done.stdout + done.stderr, DB_PASSWORD, DB_PASSWORD_IN_URL, METRICS_TOKEN)

    # The password reaches the CLI, never the printed lines.
    server = find_call(calls, "flexible-server", "create", "--admin-password")
    assert server.args[server.args.index("--admin-password") + 1] == DB_PASSWORD
    role = find_call(calls, "role", "assignment", "create")
    assert role.args[role.args.index("--assignee-object-id") + 1] == \
        AZURE_ANSWERS["identity-principal-id"]
    assert role.args[role.args.index("--scope") + 1] == AZURE_ANSWERS["registry-id"]

    create = find_call(calls, "container", "create")
    (text,) = create.files.values()
    group = load_yaml(text)
    assert group["name"] == "nexus-actors"
    assert group["location"] == "westeurope"
    assert group["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {
        AZURE_ANSWERS["identity-id"]: {}}}
    assert group["properties"]["imageRegistryCredentials"] == [
        {"server": "nexusreg01.azurecr.io", "identity": AZURE_ANSWERS["identity-id"]}]
    assert group["properties"]["ipAddress"] == {
        "type": "Public", "dnsNameLabel": "nexus-actors-nexusreg01",
        "ports": [{"protocol": "TCP", "port": 5000}]}
    assert "volumes" not in group["properties"]
    (container,) = group["properties"]["containers"]
    spec = container["properties"]
    assert spec["image"] == "nexusreg01.azurecr.io/nexus-actors:1f2e3d4c5b6a"
    env = {e["name"]: e for e in spec["environmentVariables"]}
    assert env["DATABASE_URL"] == {"name": "DATABASE_URL", "secureValue": AZURE_URL}
    assert env["METRICS_AUTH_TOKEN"] == {"name": "METRICS_AUTH_TOKEN",
                                         "secureValue": METRICS_TOKEN}
    assert env["CORS_ORIGIN"] == {"name": "CORS_ORIGIN", "value": CORS}
    assert "NEXUS_TLS_CERT" not in env
    assert spec["livenessProbe"]["httpGet"] == {"path": "/health", "port": 5000,
                                                "scheme": "http"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 5000,
                                                 "scheme": "http"}
    assert f"ws://{AZURE_ANSWERS['fqdn']}:5000/ws" in done.stderr


def test_azure_keeps_an_existing_database_and_retries_the_first_pull(
        fake: FakeClis, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nsecretkey\n-----END PRIVATE KEY-----\n")
    fake.set_rules([
        Rule("az", ("postgres", "flexible-server", "show"), exit=0),
        Rule("az", ("container", "create"), exit=1, times=1),
        *AZURE_RULES,
    ])
    done = fake.run("azure-aci.sh", "--registry", "NexusReg01", "--tag", "t1",
                    "--tls-cert", str(cert), "--tls-key", str(key), env=AZURE_ENV)
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    assert not [c for c in calls if c.args[:3] == ["postgres", "flexible-server", "create"]]
    assert "exists: keeping it" in done.stderr
    creates = [c for c in calls if c.args[:2] == ["container", "create"]]
    assert len(creates) == 2
    assert "attempt 1 of 4 failed" in done.stderr
    assert_no_secret(done.stderr, "c2VjcmV0a2V5")  # the key, base64-encoded
    group = load_yaml(next(iter(creates[1].files.values())))
    (volume,) = group["properties"]["volumes"]
    assert volume["name"] == "tls"
    assert set(volume["secret"]) == {"tls.crt", "tls.key"}
    spec = group["properties"]["containers"][0]["properties"]
    assert spec["volumeMounts"] == [{"name": "tls", "mountPath": "/mnt/tls", "readOnly": True}]
    env = {e["name"]: e.get("value") for e in spec["environmentVariables"]}
    assert env["NEXUS_TLS_CERT"] == "/mnt/tls/tls.crt"
    assert env["NEXUS_TLS_KEY"] == "/mnt/tls/tls.key"
    assert "CORS_ORIGIN" not in env
    assert "METRICS_AUTH_TOKEN" in env
    assert spec["readinessProbe"]["httpGet"]["scheme"] == "https"
    assert "wss://" in done.stderr


def test_azure_uses_a_given_database_url_and_creates_no_server(fake: FakeClis) -> None:
    url = "postgresql://app:pw-from-vault@db.example.net/nexus?sslmode=verify-full"
    fake.set_rules(AZURE_RULES)
    done = fake.run("azure-aci.sh", "--registry", "NexusReg01", "--tag", "t1",
                    "--image", "nexusreg01.azurecr.io/nexus-actors:v7",
                    env={"DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    assert not [c for c in calls if "postgres" in c.args]
    assert not [c for c in calls if c.args[:2] == ["acr", "build"]]
    group = load_yaml(next(iter(find_call(calls, "container", "create").files.values())))
    spec = group["properties"]["containers"][0]["properties"]
    assert spec["image"] == "nexusreg01.azurecr.io/nexus-actors:v7"
    env = {e["name"]: e for e in spec["environmentVariables"]}
    assert env["DATABASE_URL"]["secureValue"] == url
    assert "METRICS_AUTH_TOKEN" not in env
    assert_no_secret(done.stderr, "pw-from-vault")


def test_azure_logs_and_down(fake: FakeClis) -> None:
    assert fake.run("azure-aci.sh", "logs", "--follow").returncode == 0
    assert fake.run("azure-aci.sh", "down", "--resource-group", "rg1").returncode == 0
    assert [c.argv for c in fake.calls()] == [
        ["az", "container", "logs", "--resource-group", "nexus-actors", "--name",
         "nexus-actors", "--follow"],
        ["az", "container", "delete", "--resource-group", "rg1", "--name", "nexus-actors",
         "--yes", "--output", "none"],
    ]


# --- AWS ECS on Fargate ----------------------------------------------------------------------

AWS_ANSWERS = {
    "account-id": "123456789012",
    "ecr-password": "ecr-login-token-7f3a",
    "vpc-id": "vpc-0abc",
    "subnet-ids": "subnet-0a",
    "nexus-actors-lb-id": "sg-0lb",
    "nexus-actors-service-id": "sg-0svc",
    "nexus-actors-db-id": "sg-0db",
    "db-host": "nexus-actors-db.c1x2.eu-west-1.rds.amazonaws.com",
    "secret-arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:"
                  "nexus-actors/database-url-AbCdEf",
    "execution-role-arn": "arn:aws:iam::123456789012:role/nexus-actors-execution",
    "log-group-count": "0",
    "task-definition-arn": "arn:aws:ecs:eu-west-1:123456789012:task-definition/nexus-actors:3",
    "load-balancer-arn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                         "loadbalancer/net/nexus-actors/50dc6c495c0c9188",
    "target-group-arn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                        "targetgroup/nexus-actors/73e2d6bc24d8a067",
    "service-count": "0",
    "load-balancer-dns": "nexus-actors-50dc6c495c0c9188.elb.eu-west-1.amazonaws.com",
}


def aws_rules() -> list[Rule]:
    a = AWS_ANSWERS
    return [
        Rule("aws", ("sts", "get-caller-identity"), a["account-id"] + "\n"),
        Rule("aws", ("ecr", "describe-repositories"), exit=254),
        Rule("aws", ("ecr", "get-login-password"), a["ecr-password"]),
        Rule("aws", ("describe-vpcs",), a["vpc-id"] + "\n"),
        Rule("aws", ("describe-subnets",), a["subnet-ids"] + "\n"),
        Rule("aws", ("describe-security-groups",), "None\n"),
        Rule("aws", ("create-security-group", "nexus-actors-lb"), a["nexus-actors-lb-id"]),
        Rule("aws", ("create-security-group", "nexus-actors-service"),
             a["nexus-actors-service-id"]),
        Rule("aws", ("create-security-group", "nexus-actors-db"), a["nexus-actors-db-id"]),
        Rule("aws", ("describe-db-subnet-groups",), exit=254),
        Rule("aws", ("describe-db-instances", "--query"), a["db-host"] + "\n"),
        Rule("aws", ("describe-db-instances",), exit=254),
        Rule("aws", ("describe-secret", "--query"), a["secret-arn"] + "\n"),
        Rule("aws", ("describe-secret",), exit=254),
        Rule("aws", ("get-role", "--query"), a["execution-role-arn"] + "\n"),
        Rule("aws", ("get-role",), exit=254),
        Rule("aws", ("describe-log-groups",), a["log-group-count"] + "\n"),
        Rule("aws", ("register-task-definition",), a["task-definition-arn"] + "\n"),
        Rule("aws", ("create-load-balancer",), a["load-balancer-arn"] + "\n"),
        Rule("aws", ("create-target-group",), a["target-group-arn"] + "\n"),
        Rule("aws", ("describe-services",), a["service-count"] + "\n"),
        Rule("aws", ("describe-load-balancers",), a["load-balancer-dns"] + "\n"),
    ]


AWS_ARGS = ("--region", "eu-west-1", "--tag", "9a8b7c", "--cors-origin", CORS)
AWS_ENV = {"NEXUS_DB_PASSWORD": DB_PASSWORD}
AWS_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/nexus-actors:9a8b7c"


def test_aws_dry_run_prints_every_command_and_calls_nothing(fake: FakeClis) -> None:
    done = fake.run("aws-ecs.sh", *AWS_ARGS, "--dry-run", env=AWS_ENV)
    assert done.returncode == 0, done.stderr
    assert fake.calls() == []
    assert_no_secret(done.stdout + done.stderr, DB_PASSWORD, DB_PASSWORD_IN_URL)
    commands = printed_commands(done.stdout)
    assert ["docker", "login", "--username", "AWS", "--password-stdin",
            "<account-id>.dkr.ecr.eu-west-1.amazonaws.com"] in commands
    assert "--master-user-password" in next(c for c in commands if "create-db-instance" in c)
    assert '"secrets": [' in done.stdout
    assert "<secret-arn>" in done.stdout


def test_aws_deploys_behind_an_nlb_with_the_url_from_secrets_manager(fake: FakeClis) -> None:
    fake.set_rules(aws_rules())
    dry = fake.run("aws-ecs.sh", *AWS_ARGS, "--dry-run", env=AWS_ENV)
    done = fake.run("aws-ecs.sh", *AWS_ARGS, env=AWS_ENV)
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    same_commands(dry.stdout, calls, AWS_ANSWERS, [DB_PASSWORD])
    assert_no_secret(done.stdout + done.stderr, DB_PASSWORD, DB_PASSWORD_IN_URL,
                     AWS_ANSWERS["ecr-password"])

    login = find_call(calls, "login", "--password-stdin")
    assert login.tool == "docker"
    assert login.stdin == AWS_ANSWERS["ecr-password"]
    build = find_call(calls, "build")
    assert build.argv == ["docker", "build", "--platform", "linux/amd64", "--file",
                          "Containerfile", "--build-arg", "REVISION=9a8b7c", "--tag",
                          AWS_IMAGE, "."]
    assert find_call(calls, "push").argv == ["docker", "push", AWS_IMAGE]

    database = find_call(calls, "create-db-instance")
    assert database.args[database.args.index("--master-user-password") + 1] == DB_PASSWORD
    assert "--no-publicly-accessible" in database.args
    assert database.args[database.args.index("--vpc-security-group-ids") + 1] == "sg-0db"
    ingress = [c.args for c in calls if "authorize-security-group-ingress" in c.args]
    assert [a[a.index("--group-id") + 1: a.index("--query")] for a in ingress] == [
        ["sg-0lb", "--protocol", "tcp", "--port", "80", "--cidr", "0.0.0.0/0"],
        ["sg-0svc", "--protocol", "tcp", "--port", "5000", "--source-group", "sg-0lb"],
        ["sg-0db", "--protocol", "tcp", "--port", "5432", "--source-group", "sg-0svc"],
    ]

    secret = find_call(calls, "create-secret")
    (url,) = secret.files.values()
    assert url == (f"postgresql://nexus:{DB_PASSWORD_IN_URL}@{AWS_ANSWERS['db-host']}"
                   ":5432/nexus?sslmode=require")
    policy = json.loads(next(iter(find_call(calls, "put-role-policy").files.values())))
    assert policy["Statement"][0]["Resource"] == AWS_ANSWERS["secret-arn"]
    assert policy["Statement"][0]["Action"] == "secretsmanager:GetSecretValue"

    task = json.loads(next(iter(find_call(calls, "register-task-definition").files.values())))
    assert task["executionRoleArn"] == AWS_ANSWERS["execution-role-arn"]
    (container,) = task["containerDefinitions"]
    assert container["image"] == AWS_IMAGE
    assert container["secrets"] == [{"name": "DATABASE_URL",
                                     "valueFrom": AWS_ANSWERS["secret-arn"]}]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["CORS_ORIGIN"] == CORS
    assert "DATABASE_URL" not in env
    assert container["portMappings"] == [{"name": "http", "containerPort": 5000,
                                          "protocol": "tcp"}]
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/ecs/nexus-actors"

    target = find_call(calls, "create-target-group")
    for flag, value in [("--port", "5000"), ("--target-type", "ip"),
                        ("--health-check-path", "/ready"), ("--protocol", "TCP")]:
        assert target.args[target.args.index(flag) + 1] == value
    attributes = find_call(calls, "modify-target-group-attributes")
    assert "Key=preserve_client_ip.enabled,Value=true" in attributes.args
    service = find_call(calls, "create-service")
    for flag, value in [
        ("--desired-count", "1"), ("--task-definition", AWS_ANSWERS["task-definition-arn"]),
        ("--network-configuration", "awsvpcConfiguration={subnets=[subnet-0a],"
                                    "securityGroups=[sg-0svc],assignPublicIp=ENABLED}"),
        ("--load-balancers", f"targetGroupArn={AWS_ANSWERS['target-group-arn']},"
                             "containerName=server,containerPort=5000"),
    ]:
        assert service.args[service.args.index(flag) + 1] == value
    deployment = service.args[service.args.index("--deployment-configuration") + 1]
    assert deployment.startswith("maximumPercent=100,minimumHealthyPercent=0,")
    assert f"ws://{AWS_ANSWERS['load-balancer-dns']}/ws" in done.stderr


def test_aws_updates_an_existing_service_with_given_subnets_and_tls(fake: FakeClis) -> None:
    fake.set_rules([Rule("aws", ("describe-services",), "1\n"), *aws_rules()])
    done = fake.run("aws-ecs.sh", "--region", "eu-west-1", "--vpc-id", "vpc-9",
                    "--subnets", "subnet-a,subnet-b", "--image", "registry.example/nx:5",
                    "--certificate-arn", "arn:aws:acm:eu-west-1:1:certificate/c1",
                    env={"DATABASE_URL": "postgresql://u:given-pw@db.example/nexus"})
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    tools = {c.tool for c in calls}
    assert tools == {"aws"}, "--image: nothing is built or pushed"
    assert not [c for c in calls if "describe-vpcs" in c.args or "create-db-instance" in c.args]
    (url,) = find_call(calls, "create-secret").files.values()
    assert url == "postgresql://u:given-pw@db.example/nexus"
    balancer = find_call(calls, "create-load-balancer").args
    assert balancer[balancer.index("--subnets"):][:4] == [
        "--subnets", "subnet-a", "subnet-b", "--security-groups"]
    listener = find_call(calls, "create-listener")
    assert listener.args[listener.args.index("--protocol") + 1] == "TLS"
    assert "CertificateArn=arn:aws:acm:eu-west-1:1:certificate/c1" in listener.args
    ingress = find_call(calls, "authorize-security-group-ingress", "0.0.0.0/0")
    assert ingress.args[ingress.args.index("--port") + 1] == "443"
    update = find_call(calls, "update-service")
    assert update.args[update.args.index("--task-definition") + 1] == \
        AWS_ANSWERS["task-definition-arn"]
    assert not [c for c in calls if "create-service" in c.args]
    task = json.loads(next(iter(find_call(calls, "register-task-definition").files.values())))
    assert task["containerDefinitions"][0]["image"] == "registry.example/nx:5"
    assert_no_secret(done.stderr, "given-pw")
    assert "wss://" in done.stderr


# --- Google Cloud Run ------------------------------------------------------------------------

GCP_ANSWERS = {"db-users": "", "service-url": "https://nexus-actors-x2y3z4-ew.a.run.app"}
GCP_RULES = [
    Rule("gcloud", ("artifacts", "repositories", "describe"), exit=1),
    Rule("gcloud", ("iam", "service-accounts", "describe"), exit=1),
    Rule("gcloud", ("sql", "instances", "describe"), exit=1),
    Rule("gcloud", ("sql", "databases", "describe"), exit=1),
    Rule("gcloud", ("secrets", "describe"), exit=1),
    Rule("gcloud", ("run", "services", "describe"), GCP_ANSWERS["service-url"] + "\n"),
]
GCP_ARGS = ("--project", "tabletop-prod", "--tag", "c0ffee", "--cors-origin", CORS)
GCP_ENV = {"NEXUS_DB_PASSWORD": DB_PASSWORD}
GCP_IMAGE = "europe-west1-docker.pkg.dev/tabletop-prod/nexus/nexus-actors:c0ffee"


def test_gcp_dry_run_prints_every_command_and_calls_nothing(fake: FakeClis) -> None:
    done = fake.run("gcp-cloudrun.sh", *GCP_ARGS, "--dry-run", env=GCP_ENV)
    assert done.returncode == 0, done.stderr
    assert fake.calls() == []
    assert_no_secret(done.stdout + done.stderr, DB_PASSWORD, DB_PASSWORD_IN_URL)
    assert "secrets versions add nexus-actors-database-url --data-file=-  # stdin" in done.stdout


def test_gcp_deploys_cloud_run_for_websockets_with_cloud_sql(fake: FakeClis) -> None:
    fake.set_rules(GCP_RULES)
    dry = fake.run("gcp-cloudrun.sh", *GCP_ARGS, "--dry-run", env=GCP_ENV)
    done = fake.run("gcp-cloudrun.sh", *GCP_ARGS, env=GCP_ENV)
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    same_commands(dry.stdout, calls, GCP_ANSWERS, [DB_PASSWORD])
    assert_no_secret(done.stdout + done.stderr, DB_PASSWORD, DB_PASSWORD_IN_URL)
    assert all(c.args[:2] == ["--project", "tabletop-prod"] for c in calls)

    build = find_call(calls, "builds", "submit")
    assert build.args[2:] == ["builds", "submit", "--config", "deploy/gcp/cloudbuild.yaml",
                              "--substitutions", f"_IMAGE={GCP_IMAGE},_REVISION=c0ffee", "."]
    user = find_call(calls, "users", "create")
    assert user.args[user.args.index("--password") + 1] == DB_PASSWORD
    version = find_call(calls, "versions", "add")
    assert version.stdin == (f"postgresql://nexus:{DB_PASSWORD_IN_URL}@/nexus?host=/cloudsql/"
                             "tabletop-prod:europe-west1:nexus-actors-db")
    assert DB_PASSWORD_IN_URL not in " ".join(version.args)

    deploy = find_call(calls, "run", "deploy")
    args = deploy.args

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value("--image") == GCP_IMAGE
    assert value("--port") == "5000"
    assert value("--set-secrets") == "DATABASE_URL=nexus-actors-database-url:latest"
    assert value("--set-cloudsql-instances") == "tabletop-prod:europe-west1:nexus-actors-db"
    assert value("--timeout") == "3600"
    assert value("--max-instances") == "1"
    assert "--session-affinity" in args
    assert "--no-use-http2" in args
    assert "--use-http2" not in args
    assert value("--startup-probe").startswith("httpGet.path=/ready,httpGet.port=5000,")
    assert value("--liveness-probe").startswith("httpGet.path=/health,httpGet.port=5000,")
    env_vars = value("--set-env-vars")
    assert env_vars.startswith("^|^")
    env = dict(item.split("=", 1) for item in env_vars[3:].split("|"))
    assert env["CORS_ORIGIN"] == CORS
    # Cloud Run allows 10 s between SIGTERM and SIGKILL.
    assert float(env["NEXUS_DRAIN_TIMEOUT"]) < 10
    assert float(env["NEXUS_DRAIN_SPREAD"]) <= float(env["NEXUS_DRAIN_TIMEOUT"]) / 4
    assert "DATABASE_URL" not in env
    assert "wss://nexus-actors-x2y3z4-ew.a.run.app/ws" in done.stderr


# --- Kubernetes ------------------------------------------------------------------------------

K8S_URL = "postgresql://nexus:k8s-db-pw@pg.example.net:5432/nexus?sslmode=verify-full"
K8S_ENV = {"DATABASE_URL": K8S_URL, "METRICS_AUTH_TOKEN": METRICS_TOKEN}
K8S_ARGS = ("--image", "registry.example/nexus-actors:2.0", "--namespace", "tabletop",
            "--context", "aks-prod", "--cors-origin", CORS)


def test_kubernetes_dry_run_prints_every_command_and_calls_nothing(fake: FakeClis) -> None:
    done = fake.run("kubernetes.sh", *K8S_ARGS, "--dry-run", env=K8S_ENV)
    assert done.returncode == 0, done.stderr
    assert fake.calls() == []
    assert_no_secret(done.stdout + done.stderr, "k8s-db-pw", METRICS_TOKEN)
    assert "#   DATABASE_URL=***" in done.stdout


def test_kubernetes_applies_an_overlay_with_the_image_and_a_generated_secret(
        fake: FakeClis) -> None:
    dry = fake.run("kubernetes.sh", *K8S_ARGS, "--dry-run", env=K8S_ENV)
    done = fake.run("kubernetes.sh", *K8S_ARGS, env=K8S_ENV)
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    same_commands(dry.stdout, calls, {})
    assert_no_secret(done.stdout + done.stderr, "k8s-db-pw", METRICS_TOKEN)
    apply, status = calls
    assert apply.argv[:4] == ["kubectl", "--context", "aks-prod", "apply"]
    assert status.argv == ["kubectl", "--context", "aks-prod", "--namespace", "tabletop",
                           "rollout", "status", "deployment/nexus-actors", "--timeout", "5m"]
    files = {Path(path).name: text for path, text in apply.files.items()}
    assert set(files) == {"kustomization.yaml", "namespace.yaml", "secret.env"}
    assert files["secret.env"] == (f"DATABASE_URL={K8S_URL}\nMETRICS_AUTH_TOKEN={METRICS_TOKEN}"
                                   f"\nCORS_ORIGIN={CORS}\n")
    kustomization = load_yaml(files["kustomization.yaml"])
    assert kustomization["namespace"] == "tabletop"
    assert kustomization["resources"] == ["namespace.yaml", "kubernetes"]
    assert kustomization["images"] == [{"name": "nexus-actors",
                                        "newName": "registry.example/nexus-actors:2.0"}]
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == "nexus-actors"
    assert generator["envs"] == ["secret.env"]
    assert load_yaml(files["namespace.yaml"])["metadata"]["name"] == "tabletop"


def test_kubernetes_scaled_applies_the_multi_replica_variant(fake: FakeClis) -> None:
    dry = fake.run("kubernetes.sh", *K8S_ARGS, "--scaled", "--dry-run", env=K8S_ENV)
    done = fake.run("kubernetes.sh", *K8S_ARGS, "--scaled", env=K8S_ENV)
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    same_commands(dry.stdout, calls, {})
    apply, _ = calls
    files = {Path(path).name: text for path, text in apply.files.items()}
    kustomization = load_yaml(files["kustomization.yaml"])
    assert kustomization["resources"] == ["namespace.yaml", "kubernetes-scaled"]
    assert "get ingress nexus-actors" in done.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_scaled_overlay_the_script_writes_renders_with_kubectl(tmp_path: Path) -> None:
    """The layout the script copies (both variants side by side) renders: three replicas,
    the Ingress, the namespace."""
    shutil.copytree(ROOT / "deploy" / "kubernetes", tmp_path / "kubernetes")
    shutil.copytree(ROOT / "deploy" / "kubernetes-scaled", tmp_path / "kubernetes-scaled")
    (tmp_path / "kustomization.yaml").write_text(
        "namespace: tabletop\nresources: [kubernetes-scaled]\n")
    rendered = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    objects = {o["kind"]: o for o in load_yaml_all(rendered)}
    assert objects["Deployment"]["spec"]["replicas"] == 3
    assert objects["Ingress"]["metadata"]["namespace"] == "tabletop"


def test_kubernetes_logs(fake: FakeClis) -> None:
    assert fake.run("kubernetes.sh", "logs").returncode == 0
    assert [c.argv for c in fake.calls()] == [
        ["kubectl", "--namespace", "nexus", "logs", "deployment/nexus-actors", "--follow"]]


def test_every_script_is_covered_here() -> None:
    scripts = {p.name for p in (ROOT / "scripts" / "deploy").glob("*.sh")}
    assert scripts == {"_common.sh", "azure-aci.sh", "aws-ecs.sh", "gcp-cloudrun.sh",
                       "kubernetes.sh"}
