"""The built-in Files API (v3) server, for tests, ``syncer demo`` and rehearsals (``syncer fake-server``).

- ``server``: ``FakeServer`` and ``Faults``, assembled from ``store`` (data, no HTTP), ``api`` (the
  ``/api_v3`` handlers) and ``view`` (the download link); ``http`` holds the shared answers, ``seed``
  the seed data, ``run`` serving from the command line (``python -m syncer.fakeserver``).

Imports nothing of syncer's client side: it is the other end of the wire.  Imported by: ``cli`` (lazily),
``demo``, the tests and the benchmarks.
"""

from syncer.fakeserver.run import (
    ListenError,
    main,
    run_blocking,
    serve_forever,
    tokens_file_place,
    write_tokens_file,
)
from syncer.fakeserver.server import FakeServer, Faults

__all__ = ["FakeServer", "Faults", "ListenError", "main", "run_blocking", "serve_forever", "tokens_file_place",
           "write_tokens_file"]
