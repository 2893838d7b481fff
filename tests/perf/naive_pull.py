"""The naive peer: what a clinic would write by hand.  Sequential urllib, standard library only.

For each target: list its files; then for each file: ask for its info (a fresh ``fullpath``) and
download it into DEST/<target>/<file id>.  No retries, no fsync, no manifest.  Stops after
``--max-files`` files (a sequential script's files/s does not depend on how many it does), then
prints one JSON line: files, bytes.

    python tests/perf/naive_pull.py BASE_URL DEST --token KEY --account democlinic --max-files 200 user:1 user:2
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
import urllib.request


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("dest")
    p.add_argument("targets", nargs="+")
    p.add_argument("--token", required=True)
    p.add_argument("--account", default="")
    p.add_argument("--max-files", type=int, default=0)
    a = p.parse_args()
    headers = {"X-ApiToken": a.token, "X-AccountCode": a.account, "Accept": "application/json"}

    def get_json(url: str):
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            return json.loads(r.read())["data"]

    files = nbytes = 0
    for target in a.targets:
        ttype, tid = target.split(":", 1)
        query = urllib.parse.urlencode({"target_type": ttype, "target_id": tid})
        listing = get_json(f"{a.base_url}/files?{query}")
        folder = os.path.join(a.dest, ttype, tid)
        os.makedirs(folder, exist_ok=True)
        for item in listing:
            if a.max_files and files >= a.max_files:
                break
            info = get_json(f"{a.base_url}/files/{urllib.parse.quote(item['id'], safe='')}")
            with urllib.request.urlopen(info["fullpath"], timeout=60) as r:
                body = r.read()
            with open(os.path.join(folder, item["id"]), "wb") as f:
                f.write(body)
            files += 1
            nbytes += len(body)
        if a.max_files and files >= a.max_files:
            break
    print(json.dumps({"files": files, "bytes": nbytes}))


if __name__ == "__main__":
    main()
