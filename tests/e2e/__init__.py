"""End-to-end rollout harness: HAProxy as kube-proxy, PID namespaces as containers (see docs/testing.md)."""
