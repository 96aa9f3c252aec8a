"""Where a gang with spec.gang.topology landed: each worker's domain at the topology level (its node's label), said in
one line (status.placement). Pure: the reconciler hands in the gang's pods and the labels of their nodes."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .pods import Pod, node_rank

UNLABELLED = "<unlabelled>"  # a node without the level's label: the scheduler placed a worker outside every domain


def nodes_of(gang: Sequence[Pod]) -> list[str]:
    """The nodes the gang's pods are bound to (the ones whose labels the placement needs)."""
    return sorted({node for p in gang if (node := (p.get("spec") or {}).get("nodeName"))})


def _ranks(ranks: Sequence[int]) -> str:
    """0, 1, 2, 5 → "workers 0-2, 5"; one → "worker 3"."""
    runs: list[list[int]] = []
    for rank in sorted(ranks):
        if runs and rank == runs[-1][-1] + 1:
            runs[-1].append(rank)
        else:
            runs.append([rank])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
    return f"{'workers' if len(ranks) > 1 else 'worker'} {text}"


def placement(level: str, workers: int, gang: Sequence[Pod], node_labels: Mapping[str, Mapping[str, str]]) -> Optional[str]:
    """None until every one of the `workers` ranks is bound and its node's labels are known (then the line stays as it
    was: a gang coming up or going away does not blank it). One domain: "<level>=<domain> (all N workers)";
    several: "<level>: <domain> (workers 0-1), <domain> (worker 2)", domains in the order of their lowest rank."""
    node_of: dict[int, str] = {node_rank(p): node for p in gang if (node := (p.get("spec") or {}).get("nodeName"))}
    if sorted(node_of) != list(range(workers)) or any(node not in node_labels for node in node_of.values()):
        return None
    domain_of = {rank: node_labels[node_of[rank]].get(level, UNLABELLED) for rank in range(workers)}
    domains: dict[str, list[int]] = {}
    for rank in range(workers):
        domains.setdefault(domain_of[rank], []).append(rank)
    if len(domains) == 1:
        return f"{level}={next(iter(domains))} ({f'all {workers} workers' if workers > 1 else '1 worker'})"
    return f"{level}: " + ", ".join(f"{domain} ({_ranks(ranks)})" for domain, ranks in domains.items())
