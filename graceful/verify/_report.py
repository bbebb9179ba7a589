"""What ``graceful verify`` saw, and what it means: the figures, a diagnosis per kind of failure.

Pure: built from the load's counts and each replaced pod's record, so the diagnosis is tested as
a table (tests/test_verify.py) and the JSON is the same figures the text shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from graceful.verify._load import CONNECT, FAILURE_KINDS, OTHER, RESET, STATUS, TIMEOUT, LoadResult


@dataclasses.dataclass(frozen=True)
class PodOutcome:
    name: str
    #: Seconds from SIGTERM to exit; None when it never got SIGTERM or never exited.
    term_to_exit: float | None
    exit_status: int | None
    sigkilled: bool
    pre_stop: str = ""


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    kind: str  # a failure kind, or "sigkill"
    count: int
    example: str
    cause: str
    fix: str


@dataclasses.dataclass(frozen=True)
class Report:
    requests: int
    failures: dict[str, int]
    by_client: dict[str, dict[str, int]]
    pods: list[PodOutcome]
    diagnoses: list[Diagnosis]
    seconds: float
    isolation: str
    readiness: str

    @property
    def lost(self) -> int:
        return sum(self.failures.values())

    @property
    def sigkilled(self) -> int:
        return sum(1 for pod in self.pods if pod.sigkilled)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.sigkilled == 0

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "requests": self.requests,
            "failed": self.lost,
            "failures": self.failures,
            "by_client": self.by_client,
            "pods": [dataclasses.asdict(pod) for pod in self.pods],
            "sigkilled": self.sigkilled,
            "diagnoses": [dataclasses.asdict(diagnosis) for diagnosis in self.diagnoses],
            "seconds": round(self.seconds, 2),
            "isolation": self.isolation,
            "readiness": self.readiness,
        }

    def text(self) -> str:
        verdict = "nothing lost, no SIGKILL" if self.ok else f"{self.lost} failed, {self.sigkilled} SIGKILLed"
        lines = [
            f"graceful verify: {self.requests} requests in {self.seconds:.1f} s, {verdict}",
            "  failures: "
            + (", ".join(f"{kind} {count}" for kind, count in self.failures.items() if count) or "none"),
        ]
        for pod in self.pods:
            exit_text = (
                "did not exit"
                if pod.term_to_exit is None
                else f"exited {pod.term_to_exit:.2f} s after SIGTERM"
            )
            lines.append(
                f"  {pod.name}: {exit_text}, status {pod.exit_status}, "
                f"{'SIGKILLed' if pod.sigkilled else 'no SIGKILL'}"
                + (f", preStop {pod.pre_stop}" if pod.pre_stop else "")
            )
        for diagnosis in self.diagnoses:
            lines += [
                f"  {diagnosis.kind} x{diagnosis.count}: {diagnosis.cause}",
                f"    e.g. {diagnosis.example}",
                f"    fix: {diagnosis.fix}",
            ]
        return "\n".join(lines)


def build_report(
    load: LoadResult,
    pods: Sequence[PodOutcome],
    *,
    seconds: float,
    isolation: str,
    readiness: str,
    grace: float,
) -> Report:
    failures = {kind: count for kind, count in load.by_outcome().items() if kind in FAILURE_KINDS and count}
    by_client: dict[str, dict[str, int]] = {}
    for (client, outcome), count in sorted(load.outcomes.items()):
        by_client.setdefault(client, {})[outcome] = count
    return Report(
        requests=load.requests,
        failures=failures,
        by_client=by_client,
        pods=list(pods),
        diagnoses=diagnose(load, pods, grace=grace),
        seconds=seconds,
        isolation=isolation,
        readiness=readiness,
    )


def diagnose(load: LoadResult, pods: Sequence[PodOutcome], *, grace: float) -> list[Diagnosis]:
    """The likely cause and the fix of each kind of loss seen."""
    found: list[Diagnosis] = []

    def example(*kinds: str, client: str | None = None) -> str:
        for sample in load.samples:
            if any(f": {kind}: " in sample for kind in kinds) and (
                client is None or f" {client}: " in sample
            ):
                return sample.strip()
        return "-"

    new_connections = sum(
        count
        for (client, kind), count in load.outcomes.items()
        if client == "newconn" and kind in (CONNECT, RESET)
    )
    kept_alive = sum(
        count
        for (client, kind), count in load.outcomes.items()
        if client in ("keepalive", "idle") and kind in (CONNECT, RESET)
    )
    if new_connections:
        found.append(
            Diagnosis(
                kind="refused or closed on a new connection",
                count=new_connections,
                example=example(CONNECT, RESET, client="newconn"),
                cause="the listener closed at SIGTERM while the balancer still sent it new connections "
                "(the endpoint-propagation lag)",
                fix="keep serving through a drain delay longer than the lag: run under graceful-run "
                "(GRACEFUL_DRAIN_DELAY), add graceful's middleware, or a preStop sleep longer than the lag",
            )
        )
    if kept_alive:
        found.append(
            Diagnosis(
                kind="reset on a kept-alive connection",
                count=kept_alive,
                example=example(CONNECT, RESET, client="keepalive")
                if example(CONNECT, RESET, client="keepalive") != "-"
                else example(CONNECT, RESET, client="idle"),
                cause="the server closed kept-alive connections under their clients (or the listener "
                "refused their reconnection): no Connection: close while draining",
                fix="graceful's middleware answers Connection: close while draining, so clients move "
                "on between requests; with graceful-run alone, add the middleware too",
            )
        )
    counts = load.by_outcome()
    if counts[STATUS]:
        found.append(
            Diagnosis(
                kind=STATUS,
                count=counts[STATUS],
                example=example(STATUS),
                cause="the service answered non-2xx during the rollout (a 502/503 from a pod that was "
                "starting or stopping, or the app's own errors)",
                fix="point readiness at a path that fails while starting and draining (/healthz/ready); "
                "check the example's status",
            )
        )
    if counts[TIMEOUT]:
        found.append(
            Diagnosis(
                kind=TIMEOUT,
                count=counts[TIMEOUT],
                example=example(TIMEOUT),
                cause="requests hung: a pod stopped reading but kept its connections open, "
                "or was SIGKILLed mid-request",
                fix="let in-flight requests finish (GRACEFUL_DRAIN_TIMEOUT) within the grace period",
            )
        )
    if counts[OTHER]:
        found.append(
            Diagnosis(
                kind=OTHER,
                count=counts[OTHER],
                example=example(OTHER),
                cause="an unexpected client error",
                fix="see the example",
            )
        )
    killed = [pod for pod in pods if pod.sigkilled]
    if killed:
        found.append(
            Diagnosis(
                kind="sigkill",
                count=len(killed),
                example=f"{killed[0].name}: still running {grace:g} s after SIGTERM",
                cause="SIGTERM never reached the server, or it did not stop: a shell wrapper "
                "(sh -c, a start script without exec) is PID 1 and does not forward it, or the drain "
                "takes longer than the grace period",
                fix='make the server PID 1 or put graceful-run first (ENTRYPOINT ["graceful-run", "--", '
                "...]); exec the server in start scripts; keep drain_delay + drain_timeout + 2 s within "
                "the grace period",
            )
        )
    return found
