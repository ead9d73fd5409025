"""``MANIFEST.json``: every file of a step directory with its size and checksum, written last.

The manifest is the seal of a complete checkpoint: it is written after every other file
(and after each file is fsynced), before the ``.tmp_*`` directory takes its final name
and before ``LATEST`` moves. A resume checks it before anything loads, so a truncated,
changed, missing or added file is a one-line error naming that file instead of a
half-loaded run. The checksum is XXH3-128: it tells damage (a cut, a flipped bit, another
file) at about 10 GB/s a core, where SHA-256 made hashing the slowest part of a save
(1.3 GB/s here); it is no defence against someone who can also rewrite the manifest, and
neither was SHA-256. Manifests written with SHA-256 still verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import xxhash

from nemo_like.components.checkpoint.errors import CheckpointError
from nemo_like.components.checkpoint.pointers import STEP_DIR, TMP_PREFIX, fsync_path

MANIFEST = "MANIFEST.json"
ALGORITHM = "xxh3_128"
VERSION = 2
_HASHES = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}  # what a manifest may name
_CHUNK = 1 << 20
_PARALLEL_BYTES = 64 << 20  # below this, threads cost more than they save
# Written beside the weights after the save by the evaluation (``lm_eval_results.json``); not training state.
_AFTER_SAVE = re.compile(r"^lm_eval_results[^/]*\.jsonl?$")


def _digest(path: str, sync: bool = False, algorithm: str = ALGORITHM) -> tuple[int, str]:
    """Size and checksum of one file, read in 1 MiB chunks (both hashes drop the GIL: files hash in parallel)."""
    h: Any = _HASHES[algorithm]()
    size = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
        if sync:
            os.fsync(f.fileno())
    return size, h.hexdigest()


def _files(step_dir: str) -> list[str]:
    """Every file under ``step_dir`` but the manifest, as sorted POSIX paths relative to it."""
    out = []
    for here, dirs, names in os.walk(step_dir):
        dirs.sort()
        rel = os.path.relpath(here, step_dir)
        for name in names:
            path = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
            if path != MANIFEST and not path.startswith(TMP_PREFIX):
                out.append(path)
    return sorted(out)


def _digest_all(step_dir: str, rel_paths: list[str], sync: bool, algorithm: str = ALGORITHM
                ) -> list[tuple[int, str]]:
    """Each file's size and digest; a file under two names (a hard link) is read once."""
    paths = [os.path.join(step_dir, p) for p in rel_paths]
    inodes = [(s.st_dev, s.st_ino) for s in map(os.stat, paths)]
    first = {inode: path for inode, path in zip(reversed(inodes), reversed(paths))}
    unique = list(first.values())
    total = sum(os.path.getsize(p) for p in unique)
    if total < _PARALLEL_BYTES or len(unique) < 2:
        digests = dict(zip(unique, (_digest(p, sync, algorithm) for p in unique)))
    else:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            digests = dict(zip(unique, pool.map(lambda p: _digest(p, sync, algorithm), unique)))
    return [digests[first[inode]] for inode in inodes]


def write_manifest(step_dir: str, sync: bool = True) -> dict:
    """Hash (and with ``sync`` fsync) every file of ``step_dir``, then write ``MANIFEST.json`` atomically; returns
    the manifest."""
    rel_paths = _files(step_dir)
    digests = _digest_all(step_dir, rel_paths, sync=sync)
    manifest = {
        "version": VERSION,
        "algorithm": ALGORITHM,
        "files": {p: {"size": size, ALGORITHM: hexdigest} for p, (size, hexdigest) in zip(rel_paths, digests)},
    }
    tmp = os.path.join(step_dir, TMP_PREFIX + MANIFEST)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))
    for here, _, _ in os.walk(step_dir):
        fsync_path(here)
    return manifest


def has_manifest(step_dir: str) -> bool:
    return os.path.isfile(os.path.join(step_dir, MANIFEST))


def _earlier_hint(step_dir: str) -> str:
    """Where to go instead: the step directory just before this one, when there is one."""
    root, name = os.path.split(os.path.normpath(step_dir))
    match = STEP_DIR.match(name)
    if not match or not os.path.isdir(root):
        return "resume from an earlier checkpoint with --checkpoint.restore_from <step directory>"
    step = int(match.group(2))
    earlier = sorted(
        (int(m.group(2)), n) for n in os.listdir(root) if (m := STEP_DIR.match(n)) and int(m.group(2)) < step
    )
    sealed = [n for _, n in earlier if has_manifest(os.path.join(root, n))]
    if sealed:
        return f"resume from the one before with --checkpoint.restore_from {sealed[-1]}, or start fresh with none"
    if earlier:
        return "the earlier checkpoints have no manifest either: start fresh with --checkpoint.restore_from none"
    return "there is no earlier checkpoint: start fresh with --checkpoint.restore_from none"


def _damaged(step_dir: str, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint.restore_from: {what}; {_earlier_hint(step_dir)}")


def missing_manifest_error(step_dir: str) -> CheckpointError:
    return _damaged(step_dir, f"{os.path.join(step_dir, MANIFEST)} is missing, so {step_dir} is not known to be "
                              f"complete (an older version wrote it, or the save never finished)")


def read_manifest(step_dir: str) -> dict:
    """The parsed manifest; a missing or unreadable one is a one-line error naming it."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.isfile(path):
        raise missing_manifest_error(step_dir)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
        algorithm = manifest.get("algorithm")
        if algorithm not in _HASHES or not isinstance(files, dict):
            raise ValueError(f"algorithm {algorithm!r}, expected one of {sorted(_HASHES)}")
        for entry in files.values():
            int(entry["size"]), str(entry[algorithm])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise _damaged(step_dir, f"{path} cannot be read ({type(err).__name__}: {err})") from None
    return manifest


def verify_manifest(step_dir: str) -> None:
    """Check every file of ``step_dir`` against its manifest: sizes first (cheap), then checksums.

    Raises a one-line ``CheckpointError`` naming the first file that is missing, not listed,
    of another size, or of another checksum.
    """
    manifest = read_manifest(step_dir)
    files, algorithm = manifest["files"], manifest["algorithm"]
    present = set(_files(step_dir))
    for rel in sorted(files):
        if rel not in present:
            raise _damaged(step_dir, f"{os.path.join(step_dir, rel)} is missing (listed in {MANIFEST})")
    for rel in sorted(present - set(files)):
        if not _AFTER_SAVE.match(rel):
            raise _damaged(step_dir, f"{os.path.join(step_dir, rel)} is not listed in {MANIFEST} "
                                     f"(added after the save)")
    for rel in sorted(files):
        size, want = os.path.getsize(os.path.join(step_dir, rel)), int(files[rel]["size"])
        if size != want:
            how = "truncated" if size < want else "grown"
            raise _damaged(step_dir, f"{os.path.join(step_dir, rel)} has {size} bytes, {MANIFEST} says {want} ({how})")
    listed = sorted(files)
    for rel, (_, hexdigest) in zip(listed, _digest_all(step_dir, listed, sync=False, algorithm=algorithm)):
        if hexdigest != files[rel][algorithm]:
            raise _damaged(step_dir, f"{os.path.join(step_dir, rel)} does not match its {algorithm} checksum in "
                                     f"{MANIFEST} (changed after the save)")
