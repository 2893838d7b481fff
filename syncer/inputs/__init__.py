"""Files an operator hands to syncer: targets files, the patient tokens file and a migration's user map.

May import: ``errors``, ``models``, ``logs`` (to register secrets), ``syncer.local.storage`` (the
0600 check).  Imported by: ``config``'s callers, the jobs, ``cli``.
"""
