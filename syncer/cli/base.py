"""What every command shares: the ``main`` group, the common options, config loading, and turning
library errors into messages and the exit codes of :mod:`syncer.exitcodes`.  No logic lives here."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from syncer import __version__, exitcodes
from syncer.errors import ConfigError, SyncerError
from syncer.redact import escape

if TYPE_CHECKING:
    from syncer.config import Config

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Exit(click.ClickException):
    """A message for the operator and an exit code; escaped, since it may quote what a server sent."""

    def __init__(self, message: str, code: int):
        super().__init__(escape(message))
        self.exit_code = code


def fail(message: str, code: int) -> None:
    """End with ``message`` and ``code``: an ``Error:`` line, or a JSON event when JSON logs were asked for."""
    from syncer import logs

    ctx = click.get_current_context(silent=True)
    asked = ctx is not None and ctx.params.get("log_format") == "json"  # a config error comes before the logs
    if asked or logs.current_format() == "json":
        click.echo(logs.json_line("syncer", "error", message, level="error", exit_code=code), err=True)
        sys.exit(code)
    raise Exit(message, code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into messages and the documented exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SyncerError as exc:
            from syncer.logs import describe

            fail(describe(exc), exitcodes.for_error(exc))

    return wrapper


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                        help="Config file (default: $SYNCER_CONFIG, else ./syncer.toml).")(fn)


def manifest_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--manifest", "manifest_path", type=click.Path(),
                        help="The manifest file (default: $SYNCER_MANIFEST, else manifest.path, else "
                             "syncer-manifest.sqlite beside the config file).")(fn)


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """nan, inf, 0 and negative intervals are refused (exit 2) before anything runs."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value}: give a number of seconds greater than 0")
    return value


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                     help="Least severe level logged (default info)."),
        click.option("-q", "--quiet", is_flag=True, help="Print only warnings, errors and the summary."),
        click.option("--progress-interval", type=float, callback=_positive_seconds,
                     help="Seconds between progress lines when not on a terminal (default 30)."),
        click.option("--metrics-file", type=click.Path(dir_okay=False),
                     help="Write the run's counters here in Prometheus text format."),
    ]):
        fn = opt(fn)
    return fn


class SyncerGroup(click.Group):
    """The ``main`` group.  Called as a function (the ``syncer`` script, ``python -m syncer``), it is the
    process: once the command is over, the process ends without the interpreter's teardown
    (:mod:`syncer.cli.fastexit`).  ``main.main(...)`` (click's test runner) behaves as any click group."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.main(*args, **kwargs)
        except SystemExit as exc:  # a standalone click command always ends here, with its exit code
            from syncer.cli.fastexit import exit_now

            exit_now(exc.code)


@click.group(cls=SyncerGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="syncer")
def main() -> None:
    """syncer: back up and migrate a clinic's files through its Files API (v3).

    \b
    Examples:
      syncer demo                       # try it all against the built-in server
      syncer pull -c syncer.toml        # the nightly backup
      syncer status                     # what failed last night
    """
    from syncer import logs

    logs.reset_format()  # a command prints JSON only once it has set up JSON logs (tests run many in one process)


def load_config(config_path: str | None, overrides: dict[str, dict[str, Any]]) -> Config:
    from syncer import config as config_mod  # here, not at the top: ``syncer --help`` needs no config

    return config_mod.load(config_path, overrides=overrides)


def setup_logs(cfg: Config, quiet: bool) -> None:
    from syncer import logs

    level = "warning" if quiet and cfg.log.level in ("debug", "info") else cfg.log.level
    logs.setup(cfg.log.format, level)


def finish_run(stats: Any, code: int, metrics_file: str | None) -> None:
    from syncer import logs
    from syncer.report.progress import summary_json, summary_text

    as_json = logs.current_format() == "json"  # a cron log of 2>&1 stays JSON lines only
    click.echo(summary_json(stats) if as_json else summary_text(stats), err=False)
    if metrics_file:
        from syncer.report.metrics import write_metrics

        try:
            write_metrics(Path(metrics_file), stats)
        except OSError as exc:
            fail(f"cannot write the metrics file {metrics_file}: {exc.strerror or exc}", code or exitcodes.FATAL)
    sys.exit(code)


def check_metrics_file(metrics_file: str | None, flag: str = "--metrics-file") -> None:
    """Before the run: the folder of a file a flag names (``--metrics-file``, ``--mapping-out``) must exist
    (else exit 2, nothing attempted)."""
    if metrics_file and not Path(metrics_file).resolve().parent.is_dir():
        raise ConfigError(f"{flag} {metrics_file}: its folder does not exist")
