"""Benchmark: `nexus lint` on a generated config with 10,000 channel sections, 100 tenants.

Usage: .venv/bin/python bench/lint_bench.py [--tenants 100] [--channels 100] [--runs 3]

Prints the wall time of the whole `nexus lint` command (process start included) and of
`validate_paths` in-process. Goal (issue #2): under 2 s for the whole command.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEXUS_URL = "http://localhost:8080"

ENVIRONMENT = f"""\
apiVersion: nexus/v1
kind: Environment
name: environment
spec:
  options:
    nexus:
      url: {NEXUS_URL}
  businessAttributes:
    Interaction Subtype:
      - name: SMS
        displayName: SMS
        description: The SMS text message.
---
apiVersion: nexus/v1
kind: Queue
name: asynchold
spec:
  enabled: true
  view:
    name: asynchold/scheduled_view
    namespace: scheduled_view
    condition: ""
    order: ""
    queue: asynchold
    scheduling-mode: scheduled-and-unscheduled
    freeze-interval: 30
  strategy:
    name: asynchold.ER
    type: Enhanced Routing
    url: {NEXUS_URL}/scxml/redirect_queue.scxml
  submitter:
    name: asynchold.IS
    view: asynchold/scheduled_view
    strategy: asynchold.ER
---
apiVersion: nexus/v1
kind: Queue
name: undelivered
spec:
  enabled: true
  view:
    name: undelivered/scheduled_view
    namespace: scheduled_view
    condition: ""
    order: ""
    queue: undelivered
    scheduling-mode: scheduled-and-unscheduled
  strategy:
    name: undelivered.ER
    type: Enhanced Routing
    url: {NEXUS_URL}/scxml/undelivered.scxml
  submitter:
    name: undelivered.IS
    view: undelivered/scheduled_view
    strategy: undelivered.ER
"""


def tenant_files(index: int, channels: int) -> dict[str, str]:
    name = f"t{index:04d}"
    ccid = str(uuid.UUID(int=index + 1))
    numbers = [f"1650{index:04d}{c:03d}" for c in range(channels)]
    data_channels = "".join(
        f"          - channelId: \"{n}\"\n            webhook:\n"
        f"              url: https://gateway.example.com/{name}\n"
        for n in numbers
    )
    secret_channels = "".join(
        f"          - channelId: \"{n}\"\n"
        f"            webhook:\n              secret: ${{env:ASYNC_WEBHOOK_SECRET}}\n"
        f"            api:\n              secret: ${{env:ASYNC_API_SECRET}}\n"
        for n in numbers
    )
    tenant = f"""\
apiVersion: nexus/v1
kind: Tenant
name: {name}
spec:
  ccid: {ccid}
  type: PureEngage
  backendurl: https://gws.example.com
  username: nexus
  token: ${{env:TENANT_TOKEN}}
  genesystenantid: {index + 1}
  services:
    SMS:
      url: N/A
      data:
        provider: Async
      secret: {{}}
    Async:
      data:
        channels:
{data_channels}      secret:
        channels:
{secret_channels}---
apiVersion: nexus/v1
kind: Queue
name: {name}-agents
tenant: {name}
spec:
  enabled: true
---
apiVersion: nexus/v1
kind: Transaction
name: NexusEndpoints
tenant: {name}
spec:
  type: List
  sections:
    chat.Main:
      queue: {name}-agents
"""
    sections = "".join(
        f"""    chat.SMS_{c:03d}:
      channelId: "{n}"
      channelType: sms
      endpoint: chat.Main
      interactionSubtype: SMS
      interactionType: Inbound
      media: chat
      cxcOnly: false
      provider: Async
"""
        for c, n in enumerate(numbers)
    )
    services = f"""\
apiVersion: nexus/v1
kind: Transaction
name: NexusServices
tenant: {name}
spec:
  type: List
  sections:
{sections}    Async:
      header:x-tenant: "{name}"
"""
    return {f"{name}/tenant.yaml": tenant, f"{name}/services.yaml": services}


def generate(target: Path, tenants: int, channels: int) -> int:
    (target / "environment.yaml").write_text(ENVIRONMENT)
    for i in range(tenants):
        for rel, text in tenant_files(i, channels).items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return tenants * channels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--channels", type=int, default=100, help="channel sections per tenant")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nexus-lint-bench-") as tmp:
        target = Path(tmp)
        sections = generate(target, args.tenants, args.channels)
        size = sum(p.stat().st_size for p in target.rglob("*.yaml"))
        print(f"config: {sections} channel sections, {args.tenants} tenants, {size / 1e6:.1f} MB")

        nexus = [sys.executable, "-m", "engine.cli", "lint", str(target)]
        walls = []
        for _ in range(args.runs):
            start = time.perf_counter()
            proc = subprocess.run(nexus, cwd=ROOT, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            print(f"nexus lint exited {proc.returncode}: the generated config must be clean")
            return 1

        sys.path.insert(0, str(ROOT))
        from engine.config.validate import validate_paths

        inproc = []
        for _ in range(args.runs):
            start = time.perf_counter()
            validate_paths([target], mode="lint")
            inproc.append(time.perf_counter() - start)

        print(f"nexus lint (whole command): median {statistics.median(walls):.2f} s, "
              f"runs {', '.join(f'{w:.2f}' for w in walls)}  (goal < 2 s)")
        print(f"validate_paths in-process:  median {statistics.median(inproc):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
