"""The rules: stable codes, severities and fixes. docs/doctor.md, ``--ignore`` and SARIF read this table.

Severity follows issue 14: **error** for a cause that loses requests or ends in SIGKILL, **warning**
for one that loses them only in some rollouts.
"""

from __future__ import annotations

import dataclasses

from graceful.doctor._findings import Finding, Severity


@dataclasses.dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    summary: str
    fix: str


RULES: dict[str, Rule] = {
    rule.code: rule
    for rule in (
        Rule(
            "GR001",
            "shell-form-without-init",
            "error",
            "the container's command runs under a shell with no init: SIGTERM stops at the shell",
            "use the exec form (JSON array), `exec` the server in the shell string, or put an init "
            "(graceful-run, tini, dumb-init) in front",
        ),
        Rule(
            "GR002",
            "entry-script-without-exec",
            "error",
            "the entry script starts the server without `exec`: the shell keeps PID 1 and SIGTERM",
            "start the server with `exec` as the script's last command (`exec uvicorn ...`)",
        ),
        Rule(
            "GR003",
            "children-without-init",
            "warning",
            "the command starts more than one process and nothing reaps them or forwards signals",
            "run it under an init: graceful-run or tini as ENTRYPOINT, `init: true` in compose, "
            "`docker run --init`",
        ),
        Rule(
            "GR004",
            "grace-period-shorter-than-drain",
            "error",
            "the termination grace period ends before the drain does: SIGKILL cuts in-flight requests",
            "raise terminationGracePeriodSeconds (stop_grace_period in compose) to at least the figure "
            "given, or shorten the drain",
        ),
        Rule(
            "GR005",
            "no-readiness-probe",
            "error",
            "the container has no readiness probe: it gets traffic before it serves and while it drains",
            "add a readinessProbe (httpGet on graceful's /healthz/ready)",
        ),
        Rule(
            "GR006",
            "tcp-readiness-probe",
            "warning",
            "the readiness probe is tcpSocket: it passes while the server drains and before the app is up",
            "probe readiness with httpGet on an endpoint that fails while draining (/healthz/ready)",
        ),
        Rule(
            "GR007",
            "readiness-same-as-liveness",
            "warning",
            "readiness and liveness probe the same endpoint: a draining pod fails liveness and is restarted",
            "give liveness its own endpoint that stays 200 while draining (/healthz/live)",
        ),
        Rule(
            "GR008",
            "no-drain",
            "error",
            "the server closes its listener at SIGTERM and nothing delays it while endpoints still route",
            "run it under graceful (graceful-run, python -m graceful.uvicorn, graceful.gunicorn workers) "
            "or add a preStop sleep longer than endpoint propagation",
        ),
        Rule(
            "GR009",
            "rollout-can-take-all-replicas",
            "warning",
            "the rollout strategy may take down every ready replica at once",
            "set strategy.rollingUpdate.maxUnavailable below replicas (0 with maxSurge >= 1 is lossless)",
        ),
        Rule(
            "GR010",
            "single-replica-without-pdb",
            "warning",
            "one replica and no PodDisruptionBudget: a node drain evicts the only pod",
            "run at least 2 replicas with a PodDisruptionBudget (minAvailable: 1)",
        ),
        Rule(
            "GR011",
            "stop-bypasses-drain",
            "warning",
            "the stop signal or the preStop hook stops the server without its drain",
            "stop with SIGTERM (the drain signal); let preStop sleep or call /shutdown instead of killing",
        ),
        Rule(
            "GR012",
            "keep-alive-shorter-than-idle-timeout",
            "warning",
            "the server closes idle keep-alive connections before the balancer does: 502s on reuse",
            "set the server's keep-alive above the balancer's idle timeout (GRACEFUL_KEEP_ALIVE, "
            "uvicorn --timeout-keep-alive, gunicorn --keep-alive)",
        ),
    )
}


def finding(code: str, path: str, line: int, col: int, message: str) -> Finding:
    """A finding of rule ``code``: severity and fix come from the table."""
    rule = RULES[code]
    return Finding(
        code=code, severity=rule.severity, path=path, line=line, col=col, message=message, fix=rule.fix
    )
