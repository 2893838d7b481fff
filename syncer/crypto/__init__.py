"""Encryption at rest: every backed-up file stored as an age file (age-encryption.org/v1) through
``pyrage`` (the Rust reference implementation's bindings).  No cryptography of our own: this package
only parses keys, feeds streams to pyrage and checks what it says.

- ``recipients``: ``pull.encrypt_to`` strings and the recipients-file format (public keys; no secret).
- ``identity``: private keys, read only from a 0600 ``--identity FILE``; ``keygen`` writes a new one.
- ``stream``: the encryptor the atomic writer feeds (plaintext in, ciphertext to the temp file),
  ``encrypt_file`` for converting a plain backup file, and ``open_plaintext`` for verify and restore.
- ``sinkwriter``: ``writer_for``, the one place a pull gets a file's writer: the sink's own, or behind
  age (the folder writer's encryptor, or ``EncryptingWriter`` around any other sink's writer: objects).
- ``restoring``: the plaintext of an encrypted backed-up file for restore (checked before it is sent,
  never written to disk).

pyrage is imported lazily (only when encryption is configured or a key is needed): a plain backup
does not pay for it.

May import: ``syncer.errors``, ``syncer.local``, ``syncer.manifest`` (policy: the encryption-off check).
Imported by: ``pull``, ``store.local`` (the writer's encryptor, by type), ``report.verify``,
``restore.reader``, ``cli``, ``demo``.
"""

from __future__ import annotations

AGE_SUFFIX = ".age"
