from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import asyncio, sys
from engine.app import warm_imports
backend = "anyio._backends._asyncio"
before = backend in sys.modules
asyncio.run(warm_imports())
print(before, backend in sys.modules)
"""


def test_warm_imports_load_what_the_first_outbound_request_would() -> None:
    # in a fresh interpreter: this test process may have imported the backend already
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert out == ["False", "True"]
