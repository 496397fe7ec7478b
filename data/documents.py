"""What every text source yields: documents, split by a stable hash, with bad bytes replaced.

The bottom of data/: the error users see, the UTF-8 rule and its count, and the holdout.
Every source (built-in corpus, files, TFDS) splits its documents the same way: the TFDS
"validation" split when a dataset has one, else the ~2% that `is_validation` picks by hash,
so the holdout is the same on every run. Bytes that are not UTF-8 become U+FFFD and are
counted, never a crash.
"""

import dataclasses
import hashlib

SPLITS = ("train", "validation")
VALIDATION_PERCENT = 2


class DataError(ValueError):
    """A user-facing data mistake (bad source, missing files, bad records); one line."""


@dataclasses.dataclass
class DecodeCounts:
    """How many documents had bytes that are not UTF-8 (replaced, not fatal)."""

    replaced_docs: int = 0


def decode_utf8(raw: bytes) -> tuple[str, bool]:
    """raw as text with invalid bytes replaced by U+FFFD, and whether any were."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def is_validation(doc: str) -> bool:
    """True for the ~2% of documents held out, by a hash that is stable across runs."""
    digest = hashlib.blake2b(doc.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < VALIDATION_PERCENT
