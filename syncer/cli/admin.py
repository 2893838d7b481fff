"""The operator's other commands: ``ack``, ``keygen``, ``demo``, ``fake-server``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from syncer.redact import escape
from syncer.run.loop import run_async


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
@click.option("--conn-rate-mbps", type=float, default=0.0,
              help="Cap each download connection at this many MB/s (10^6 bytes/s); 0: no cap.")
@click.option("--fault", "faults", multiple=True, metavar="NAME=RATE",
              help="Inject a fault, e.g. --fault error_500=0.1 --fault reset_mid_body=0.05; repeatable.")
@click.option("--api-key", envvar="SYNCER_FAKE_API_KEY",
              help="The account API key to accept (default: derived from --seed).")
@click.option("--tokens-file", type=click.Path(dir_okay=False), default=None,
              help="Write the patients' upload tokens here (0600; never overwrites a file). "
                   "Default: tokens.csv in a new private temporary folder, removed when the server stops.")
def fake_server(port: int, seed: int, seed_users: int, files_per_user: int, visits: int, files_per_visit: int,
                hostile_names: bool, latency_ms: float, link_ttl: float, no_range: bool, conn_rate_mbps: float,
                faults: tuple[str, ...], api_key: str | None, tokens_file: str | None) -> None:
    """Run the built-in Files API server on 127.0.0.1, for rehearsals.

    It prints its base URL, the account API key and the tokens file path, then serves until Ctrl-C.

    \b
    Example:
      syncer fake-server --port 8080 --seed-users 20 --latency-ms 50 --fault error_500=0.05
      syncer fake-server --tokens-file ./tokens.csv   # then: [push] tokens_file = "tokens.csv"
    """
    from syncer.fakeserver import FakeServer, Faults, ListenError, run_blocking, tokens_file_place, write_tokens_file

    fault_kw: dict[str, float] = {"latency_ms": latency_ms, "conn_rate_mbps": conn_rate_mbps}
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
        raise click.BadParameter(str(exc), param_hint="--fault / --latency-ms / --conn-rate-mbps") from None
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
    from syncer.models import Target

    tgt = Target.parse(target)
    done, who = _acknowledge(config_path, manifest_path, file_ids, all_permanent, reason, by, "FILE_IDs",
                             lambda m, items, who, why: m.acknowledge_pull(tgt.type, tgt.id, items, by=who, reason=why))
    click.echo(f"acknowledged {_failures(done)} of {tgt} as {escape(who)}")


@ack_group.command("push", context_settings=CONTEXT)
@config_option
@click.argument("user_id", metavar="USER_ID")
@click.argument("rel_paths", nargs=-1, metavar="[ITEM]...")
@click.option("--all", "all_permanent", is_flag=True,
              help="Every unacknowledged permanent failure of USER_ID instead of the ITEMs given.")
@click.option("--reason", required=True, help="Why the file will not be migrated (kept in the audit trail).")
@click.option("--by", "by", envvar="USER", help="Who acknowledges it (default: $USER).")
@manifest_option
@handle_errors
def ack_push(config_path: str | None, manifest_path: str | None, user_id: str, rel_paths: tuple[str, ...],
             all_permanent: bool, reason: str, by: str | None) -> None:
    """Acknowledge that files of USER_ID's folder were refused for good by the server (400, 413).

    ITEM is the short id ``syncer status`` shows for the file (or its path under the user's folder).
    Only a permanent failure can be acknowledged (exit 2 otherwise); the acknowledgement is void once
    the file changes.

    \b
    Example:
      syncer ack push 2317820300 --all --reason "scans over the server's size limit, kept on the NAS"
    """
    done, who = _acknowledge(config_path, manifest_path, rel_paths, all_permanent, reason, by, "ITEMs",
                             lambda m, items, who, why: m.acknowledge_push(user_id, items, by=who, reason=why))
    click.echo(f"acknowledged {_failures(done)} of user {user_id} as {escape(who)}")


def _acknowledge(config_path: str | None, manifest_path: str | None, items: tuple[str, ...], all_permanent: bool,
                 reason: str, by: str | None, what: str,
                 record: Callable[[Any, list[str] | None, str, str], list[str]]) -> tuple[list[str], str]:
    """What both ``ack`` commands do: check the arguments, open the manifest, record, close."""
    import getpass

    from syncer.manifest import Manifest

    if bool(items) == all_permanent:
        raise click.UsageError(f"give the {what} to acknowledge, or --all (not both)")
    if not reason.strip():
        raise click.UsageError("--reason must say why")
    who = (by or "").strip() or getpass.getuser()
    cfg = load_config(config_path, {"manifest": {"path": manifest_path}})
    manifest = Manifest.open(cfg.manifest.path, create=False)
    try:
        return record(manifest, list(items) if items else None, who, reason.strip()), who
    finally:
        manifest.close()


def _failures(done: list[str]) -> str:
    return f"{len(done)} permanent failure{'s' if len(done) != 1 else ''}"
