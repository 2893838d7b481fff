"""The commands that run a job under the manifest's lock: ``pull``, ``push``, ``restore``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from syncer import exitcodes
from syncer.cli.base import (
    CONTEXT,
    check_metrics_file,
    config_option,
    finish_run,
    handle_errors,
    load_config,
    main,
    manifest_option,
    run_options,
    setup_logs,
)
from syncer.models import CATEGORIES
from syncer.redact import escape
from syncer.run.loop import run_async


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

    cfg = load_config(config_path, {
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
    check_metrics_file(metrics_file)
    setup_logs(cfg, quiet)
    if dry_run:
        from syncer.pull.dryrun import run_dry

        report, stats = run_async(run_dry(cfg, opts, token))
        for row in report:
            click.echo(f"{row.target}\t{row.files} files\t{human_bytes(row.bytes)}")
        click.echo(f"total: {sum(r.files for r in report)} files, "
                   f"{human_bytes(sum(r.bytes for r in report))} would be downloaded (dry run: nothing written)")
        if stats.any_failed:  # a listing that failed: the total leaves out files nobody could see
            click.echo(f"incomplete: {stats.targets_failed} targets could not be listed and "
                       f"{stats.failed} listed items could not be read (see the log): their files are not counted",
                       err=True)
            sys.exit(exitcodes.ITEMS_FAILED)
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
    finish_run(stats, code, metrics_file)


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

    cfg = load_config(config_path, {
        "manifest": {"path": manifest_path},
        "push": {"source": source, "tokens_file": tokens_file, "concurrency": concurrency},
        "log": {"format": log_format, "level": log_level, "progress_interval": progress_interval},
    })
    opts = PushOptions.from_config(cfg, users)
    check_metrics_file(metrics_file)
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
    setup_logs(cfg, quiet)

    reporter = make_reporter(quiet=quiet, interval=cfg.log.progress_interval, fmt=cfg.log.format)
    stats, code = run_async(execute(
        PushJob, cfg, opts, token=token, concurrency=opts.concurrency, on_progress=reporter,
        details={"source": str(opts.source), "users": len(opts.users) or None}))
    finish_run(stats, code, metrics_file)


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
@click.option("--identity", type=click.Path(dir_okay=False), metavar="FILE",
              help="An age identity file (mode 0600) that opens an encrypted backup's files.")
@manifest_option
@run_options
@handle_errors
def restore(config_path: str | None, manifest_path: str | None, backup_path: str | None, tokens_file: str | None,
            user_map: str | None,
            targets: tuple[str, ...], categories: tuple[str, ...], mapping_out: str | None, concurrency: int | None,
            dry_run: bool, identity: str | None, log_format: str | None, log_level: str | None, quiet: bool,
            progress_interval: float | None, metrics_file: str | None) -> None:
    """Put a backup back: into the account it came from, or into another one with a user map.

    Each backed-up user document, consent and avatar goes up once, as the (mapped) user, with its
    original name and category. Into the same account only what is gone from the server is sent;
    into another account every file, except ones already there. Visit files stay in the backup.

    \b
    Example:
      syncer restore -c syncer.toml                          # put deleted documents back
      syncer restore -c new.toml --backup old.toml --user-map users.csv --mapping-out ids.csv
      syncer restore -c syncer.toml --identity key.txt      # an encrypted backup (.age files)
    """
    from syncer import config as config_mod
    from syncer.report.progress import human_bytes, make_reporter
    from syncer.restore.options import options_from_config
    from syncer.run.runner import execute

    cfg = load_config(config_path, {
        "manifest": {"path": manifest_path},
        "push": {"tokens_file": tokens_file, "concurrency": concurrency},
        "log": {"format": log_format, "level": log_level, "progress_interval": progress_interval},
    })
    # The backup's own config names its manifest: --manifest and $SYNCER_MANIFEST are this run's.
    backup_cfg = config_mod.load(backup_path, env={k: v for k, v in os.environ.items()
                                                   if k != config_mod.MANIFEST_ENV}) if backup_path else cfg
    opts = options_from_config(cfg, backup_cfg, user_map=user_map, targets=targets, categories=categories,
                               mapping_out=mapping_out, identity=identity, need_key=not dry_run)
    cfg.api_base_url()
    check_metrics_file(metrics_file)
    check_metrics_file(mapping_out, "--mapping-out")
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
        if report.would_fail:  # what a real run would count as failed: the same exit code
            click.echo(f"{report.would_fail} files would fail (see above)")
            sys.exit(exitcodes.ITEMS_FAILED)
        return
    setup_logs(cfg, quiet)
    from syncer.restore.job import RestoreJob

    reporter = make_reporter(quiet=quiet, interval=cfg.log.progress_interval, fmt=cfg.log.format)
    stats, code = run_async(execute(
        RestoreJob, cfg, opts, token=token, concurrency=opts.concurrency, on_progress=reporter,
        details={"backup": str(opts.backup_manifest), "same_account": opts.same_account,
                 "users": len(opts.users) or None}))
    from syncer import logs

    for line in opts.notes:
        click.echo(logs.json_line("syncer.restore", "note", line) if cfg.log.format == "json" else line)
    finish_run(stats, code, metrics_file)
