"""`llm-operator run`: configure Kopf and the Kubernetes client, then run the handlers."""

from __future__ import annotations

import os
import logging
import time

import kopf
import prometheus_client
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from . import handlers, kueue
from .job_loop import JobLoops
from .kube import Kube
from .lifecycle import LifecycleSettings
from .reconcile import WRITE_CONCURRENCY, Reconciler
from .render import RenderContext
from .render.gang import GANG_APIS, KUBERNETES_API, default_gang_scheduler, keeps_topology, topology_probe_pod_group
from .render.names import JOB_NAME_LABEL
from .view import ClusterView

LAUNCHER_IMAGE_ENV = "LLMTO_LAUNCHER_IMAGE"  # the trainer image program pods copy the launcher from

PREFIX = "llmtraining.dev"
log = logging.getLogger("llm_operator")


def load_kube_config() -> None:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()


class EventHandlersOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf builds every event's diff base (a deep copy of the whole object) to detect changes for on.create /
    on.update / on.field handlers, even when there are none: a fifth of the operator's CPU under a burst of
    pod events. This operator has only on.event handlers (tests/unit/test_handlers.py holds it to that), so
    the diff base is never read: build an empty one."""

    def build(self, *, body: kopf.Body, extra_fields=None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


def discover_gang_apis(kube: Kube, attempts: int = 6) -> frozenset[str]:
    """The PodGroup APIs the API server serves, asked once at start-up (a cluster that turns one on later needs an
    operator restart). Retried, then fatal: a guess would fail or ungroup jobs for the operator's whole life."""
    for attempt in range(attempts):
        try:
            return kube.served_group_versions(GANG_APIS, "podgroups")
        except Exception as exc:  # the API server not reachable yet
            if attempt == attempts - 1:
                raise
            log.warning("API discovery of the PodGroup APIs failed (retrying): %s", exc)
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def discover_pod_group_topology(kube: Kube, gang_apis: frozenset[str], namespace: str, attempts: int = 6) -> bool:
    """Whether the API server keeps PodGroup spec.schedulingConstraints.topology (gate TopologyAwareWorkloadScheduling),
    from a dry-run create of a probe PodGroup in `namespace` (render/gang.py says why not the OpenAPI schema). A refusal
    (no right to create PodGroups there, no such namespace, a probe it finds invalid) means no: jobs that require a
    topology then fail saying so, rather than run unplaced."""
    if KUBERNETES_API not in gang_apis:
        return False
    for attempt in range(attempts):
        try:
            return keeps_topology(kube.dry_run_create(topology_probe_pod_group(namespace)))
        except ApiException as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                log.warning("PodGroup topology discovery: a dry-run PodGroup in namespace %s was refused (%s %s): taken as not served",
                            namespace, exc.status, exc.reason)
                return False
            if attempt == attempts - 1:
                raise
            log.warning("PodGroup topology discovery failed (retrying): %s", exc)
        except Exception as exc:  # the API server not reachable yet
            if attempt == attempts - 1:
                raise
            log.warning("PodGroup topology discovery failed (retrying): %s", exc)
        time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def configure_settings(settings: kopf.OperatorSettings) -> None:
    # Our prefix, not Kopf's: handler progress and the last-handled spec live in annotations
    # (the status subresource belongs to the API, and its schema would prune Kopf's fields).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = EventHandlersOnlyDiffBase(prefix=PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # only our pods, filtered by the API server: the others would cost memory and CPU for nothing
    settings.watching.label_selectors["v1", "pods"] = JOB_NAME_LABEL
    settings.watching.label_selectors[kueue.GROUP, kueue.WORKLOAD_PLURAL] = JOB_NAME_LABEL  # only our Workloads
    settings.networking.request_timeout = 60
    # Kopf keeps a worker per object for a while after its last event, and the worker holds that event's whole
    # body: after a burst of pod events, thousands of them. Let them go soon (a new one costs a task).
    settings.queueing.idle_timeout = 0.5
    settings.execution.max_workers = 8


def run_operator(*, namespaces: list[str], all_namespaces: bool, health_port: int, metrics_port: int, cluster_domain: str,
                 progress_interval: float = 15.0, log_format: str = "json", verbose: bool = False,
                 lifecycle: LifecycleSettings | None = None, gang_scheduler: str = "auto", volcano_scheduler_name: str = "volcano",
                 coscheduling_scheduler_name: str = "scheduler-plugins-scheduler") -> int:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL)
    if not verbose:  # "Handler 'pod_event' succeeded." for every watch event: a log line per event, for nothing
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    load_kube_config()
    from .ssh_keys import generate_job_keys

    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 2 * WRITE_CONCURRENCY  # the writers, the reconcile threads, the sweeps
    kube = Kube(client.ApiClient(configuration))
    gang_apis = discover_gang_apis(kube)
    # a namespace the operator may create PodGroups in: a watched one, else `default` (cluster-wide rights)
    pod_group_topology = discover_pod_group_topology(kube, gang_apis, namespaces[0] if namespaces else "default")
    ctx = RenderContext(cluster_domain=cluster_domain, gang_apis=gang_apis, default_gang_scheduler=gang_scheduler,
                        pod_group_topology=pod_group_topology,
                        volcano_scheduler_name=volcano_scheduler_name, coscheduling_scheduler_name=coscheduling_scheduler_name,
                        # the image program jobs' init containers copy the launcher from (the chart's trainer image)
                        launcher_image=os.environ.get(LAUNCHER_IMAGE_ENV) or RenderContext.launcher_image)
    log.info("gang scheduling: %s served; jobs that name no gang scheduler use %s", ", ".join(sorted(gang_apis)) or "no PodGroup API",
             default_gang_scheduler(gang_scheduler, gang_apis))
    log.info("PodGroup schedulingConstraints.topology (gate TopologyAwareWorkloadScheduling): %s",
             "kept by the API server" if pod_group_topology else "not served: spec.gang.topology needs Kueue")
    reconciler = Reconciler(kube=kube, view=ClusterView(), ctx=ctx, emit=kube.post_event,
                            generate_ssh_keys=generate_job_keys, settings=lifecycle or LifecycleSettings())
    kueue_on = reconciler.settings.kueue
    handlers.install(JobLoops(reconciler, progress_interval, namespaces=namespaces, kueue=kueue_on), kueue=kueue_on)

    if metrics_port:
        prometheus_client.start_http_server(metrics_port)

    @kopf.on.startup()
    def _startup(settings: kopf.OperatorSettings, **_) -> None:
        configure_settings(settings)

    log.info("starting llm-training-operator", extra={"namespaces": namespaces or "*", "cluster_domain": cluster_domain,
                                                      "kueue": reconciler.settings.kueue})
    kopf.run(
        standalone=True,  # one replica (Deployment strategy Recreate); no peering objects needed
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
    )
    return 0
