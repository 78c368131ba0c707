from __future__ import annotations

import argparse
import os
import stat

import pytest

from engine import serve_command
from engine.server import banner
from engine.settings import Settings, SettingsError


def test_defaults(tmp_path) -> None:
    s = Settings.from_env({}, var_dir=str(tmp_path))
    assert (s.host, s.port, s.metrics_port) == ("0.0.0.0", 8080, 4004)
    assert s.config_path == "./config" and s.fqdn == "http://localhost:8080"
    assert s.db_url == "sqlite:///./var/nexus.db" and s.redis_url == "memory://"
    assert (s.redis_cluster, s.redis_tls, s.redis_password) == (False, False, "")
    assert s.workers == 1 and s.log_format == "json" and s.auth == "embedded"
    assert s.client_secret == ""
    assert s.secret not in repr(s) and s.metrics_url == "http://localhost:4004/metrics"


def test_env_then_flags(tmp_path) -> None:
    env = {
        "NEXUS_CONFIG": "/etc/nexus", "NEXUS_FQDN": "https://digital.example.com",
        "NEXUS_DB_URL": "postgresql://u:p@db:5432/nexus", "NEXUS_REDIS_URL": "redis://r:6379",
        "NEXUS_REDIS_CLUSTER": "true", "NEXUS_REDIS_TLS": "1", "NEXUS_REDIS_PASSWORD": "rp",
        "NEXUS_WORKERS": "3", "NEXUS_LOG_FORMAT": "TEXT", "NEXUS_SECRET": "env-secret",
        "NEXUS_CLIENT_SECRET": "cs", "NEXUS_PORT": "9000",
    }
    s = Settings.from_env(env, var_dir=str(tmp_path))
    assert s.config_path == "/etc/nexus" and s.workers == 3 and s.log_format == "text"
    assert s.redis_cluster and s.redis_tls and s.secret == "env-secret" and s.port == 9000
    flagged = Settings.from_env(env, var_dir=str(tmp_path), port="8181", workers=2,
                                log_format="json", config_path=None)
    assert flagged.port == 8181 and flagged.workers == 2 and flagged.log_format == "json"
    assert flagged.config_path == "/etc/nexus"  # a None flag is "not given"


@pytest.mark.parametrize(
    ("env", "flags", "names"),
    [
        ({"NEXUS_PORT": "abc"}, {}, "NEXUS_PORT"),
        ({}, {"port": "abc"}, "--port"),
        ({}, {"port": "70000"}, "--port"),
        ({"NEXUS_WORKERS": "0"}, {}, "NEXUS_WORKERS"),
        ({}, {"workers": "0"}, "--workers"),
        ({"NEXUS_LOG_FORMAT": "xml"}, {}, "NEXUS_LOG_FORMAT"),
        ({"NEXUS_REDIS_TLS": "maybe"}, {}, "NEXUS_REDIS_TLS"),
        ({"NEXUS_AUTH": "ldap"}, {}, "NEXUS_AUTH"),
        ({"NEXUS_AUTH": "gws"}, {}, "NEXUS_AUTH_URL"),
    ],
)
def test_invalid_values_name_their_source(tmp_path, env, flags, names) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env, var_dir=str(tmp_path), **flags)
    message = str(err.value)
    assert names in message and "\n" not in message


def test_workers_need_a_shared_redis(tmp_path) -> None:
    with pytest.raises(SettingsError, match="--workers: 2 workers need a shared Redis"):
        Settings.from_env({}, var_dir=str(tmp_path), workers="2")
    ok = Settings.from_env({"NEXUS_REDIS_URL": "redis://r:6379"}, var_dir=str(tmp_path),
                           workers="2")
    assert ok.workers == 2


def test_generated_secret_is_kept(tmp_path) -> None:
    first = Settings.from_env({}, var_dir=str(tmp_path / "var"))
    path = tmp_path / "var" / "secret"
    assert len(first.secret) >= 64 and path.read_text().strip() == first.secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = Settings.from_env({}, var_dir=str(tmp_path / "var"))
    assert again.secret == first.secret
    explicit = Settings.from_env({"NEXUS_SECRET": "mine"}, var_dir=str(tmp_path / "var"))
    assert explicit.secret == "mine"
    assert list((tmp_path / "var").iterdir()) == [path]


def test_unwritable_var_dir(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # running as root: make the path a file instead
        locked = tmp_path / "file"
        locked.write_text("x")
    with pytest.raises((SettingsError, OSError)):
        Settings.from_env({}, var_dir=str(locked / "var"))


def test_unknown_setting(tmp_path) -> None:
    with pytest.raises(SettingsError, match="unknown"):
        Settings.from_env({}, var_dir=str(tmp_path), colour="blue")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_serve_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NEXUS_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("NEXUS_PORT", "9999")
    args = _parse(["serve", "--port", "8123", "--metrics-port", "4123", "--config", "cfg",
                   "--workers", "2", "--redis-url", "redis://h:6379", "--db-url",
                   "sqlite:///x.db", "--log-format", "text", "--host", "127.0.0.1"])
    s = serve_command.settings_from_args(args)
    assert (s.port, s.metrics_port, s.config_path, s.workers) == (8123, 4123, "cfg", 2)
    assert (s.redis_url, s.db_url, s.log_format, s.host) == (
        "redis://h:6379", "sqlite:///x.db", "text", "127.0.0.1")
    text = banner(s)
    assert "http://127.0.0.1:8123/health/detail" in text
    assert "http://127.0.0.1:4123/metrics" in text
    assert "curl --user nexus_client: --request POST" in text


def test_serve_refuses_bad_settings(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NEXUS_VAR_DIR", str(tmp_path))
    args = _parse(["serve", "--workers", "4"])
    assert args.func(args) == 2
    assert "need a shared Redis" in capsys.readouterr().err


def test_metric_files_default_to_shared_memory(tmp_path) -> None:
    from pathlib import Path

    from engine.settings import default_multiproc_dir

    shm = tmp_path / "shm"
    shm.mkdir()
    first = default_multiproc_dir(tmp_path / "a" / "var", shm)
    assert first.parent == shm and first.name.startswith(f"nexus-metrics-{os.getuid()}-")
    # one directory per var dir, the same one each time (a restart wipes its old files)
    assert default_multiproc_dir(tmp_path / "a" / "var", shm) == first
    assert default_multiproc_dir(tmp_path / "b" / "var", shm) != first
    # no writable shared memory (macOS, a locked-down container): the var dir, as before
    assert default_multiproc_dir(tmp_path / "var", tmp_path / "none") == tmp_path / "var" / (
        "prometheus")
    if os.getuid() != 0:  # root writes anywhere
        shm.chmod(0o500)
        try:
            assert default_multiproc_dir(tmp_path / "var", shm) == tmp_path / "var" / "prometheus"
        finally:
            shm.chmod(0o700)
    # an operator's PROMETHEUS_MULTIPROC_DIR wins
    named = Settings.from_env({"NEXUS_VAR_DIR": str(tmp_path / "v"),
                               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")})
    assert named.multiproc_dir == Path(tmp_path / "m")
