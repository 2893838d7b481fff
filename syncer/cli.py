"""The command line: parse, call the library, print, map errors to exit codes.  No logic lives here."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from syncer import __version__, exitcodes
from syncer import config as config_mod
from syncer.errors import ConfigError, SyncerError
from syncer.models import CATEGORIES
from syncer.redact import escape, json_text
from syncer.run.runner import run_async

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Exit(click.ClickException):
    """A message for the operator and an exit code; escaped, since it may quote what a server sent."""

    def __init__(self, message: str, code: int):
        super().__init__(escape(message))
        self.exit_code = code


def _fail(message: str, code: int) -> None:
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

            _fail(describe(exc), exitcodes.for_error(exc))

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
        click.option("-q", "--quiet", is_flag=True, help="Print only errors and the summary."),
        click.option("--progress-interval", type=float, callback=_positive_seconds,
                     help="Seconds between progress lines when not on a terminal (default 30)."),
        click.option("--metrics-file", type=click.Path(dir_okay=False),
                     help="Write the run's counters here in Prometheus text format."),
    ]):
        fn = opt(fn)
    return fn


@click.group(context_settings=CONTEXT)
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


def _load(config_path: str | None, overrides: dict[str, dict[str, Any]]) -> config_mod.Config:
    return config_mod.load(config_path, overrides=overrides)


def _setup_logs(cfg: config_mod.Config, quiet: bool) -> None:
    from syncer import logs

    level = "warning" if quiet and cfg.log.level in ("debug", "info") else cfg.log.level
    logs.setup(cfg.log.format, level)


def _finish(stats: Any, code: int, metrics_file: str | None) -> None:
    from syncer import logs
    from syncer.report.progress import summary_json, summary_text

    as_json = logs.current_format() == "json"  # a cron log of 2>&1 stays JSON lines only
    click.echo(summary_json(stats) if as_json else summary_text(stats), err=False)
    if metrics_file:
        from syncer.report.metrics import write_metrics

        try:
            write_metrics(Path(metrics_file), stats)
        except OSError as exc:
            _fail(f"cannot write the metrics file {metrics_file}: {exc.strerror or exc}", code or exitcodes.FATAL)
    sys.exit(code)


def _check_metrics_file(metrics_file: str | None) -> None:
    """Before the run: the metrics file's folder must exist (else exit 2, nothing attempted)."""
    if metrics_file and not Path(metrics_file).resolve().parent.is_dir():
        raise ConfigError(f"--metrics-file {metrics_file}: its folder does not exist")


@main.command(context_settings=CONTEXT)
@config_option
@click.option("--target", "targets", multiple=True, metavar="TYPE:ID",
              help="A target to back up (user:ID or visit:ID); repeatable. Overrides pull.targets.")
@click.option("--targets-file", type=click.Path(dir_okay=False),
              help="A file of targets: one TYPE:ID a line, or CSV with header target_type,target_id.")
@click.option("--dest", type=click.Path(file_okay=False), help="Where the backup goes (pull.dest).")
@click.option("--category", "categories", multiple=True,
              type=click.Choice(CATEGORIES),
              help="Only these categories; repeatable (default: all).")
@click.option("--include-shared", is_flag=True, default=None,
              help="Also fetch user_documents shared with each user.")
@click.option("--concurrency", type=int, help="Downloads at once (default 32).")
@click.option("--dry-run", is_flag=True, help="List and plan only: print what would be downloaded.")
@click.option("--shard", metavar="K/N", help="Only targets whose stable hash falls in shard K of N (K from 0).")
@manifest_option
@click.option("--reencrypt", is_flag=True,
              help="With encryption on: also convert files backed up plain to age files (from the local copy).")
@click.option("--allow-plain", is_flag=True,
              help="Allow a pull without encryption although the backup holds encrypted files.")
@run_options
@handle_errors
def pull(config_path: str | None, manifest_path: str | None, targets: tuple[str, ...], targets_file: str | None,
         dest: str | None,
         categories: tuple[str, ...], include_shared: bool | None, concurrency: int | None, dry_run: bool,
         shard: str | None, reencrypt: bool, allow_plain: bool, log_format: str | None, log_level: str | None,
         quiet: bool, progress_interval: float | None, metrics_file: str | None) -> None:
    """Back up every file of the given targets into DEST, resumably.

    Files land in DEST/<type>/<id>/<category>/<safe name>; the manifest records every file, so a
    rerun fetches only what is new, changed or failed.

    \b
    Example:
      export VSEE_API_TOKEN=...        # the account API key
      syncer pull -c syncer.toml --targets-file patients.txt --dest /backup/clinic
    """
    from syncer.pull.job import PullJob
    from syncer.pull.options import PullOptions, check_dest
    from syncer.report.progress import human_bytes, make_reporter
    from syncer.run.runner import execute

    cfg = _load(config_path, {
        "manifest": {"path": manifest_path},
        "pull": {"dest": dest, "categories": categories or None, "include_shared": include_shared,
                 "concurrency": concurrency, "targets_file": targets_file},
        "log": {"format": log_format, "level": log_level, "progress_interval": progress_interval},
    })
    opts = PullOptions.from_config(cfg, targets=targets, targets_file=targets_file, shard=shard, dry_run=dry_run,
                                   reencrypt=reencrypt, allow_plain=allow_plain)
    cfg.api_base_url()
    token = cfg.api_token()
    check_dest(opts.dest)
    _check_metrics_file(metrics_file)
    _setup_logs(cfg, quiet)
    if dry_run:
        from syncer.pull.dryrun import run_dry

        report = run_async(run_dry(cfg, opts, token))
        for row in report:
            click.echo(f"{row.target}\t{row.files} files\t{human_bytes(row.bytes)}")
        click.echo(f"total: {sum(r.files for r in report)} files, "
                   f"{human_bytes(sum(r.bytes for r in report))} would be downloaded (dry run: nothing written)")
        return
    hooks = None
    if isinstance(opts.dest, str):  # a bucket: its manifest snapshot (syncer.store.snapshot)
        from syncer.inputs.targets import parse_shard
        from syncer.store.snapshot import hooks_for

        hooks = hooks_for(cfg, parse_shard(shard), opts.targets)
    reporter = make_reporter(quiet=quiet, interval=cfg.log.progress_interval, fmt=cfg.log.format)
    stats, code = run_async(execute(
        PullJob, cfg, opts, token=token, concurrency=opts.concurrency, on_progress=reporter,
        details={"targets": len(opts.targets), "dest": str(opts.dest), "shard": shard}, hooks=hooks))
    _finish(stats, code, metrics_file)


@main.command("fake-server", context_settings=CONTEXT)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the generated data.")
@click.option("--seed-users", type=click.IntRange(min=0), default=3, show_default=True, help="Patients to create.")
@click.option("--files-per-user", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--visits", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--files-per-visit", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--hostile-names/--plain-names", default=True, show_default=True,
              help="Mix in names that are unsafe as paths.")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=0.0, help="Added to every request.")
@click.option("--link-ttl", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds a view link lives.")
@click.option("--no-range", is_flag=True, help="Ignore Range requests (always answer 200 whole).")
@click.option("--fault", "faults", multiple=True, metavar="NAME=RATE",
              help="Inject a fault, e.g. --fault error_500=0.1 --fault reset_mid_body=0.05; repeatable.")
@click.option("--api-key", envvar="SYNCER_FAKE_API_KEY", help="The account API key to accept (default: random).")
@click.option("--tokens-file", type=click.Path(dir_okay=False), default=None,
              help="Write the patients' upload tokens here (0600; never overwrites a file). "
                   "Default: tokens.csv in a new private temporary folder, removed when the server stops.")
def fake_server(port: int, seed: int, seed_users: int, files_per_user: int, visits: int, files_per_visit: int,
                hostile_names: bool, latency_ms: float, link_ttl: float, no_range: bool,
                faults: tuple[str, ...], api_key: str | None, tokens_file: str | None) -> None:
    """Run the built-in Files API server on 127.0.0.1, for rehearsals.

    It prints its base URL, the account API key and the tokens file path, then serves until Ctrl-C.

    \b
    Example:
      syncer fake-server --port 8080 --seed-users 20 --latency-ms 50 --fault error_500=0.05
      syncer fake-server --tokens-file ./tokens.csv   # then: [push] tokens_file = "tokens.csv"
    """
    from syncer.fakeserver import FakeServer, Faults, ListenError, run_blocking, tokens_file_place, write_tokens_file

    fault_kw: dict[str, float] = {"latency_ms": latency_ms}
    for item in faults:
        name, sep, rate = item.partition("=")
        if not sep or name not in Faults.__dataclass_fields__:
            raise click.BadParameter(f"{item!r}: use NAME=RATE with NAME one of "
                                     f"{', '.join(Faults.__dataclass_fields__)}", param_hint="--fault")
        try:
            fault_kw[name] = float(rate)
        except ValueError:
            raise click.BadParameter(f"{item!r}: RATE must be a number", param_hint="--fault") from None
    try:
        fault_set = Faults(**fault_kw)  # a rate outside 0..1, a negative or NaN duration: ValueError
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault / --latency-ms") from None
    if link_ttl != link_ttl:  # NaN passes FloatRange
        raise click.BadParameter("must be a number", param_hint="--link-ttl")

    def ready(s: FakeServer) -> None:
        try:
            written = write_tokens_file(s, place)
        except OSError as exc:  # it appeared since the check, or its folder is missing or not writable
            raise Exit(f"cannot write the tokens file {place}: {exc.strerror or exc}", exitcodes.USAGE) from None
        click.echo(f"base_url     {s.base_url}")
        click.echo(f"account_code {s.account_code}")
        click.echo(f"api key      {s.api_key}   (export VSEE_API_TOKEN=... to use it; a test key only)")
        click.echo(f"targets      {' '.join(['user:' + u for u in s.users] + ['visit:' + v for v in s.visits])}")
        click.echo(f"tokens file  {written}   (0600; for a push: [push] tokens_file = this path)")
        click.echo("Ctrl-C stops it." + ("" if tokens_file else " The tokens file goes with it."), err=True)

    try:
        with tokens_file_place(tokens_file) as place:
            srv = FakeServer(seed=seed, users=seed_users, files_per_user=files_per_user, visits=visits,
                             files_per_visit=files_per_visit, hostile_names=hostile_names, link_ttl=link_ttl,
                             range_support=not no_range, faults=fault_set, port=port, api_key=api_key)
            run_blocking(srv, ready)
    except ListenError as exc:
        raise Exit(f"{exc} (choose another with --port)", exitcodes.USAGE) from None
    except FileExistsError as exc:
        raise Exit(f"the tokens file {exc.filename} exists: fake-server never overwrites a file; remove it or "
                   "choose another --tokens-file", exitcodes.USAGE) from None


@main.command("ls", context_settings=CONTEXT)
@config_option
@click.argument("target", metavar="TYPE:ID")
@click.option("--category", type=click.Choice(CATEGORIES))
@click.option("--include-shared", is_flag=True, help="Also list user_documents shared with the user.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@handle_errors
def ls_cmd(config_path: str | None, target: str, category: str | None, include_shared: bool, as_json: bool) -> None:
    """List one target's remote files (id, name, size, category, created); never a view link.

    \b
    Example:
      syncer ls user:2317820300 --json
    """
    from syncer.report.listing import list_target

    cfg = _load(config_path, {})
    rows = run_async(list_target(cfg, target, category=category, include_shared=include_shared))
    if as_json:
        click.echo(json_text(rows, indent=2))
        return
    for r in rows:  # every cell came from the server
        click.echo("\t".join(escape(r[k]) for k in ("id", "size", "category", "created", "name")))
    click.echo(f"{len(rows)} files", err=True)


@main.command(context_settings=CONTEXT)
@click.option("--workdir", type=click.Path(file_okay=False),
              help="Where the backup, uploads and manifest go: a new or empty folder, or one an earlier "
                   "demo made (default: a new temporary folder).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary.")
@handle_errors
def demo(workdir: str | None, quiet: bool) -> None:
    """Try syncer end to end against the built-in server: no config, token or network needed.

    Starts the built-in Files API server in-process with a few patients and visits (including
    file names that are unsafe as paths), backs them all up with pull, uploads a folder per patient
    with push, checks both byte for byte, and prints where everything is.

    \b
    Example:
      syncer demo
      syncer demo --workdir ./syncer-demo && syncer status -c ./syncer-demo/syncer.toml
    """
    import tempfile

    from syncer import logs
    from syncer.demo import claim_workdir, run_demo
    from syncer.report.progress import make_reporter, summary_text

    logs.setup("text", "warning")
    where = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="syncer-demo-"))
    claim_workdir(where.absolute())  # refused (exit 2) before anything is written when not the demo's
    reporter = make_reporter(quiet=quiet, interval=5.0)
    result = run_async(run_demo(where.resolve(), on_progress=reporter))
    click.echo(summary_text(result.pull))
    click.echo(f"verified: {result.pull_verified} backed-up files byte-identical to the server's"
               + (f"; MISMATCHES: {len(result.pull_mismatches)}" if result.pull_mismatches else ""))
    if result.push is not None:
        click.echo(summary_text(result.push))
        click.echo(f"verified: {result.push_verified} uploaded documents byte-identical on the server"
                   + (f"; MISMATCHES: {len(result.push_mismatches)}" if result.push_mismatches else ""))
    if result.restore is not None:
        click.echo(summary_text(result.restore))
        click.echo(f"verified: {result.restore_verified} deleted documents restored, byte-identical, once"
                   + (f"; MISMATCHES: {len(result.restore_mismatches)}" if result.restore_mismatches else ""))
    if result.encrypted is not None:
        click.echo(summary_text(result.encrypted))
        click.echo(f"verified: {result.encrypted_verified} files stored encrypted (age) in {where / 'encrypted'},"
                   " each decrypted byte-identical to the server's"
                   + (f"; MISMATCHES: {len(result.encrypted_mismatches)}" if result.encrypted_mismatches else ""))
    if result.sample_file is not None and result.key_path is not None:
        import shlex

        click.echo(f"decrypt:  age -d -i {shlex.quote(str(result.key_path))} "
                   f"{shlex.quote(str(result.sample_file))}   (or rage; the key is a throwaway)")
        click.echo(f"          syncer verify --decrypt --identity {shlex.quote(str(result.key_path))} "
                   f"-c {shlex.quote(str(where / 'encrypted' / 'syncer.toml'))}")
    click.echo(f"backup:   {where / 'backup'}")
    click.echo(f"manifest: {where / 'syncer-manifest.sqlite'}")
    click.echo(f"next:     syncer status -c {where / 'syncer.toml'}")
    sys.exit(exitcodes.OK if result.ok else exitcodes.ITEMS_FAILED)


@main.command("status", context_settings=CONTEXT)
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables (for scripts, audits).")
@click.option("--failed", "failures", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
              help="Failed items listed per kind, newest first; 0 lists them all.")
@click.option("--runs", type=click.IntRange(min=0), default=10, show_default=True, help="Last runs listed.")
@click.option("--details", is_flag=True,
              help="Also show what the server said about each failure (may name a patient; kept out of logs).")
@click.option("--all-shards", is_flag=True,
              help="s3:// only: every shard's manifest snapshot in the bucket, each shard's last run and the totals.")
@manifest_option
@handle_errors
def status_cmd(config_path: str | None, manifest_path: str | None, as_json: bool, failures: int, runs: int,
               details: bool, all_shards: bool) -> None:
    """Show what the manifest records: items and bytes by state, the last runs, the failed items.

    Reads the manifest only (safe while a run is going on); never contacts the server.  Exit 0 when
    the manifest could be read, 2 when there is none (nothing has run with this config yet).

    \b
    Example:
      syncer status -c syncer.toml
      syncer status -c syncer.toml --json | jq '.pull.failed_total'
    """
    from syncer.report import status as status_mod

    cfg = _load(config_path, {"manifest": {"path": manifest_path}})
    if all_shards:
        from syncer.store import is_object_dest

        if not is_object_dest(cfg.pull.dest):
            raise ConfigError("--all-shards reads the shards' snapshots in a bucket: pull.dest must be s3://")
        fleet = status_mod.collect_all_shards(str(cfg.pull.dest), cfg, failures=failures)
        click.echo(json_text(fleet, indent=2) if as_json else status_mod.render_fleet(fleet))
        return
    st = status_mod.collect(cfg.manifest.path, runs=runs, failures=failures, details=details)
    if as_json:
        click.echo(json_text(st, indent=2))
    else:
        status_mod.print_human(st, sys.stdout)


@main.command("verify", context_settings=CONTEXT)
@config_option
@click.option("--sample", type=click.IntRange(min=1), metavar="N",
              help="Check N backed-up files picked at random (default 100).")
@click.option("--all", "check_all", is_flag=True, help="Check every backed-up file (reads the whole backup).")
@click.option("--dest", type=click.Path(file_okay=False), help="The backup folder (default: pull.dest).")
@click.option("--quick", is_flag=True,
              help="s3:// only: compare sizes (one listing) and stored checksums; download nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@manifest_option
@click.option("--decrypt", is_flag=True, help="Decrypt encrypted files and check their plaintext (needs --identity).")
@click.option("--identity", type=click.Path(dir_okay=False), metavar="FILE",
              help="An age identity file (mode 0600), for --decrypt.")
@handle_errors
def verify_cmd(config_path: str | None, manifest_path: str | None, sample: int | None, check_all: bool,
               dest: str | None, quick: bool, as_json: bool, decrypt: bool, identity: str | None) -> None:
    """Re-hash backed-up files and compare them with the sizes and SHA-256 the manifest recorded.

    Reports missing and changed files by target/file id and local path.  Exit 0 when every file
    checked is intact, 1 when any is missing, changed or unreadable.  Never writes anything.

    \b
    Example:
      syncer verify -c syncer.toml               # 100 random files
      syncer verify -c syncer.toml --all --json  # the whole backup, for an audit
    """
    from syncer.report import verify as verify_mod

    if sample is not None and check_all:
        raise click.UsageError("give --sample N or --all, not both")
    if decrypt != bool(identity):
        raise click.UsageError("--decrypt needs --identity FILE (and --identity is only used with --decrypt)")
    cfg = _load(config_path, {"manifest": {"path": manifest_path}, "pull": {"dest": dest}})
    from syncer.store import is_object_dest

    identities = None
    if decrypt:
        from syncer.crypto.identity import load_identities

        identities = load_identities(identity)  # type: ignore[arg-type]
    progress = verify_mod.ProgressPrinter(sys.stderr, interval=cfg.log.progress_interval)
    if quick and not is_object_dest(cfg.pull.dest):
        raise click.UsageError("--quick needs an s3:// destination (a folder is checked by re-hashing)")
    try:
        if is_object_dest(cfg.pull.dest):
            from syncer.store.check import verify_objects
            from syncer.store.s3 import ObjectSink

            report = run_async(verify_objects(
                ObjectSink.from_config(str(cfg.pull.dest), cfg), cfg.manifest.path,
                sample=None if check_all else (sample or verify_mod.DEFAULT_SAMPLE), quick=quick))
        else:
            report = verify_mod.verify(cfg.manifest.path, Path(cfg.pull.dest),
                                       sample=None if check_all else (sample or verify_mod.DEFAULT_SAMPLE),
                                       on_progress=progress, identities=identities)
    except KeyboardInterrupt:
        raise Exit("verify interrupted: nothing was concluded", exitcodes.SIGINT) from None
    finally:
        progress.close()
    if identities and getattr(report, "no_key", 0) and not getattr(report, "decrypted", 0):
        raise Exit(f"--identity {identity}: none of the {report.no_key} encrypted files checked opens with this"
                   " key (the wrong identity file?)", exitcodes.USAGE)
    if as_json:
        click.echo(json_text(report.as_dict(), indent=2))
    else:
        click.echo(verify_mod.render_text(report))
    sys.exit(exitcodes.OK if report.passed else exitcodes.ITEMS_FAILED)


@main.command(context_settings=CONTEXT)
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the new identity here (mode 0600; never overwrites). Default: print it.")
@handle_errors
def keygen(output: str | None) -> None:
    """Make a new age identity (private key) and print its recipient (public key).

    The file has age-keygen's format, so age, rage and syncer all read it.  Put the recipient in
    pull.encrypt_to; keep the file offline (only verify --decrypt and restores need it).

    \b
    Example:
      syncer keygen -o clinic-backup-key.txt
    """
    from syncer.crypto.identity import keygen as make_key

    text, public = make_key(output)
    if output is None:
        click.echo(text, nl=False)
    else:
        click.echo(public)


@main.command(context_settings=CONTEXT)
@config_option
@click.option("--source", type=click.Path(file_okay=False),
              help="The folder to upload: <source>/<user_id>/**/<file> (push.source).")
@click.option("--tokens-file", type=click.Path(dir_okay=False),
              help="CSV with header user_id,token, mode 0600 (push.tokens_file).")
@click.option("--user", "users", multiple=True, metavar="ID", help="Only this user's folder; repeatable.")
@click.option("--concurrency", type=int, help="Uploads at once (default 16).")
@click.option("--dry-run", is_flag=True, help="Scan and plan only: print what would be uploaded; send nothing.")
@manifest_option
@run_options
@handle_errors
def push(config_path: str | None, manifest_path: str | None, source: str | None, tokens_file: str | None,
         users: tuple[str, ...],
         concurrency: int | None, dry_run: bool, log_format: str | None, log_level: str | None, quiet: bool,
         progress_interval: float | None, metrics_file: str | None) -> None:
    """Upload every file under SOURCE/<user_id>/ as that user's document, exactly once.

    Each user's files go up with that user's own token (from the tokens file), named by their base
    name. The manifest records every upload, so a rerun sends only what is new or changed; an upload
    whose answer was lost is looked for on the server before anything is sent again.

    \b
    Example:
      export VSEE_API_TOKEN=...        # the account API key
      syncer push -c syncer.toml --source /migration/docs --tokens-file tokens.csv
    """
    from syncer.push.job import PushJob, plan_dry
    from syncer.push.options import PushOptions
    from syncer.report.progress import human_bytes, make_reporter
    from syncer.run.runner import execute

    cfg = _load(config_path, {
        "manifest": {"path": manifest_path},
        "push": {"source": source, "tokens_file": tokens_file, "concurrency": concurrency},
        "log": {"format": log_format, "level": log_level, "progress_interval": progress_interval},
    })
    opts = PushOptions.from_config(cfg, users)
    _check_metrics_file(metrics_file)
    if dry_run:
        report, problems = plan_dry(opts, Path(cfg.manifest.path))
        for problem in problems:
            click.echo(f"not uploaded: {escape(problem.message)}", err=True)
        for row in report:
            note = f"\t({row.note})" if row.note else ""
            click.echo(f"user:{row.user_id}\t{row.files} files\t{human_bytes(row.bytes)}{note}")
        click.echo(f"total: {len(report)} users, {sum(r.files for r in report)} files, "
                   f"{human_bytes(sum(r.bytes for r in report))} would be uploaded (dry run: nothing sent)")
        if problems:  # what a real run would count as failed: the same exit code
            click.echo(f"{len(problems)} entries of the source would not be uploaded (see above)")
            sys.exit(exitcodes.ITEMS_FAILED)
        return
    cfg.api_base_url()
    token = cfg.api_token()
    _setup_logs(cfg, quiet)

    reporter = make_reporter(quiet=quiet, interval=cfg.log.progress_interval, fmt=cfg.log.format)
    stats, code = run_async(execute(
        PushJob, cfg, opts, token=token, concurrency=opts.concurrency, on_progress=reporter,
        details={"source": str(opts.source), "users": len(opts.users) or None}))
    _finish(stats, code, metrics_file)


@main.group("ack", context_settings=CONTEXT)
def ack_group() -> None:
    """Acknowledge a permanent failure, so it no longer turns runs red (it stays listed in status).

    The acknowledgement (who, when, why) goes into the manifest's audit trail.  It is void once the
    file changes on the server or is backed up after all.

    \b
    Example:
      syncer status -c syncer.toml        # find the permanent failures
      syncer ack pull user:2317820300 FILE_ID --reason "removed by the clinic, ticket 4711"
    """


@ack_group.command("pull", context_settings=CONTEXT)
@config_option
@click.argument("target", metavar="TYPE:ID")
@click.argument("file_ids", nargs=-1, metavar="[FILE_ID]...")
@click.option("--all", "all_permanent", is_flag=True,
              help="Every unacknowledged permanent failure of TARGET instead of the FILE_IDs given.")
@click.option("--reason", required=True, help="Why the file cannot be backed up (kept in the audit trail).")
@click.option("--by", "by", envvar="USER", help="Who acknowledges it (default: $USER).")
@manifest_option
@handle_errors
def ack_pull(config_path: str | None, manifest_path: str | None, target: str, file_ids: tuple[str, ...],
             all_permanent: bool, reason: str,
             by: str | None) -> None:
    """Acknowledge that files of TARGET failed permanently (e.g. the server can no longer serve them).

    Only a permanent failure can be acknowledged (exit 2 otherwise); pulls still try the file each
    run, and it is backed up as soon as the server serves it again.

    \b
    Example:
      syncer ack pull user:2317820300 0f6c1d2e-... --reason "deleted by the clinic, ticket 4711"
    """
    import getpass

    from syncer.manifest import Manifest
    from syncer.models import Target

    if bool(file_ids) == all_permanent:
        raise click.UsageError("give the FILE_IDs to acknowledge, or --all (not both)")
    if not reason.strip():
        raise click.UsageError("--reason must say why")
    who = (by or "").strip() or getpass.getuser()
    tgt = Target.parse(target)
    cfg = _load(config_path, {"manifest": {"path": manifest_path}})
    manifest = Manifest.open(cfg.manifest.path, create=False)
    try:
        done = manifest.acknowledge_pull(tgt.type, tgt.id, list(file_ids) if file_ids else None, by=who,
                                         reason=reason.strip())
    finally:
        manifest.close()
    click.echo(f"acknowledged {len(done)} permanent failure{'s' if len(done) != 1 else ''} of {tgt} as {who}")


@ack_group.command("push", context_settings=CONTEXT)
@config_option
@click.argument("user_id", metavar="USER_ID")
@click.argument("rel_paths", nargs=-1, metavar="[PATH]...")
@click.option("--all", "all_permanent", is_flag=True,
              help="Every unacknowledged permanent failure of USER_ID instead of the PATHs given.")
@click.option("--reason", required=True, help="Why the file will not be migrated (kept in the audit trail).")
@click.option("--by", "by", envvar="USER", help="Who acknowledges it (default: $USER).")
@manifest_option
@handle_errors
def ack_push(config_path: str | None, manifest_path: str | None, user_id: str, rel_paths: tuple[str, ...],
             all_permanent: bool, reason: str, by: str | None) -> None:
    """Acknowledge that files of USER_ID's folder were refused for good by the server (400, 413).

    PATH is relative to the user's folder under the push source.  Only a permanent failure can be
    acknowledged (exit 2 otherwise); the acknowledgement is void once the file changes.

    \b
    Example:
      syncer ack push 2317820300 --all --reason "scans over the server's size limit, kept on the NAS"
    """
    import getpass

    from syncer.manifest import Manifest

    if bool(rel_paths) == all_permanent:
        raise click.UsageError("give the PATHs to acknowledge, or --all (not both)")
    if not reason.strip():
        raise click.UsageError("--reason must say why")
    who = (by or "").strip() or getpass.getuser()
    cfg = _load(config_path, {"manifest": {"path": manifest_path}})
    manifest = Manifest.open(cfg.manifest.path, create=False)
    try:
        done = manifest.acknowledge_push(user_id, list(rel_paths) if rel_paths else None, by=who,
                                         reason=reason.strip())
    finally:
        manifest.close()
    click.echo(f"acknowledged {len(done)} permanent failure{'s' if len(done) != 1 else ''} of user {user_id}"
               f" as {escape(who)}")


@main.command(context_settings=CONTEXT)
@config_option
@click.option("--backup", "backup_path", type=click.Path(dir_okay=False),
              help="The config of the pull whose backup is restored (default: the same config).")
@click.option("--tokens-file", type=click.Path(dir_okay=False),
              help="CSV with header user_id,token of the destination users, mode 0600 (push.tokens_file).")
@click.option("--user-map", type=click.Path(dir_okay=False),
              help="CSV with header source_user_id,dest_user_id; required when the accounts differ.")
@click.option("--target", "targets", multiple=True, metavar="user:ID",
              help="Only this backed-up user; repeatable (visit files cannot be restored).")
@click.option("--category", "categories", multiple=True,
              type=click.Choice(["intake_attachment", "user_consent", "user_avatar", "user_document"]),
              help="Only these categories; repeatable (default: every one an upload can carry).")
@click.option("--mapping-out", type=click.Path(dir_okay=False),
              help="Write every restored pair (old id -> new id) here as CSV (0600) at the end of the run.")
@click.option("--concurrency", type=int, help="Uploads at once (default: push.concurrency, 16).")
@click.option("--dry-run", is_flag=True, help="Plan only: per user, what would be uploaded; send and write nothing.")
@manifest_option
@run_options
@handle_errors
def restore(config_path: str | None, manifest_path: str | None, backup_path: str | None, tokens_file: str | None,
            user_map: str | None,
            targets: tuple[str, ...], categories: tuple[str, ...], mapping_out: str | None, concurrency: int | None,
            dry_run: bool, log_format: str | None, log_level: str | None, quiet: bool,
            progress_interval: float | None, metrics_file: str | None) -> None:
    """Put a backup back: into the account it came from, or into another one with a user map.

    Each backed-up user document, consent and avatar goes up once, as the (mapped) user, with its
    original name and category. Into the same account only what is gone from the server is sent;
    into another account every file, except ones already there. Visit files stay in the backup.

    \b
    Example:
      syncer restore -c syncer.toml                          # put deleted documents back
      syncer restore -c new.toml --backup old.toml --user-map users.csv --mapping-out ids.csv
    """
    from syncer.report.progress import human_bytes, make_reporter
    from syncer.restore.options import options_from_config
    from syncer.run.runner import execute

    cfg = _load(config_path, {
        "manifest": {"path": manifest_path},
        "push": {"tokens_file": tokens_file, "concurrency": concurrency},
        "log": {"format": log_format, "level": log_level, "progress_interval": progress_interval},
    })
    # The backup's own config names its manifest: --manifest and $SYNCER_MANIFEST are this run's.
    backup_cfg = config_mod.load(backup_path, env={k: v for k, v in os.environ.items()
                                                   if k != config_mod.MANIFEST_ENV}) if backup_path else cfg
    opts = options_from_config(cfg, backup_cfg, user_map=user_map, targets=targets, categories=categories,
                               mapping_out=mapping_out)
    if not cfg.api.base_url:
        raise ConfigError("api.base_url is not set in the config")
    _check_metrics_file(metrics_file)
    if mapping_out and not Path(mapping_out).resolve().parent.is_dir():
        raise ConfigError(f"--mapping-out {mapping_out}: its folder does not exist")
    token = cfg.api_token()
    if dry_run:
        from syncer.restore.dryrun import dry_run as restore_dry_run

        report = run_async(restore_dry_run(cfg, opts, token))
        for row in report.users:
            note = f"\t({'; '.join(row.notes)})" if row.notes else ""
            click.echo(f"user:{row.source_user} -> user:{row.dest_user}\t{row.files} files\t"
                       f"{human_bytes(row.bytes)}{note}")
        for line in report.lines:
            click.echo(line)
        click.echo(f"total: {len(report.users)} users, {sum(r.files for r in report.users)} files, "
                   f"{human_bytes(sum(r.bytes for r in report.users))} would be uploaded "
                   "(dry run: nothing sent or written)")
        return
    _setup_logs(cfg, quiet)
    from syncer.restore.job import RestoreJob

    reporter = make_reporter(quiet=quiet, interval=cfg.log.progress_interval, fmt=cfg.log.format)
    stats, code = run_async(execute(
        RestoreJob, cfg, opts, token=token, concurrency=opts.concurrency, on_progress=reporter,
        details={"backup": str(opts.backup_manifest), "same_account": opts.same_account,
                 "users": len(opts.users) or None}))
    from syncer import logs

    for line in opts.notes:
        click.echo(logs.json_line("syncer.restore", "note", line) if cfg.log.format == "json" else line)
    _finish(stats, code, metrics_file)
