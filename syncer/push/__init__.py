"""push: upload ``<source>/<user_id>/**`` as each patient's documents, exactly once.

scan -> ``plan`` (snapshot and hash each file, decide against the manifest) -> M uploaders (``job``:
an intent row before every POST, reconciliation of lost answers) -> the recorder.

May import: ``syncer.run``, ``syncer.manifest``, ``syncer.local``, ``syncer.inputs``, ``models``,
``errors``, ``logs``.  Imported by: ``cli``, ``demo``.
"""
