"""How long ``graceful doctor`` takes over 1,000 Deployment documents (issue 14's bound: < 2 s).

python bench/doctor.py [COUNT]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from graceful.doctor import examine

DOCUMENT = """\
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api-{index}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: api-{index}}}
  template:
    metadata:
      labels: {{app: api-{index}}}
    spec:
      terminationGracePeriodSeconds: 40
      containers:
        - name: api
          image: api:1.0
          command: ["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8000"]
          ports:
            - containerPort: 8000
          readinessProbe:
            httpGet: {{path: /healthz/ready, port: 8000}}
"""


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "manifests.yaml"
        path.write_text("".join(DOCUMENT.format(index=index) for index in range(count)))
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            report = examine([str(path)])
            runs.append(time.perf_counter() - started)
        size = path.stat().st_size / 1e6
    print(
        f"{count} Deployments ({size:.1f} MB), {len(report.findings)} findings: "
        f"best {min(runs) * 1000:.0f} ms, worst {max(runs) * 1000:.0f} ms of 5 runs"
    )


if __name__ == "__main__":
    main()
