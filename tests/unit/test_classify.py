"""errors.classify: the one place that says what an error means for a run."""

from __future__ import annotations

import errno

import pytest

from syncer.errors import (
    AuthError,
    BadRequestError,
    ConnectionFailed,
    ForbiddenError,
    Kind,
    LocalIOError,
    LocalPathError,
    ManifestError,
    NotFoundError,
    ProtocolError,
    TooLargeError,
    UnsafeNameError,
    classify,
)
from syncer.local.storage import UnsafePathError


@pytest.mark.parametrize(("exc", "download", "upload"), [
    (ConnectionFailed("reset"), Kind.RETRY, Kind.RETRY),
    (AuthError("401"), Kind.FATAL, Kind.FATAL),
    (ManifestError("corrupt"), Kind.FATAL, Kind.FATAL),
    (NotFoundError("404"), Kind.PERMANENT, Kind.ITEM),
    (ForbiddenError("403"), Kind.PERMANENT, Kind.ITEM),
    (BadRequestError("400"), Kind.PERMANENT, Kind.PERMANENT),
    (TooLargeError("413"), Kind.PERMANENT, Kind.PERMANENT),
    (ProtocolError("junk JSON"), Kind.ITEM, Kind.ITEM),         # says nothing lasting about the file
    (UnsafeNameError("a name that cannot be placed"), Kind.PERMANENT, Kind.ITEM),
    (LocalPathError("a symlink on the way"), Kind.ITEM, Kind.ITEM),
    (UnsafePathError("leaves the destination"), Kind.ITEM, Kind.ITEM),
    (ValueError("unexpected"), Kind.ITEM, Kind.ITEM),
])
def test_each_error_has_one_meaning(exc: BaseException, download: Kind, upload: Kind) -> None:
    assert classify(exc) is download
    assert classify(exc, upload=True) is upload


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, None])
def test_a_failing_disk_stops_the_run(code: int | None) -> None:
    assert classify(LocalIOError("disk", errno=code)) is Kind.FATAL


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENAMETOOLONG])
def test_one_folder_we_cannot_write_fails_only_its_items(code: int) -> None:
    # One patient's unwritable folder must not stop every other patient's backup; never permanent either.
    assert classify(LocalIOError("place", errno=code)) is Kind.ITEM
