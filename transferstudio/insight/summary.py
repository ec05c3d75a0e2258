"""What the transfer checks found, in the few figures an export's manifest keeps: the domain
verdict (before training) and the memorization check of the run's last report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_SUMMARY = "report-summary.json"  # written into the run folder by the report


def export_insights(project: Any, run_dir: Path | None = None) -> dict[str, Any]:
    """{"domain": {...}, "memorization": {...}} for what is known; {} when nothing was checked."""
    from transferstudio.insight.domain import read_saved

    out: dict[str, Any] = {}
    check = read_saved(project)  # None when there is none, or it no longer matches, or is damaged
    if check is not None:
        out["domain"] = {"verdict": check.verdict, "score": check.score}
    folder = Path(run_dir) if run_dir is not None else _newest_trained_run(project)
    if folder is not None:
        try:
            summary = json.loads((folder / RUN_SUMMARY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = None
        memorization = summary.get("memorization") if isinstance(summary, dict) else None
        if isinstance(memorization, dict):
            out["memorization"] = memorization
    return out


def _newest_trained_run(project: Any) -> Path | None:
    from transferstudio.core.errors import ProjectError
    from transferstudio.project.run import find_run

    try:
        run = find_run(project, None)
    except ProjectError:  # a damaged run: the manifest simply goes without it
        return None
    return run.folder if run is not None else None
