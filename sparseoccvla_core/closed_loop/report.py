"""``closed_loop.html`` + ``closed_loop.md`` + ``metrics.json`` + ``images/`` of a closed-loop run (docs/closed_loop.md §7).

The page opens from disk (relative image links): the run (episodes, seed, mode, checkpoint, real-time factor,
recording), the total table (one row per planner, every metric), the per-episode table of each planner with its
events, and one top-down replay strip per (planner, episode).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .metrics import COMFORT, PENALTY
from .replay import strip_png

TOTAL_COLUMNS = [
    ("driving_score", "driving score"),
    ("route_completion", "route completion"),
    ("infraction_penalty", "infraction penalty"),
    ("collisions_at_fault", "at-fault collisions"),
    ("collisions_by_class", "ped / veh / static"),
    ("collisions_not_at_fault", "not-at-fault collisions"),
    ("red_light_violations", "red lights run"),
    ("offroad_fraction", "off-road time"),
    ("drivable_area_compliance_rate", "driveable-area compliant"),
    ("ttc_compliance_rate", "TTC > 0.95 s"),
    ("min_ttc_s", "min TTC (s)"),
    ("comfort_rate", "comfortable"),
    ("no_plan_frames", "no-plan frames"),
    ("invalid_plan_frames", "invalid-plan frames"),
    ("distance_km", "km"),
    ("at_fault_collisions_per_km", "at-fault coll./km"),
]
EPISODE_COLUMNS = [
    ("driving_score", "DS"),
    ("route_completion", "RC"),
    ("progress_m", "progress (m)"),
    ("collisions_at_fault", "at-fault coll."),
    ("red_light_violations", "red lights"),
    ("offroad_fraction", "off-road"),
    ("min_ttc_s", "min TTC"),
    ("comfortable", "comfortable"),
    ("fallbacks", "no / bad plan"),
    ("mean_speed_mps", "mean v (m/s)"),
]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _total_row(total: dict) -> list[str]:
    row = []
    for key, _ in TOTAL_COLUMNS:
        if key == "collisions_by_class":
            c = total.get("collisions_at_fault_by_class", {})
            row.append(f"{c.get('pedestrian', 0)} / {c.get('vehicle', 0)} / {c.get('static', 0)}")
        else:
            row.append(_fmt(total.get(key)))
    return row


def _episode_row(m: dict) -> list[str]:
    row = []
    for key, _ in EPISODE_COLUMNS:
        if key == "comfortable":
            row.append(
                _fmt(m["comfort"]["comfortable"])
                + (f" ({', '.join(m['comfort']['violated'])})" if m["comfort"]["violated"] else "")
            )
        elif key == "fallbacks":
            row.append(f"{m['no_plan_frames']} / {m['invalid_plan_frames']}")
        else:
            row.append(_fmt(m.get(key)))
    return row


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics_doc(runs: dict, info: dict) -> dict:
    """The JSON document: run info, per planner the total and every episode's metrics and events."""
    out = {"run": info, "planners": {}}
    for name, run in runs.items():
        out["planners"][name] = {
            "total": run["total"],
            "episodes": {
                r.spec.name: {
                    "kind": r.spec.kind,
                    "notes": r.log.notes,
                    "metrics": r.metrics,
                    "events": [e.to_dict() for e in r.events],
                    "wall_s": round(r.wall_s, 2),
                }  # fmt: skip
                for r in run["episodes"]
            },
        }
    return out


def write_report(out: str | Path, runs: dict, info: dict, strips: bool = True, progress=None) -> dict:
    """Write the report files into ``out``; ``runs``: planner name -> {"episodes": [EpisodeResult], "total"}.

    Returns {"html", "md", "json", "images": [paths]}.
    """
    out = Path(out)
    img_dir = out / "images"
    out.mkdir(parents=True, exist_ok=True)
    doc = metrics_doc(runs, info)
    (out / "metrics.json").write_text(json.dumps(doc, indent=2))
    images: dict[tuple[str, str], str] = {}
    if strips:
        for name, run in runs.items():
            slug = name.replace(" ", "_").replace("/", "_")
            for r in run["episodes"]:
                rel = f"images/{slug}_{r.spec.name}.png"
                strip_png(r, out / rel)
                images[(name, r.spec.name)] = rel
            if progress is not None:
                progress(f"replay strips of '{name}' -> {img_dir}")
    header = ["planner"] + [h for _, h in TOTAL_COLUMNS]
    rows = [[name] + _total_row(run["total"]) for name, run in runs.items()]
    episode_names = []
    for run in runs.values():
        for r in run["episodes"]:
            if r.spec.name not in episode_names:
                episode_names.append(r.spec.name)

    intro = [
        f"Episodes: {info.get('episodes')} (seed {info.get('seed')}, kinds {', '.join(info.get('kinds', []))}); "
        f"mode: {info.get('mode')}; checkpoint: {info.get('checkpoint', '-')}.",
        f"Real-time factor of the model episodes (simulated s per wall s, rendering + ROS 2 + model on this machine): "
        f"{_fmt(info.get('real_time_factor'))}; {info.get('machine', '')}.",
        f"Recording: {info.get('recording', '-')}.",
        "Composite: CARLA Leaderboard 1.0 driving score = route completion x infraction penalty (penalties: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in PENALTY.items())
        + "; at-fault collisions only, nuPlan's rule): the episodes are CARLA-style routes with a time limit through "
        "signals and past pedestrians, and CARLA's score penalises exactly those infractions, while nuPlan's CLS has "
        "no red-light term and measures progress against an expert. Comfort bounds (nuPlan): "
        + ", ".join(f"{k} {v}" for k, v in COMFORT.items())
        + ". Formulas: docs/closed_loop.md section 4.",
    ]
    md = ["# Closed-loop driving in the synthetic world", "", *intro, "", "## Total", "", _md_table(header, rows), ""]
    ht = [
        "<!doctype html><html><head><meta charset='utf-8'><title>closed loop</title><style>"
        "body{font-family:sans-serif;margin:1.5em;max-width:1500px} table{border-collapse:collapse;margin:.6em 0;"
        "font-size:13px} td,th{border:1px solid #bbb;padding:3px 6px;text-align:right} td:first-child,th:first-child"
        "{text-align:left} img{max-width:100%;border:1px solid #ddd} .ev{font-size:13px}</style></head><body>",
        "<h1>Closed-loop driving in the synthetic world</h1>",
        *[f"<p>{html.escape(p)}</p>" for p in intro],
        "<h2>Total</h2>",
        _html_table(header, rows),
    ]
    ep_header = ["episode"] + [h for _, h in EPISODE_COLUMNS]
    for name, run in runs.items():
        ep_rows = [[r.spec.name] + _episode_row(r.metrics) for r in run["episodes"]]
        md += [f"## {name}: per episode", "", _md_table(ep_header, ep_rows), ""]
        ht += [f"<h2>{html.escape(name)}: per episode</h2>", _html_table(ep_header, ep_rows)]
    md += ["## Episodes", ""]
    ht += ["<h2>Episodes</h2>"]
    for ep in episode_names:
        md += [f"### {ep}", ""]
        ht += [f"<h3>{html.escape(ep)}</h3>"]
        for name, run in runs.items():
            r = next((x for x in run["episodes"] if x.spec.name == ep), None)
            if r is None:
                continue
            if r.log.notes:
                md.append(f"*{r.log.notes}*")
            events = [f"t {e.t:.2f} s (frame {e.frame}): {e.kind} - {e.text}" for e in r.events] or ["no events"]
            md += [f"**{name}** ({r.metrics['driving_score']:.2f} DS):", ""] + [f"- {e}" for e in events] + [""]
            ht.append(f"<p><b>{html.escape(name)}</b> - {html.escape(r.log.notes)}</p><ul class='ev'>"
                      + "".join(f"<li>{html.escape(e)}</li>" for e in events) + "</ul>")  # fmt: skip
            rel = images.get((name, ep))
            if rel:
                md += [f"![{name} {ep}]({rel})", ""]
                ht.append(f"<img src='{html.escape(rel)}' alt='{html.escape(name)} {html.escape(ep)}'>")
    ht.append("</body></html>")
    (out / "closed_loop.md").write_text("\n".join(md) + "\n")
    (out / "closed_loop.html").write_text("\n".join(ht) + "\n")
    return {"html": out / "closed_loop.html", "md": out / "closed_loop.md", "json": out / "metrics.json",
            "images": [out / p for p in images.values()]}  # fmt: skip


def report_info(**kwargs) -> dict:
    """Run info for the report header (JSON-able values only)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items() if v is not None}


__all__ = ["write_report", "report_info", "metrics_doc"]
