"""Trigger groups: which kinds of function an instance of the local runtime runs.

Flex Consumption scales functions in groups, each on instances of its own: all HTTP triggers together, all Durable
triggers together, all blob triggers together, and every other function alone
(learn.microsoft.com/azure/azure-functions/flex-consumption-plan#per-function-scaling). The local runtime has four
groups: ``http``, ``durable`` (orchestrations and activities), ``servicebus`` and ``timer``.

``WRITEBACK_DEV_INSTANCE_GROUPS`` pins groups to instances: entries for the instances separated by ``;``, groups within
an entry by ``,``. ``"http;durable,servicebus,timer"`` runs the HTTP functions on the first instance and the rest on
the second. Unset, every instance runs every group. With more instances than entries, the entries repeat.
"""

from __future__ import annotations

HTTP = "http"
DURABLE = "durable"
SERVICE_BUS = "servicebus"
TIMER = "timer"
ALL_GROUPS: frozenset[str] = frozenset({HTTP, DURABLE, SERVICE_BUS, TIMER})

GROUPS_SETTING = "WRITEBACK_DEV_INSTANCE_GROUPS"
INSTANCES_SETTING = "WRITEBACK_DEV_INSTANCES"


class InstanceGroupsError(ValueError):
    """``WRITEBACK_DEV_INSTANCE_GROUPS`` names an unknown group, or leaves a group on no instance."""


def parse_instance_groups(text: str | None) -> list[frozenset[str]]:
    """The groups of each instance named in ``text``; ``[]`` when unset or empty (every instance runs everything)."""
    if not text or not text.strip():
        return []
    entries = [parse_groups(raw) for raw in text.split(";")]
    missing = ALL_GROUPS - frozenset().union(*entries)
    if missing:
        raise InstanceGroupsError(f"{GROUPS_SETTING}: no instance runs {', '.join(sorted(missing))}")
    return entries


def parse_groups(text: str) -> frozenset[str]:
    """The groups of one instance: names separated by ``,``."""
    groups = frozenset(g.strip().lower() for g in text.split(",") if g.strip())
    if not groups:
        raise InstanceGroupsError(f"{GROUPS_SETTING}: an instance with no group ({text!r})")
    unknown = groups - ALL_GROUPS
    if unknown:
        raise InstanceGroupsError(
            f"{GROUPS_SETTING}: unknown group(s) {', '.join(sorted(unknown))}; "
            f"the groups are {', '.join(sorted(ALL_GROUPS))}"
        )
    return groups


def plan_instances(count: int, groups_text: str | None) -> list[frozenset[str]]:
    """The groups of each of the instances to start: at least ``count`` of them, and at least one per entry."""
    if count < 1:
        raise InstanceGroupsError(f"{INSTANCES_SETTING} must be at least 1, not {count}")
    entries = parse_instance_groups(groups_text)
    if not entries:
        return [ALL_GROUPS] * count
    return [entries[i % len(entries)] for i in range(max(count, len(entries)))]


def format_groups(groups: frozenset[str]) -> str:
    return ",".join(sorted(groups))
