"""The commands that read: ``status``, ``verify``, ``ls``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from syncer import exitcodes
from syncer.cli.base import (
    CONTEXT,
    Exit,
    config_option,
    handle_errors,
    load_config,
    main,
    manifest_option,
)
from syncer.errors import ConfigError
from syncer.models import CATEGORIES
from syncer.redact import escape, json_text
from syncer.run.loop import run_async


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

    cfg = load_config(config_path, {})
    rows = run_async(list_target(cfg, target, category=category, include_shared=include_shared))
    if as_json:
        click.echo(json_text(rows, indent=2))
        return
    for r in rows:  # every cell came from the server
        click.echo("\t".join(escape(r[k]) for k in ("id", "size", "category", "created", "name")))
    click.echo(f"{len(rows)} files", err=True)


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

    cfg = load_config(config_path, {"manifest": {"path": manifest_path}})
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
    cfg = load_config(config_path, {"manifest": {"path": manifest_path}, "pull": {"dest": dest}})
    from syncer.store import is_object_dest

    identities = None
    if decrypt:
        from syncer.crypto.identity import load_identities

        identities = load_identities(identity)  # type: ignore[arg-type]
    progress = verify_mod.ProgressPrinter(sys.stderr, interval=cfg.log.progress_interval)
    if quick and decrypt:
        raise click.UsageError("--quick downloads nothing, so it cannot --decrypt: give one or the other")
    if quick and not is_object_dest(cfg.pull.dest):
        raise click.UsageError("--quick needs an s3:// destination (a folder is checked by re-hashing)")
    try:
        if is_object_dest(cfg.pull.dest):
            from syncer.store.check import verify_objects
            from syncer.store.s3 import ObjectSink

            report = run_async(verify_objects(
                ObjectSink.from_config(str(cfg.pull.dest), cfg), cfg.manifest.path,
                sample=None if check_all else (sample or verify_mod.DEFAULT_SAMPLE), quick=quick,
                identities=identities))
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
