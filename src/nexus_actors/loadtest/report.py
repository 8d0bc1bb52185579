"""The load test's report: percentiles, the checks that decide the exit status, the table.

``build_report`` turns a :class:`~nexus_actors.loadtest.tally.Tally` into plain
data (the JSON report); ``failed_checks`` reads only that data, so a saved
report can be checked again; ``render`` makes the summary table.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from .histogram import summarize as summarize
from .plan import Plan
from .tally import Tally

RECONNECT_SUCCESS_GOAL = 0.95
"Reconnections that must succeed, as a fraction of those attempted."
KEPT_UP = 0.9
"""The generator kept up when its rooms ran at least this fraction of the sending rounds due
in the run (a round that starts more than an interval late is skipped)."""


class GeneratorFailed(Exception):
    """A generator process (``--processes``) ended without its results."""


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def build_report(plan: Plan, tally: Tally, *, elapsed: float, rooms: int,
                 cpu: float | None = None) -> dict[str, Any]:
    """Everything measured, as JSON-ready data, with the checks and their verdict.

    ``rooms``: the rooms that took part in the load (those set up in time); ``cpu``: CPU
    seconds the generator processes used while the load ran, in all.
    """
    attempted = tally.reconnects_attempted
    due = round(rooms * elapsed / plan.round_interval)
    rounds = tally.tick_lag.count
    round_rate = _ratio(rounds, due)
    report: dict[str, Any] = {
        "plan": {"url": plan.url, "rooms": plan.rooms, "players": plan.players,
                 "duration_s": plan.duration, "cursor_hz": plan.cursor_hz,
                 "moves_per_sec": plan.moves_per_sec, "churn": plan.churn,
                 "churn_interval_s": plan.churn_interval, "seed": plan.seed,
                 "processes": plan.processes},
        "elapsed_s": round(elapsed, 1),
        "connections": {
            "planned": plan.connections, "opened": tally.sessions_opened,
            "failed": sum(tally.connect_failures.values()),
            "failures": dict(tally.connect_failures), "ended_early": dict(tally.ended)},
        "cursors": {
            "sent": tally.cursors_sent, "expected": tally.cursors_expected,
            "received": tally.cursors_received,
            "delivered_ratio": _ratio(tally.cursors_received, tally.cursors_expected),
            "latency_ms": tally.cursor_latency.summary()},
        "events": {
            "sent": tally.moves_sent, "acked": tally.acked,
            "rejected": sum(tally.rejected.values()), "rejections": dict(tally.rejected),
            "timeouts": tally.timeouts, "unreported": tally.unreported, "lost": tally.lost,
            "duplicates": tally.duplicates, "ack_latency_ms": tally.ack_latency.summary()},
        "reconnections": {
            "cuts": tally.cuts, "attempted": attempted,
            "succeeded": tally.reconnects_succeeded, "failed": tally.reconnects_failed,
            "success_rate": _ratio(tally.reconnects_succeeded, attempted),
            "resyncs": tally.resyncs, "time_ms": tally.reconnect_time.summary()},
        "host_migrations": tally.host_migrations,
        "errors": dict(tally.errors),
        "lagged_events": tally.lagged,
        "generator": {
            "rounds": rounds, "rounds_due": due, "round_rate": round_rate,
            "lag_ms": tally.tick_lag.summary(),
            "kept_up": round_rate is None or round_rate >= KEPT_UP,
            "processes": plan.processes,
            "cpu_s": None if cpu is None else round(cpu, 1),
            "cpu_percent": None if cpu is None or not elapsed else round(
                100 * cpu / elapsed, 1)},
    }
    failed = failed_checks(report)
    report["failed_checks"] = failed
    report["passed"] = not failed
    return report


def failed_checks(report: dict[str, Any]) -> list[str]:
    """Why the run failed, one message per check (empty: it passed)."""
    failed = []
    events, reconnections = report["events"], report["reconnections"]
    if report["connections"]["opened"] == 0:
        failed.append("connections: no session could be seated")
    if events["lost"]:
        failed.append(f"lost: {events['lost']} durable events never got an answer "
                      f"(of {events['sent']} sent)")
    if events["duplicates"]:
        failed.append(f"duplicates: {events['duplicates']} events were applied twice")
    rate = reconnections["success_rate"]
    if rate is not None and rate < RECONNECT_SUCCESS_GOAL:
        failed.append(f"reconnections: {reconnections['succeeded']} of "
                      f"{reconnections['attempted']} succeeded ({rate:.1%}; the goal is "
                      f"{RECONNECT_SUCCESS_GOAL:.0%})")
    return failed


def behind(report: dict[str, Any]) -> str | None:
    """How far the generator fell behind its plan (``None``: it kept up)."""
    generator = report["generator"]
    if generator["kept_up"]:
        return None
    lag = generator["lag_ms"]["p50"]
    return (f"no: its rooms ran {generator['rounds']:,} of {generator['rounds_due']:,} "
            f"sending rounds ({generator['round_rate']:.0%})"
            + (f", starting them {lag:,.0f} ms late at the median" if lag is not None else ""))


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counter.items())) or "-"


def _cpu(generator: dict[str, Any]) -> str:
    percent, processes = generator.get("cpu_percent"), generator.get("processes", 1)
    if percent is None:
        return "-"
    share = "" if processes == 1 else f", {processes} processes"
    return f"{percent:.0f}% of one core while loading{share}"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def render(report: dict[str, Any]) -> Group:
    """The summary: a table of latencies (milliseconds) and one of counts and the verdict."""
    plan, connections = report["plan"], report["connections"]
    cursors, events = report["cursors"], report["events"]
    reconnections = report["reconnections"]
    latencies = Table(title=f"nexus-actors loadtest: {plan['rooms']} rooms x "
                            f"{plan['players']} players, {report['elapsed_s']} s, "
                            f"seed {plan['seed']}")
    latencies.add_column("milliseconds")
    for column in ("p50", "p95", "p99", "max", "count"):
        latencies.add_column(column, justify="right")
    for name, summary in (("cursor latency", cursors["latency_ms"]),
                          ("ack latency", events["ack_latency_ms"]),
                          ("reconnect time", reconnections["time_ms"]),
                          ("generator lag", report["generator"]["lag_ms"])):
        latencies.add_row(name, *(_cell(summary[q]) for q in ("p50", "p95", "p99", "max")),
                          f"{summary['count']:,}")
    counts = Table(show_header=False)
    counts.add_column("measure")
    counts.add_column("value", overflow="fold")
    rate = reconnections["success_rate"]
    ratio = cursors["delivered_ratio"]
    rows = [
        ("sessions opened / failed",
         f"{connections['opened']} / {connections['failed']} of {connections['planned']}"
         + (f" ({_counts(connections['failures'])})" if connections["failures"] else "")),
        ("sessions ended early", _counts(connections["ended_early"])),
        ("cursors received / expected",
         f"{cursors['received']:,} / {cursors['expected']:,}"
         + (f" ({ratio:.1%})" if ratio is not None else "")),
        ("moves sent / acked / rejected",
         f"{events['sent']:,} / {events['acked']:,} / {events['rejected']:,}"
         + (f" ({_counts(events['rejections'])})" if events["rejections"] else "")),
        ("moves timed out / answered late", f"{events['timeouts']} / {events['unreported']}"),
        ("lost", str(events["lost"])),
        ("duplicates", str(events["duplicates"])),
        ("connections cut", str(reconnections["cuts"])),
        ("reconnections attempted / succeeded",
         f"{reconnections['attempted']} / {reconnections['succeeded']}"
         + (f" ({rate:.1%})" if rate is not None else "")),
        ("resyncs (state replaced)", str(reconnections["resyncs"])),
        ("host migrations", str(report["host_migrations"])),
        ("server errors", _counts(report["errors"])),
        ("events dropped (slow reader)", str(report["lagged_events"])),
        ("generator kept up", behind(report) or "yes"),
        ("generator CPU", _cpu(report["generator"])),
        ("result", "passed" if report["passed"] else "FAILED: "
         + "; ".join(report["failed_checks"])),
    ]
    for measure, value in rows:
        counts.add_row(measure, value)
    return Group(latencies, counts)
