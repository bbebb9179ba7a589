"""``graceful verify``: replace the user's own pods under load on one machine, report what was lost.

The termination race of a cluster rebuilt from real programs (``_cluster``: HAProxy as
kube-proxy, pods as PID 1 of their own PID namespaces, a kubelet with probes, preStop, SIGTERM
and SIGKILL, and the endpoint-propagation lag), the load (``_load``), and the report with a
diagnosis per kind of failure (``_report``). docs/verify.md.
"""
