"""graceful doctor on odd input: any YAML shape in the keys it reads, any Dockerfile text: never a traceback."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graceful.doctor import examine

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.text(max_size=8), st.just("25%"))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = [
    "replicas", "strategy", "template", "containers", "command", "args", "env", "ports", "lifecycle",
    "readinessProbe", "livenessProbe", "terminationGracePeriodSeconds", "rollingUpdate", "maxUnavailable",
    "metadata", "labels", "selector", "spec", "annotations", "services", "stop_grace_period", "stop_signal",
    "init", "entrypoint", "environment", "items", "rules", "backend", "preStop", "exec", "httpGet", "sleep",
]  # fmt: skip
shapes = st.recursive(
    values,
    lambda inner: st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=20,
)
kinds = st.sampled_from(["Deployment", "StatefulSet", "DaemonSet", "List", "Ingress", "Service",
                         "PodDisruptionBudget", "HorizontalPodAutoscaler", None])  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=kinds, body=shapes)
def test_any_manifest_shape_gives_findings_not_exceptions(
    tmp_path: Path, kind: str | None, body: object
) -> None:
    """Whatever sits under the keys the checks read, diagnose returns a report."""
    document = {"apiVersion": "apps/v1", "kind": kind, "spec": body, "services": body}
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump_all([document, body]))
    report = examine([str(path)])
    assert isinstance(report.findings, list)


lines = st.sampled_from(
    [
        "FROM python:3.12", "FROM base AS run", "FROM", "CMD", "CMD []", 'CMD ["sh", "-c"]', "CMD [1, 2]",
        "ENTRYPOINT", 'ENTRYPOINT ["tini"]', 'ENTRYPOINT ["./x.sh"]', "ENTRYPOINT exec", "STOPSIGNAL",
        "STOPSIGNAL 9", "COPY", "COPY --from=a x /x", "COPY x.sh /", "WORKDIR", "CMD uvicorn 'unclosed",
        "CMD a & b && exec c", "# graceful: ignore[", "\\\\", "RUN echo \\\\",
    ]
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(lines, max_size=8).map("\n".join))
def test_any_dockerfile_text_gives_findings_not_exceptions(tmp_path: Path, text: str) -> None:
    """Instructions in any order, empty or broken, give a report."""
    (tmp_path / "x.sh").write_text("uvicorn app &\n'unclosed\n")
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    assert examine([str(path)]).errors == []
