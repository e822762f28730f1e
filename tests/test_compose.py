"""The compose stack (docker-compose.yml, .env.example, Dockerfile) is valid and follows the project's policies.

The file is validated against the official Compose Specification JSON schema, read from the
shared schemas folder beside the repository; and with ``docker compose config`` wherever the
docker client has the compose plugin.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA_REL = Path("shared") / "schemas" / "compose-spec.json"
REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "mlflow",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; "$$" is a literal "$".
VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|CREDENTIAL|(^|_)AUTH$|_KEY$", re.I)
URL_USERINFO = re.compile(r"://[^/\s:@]*:(?P<pw>[^@\s]*)@")


def _schema_path() -> Path | None:
    """The shared compose schema: ``shared/schemas`` in the repository's folder or one above it."""
    for base in (ROOT, *ROOT.parents):
        candidate = base / SCHEMA_REL
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def raw() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return yaml.safe_load(raw)


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            out[key.strip()] = value.strip()
    return out


def _secrets_env(env_example: dict[str, str]) -> dict[str, str]:
    """.env.example with every empty (secret) value filled the way its comments say."""
    import base64
    import os

    env = dict(env_example)
    for key, value in env.items():
        if not value:
            env[key] = base64.urlsafe_b64encode(os.urandom(32)).decode() if "FERNET" in key else secrets.token_hex(24)
    return env


def _interpolate(node, env: dict[str, str]):
    """Compose-style interpolation of every string in ``node``; raises KeyError for a missing ``:?`` variable."""
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m):
        name, op, arg = m["name"], m["op"], m["arg"]
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op and op.endswith("?") and missing:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return value or ""

    return VAR.sub(sub, node.replace("$$", "\0")).replace("\0", "$")


def _walk_strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _refs(compose: dict) -> list[re.Match]:
    """Every ``${...}`` reference in the file's values (comments excluded, ``$$`` escapes skipped)."""
    return [m for _, value in _walk_strings(compose) for m in VAR.finditer(value.replace("$$", "\0"))]


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return env


def _validate(instance: dict, schema_file: Path) -> list[str]:
    import json

    import jsonschema

    schema = json.loads(schema_file.read_text())
    # the spec declares draft-07 as "https://json-schema.org/draft-07/schema", without the "#"
    # that jsonschema's lookup expects
    cls = jsonschema.Draft7Validator if "draft-07" in schema.get("$schema", "") else None
    validator = (cls or jsonschema.validators.validator_for(schema))(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)]


# --- the Compose Specification ---------------------------------------------------------------


def test_validates_against_compose_spec(compose, env_example):
    schema = _schema_path()
    if schema is None:
        pytest.skip(f"compose schema not found: no {SCHEMA_REL} in {ROOT} or any folder above it")
    assert _validate(compose, schema) == []
    # ... and after interpolation with a filled-in .env, as `docker compose` validates it
    assert _validate(_interpolate(compose, _secrets_env(env_example)), schema) == []


def test_schema_check_catches_a_broken_file(compose):
    """The validation above is not vacuous: a wrong condition and an unknown key are refused."""
    schema = _schema_path()
    if schema is None:
        pytest.skip(f"compose schema not found: no {SCHEMA_REL} in {ROOT} or any folder above it")
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["airflow-worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    broken["services"]["mlflow"]["helthcheck"] = {"test": ["CMD", "true"]}
    errors = _validate(broken, schema)
    assert any("depends_on" in e for e in errors) and any("helthcheck" in e for e in errors), errors


def _compose_config(docker: str, env_file, cwd):
    """`docker compose config --quiet` on the project's compose file with ``env_file``."""
    return subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_docker_compose_config(tmp_path, env_example):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH; `docker compose config` cannot run here")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the docker client has no compose plugin (`docker compose version`: {probe.stderr.strip()})")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in _secrets_env(env_example).items()))
    ok = _compose_config(docker, env_file, tmp_path)
    assert ok.returncode == 0, ok.stderr
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = _compose_config(docker, empty, tmp_path)
    assert refused.returncode != 0 and "set it in .env" in refused.stderr, refused.stderr


# --- topology ------------------------------------------------------------------------------------


def test_services_of_the_stack(compose):
    services = compose["services"]
    assert set(services) >= REQUIRED_SERVICES
    worker = services["airflow-worker"]
    # scalable with --scale: no fixed name, no published port
    assert "container_name" not in worker and not worker.get("ports")
    for name, svc in services.items():
        if name.startswith("airflow-"):
            env = _env(svc)
            assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
            assert "@redis:6379/" in env["AIRFLOW__CELERY__BROKER_URL"], name
            # explicit driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
            assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://"), name
            assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name


def test_metadata_db_and_mlflow_store_are_separate_databases(compose):
    services = compose["services"]
    airflow_db = _env(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]
    mlflow_env = _env(services["mlflow"])
    mlflow_db = mlflow_env["MLFLOW_BACKEND_STORE_URI"].rsplit("/", 1)[1]
    assert (
        mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
        and "@postgres:5432/" in (mlflow_env["MLFLOW_BACKEND_STORE_URI"])
    )
    assert airflow_db == _env(services["postgres"])["POSTGRES_DB"] and mlflow_db != airflow_db
    # the init script that creates the second database is mounted where postgres runs it
    mounts = [v.split(":") for v in services["postgres"]["volumes"]]
    host_dir = next(src for src, dst, *_ in mounts if dst == "/docker-entrypoint-initdb.d")
    scripts = sorted((ROOT / host_dir).glob("*.sh"))
    assert scripts and any("CREATE DATABASE" in s.read_text() for s in scripts)
    assert "--serve-artifacts" in services["mlflow"]["command"]


# --- policies --------------------------------------------------------------------------------------


def _one_shot(compose: dict) -> set[str]:
    """Services that others wait for with service_completed_successfully and that never restart."""
    waited = {
        dep
        for svc in compose["services"].values()
        for dep, spec in (svc.get("depends_on") or {}).items()
        if isinstance(spec, dict) and spec.get("condition") == "service_completed_successfully"
    }
    return {name for name in waited if str(compose["services"][name].get("restart", "no")) == "no"}


def test_every_service_has_a_healthcheck_or_is_a_one_shot_init(compose):
    one_shot = _one_shot(compose)
    assert one_shot == {"airflow-init"}
    for name, svc in compose["services"].items():
        if name in one_shot:
            continue
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable") and hc.get("test"), f"{name} has no healthcheck"


def test_depends_on_uses_conditions(compose):
    services = compose["services"]
    one_shot = _one_shot(compose)
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must be a mapping with conditions, not a list"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = (spec or {}).get("condition")
            assert condition in ("service_healthy", "service_completed_successfully"), f"{name} -> {dep}"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy; it has no check"
            else:
                assert dep in one_shot, f"{name} waits for {dep} to complete; it is not a one-shot"
    # every Airflow component waits for the databases and for the migration
    for name in REQUIRED_SERVICES - {"postgres", "redis", "mlflow", "airflow-init"}:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy", name
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name


def _mask(value: str) -> str:
    """``${NAME:?msg}`` -> ``<NAME:?>``, so URLs with interpolated parts can be parsed."""
    return VAR.sub(lambda m: f"<{m['name']}{m['op'] or ''}>", value)


def test_no_literal_secrets(compose):
    checked = 0
    for path, value in _walk_strings(compose):
        key = path.rsplit(".", 1)[-1]
        if ".environment." in path and SECRET_NAME.search(key) and not key.endswith("_FILE"):
            checked += 1
            assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{path} must come from .env as ${{VAR:?...}}"
        for m in URL_USERINFO.finditer(_mask(value)):
            checked += 1
            assert m["pw"] == "" or re.fullmatch(r"<[A-Z0-9_]+:\?>", m["pw"]), f"{path}: literal password in {value}"
    assert checked >= 8
    # a secret referenced anywhere is required: no `${..._PASSWORD:-default}` fallback
    for m in _refs(compose):
        if SECRET_NAME.search(m["name"]):
            assert m["op"] == ":?", f"${{{m['name']}}} needs :? so compose refuses to start without it"


def test_env_example_documents_every_variable_and_holds_no_secret(compose, env_example):
    refs = _refs(compose)
    used = {m["name"] for m in refs}
    required = {m["name"] for m in refs if m["op"] == ":?"}
    assert used <= set(env_example), f"not in .env.example: {sorted(used - set(env_example))}"
    assert required and all(env_example[name] == "" for name in required), "secrets in .env.example must be empty"
    with pytest.raises(KeyError):  # an .env copied without filling it in is refused
        _interpolate(compose, env_example)
    # options shown in .env.example are the compose file's own defaults
    defaults = {m["name"]: m["arg"] for m in refs if m["op"] == ":-"}
    for name, default in defaults.items():
        assert env_example[name] == default, f"{name}: .env.example says {env_example[name]!r}, compose {default!r}"
    assert ".env" in (ROOT / ".gitignore").read_text().split() and ".env" in (ROOT / ".dockerignore").read_text()


def test_published_ports_bound_to_loopback(compose):
    published = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports") or []:
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} must be bound to 127.0.0.1"
    assert published >= 2  # the Airflow UI/API and the MLflow UI


def test_worker_consumes_the_train_queue_with_sized_concurrency(compose, env_example):
    worker = compose["services"]["airflow-worker"]
    cmd = worker["command"]
    cmd = cmd if isinstance(cmd, list) else cmd.split()
    assert cmd[:2] == ["celery", "worker"]
    queues = cmd[cmd.index("--queues") + 1].split(",")
    env = _interpolate(_env(worker), _secrets_env(env_example))
    assert env["BNPIPE_TRAIN_QUEUE"] in queues and "default" in queues
    # concurrency = cores // TF threads per task, for the defaults in the file and in .env.example
    cpus = int(_interpolate(worker["cpus"], env_example))
    assert int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) == cpus // int(env["BNPIPE_TF_THREADS"]) >= 1


def test_train_queue_defaults_to_airflows_default_queue(monkeypatch):
    """LocalExecutor runs are unaffected: without BNPIPE_TRAIN_QUEUE the train task keeps the default queue."""
    from bnpipe.base import settings

    monkeypatch.delenv("BNPIPE_TRAIN_QUEUE", raising=False)
    assert settings.train_queue() == "default"
    monkeypatch.setenv("BNPIPE_TRAIN_QUEUE", "train")
    assert settings.train_queue() == "train"
    monkeypatch.setenv("BNPIPE_HOSTNAME", "worker-a")
    assert settings.hostname() == "worker-a"


def test_dockerfile_builds_on_the_pinned_airflow_image():
    text = (ROOT / "Dockerfile").read_text()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    airflow = next(p for p in pins if p.startswith("apache-airflow=="))
    version = airflow.split("==")[1]
    assert f"apache/airflow:{version}-python3.11" in text
    assert re.search(r"apt-get install[^\n]*dataset-fashion-mnist", text)
    assert re.search(r"pip install[^\n]*/opt/bnpipe\b", text)  # the project itself, with pyproject's pins
    assert "COPY --chown=airflow:root pyproject.toml" in text


# --- who may read MLflow and move `champion` -----------------------------------------------------


def _mounted_file(service: dict, target: str) -> Path:
    """The repository file bind-mounted at ``target`` in ``service``."""
    mounts = [v.split(":") for v in service.get("volumes") or [] if isinstance(v, str)]
    source = next(src for src, dst, *_ in mounts if dst == target)
    assert source.startswith("./"), f"{target} must be mounted from the repository, not {source}"
    return ROOT / source


def test_mlflow_requires_a_login_configured_without_secrets(compose):
    import configparser

    mlflow = compose["services"]["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    env = _env(mlflow)
    ini_file = _mounted_file(mlflow, env["MLFLOW_AUTH_CONFIG_PATH"])
    ini = configparser.ConfigParser()
    assert ini.read(ini_file) == [str(ini_file)]
    auth = ini["mlflow"]
    # a new user sees and changes nothing until an admin grants it
    assert auth["default_permission"] == "NO_PERMISSIONS"
    # a good login is remembered for a while, not re-hashed on each of the tasks' many requests
    assert auth.getint("auth_cache_ttl_seconds") > 0
    # the admin comes from .env, never from the file; the file holds no password at all
    assert "admin_password" not in auth and not URL_USERINFO.search(auth["database_uri"])
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "${MLFLOW_ADMIN_USERNAME:?set it in .env (see .env.example)}"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD:?set it in .env (see .env.example)}"
    # the auth database is on postgres, its password is the mlflow role's, and the init script creates it
    assert auth["database_uri"].startswith("postgresql+psycopg2://mlflow@postgres:5432/")
    assert env["PGPASSWORD"] == "${MLFLOW_DB_PASSWORD:?set it in .env (see .env.example)}"
    auth_db = auth["database_uri"].rsplit("/", 1)[1]
    init = _mounted_file(compose["services"]["postgres"], "/docker-entrypoint-initdb.d")
    script = "".join(s.read_text() for s in init.glob("*.sh"))
    assert f"MLFLOW_AUTH_DB_NAME:-{auth_db}}}" in script and 'CREATE DATABASE :"auth_db"' in script
    assert auth_db != env["MLFLOW_BACKEND_STORE_URI"].rsplit("/", 1)[1]
    # the health check stays unauthenticated (MLflow leaves /health open)
    assert mlflow["healthcheck"]["test"][-1].endswith(":5000/health")


def test_airflow_logs_in_to_mlflow_as_the_configured_admin(compose, env_example):
    services = compose["services"]
    admin = _env(services["mlflow"])
    for name, svc in services.items():
        if name.startswith("airflow-"):
            env = _env(svc)
            assert env["MLFLOW_TRACKING_USERNAME"] == admin["MLFLOW_AUTH_ADMIN_USERNAME"], name
            assert env["MLFLOW_TRACKING_PASSWORD"] == admin["MLFLOW_AUTH_ADMIN_PASSWORD"], name
    # no default login: compose refuses to start without each of them
    for var in ("MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env_example[var] == ""
        assert {m["op"] for m in _refs(compose) if m["name"] == var} == {":?"}, var
        with pytest.raises(KeyError, match=var):
            _interpolate(services["mlflow"], {**_secrets_env(env_example), var: ""})
