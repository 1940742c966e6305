"""``iotctl anomalies``: evaluate the detectors on labelled data (NAB, SKAB or a firmware_sim
scenario, with cross-validation), list stored anomaly episodes, show one with its explanation,
label it a true or a false alarm, and report the precision those labels give."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer

from ..errors import CliError
from ..statedir import StateDirOption

app = typer.Typer(
    no_args_is_help=True, help="List, show and label anomaly alerts; evaluate detectors on labelled data."
)


def _table(title: str, rows: list[tuple[str, int, int, int, float, float, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for name in ("file", "windows", "detected", "false pos.", "precision", "recall", "F1"):
        t.add_column(name, justify="left" if name == "file" else "right")
    for i, (k, w, d, fp, p, r, f) in enumerate(rows):
        t.add_row(
            k, str(w), str(d), str(fp), f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", end_section=i == len(rows) - 2
        )
    Console(width=140).print(t)


def _rows(totals):  # type: ignore[no-untyped-def]
    out = [
        (f.key, f.windows, f.detected, f.false_positives, f.precision, f.recall, f.f1) for f in totals.files
    ]
    out.append(
        (
            "TOTAL",
            totals.windows,
            totals.detected,
            totals.false_positives,
            totals.precision,
            totals.recall,
            totals.f1,
        )
    )
    return out


@app.command()
def evaluate(
    data: Path | None = typer.Option(None, "--data", help="Folder of NAB-format CSVs (timestamp,value)."),
    labels: Path | None = typer.Option(None, "--labels", help="Windows JSON: {file: [[start, end], ...]}."),
    alerts_out: Path | None = typer.Option(
        None, "--alerts-out", help="Write the alerts raised as CSV file,timestamp."
    ),
    baselines: bool = typer.Option(
        False,
        "--baselines",
        help="Also score the two baselines (z-score 288/k=4, IsolationForest on the learning period).",
    ),
    detector: str = typer.Option(
        "ensemble", "--detector", help="ensemble | streaming | zscore288 | iforest_learning"
    ),
    sim_data: Path | None = typer.Option(None, "--sim-data", help="firmware_sim readings (CSV or JSONL)."),
    sim_labels: Path | None = typer.Option(
        None, "--sim-labels", help="firmware_sim ground truth (CSV or JSONL)."
    ),
    cv: str | None = typer.Option(
        None,
        "--cv",
        help="Cross-validate the settings: 'categories' (NAB: tune on all categories but one, score on "
        "it, rotate) or 'files' (SKAB: leave one file out).",
    ),
    fmt: str = typer.Option(
        "nab", "--format", help="nab (one series per CSV, event metric) or skab (multivariate, point-wise)."
    ),
    predictions_out: Path | None = typer.Option(
        None, "--predictions-out", help="SKAB: write one CSV row per predicted reading: file,datetime,predicted."
    ),
    from_feedback: bool = typer.Option(
        False, "--from-feedback", help="Precision of the live alerts people labelled, per device type (see --db)."
    ),
    db: str | None = typer.Option(
        None, "--db", envvar="EDU_DB_URL", help="--from-feedback: metadata database (default: the state dir's)."
    ),
    hours: float | None = typer.Option(None, "--hours", help="--from-feedback: only episodes of the last hours."),
) -> None:
    """Score detectors on labelled data: NAB (event-level metric), SKAB (point-wise F1,
    false-alarm and missed-alarm rates) or a firmware_sim scenario (see docs/anomaly.md)."""
    from cloud_core.analytics.errors import AnalyticsError

    if from_feedback:
        _precision_from_feedback(db, hours)
        return
    if fmt not in ("nab", "skab"):
        raise CliError(f"unknown --format {fmt!r}: use nab or skab")
    if predictions_out is not None and fmt != "skab":
        raise CliError("--predictions-out is for --format skab (NAB and firmware_sim runs write --alerts-out)")
    try:
        if fmt == "skab":
            if data is None:
                raise CliError("give --data DIR: the folder of SKAB's ';'-separated CSV files")
            if cv not in (None, "files"):
                raise CliError(f"--cv {cv!r} is not for SKAB data: use --cv files")
            _evaluate_skab(data, cv == "files", predictions_out, alerts_out)
            return
        if sim_data is not None or sim_labels is not None:
            if sim_data is None or sim_labels is None:
                raise CliError("--sim-data and --sim-labels go together")
            _evaluate_sim(sim_data, sim_labels, alerts_out)
            return
        if data is None or labels is None:
            raise CliError("give --data DIR and --labels FILE (NAB format), or --sim-data and --sim-labels")
        if cv is not None:
            if cv != "categories":
                raise CliError(f"--cv {cv!r} is not for NAB data: use --cv categories")
            _cross_validate_nab(data, labels, alerts_out)
            return
        _evaluate_nab(data, labels, alerts_out, baselines, detector)
    except AnalyticsError as exc:
        raise CliError(str(exc)) from None


PUBLISHED_SKAB = (
    ("Conv-AE", 0.78), ("MSET", 0.78), ("T-squared+Q (PCA)", 0.76), ("LSTM-AE", 0.74), ("T-squared", 0.66),
    ("Isolation forest", 0.29),
)  # fmt: skip
"""F1 published with this protocol on the benchmark's own test files (../shared/datasets/skab/README.md)."""


def _write_skab(
    predictions: tuple[tuple[str, str, int], ...], predictions_out: Path | None, alerts_out: Path | None
) -> None:
    """Predictions one row per reading; alerts = maximal runs of consecutive predicted readings."""
    if predictions_out is not None:
        with predictions_out.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "datetime", "predicted"])
            w.writerows(predictions)
    if alerts_out is not None:
        with alerts_out.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "start", "end", "readings"])
            run: list[tuple[str, str, int]] = []
            for row in [*predictions, ("", "", 0)]:
                if run and (row[2] != 1 or row[0] != run[0][0]):
                    w.writerow([run[0][0], run[0][1], run[-1][1], len(run)])
                    run = []
                if row[2] == 1:
                    run.append(row)


def _evaluate_skab(data: Path, cv: bool, predictions_out: Path | None, alerts_out: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from cloud_core.analytics.multivariate import MultivariateConfig
    from cloud_core.analytics.skab import FIT_ROWS, cross_validate_skab, load_skab, run_skab

    files = load_skab(data)
    console = Console(width=160)

    def rates(c) -> list[str]:  # type: ignore[no-untyped-def]
        return [f"{c.f1:.3f}", f"{100 * c.far:.1f}%", f"{100 * c.mar:.1f}%"]

    def counts(c) -> dict[str, float]:  # type: ignore[no-untyped-def]
        return {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn, "f1": round(c.f1, 4), "far": round(c.far, 4),
                "mar": round(c.mar, 4)}  # fmt: skip

    if cv:
        result = cross_validate_skab(files)
        t = Table(title=f"SKAB, leave one file out (fit on each file's first {FIT_ROWS} rows; settings chosen on the "
                        "other files: best F1 with a false-alarm rate <= 15%)")  # fmt: skip
        for c in ("detector", "F1", "FAR", "MAR"):
            t.add_column(c, justify="left" if c == "detector" else "right")
        for method, c in result.by_method.items():
            t.add_row(f"{method} (its own settings chosen per fold)", *rates(c))
        t.add_row("all candidates (out of sample)", *rates(result.total), end_section=True)
        for name, f1 in PUBLISHED_SKAB:
            t.add_row(f"published: {name} (benchmark test files)", f"{f1:.2f}", "", "")
        console.print(t)
        run = result.final_run
        typer.echo(f"shipped default (chosen on all files): {result.final.label()}; in sample F1 {run.total.f1:.3f}, "
                   f"FAR {100 * run.total.far:.1f}%, MAR {100 * run.total.mar:.1f}%")  # fmt: skip
        _write_skab(result.predictions, predictions_out, alerts_out)
        by_method = {m: counts(c) for m, c in result.by_method.items()}
        typer.echo(json.dumps({
            "cv": "files", "total": counts(result.total), "by_method": by_method,
            "chosen": result.chosen["all"], "final": {"config": result.final.label(), **counts(run.total)},
        }))  # fmt: skip
        return
    run = run_skab(files, MultivariateConfig())
    t = Table(title=f"SKAB: {run.config.label()}, fitted on each file's first {FIT_ROWS} rows")
    for c in ("file", "scored", "abnormal", "TP", "FP", "FN", "TN", "F1", "FAR", "MAR"):
        t.add_column(c, justify="left" if c == "file" else "right")
    for name, c in run.per_file.items():
        t.add_row(name, str(c.tp + c.fp + c.fn + c.tn), str(c.tp + c.fn), str(c.tp), str(c.fp), str(c.fn), str(c.tn),
                  *rates(c))  # fmt: skip
    c = run.total
    t.add_row("TOTAL", str(c.tp + c.fp + c.fn + c.tn), str(c.tp + c.fn), str(c.tp), str(c.fp), str(c.fn), str(c.tn),
              *rates(c), end_section=True)  # fmt: skip
    for name, f1 in PUBLISHED_SKAB:
        t.add_row(f"published: {name}", "", "", "", "", "", "", f"{f1:.2f}", "", "")
    console.print(t)
    normal, refit = run.normal_only, run.normal_refitted
    if normal.fp + normal.tn:
        typer.echo(f"normal operation only (files without labels, {normal.fp + normal.tn} readings): false alarms "
                   f"{100 * normal.far:.1f}% fitted once, {100 * refit.far:.1f}% refitted every 1000 readings on "
                   "the last 2000")  # fmt: skip
    _write_skab(run.predictions, predictions_out, alerts_out)
    typer.echo(json.dumps({"config": run.config.label(), "total": counts(run.total),
                           "normal_only_far": round(normal.far, 4),
                           "normal_refitted_far": round(refit.far, 4)}))  # fmt: skip


def _cross_validate_nab(data: Path, labels: Path, alerts_out: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from cloud_core.analytics.cv import BASELINES, PREVIOUS, cross_validate
    from cloud_core.analytics.evaluate import load_nab

    dataset = load_nab(data, labels)
    result = cross_validate(dataset)
    names = [PREVIOUS, *BASELINES]
    t = Table(title="cross-validated by category: settings chosen on the other categories, scored on this one")
    for c in ("category", "files", "chosen on the others", "windows", "detected", "false pos.", "precision",
              "recall", "F1", *(f"F1 {n}" for n in names)):  # fmt: skip
        t.add_column(c, justify="left" if c in ("category", "chosen on the others") else "right")
    files = {f.category: sum(1 for s in dataset if s.key.split("/", 1)[0] == f.category) for f in result.folds}
    for i, f in enumerate(result.folds):
        h = f.held_out
        t.add_row(
            f.category, str(files[f.category]), f.chosen.label, str(h.windows), str(h.detected),
            str(h.false_positives), f"{h.precision:.3f}", f"{h.recall:.3f}", f"{h.f1:.3f}",
            *(f"{f.baselines[n].f1:.3f}" for n in names), end_section=i == len(result.folds) - 1,
        )  # fmt: skip
    tot = result.total
    t.add_row(
        "TOTAL (out of sample)", str(len(dataset)), "", str(tot.windows), str(tot.detected),
        str(tot.false_positives), f"{tot.precision:.3f}", f"{tot.recall:.3f}", f"{tot.f1:.3f}",
        *(f"{result.baselines[n].f1:.3f}" for n in names),
    )  # fmt: skip
    Console(width=200).print(t)
    fin = result.final_totals
    typer.echo(
        f"shipped default (chosen on all categories): {result.final.label}; on the whole corpus (in sample): "
        f"{fin.detected}/{fin.windows} windows, {fin.false_positives} false positives, F1 {fin.f1:.3f}"
    )
    if alerts_out is not None:
        with alerts_out.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "timestamp", "setting"])
            w.writerows(result.alerts)

    def counts(x) -> dict[str, float]:  # type: ignore[no-untyped-def]
        return {"windows": x.windows, "detected": x.detected, "false_positives": x.false_positives,
                "f1": round(x.f1, 4)}  # fmt: skip

    typer.echo(
        json.dumps(
            {
                "cv": "categories",
                "total": counts(tot),
                "folds": {f.category: {"chosen": f.chosen.label, **counts(f.held_out)} for f in result.folds},
                "baselines": {n: counts(result.baselines[n]) for n in names},
                "final": {"chosen": result.final.label, **counts(fin)},
            }
        )
    )


def _evaluate_nab(data: Path, labels: Path, alerts_out: Path | None, baselines: bool, detector: str) -> None:
    from cloud_core.analytics.evaluate import DETECTORS, evaluate, load_nab

    if detector not in DETECTORS:
        raise CliError(f"unknown --detector {detector!r}: choose one of {', '.join(DETECTORS)}")
    dataset = load_nab(data, labels)
    result = evaluate(dataset, detector)
    _table(f"detector: {detector}", _rows(result.totals))
    if alerts_out is not None:
        with alerts_out.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "timestamp"])
            w.writerows(result.alerts)
    summary = {
        "detector": detector,
        "f1": round(result.totals.f1, 4),
        "precision": round(result.totals.precision, 4),
        "recall": round(result.totals.recall, 4),
    }
    if baselines:
        for name in ("zscore288", "iforest_learning"):
            if name == detector:
                continue
            b = evaluate(dataset, name)
            _table(f"baseline: {name}", _rows(b.totals))
            summary[f"{name}_f1"] = round(b.totals.f1, 4)
    typer.echo(json.dumps(summary))


def _evaluate_sim(sim_data: Path, sim_labels: Path, alerts_out: Path | None) -> None:
    from cloud_core.analytics.simeval import evaluate_sim, load_sim_data, load_sim_labels

    result = evaluate_sim(load_sim_data(sim_data), load_sim_labels(sim_labels))
    _table("firmware_sim scenario (per device)", _rows(result.totals))
    from rich.console import Console
    from rich.table import Table

    t = Table(title="recall by kind")
    for c in ("kind", "windows", "detected", "recall"):
        t.add_column(c)
    for kind, (n, d) in sorted(result.by_kind.items()):
        t.add_row(kind, str(n), str(d), f"{d / n:.3f}" if n else "-")
    Console(width=140).print(t)
    if alerts_out is not None:
        with alerts_out.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "timestamp"])
            w.writerows(result.alerts)
    typer.echo(
        json.dumps(
            {
                "precision": round(result.totals.precision, 4),
                "recall": round(result.totals.recall, 4),
                "f1": round(result.totals.f1, 4),
                "recall_by_kind": {
                    k: round(d / n, 4) if n else None for k, (n, d) in sorted(result.by_kind.items())
                },
            }
        )
    )


def _session(db: str | None):  # type: ignore[no-untyped-def]
    """A session on the metadata database with the analytics tables (one-line errors)."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session, SQLModel

    from cloud_core.analytics.models import TABLES
    from cloud_core.core.db import make_engine
    from cloud_core.paths import default_db_url

    url = db or default_db_url()
    try:
        engine = make_engine(url)
        SQLModel.metadata.create_all(engine, tables=TABLES)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CliError(f"cannot open {url}: {str(exc).splitlines()[0]}") from None
    return Session(engine, expire_on_commit=False)


def _precision_from_feedback(db: str | None, hours: float | None) -> None:
    import time
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.exc import SQLAlchemyError

    from cloud_core.analytics.feedback import feedback_precision

    if hours is not None and hours <= 0:
        raise CliError("--hours must be positive")
    since = int(time.time() * 1000 - hours * 3_600_000) if hours is not None else None
    try:
        with _session(db) as session:
            rows = feedback_precision(session, since_ms=since)
    except SQLAlchemyError as exc:
        raise CliError(f"cannot read anomalies: {str(exc).splitlines()[0]} (run 'iotctl db init'?)") from None
    t = Table(title="precision of live alerts, from people's labels (iotctl anomalies label ID true|false)")
    for c in ("device type", "episodes", "labelled", "true alarms", "false alarms", "precision"):
        t.add_column(c, justify="left" if c == "device type" else "right")
    for r in rows:
        p = "-" if r.precision is None else f"{r.precision:.3f}"
        t.add_row(r.device_type, str(r.episodes), str(r.labelled), str(r.true_alarms), str(r.false_alarms), p)
    Console(width=140).print(t)
    labelled = sum(r.labelled for r in rows)
    true = sum(r.true_alarms for r in rows)
    by_type = {r.device_type: {**asdict(r), "precision": r.precision} for r in rows}
    for v in by_type.values():
        del v["device_type"]
    overall = (true / labelled) if labelled else None
    typer.echo(json.dumps({"by_device_type": by_type, "labelled": labelled, "precision": overall}))


def _fmt_ms(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("show")
def show(
    anomaly_id: int = typer.Argument(..., help="The episode's id (iotctl anomalies list)."),
    db: str | None = typer.Option(
        None, "--db", envvar="EDU_DB_URL", help="Metadata database URL (default: the state dir's meta.db)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the episode as the API returns it."),
) -> None:
    """Show one anomaly episode: what fired, why (the fields that drove it, by how much, the normal
    range they left), links to the readings around it, and its label."""
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.exc import SQLAlchemyError

    from cloud_core.analytics.errors import AnomalyNotFound
    from cloud_core.analytics.feedback import anomaly_detail

    try:
        with _session(db) as session:
            d = anomaly_detail(session, anomaly_id=anomaly_id)
    except AnomalyNotFound as exc:
        raise CliError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CliError(f"cannot read anomalies: {str(exc).splitlines()[0]} (run 'iotctl db init'?)") from None
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    what = "all fields together" if d["field"] == "*" else d["field"]
    typer.echo(f"anomaly {d['id']}: device {d['device_id']}, {what} ({d['detector']}), {d['status']}")
    typer.echo(f"  from {_fmt_ms(d['start_ms'])} to {_fmt_ms(d['end_ms'])} UTC, {d['count']} anomalous readings, "
               f"peak score {d['peak_score']:.2f} at {_fmt_ms(d['peak_ms'])}")  # fmt: skip
    expl = d["explanation"]
    if expl:
        typer.echo(f"  why: {expl['summary']}")
        t = Table()
        for c in ("field", "value", "expected", "normal range", "share of the score"):
            t.add_column(c, justify="left" if c == "field" else "right")
        for f in expl["fields"]:
            exp = f"{f['expected']:.4g}" if "expected" in f else "-"
            rng = f"{f['normal_low']:.4g} .. {f['normal_high']:.4g}"
            t.add_row(f["field"], f"{f['value']:.4g}", exp, rng, f"{100 * f['contribution']:.0f}%")
        Console(width=140).print(t)
    else:
        typer.echo("  why: no explanation stored (an episode from before explanations)")
    typer.echo("  readings around it:")
    for name, link in d["links"].items():
        typer.echo(f"    {name}: {link}")
    fb = d["feedback"]
    verdict = "not labelled yet" if fb is None else ("a true alarm" if fb["true_alarm"] else "a false alarm")
    typer.echo(f"  label: {verdict}" + (f" ({fb['note']})" if fb and fb["note"] else ""))


@app.command("label")
def label(
    anomaly_id: int = typer.Argument(..., help="The episode's id (iotctl anomalies list)."),
    verdict: str = typer.Argument(..., help="true (a real problem) or false (a false alarm)."),
    note: str = typer.Option("", "--note", help="Why, in a few words (kept with the label)."),
    db: str | None = typer.Option(
        None, "--db", envvar="EDU_DB_URL", help="Metadata database URL (default: the state dir's meta.db)."
    ),
) -> None:
    """Mark an anomaly episode a true or a false alarm (labelling again replaces the label)."""
    from sqlalchemy.exc import SQLAlchemyError

    from cloud_core.analytics.errors import AnomalyNotFound
    from cloud_core.analytics.feedback import label_anomaly

    answers = {"true": True, "false": False, "yes": True, "no": False}
    if verdict.lower() not in answers:
        raise CliError(f"the verdict must be true or false, not {verdict!r}")
    if len(note) > 500:
        raise CliError("--note is at most 500 characters")
    try:
        with _session(db) as session:
            label_anomaly(session, anomaly_id=anomaly_id, true_alarm=answers[verdict.lower()], note=note, source="cli")
    except AnomalyNotFound as exc:
        raise CliError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CliError(f"cannot label: {str(exc).splitlines()[0]} (run 'iotctl db init'?)") from None
    typer.echo(f"anomaly {anomaly_id} labelled a {'true' if answers[verdict.lower()] else 'false'} alarm")


@app.command("list")
def list_(
    device: str | None = typer.Option(None, "--device", help="Only this device."),
    db: str | None = typer.Option(
        None, "--db", envvar="EDU_DB_URL", help="Metadata database URL (default: the state dir's meta.db)."
    ),
    limit: int = typer.Option(50, "--limit"),
    state_dir: StateDirOption = None,
) -> None:
    """Show stored anomaly episodes, newest first."""
    from cloud_core.paths import default_db_url

    db = db or default_db_url()
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session, col, select

    from cloud_core.analytics.models import Anomaly
    from cloud_core.core.db import make_engine

    try:
        engine = make_engine(db)
        with Session(engine) as session:
            stmt = select(Anomaly).order_by(col(Anomaly.start_ms).desc()).limit(limit)
            if device:
                stmt = stmt.where(Anomaly.device_id == device)
            rows = list(session.exec(stmt))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CliError(
            f"cannot read anomalies from {db}: {str(exc).splitlines()[0]} (run 'iotctl db init'?)"
        ) from None

    def fmt(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")

    t = Table(title=f"anomalies ({len(rows)})")
    for c in ("id", "device", "field", "detector", "status", "start (UTC)", "end (UTC)", "peak", "readings"):
        t.add_column(c)
    for a in rows:
        t.add_row(
            str(a.id),
            a.device_id,
            a.field,
            a.detector,
            a.status,
            fmt(a.start_ms),
            fmt(a.end_ms),
            f"{a.peak_score:.2f}",
            str(a.count),
        )
    Console(width=160).print(t)


@app.command("worker")
def worker(
    cache_url: str = typer.Option(..., "--cache-url", envvar="EDU_CACHE_URL", help="redis://HOST:PORT/DB"),
    db: str | None = typer.Option(None, "--db", envvar="EDU_DB_URL", help="Metadata DB where episodes are stored."),
    mqtt_url: str | None = typer.Option(
        None, "--mqtt-url", envvar="EDU_MQTT_URL", help="Publish alerts on <prefix>/devices/<id>/alerts here."
    ),
    mqtt_username: str | None = typer.Option(None, "--mqtt-username", envvar="EDU_MQTT_USERNAME"),
    mqtt_password: str | None = typer.Option(None, "--mqtt-password", envvar="EDU_MQTT_PASSWORD"),
    topic_prefix: str = typer.Option("edu", "--topic-prefix", envvar="EDU_TOPIC_PREFIX"),
    metrics_port: int = typer.Option(9110, "--metrics-port", help="Prometheus /metrics port (0: none)."),
    log_level: str = typer.Option(
        "INFO", "--log-level", envvar="EDU_LOG_LEVEL", help="Level of the JSON logs: DEBUG, INFO, WARNING, ERROR."
    ),
) -> None:
    """Run one analytics worker of the consumer group until SIGINT/SIGTERM (settings: EDU_ANALYTICS_*)."""
    import signal
    import threading

    from prometheus_client import start_http_server

    from cloud_core.analytics.settings import AnalyticsSettings
    from cloud_core.analytics.worker import AnalyticsWorker
    from cloud_core.broker.admin import BrokerAdminError
    from cloud_core.broker.client import MqttPublisher, connect
    from cloud_core.cache import open_cache
    from cloud_core.core.config import parse_mqtt_url
    from cloud_core.core.db import create_all, make_engine
    from cloud_core.core.logging import setup_logging
    from cloud_core.core.migrate import SchemaError
    from cloud_core.paths import default_db_url
    from iot_protocol import Topics

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise CliError(f"--log-level {log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    setup_logging(log_level.upper())
    try:
        cache = open_cache(cache_url)
        engine = make_engine(db or default_db_url())
        create_all(engine)
        publisher = None
        if mqtt_url:
            host, port = parse_mqtt_url(mqtt_url)
            publisher = MqttPublisher(connect(host, port, username=mqtt_username, password=mqtt_password))
    except (ValueError, BrokerAdminError, SchemaError) as exc:
        raise CliError(str(exc)) from None
    if metrics_port:
        start_http_server(metrics_port, addr="0.0.0.0")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    analytics = AnalyticsWorker(
        AnalyticsSettings(), cache, engine,
        publish=publisher.publish if publisher else None, topics=Topics(topic_prefix),
    )  # fmt: skip
    analytics.run(stop)
    if publisher is not None:
        publisher.close()


@app.command("train")
def train(
    tsdb: str | None = typer.Option(
        None, "--tsdb", envvar="EDU_TSDB_URL", help="Time-series store URL (default: the state dir's readings.db)."
    ),
    db: str | None = typer.Option(
        None, "--db", envvar="EDU_DB_URL", help="Train the devices registered here (default: all with data)."
    ),
    models_dir: Path = typer.Option(
        ..., "--models-dir", envvar="EDU_ANALYTICS_MODELS_DIR", help="Versioned model store (the worker's)."
    ),
    hours: float = typer.Option(168.0, "--hours", help="Hours of history to train on."),
    max_points: int = typer.Option(200_000, "--max-points", help="At most this many readings read per device."),
    budget_s: float = typer.Option(600.0, "--budget-s", help="Start no new device after this many seconds."),
    state_dir: StateDirOption = None,
) -> None:
    """Train a new IsolationForest version per device and field, and a new multivariate model version
    per device (its fields together), from stored history (bounded)."""
    from cloud_core.analytics.errors import AnalyticsError
    from cloud_core.analytics.forest import ModelStore
    from cloud_core.analytics.multivariate import MultivariateConfig
    from cloud_core.analytics.retrain import retrain
    from cloud_core.paths import default_tsdb_url
    from cloud_core.tsdb import open_tsdb
    from cloud_core.tsdb.base import StoreError

    if hours <= 0 or max_points <= 0:
        raise CliError("--hours and --max-points must be positive")
    devices: list[str] | None = None
    if db is not None:
        from sqlalchemy.exc import SQLAlchemyError
        from sqlmodel import Session, select

        from cloud_core.core.db import make_engine
        from cloud_core.models import Device

        try:
            with Session(make_engine(db)) as session:
                devices = [d.id for d in session.exec(select(Device))]
        except (ValueError, SQLAlchemyError) as exc:
            raise CliError(f"cannot read devices from {db}: {str(exc).splitlines()[0]}") from None
    try:
        store = open_tsdb(tsdb or default_tsdb_url())
        try:
            report = retrain(
                store, ModelStore(models_dir), hours=hours, devices=devices, max_points=max_points,
                time_budget_s=budget_s, device_models=MultivariateConfig(),
            )  # fmt: skip
        finally:
            store.close()
    except (ValueError, StoreError, AnalyticsError, OSError) as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    for m in report.trained:
        typer.echo(f"{m.key} v{m.version}: {m.train_points} readings, {m.train_seconds:.2f} s")
    for d in report.device_models:
        typer.echo(f"{d.key} v{d.version} ({d.method}, {', '.join(d.fields)}): {d.train_points} readings")
    typer.echo(
        json.dumps(
            {
                "trained": len(report.trained),
                "versions": {m.key: m.version for m in report.trained},
                "device_versions": {d.key: d.version for d in report.device_models},
                "skipped": list(report.skipped),
                "deferred": list(report.deferred),
                "seconds": round(report.seconds, 3),
            }
        )
    )
