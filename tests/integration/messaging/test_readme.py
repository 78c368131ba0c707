"""README's "SMS in 3 curl commands", run verbatim (bash, curl, openssl) against a real engine
whose gateway webhook points at a loopback receiver."""

from __future__ import annotations

import hashlib
import hmac
import re
import shutil
import subprocess
from pathlib import Path

from tests.integration.messaging.support import ThreadedFake, messaging_config, start, wait_until
from tests.integration.provisioning.harness import ROOT, make_backend


def _block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### SMS in 3 curl commands", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_sms_in_three_curl_commands(tmp_path: Path) -> None:
    receiver = ThreadedFake().start()
    backend = make_backend("sqlite", tmp_path)
    try:
        engine = start(tmp_path, backend, messaging_config(tmp_path, receiver.url))
        try:
            work = tmp_path / "checkout"
            (work / "var").mkdir(parents=True)
            shutil.copy(tmp_path / "dev.env", work / "var" / "dev.env")
            script = _block().replace("BASE=http://localhost:8080", f"BASE={engine.api}")
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr + done.stdout
            assert '"ids"' in done.stdout
            (answer,) = wait_until(lambda: receiver.on("/async/16504661149"), "the answer")
            message = answer.json()["messages"][0]
            assert message["text"] == "Yes Ann, it left this morning."
            assert message["channel"]["to"]["id"] == "+16505550123"
            secret = engine.env["T1001_ASYNC_WEBHOOK_SECRET"].encode()
            assert answer.headers["x-hub-signature"] == "sha1=" + hmac.new(
                secret, answer.body, hashlib.sha1).hexdigest()
            assert answer.headers["custom-header-for-async-1"] == "12345"
            assert answer.headers["x-b3-traceid"]
        finally:
            engine.stop()
    finally:
        backend.close()
        receiver.close()
