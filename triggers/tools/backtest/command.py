"""`retrain-trigger backtest`: reads the history, replays it (or sweeps a policy field),
prints the report and writes the outputs the options ask for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thresholds.durations import parse_duration
from triggers.errors import RetrainError
from triggers.tools.backtest.io import BacktestInputError, ProgressBar, read_history, write_output
from triggers.tools.backtest.replay import BacktestSettings, parse_recovery
from triggers.tools.backtest.report import backtest, format_report
from triggers.tools.backtest.sweep import (
    format_sweeps,
    parse_sweep,
    plot_sweeps,
    prepare_sweep,
    run_sweeps,
)


# ----------------------------------------------------------------------------- command
def run_command(args: argparse.Namespace) -> int:
    """`retrain-trigger backtest`: 0 when done, 2 when an input or option cannot be used."""
    from triggers.config import load_policy_file

    try:
        config = load_policy_file(args.policies)
        if args.model is not None and args.model not in config.models:
            raise BacktestInputError("--model", f"model {args.model!r} is not configured in "
                                                f"{args.policies}")
        run_duration = parse_duration(args.run_duration).total_seconds()
        if run_duration <= 0:
            raise BacktestInputError("--run-duration", "must be longer than 0s")
        sweeps = [parse_sweep(text) for text in args.sweep or ()]
        _check_writable("--output", args.output)
        if sweeps:
            _check_writable("--plot", str(args.plot or _default_plot(args.output)))
            try:
                import matplotlib  # noqa: F401 - checked before hours of sweeping
            except ImportError:
                raise BacktestInputError(
                    "--sweep", "the sweep's plot needs matplotlib: pip install -r "
                    "requirements-pipeline.txt") from None
        elif args.plot is not None or args.slo is not None:
            raise BacktestInputError("--plot" if args.plot is not None else "--slo",
                                     "applies to --sweep only")
        recovery = parse_recovery(args.assume_recovery) if args.assume_recovery else None
        history = read_history(args.history, config, args.model)
        if history.errors and args.strict:
            raise BacktestInputError(args.history, f"{len(history.errors)} malformed line(s) "
                                                   "(--strict)", history.errors)
        if not history.events:
            raise BacktestInputError(args.history, "no event of a configured model to replay")
    except BacktestInputError as exc:
        print(f"retrain-trigger backtest: {exc}", file=sys.stderr)
        for row in exc.rows[:50]:
            print(f"  {row}", file=sys.stderr)
        return 2
    except (RetrainError, ValueError) as exc:
        print(f"retrain-trigger backtest: {exc}", file=sys.stderr)
        return 2
    for row in history.errors[:50]:
        print(f"skipped {row}", file=sys.stderr)
    if len(history.errors) > 50:
        print(f"skipped {len(history.errors) - 50} more malformed line(s)", file=sys.stderr)
    settings = BacktestSettings(run_duration, recovery)
    models = sorted({event.model for _, event in history.events})
    progress_on = True if args.progress else None
    if sweeps:
        try:
            for sweep in sweeps:
                prepare_sweep(config, models, sweep, args.slo)
        except BacktestInputError as exc:
            print(f"retrain-trigger backtest: {exc}", file=sys.stderr)
            return 2
        total = sum(len(s.values) for s in sweeps)
        bar = ProgressBar(total, "sweep values", progress_on)
        results = run_sweeps(config, history.events, settings, sweeps, models, args.slo,
                             progress=bar)
        bar.close()
        sys.stdout.write(format_sweeps(results))
        plot = plot_sweeps(results, args.plot or _default_plot(args.output))
        print(f"plot: {plot}")
        if args.output:
            print(f"written: {write_output(args.output, None, results)}")
        return 0
    bar = ProgressBar(len(history.events), "replaying events", progress_on)
    _, report = backtest(config, history.events, settings, policy_file=args.policies,
                         history=args.history, skipped=history.errors, progress=bar)
    bar.close()
    sys.stdout.write(format_report(report))
    if args.output:
        print(f"written: {write_output(args.output, report)}")
    return 0


def _check_writable(option: str, path: str | None) -> None:
    """Refuse, before any work, an output whose directory does not exist."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise BacktestInputError(option, f"{path}: its directory does not exist")


def _default_plot(output: str | None) -> Path:
    if output:
        return Path(output).with_suffix(".png")
    return Path("backtest-sweep.png")

