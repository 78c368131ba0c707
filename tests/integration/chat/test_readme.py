"""The README's "Chat in 5 curl commands", run verbatim (bash + curl) against a real engine
serving the sample config on the embedded defaults, as `make run` does."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.integration.provisioning.harness import ROOT, copy_config, make_backend, start_engine


def readme_chat_script() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Chat in 5 curl commands", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_readme_chat_in_five_commands(tmp_path: Path) -> None:
    backend = make_backend("sqlite", tmp_path)
    engine = start_engine(tmp_path / "engine", backend, copy_config(tmp_path, tenant_admin=False))
    try:
        work = tmp_path / "checkout"
        (work / "var").mkdir(parents=True)
        shutil.copy(tmp_path / "engine" / "dev.env", work / "var" / "dev.env")
        script = readme_chat_script().replace("http://localhost:8080", engine.api)
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        presence, transcript, held, done = lines
        assert presence["data"]["state"] == "ready"
        texts = [(m["type"], m["text"]) for m in transcript["data"]["messages"]]
        assert texts == [("ParticipantJoined", None), ("ParticipantJoined", None),
                         ("Text", "Hello Ann, how can I help?")]
        assert held["data"]["interaction"]["state"] == "held"
        assert done["data"]["interaction"]["state"] == "done"
        assert done["data"]["interaction"]["agent"] == "alice"
    finally:
        engine.stop()
        backend.close()
