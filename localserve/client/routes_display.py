"""Display text of routes, shared by the CLI and the TUI (UI-neutral: plain strings and
rows of cells from the `/api/routes` answers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from localserve.client.display import human_time

VERSION_HEADERS = ("VERSION", "WEIGHT", "SHARE", "REQUESTS", "ERRORS", "TTFT P95", "TOK/S", "POOR")
LIST_HEADERS = ("NAME", "TARGETS", "REVISION", "UPDATED", "ROLLOUT")
HISTORY_HEADERS = ("REV", "WHEN", "WHO", "FROM", "TO", "REASON")


def _when(timestamp: float | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "-"
    return human_time(datetime.fromtimestamp(timestamp, UTC), now)


def _weight(value: Any) -> str:
    number = float(value)
    return f"{number:g}"


def targets_text(targets: Sequence[Mapping[str, Any]]) -> str:
    """`a:v1=90 b:v2=10` (a single target: its name alone)."""
    if len(targets) == 1:
        return str(targets[0]["model"])
    return " ".join(f"{t['model']}={_weight(t['weight'])}" for t in targets)


def rollout_text(rollout: Mapping[str, Any] | None) -> str:
    if not rollout:
        return "-"
    status = str(rollout.get("status", ""))
    percent = float(rollout.get("percent", 0))
    text = f"{status} -> {rollout.get('candidate')} at {percent:g}%"
    if status in ("running", "paused"):
        text += f" (step {int(rollout.get('step', 0)) + 1}/{len(rollout.get('steps', []))})"
    if rollout.get("reason"):
        text += f": {rollout['reason']}"
    return text


def list_rows(routes: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[list[str]]:
    return [
        [
            str(route["name"]),
            targets_text(route["targets"]),
            str(route["revision"]),
            _when(route.get("updated_at"), now),
            rollout_text(route.get("rollout")) if route.get("rollout") else "-",
        ]
        for route in routes
    ]


def _ms(seconds: Any) -> str:
    return f"{float(seconds) * 1000:.0f} ms" if seconds is not None else "-"


def _rate(value: Any) -> str:
    return f"{float(value):.1f}" if value else "-"


def _pct(value: Any) -> str:
    return f"{float(value):.0%}"


def version_rows(route: Mapping[str, Any]) -> list[list[str]]:
    """One row per version: its weight and share, and its live figures (5 minutes)."""
    weights = {str(t["model"]): t for t in route.get("targets", [])}
    figures: Mapping[str, Mapping[str, Any]] = route.get("versions", {})
    rows = []
    for version in [*weights, *(v for v in figures if v not in weights)]:
        target = weights.get(version)
        live = figures.get(version, {})
        requests = int(live.get("requests", 0))
        rows.append(
            [
                version,
                _weight(target["weight"]) if target else "0",
                _pct(target.get("share", 0)) if target else "0%",
                str(requests),
                _pct(live.get("error_rate", 0)) if requests else "-",
                _ms(live.get("ttft_p95_s")),
                _rate(live.get("tokens_per_second")),
                _pct(live.get("poor_answer_rate", 0)) if requests else "-",
            ]
        )
    return rows


def history_rows(
    history: Sequence[Mapping[str, Any]], now: datetime | None = None
) -> list[list[str]]:
    return [
        [
            str(change["revision"]),
            _when(change.get("time"), now),
            str(change.get("who", "")),
            targets_text(change["old"]) if change.get("old") else "-",
            targets_text(change["new"]) if change.get("new") else "-",
            str(change.get("reason", "")),
        ]
        for change in history
    ]


def shadow_text(shadow: Mapping[str, Any]) -> str:
    """One line on the shadow comparisons of a rollout."""

    def ratio(value: Any) -> str:
        return f"{float(value):.2f}x" if value is not None else "-"

    agreement = shadow.get("agreement_rate")
    agreed = (
        f"{float(agreement):.0%} of {shadow.get('greedy', 0)} greedy"
        if agreement is not None
        else "-"
    )
    return (
        f"shadow    {shadow.get('requests', 0)} compared ({shadow.get('errors', 0)} failed, "
        f"{shadow.get('skipped', 0)} skipped); agreement {agreed}; "
        f"length {ratio(shadow.get('length_ratio'))}; TTFT {ratio(shadow.get('ttft_ratio'))}"
    )


def route_summary(route: Mapping[str, Any]) -> list[str]:
    """The lines above a route's version table."""
    lines = [
        f"route     {route['name']}  (revision {route['revision']})",
        f"targets   {targets_text(route['targets'])}",
    ]
    if route.get("warming"):
        lines.append(f"serving   {targets_text(route['serving'])}  (new versions loading)")
    rollout = route.get("rollout") or {}
    lines.append(f"rollout   {rollout_text(rollout)}")
    if rollout.get("shadow") and rollout.get("shadow_results"):
        lines.append(shadow_text(rollout["shadow_results"]))
    return lines
