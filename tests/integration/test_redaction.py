"""No token and no signed link anywhere: a whole pull and push under faults, every byte searched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from syncer.fakeserver import FakeServer, Faults


def test_no_secret_in_output_logs_or_manifest(tmp_path):
    faults = Faults(error_500=0.1, error_503_html=0.05, error_429=0.05, retry_after=0.01, reset_mid_body=0.05,
                    truncate_body=0.05, store_then_drop=0.2)
    srv = FakeServer(seed=31, users=3, files_per_user=8, visits=1, files_per_visit=3, hostile_names=True,
                     faults=faults)
    orig_view, seen = srv._view, set()

    async def first_link_expired(request):
        # The first link handed out for each file is treated as expired: every refresh path runs.
        from aiohttp import web

        if request.match_info["id"] not in seen:
            seen.add(request.match_info["id"])
            return web.json_response({"error": {"code": 403, "message": "link expired"}}, status=403)
        return await orig_view(request)

    srv._view = first_link_expired  # type: ignore[method-assign]
    with srv.run_in_thread():
        users = srv.users
        source = tmp_path / "upload"
        for u in users:
            (source / u / "sub").mkdir(parents=True)
            for i in range(4):
                (source / u / "sub" / f"doc {i}.txt").write_bytes(os.urandom(2000 + i))
        tokens = tmp_path / "tokens.csv"
        tokens.write_text("user_id,token\n" + "".join(f"{u},{srv.token_for(u)}\n" for u in users))
        tokens.chmod(0o600)
        targets = [f"user:{u}" for u in users] + [f"visit:{v}" for v in srv.visits]
        cfg = tmp_path / "syncer.toml"
        cfg.write_text(
            f'[api]\nbase_url = "{srv.base_url}"\naccount_code = "{srv.account_code}"\n'
            '[manifest]\npath = "manifest.sqlite"\n[retry]\nattempts = 12\nmin_wait = 0.01\nmax_wait = 0.05\n'
            f'[pull]\ndest = "backup"\ntargets = {targets!r}\n'.replace("'", '"')
            + '[push]\nsource = "upload"\ntokens_file = "tokens.csv"\n')
        env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
        outputs = []
        for args in (["pull"], ["push"], ["status"], ["status", "--json"], ["ls", f"user:{users[0]}"]):
            for fmt in (["--log-format", "json", "--log-level", "debug"], ["--log-level", "debug"]):
                extra = fmt if args[0] in ("pull", "push") else []
                proc = subprocess.run([sys.executable, "-m", "syncer", *args, "-c", str(cfg), *extra], env=env,
                                      cwd=tmp_path, capture_output=True, timeout=120)
                assert proc.returncode == 0, proc.stderr[-3000:]
                outputs += [proc.stdout, proc.stderr]
        injected = sum(v for k, v in srv.counters.items() if k.startswith("fault_"))
        assert injected > 10 and srv.counters["view_403"] >= 27, "too few faults to prove anything"
        secrets = [srv.api_key.encode()] + [srv.token_for(u).encode() for u in users]
        stored = b"".join(p.read_bytes() for p in Path(tmp_path).glob("manifest.sqlite*") if p.is_file())
        everything = b"".join(outputs) + stored
        assert len(everything) > 10_000
        for secret in secrets:
            assert secret not in everything
        assert b"auth_code=" not in everything
        assert b"auth_code" not in stored
