"""`llm-operator`: print the CRD, render a job's children, or run the operator."""

from __future__ import annotations

import argparse
import sys

import yaml

EXIT_INVALID = 2


def _cmd_crd(args: argparse.Namespace) -> int:
    from .api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from .api import SpecError, load_job_file
    from .render import RenderContext, render_children

    try:
        job = load_job_file(args.filename)
        if args.namespace:
            job.metadata.namespace = args.namespace
        children = render_children(job, RenderContext(cluster_domain=args.cluster_domain, default_gang_scheduler=args.gang_scheduler))
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(yaml.safe_dump_all(children, sort_keys=False, width=120))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .main import run_operator

    from .lifecycle import LifecycleSettings

    lifecycle = LifecycleSettings(restart_backoff_seconds=args.restart_backoff, restart_backoff_max_seconds=args.max_restart_backoff,
                                  node_lost_grace_seconds=args.node_lost_grace, peer_loss_wait_seconds=args.peer_loss_wait,
                                  kueue=args.kueue)
    return run_operator(namespaces=args.namespace, all_namespaces=args.all_namespaces, health_port=args.health_port,
                        metrics_port=args.metrics_port, progress_interval=args.progress_interval,
                        cluster_domain=args.cluster_domain, log_format=args.log_format, verbose=args.verbose, lifecycle=lifecycle,
                        gang_scheduler=args.gang_scheduler, volcano_scheduler_name=args.volcano_scheduler_name,
                        coscheduling_scheduler_name=args.coscheduling_scheduler_name,
                        leader_election=not args.no_leader_election)


GANG_DEFAULTS = ("auto", "kubernetes", "volcano", "coscheduling", "none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    crd = sub.add_parser("crd", help="print the LLMTrainingJob CRD generated from the API models")
    crd.set_defaults(func=_cmd_crd)

    render = sub.add_parser("render", help="print the objects the operator would create for a job (multi-document YAML)")
    render.add_argument("-f", "--filename", required=True, help="manifest with one LLMTrainingJob")
    render.add_argument("-n", "--namespace", help="namespace to render into (default: the manifest's, else default)")
    render.add_argument("--cluster-domain", default="cluster.local")
    render.add_argument("--gang-scheduler", choices=GANG_DEFAULTS, default="auto",
                        help="gang scheduler of a job that names none (auto: none here, with no cluster to ask)")
    render.set_defaults(func=_cmd_render)

    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    run.add_argument("--health-port", type=int, default=8080, help="port of the liveness (/healthz) and readiness (/readyz) probes (0 disables)")
    run.add_argument("--metrics-port", type=int, default=8081, help="Prometheus /metrics port (0 disables)")
    run.add_argument("--progress-interval", type=float, default=15.0,
                     help="seconds between reads of rank 0's training metrics for the job status (0 disables)")
    run.add_argument("--restart-backoff", type=float, default=10.0, metavar="SECONDS",
                     help="delay before the first counted gang restart; doubles with each one")
    run.add_argument("--max-restart-backoff", type=float, default=300.0, metavar="SECONDS", help="cap of the restart delay")
    run.add_argument("--node-lost-grace", type=float, default=60.0, metavar="SECONDS",
                     help="how long a running worker may be not Ready (its node unreachable) before the gang restarts")
    run.add_argument("--peer-loss-wait", type=float, default=15.0, metavar="SECONDS",
                     help="when the only failed workers are ranks that lost a peer (gloo/NCCL connection errors), how long "
                          "to wait for the peer's own failure, the cause reported in status.failure, before restarting")
    run.add_argument("--kueue", action="store_true",
                     help="queue jobs labelled kueue.x-k8s.io/queue-name with Kueue: a Workload per job, no pods until it is admitted "
                          "(needs Kueue's CRDs and the chart's kueue RBAC rules; docs/scheduling.md)")
    run.add_argument("--cluster-domain", default="cluster.local")
    run.add_argument("--gang-scheduler", choices=GANG_DEFAULTS, default="auto",
                     help="gang scheduler of the jobs that leave spec.gang.scheduler unset; auto: kubernetes when the API server "
                     "serves scheduling.k8s.io/v1beta1 Workload and PodGroup at start-up, else none")
    run.add_argument("--volcano-scheduler-name", default="volcano", help="schedulerName of the pods of volcano gangs")
    run.add_argument("--coscheduling-scheduler-name", default="scheduler-plugins-scheduler",
                     help="schedulerName of the pods of coscheduling gangs (the scheduler that runs the coscheduling plugin)")
    run.add_argument("--no-leader-election", action="store_true",
                     help="run as the only replica: write at once, take no part in leader election (the Lease "
                          "llm-training-operator in $POD_NAMESPACE, else default; docs/install.md)")
    run.add_argument("--log-format", choices=["json", "plain"], default="json")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
