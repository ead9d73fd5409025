"""Tokenized samples in memory-mapped Arrow files: built once with ``datasets.map``, cached by content, read lazily.

Why: a dataset of a million rows cannot be tokenized into Python lists on every run and
every rank. Here the rows are tokenized by ``datasets.map(batched=True, num_proc=N)`` into
Arrow files under a cache directory whose name is a hash of everything that decides the
tokens (the data files' bytes, the tokenizer's vocabulary, rules and chat template, the
dataset's arguments and the data code itself). A second run, or another rank, maps those
files (no copy into memory) and reads one sample when it is asked for.

One build per cache entry: the builder holds a file lock, writes into a scratch folder
and renames it into place; everyone else waits on the lock and maps the result. The first
rows are tokenized in this process before the workers start, so a bad row near the top
stops the run at once; when a worker meets a bad row the others stop at their next batch,
and the error names the row's file and line.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import datasets
import pyarrow as pa
import xxhash
from filelock import FileLock

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.datasets.arrow_rows import RowSource
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.loggers.phase_progress import PhaseProgress

logger = logging.getLogger("nemo_like")

FORMAT = 3  # the layout of a cache entry; bump to leave old entries behind
BATCH_ROWS = 1000
MIN_ROWS_PER_PROCESS = 2000  # fewer rows than this per worker and forking costs more than it saves
PROBE_ROWS = 64  # tokenized here first, so an error in the first rows needs no workers

# A row's samples: {"input_ids": [...], "labels": [...], "cut": bool} (pre-shifted, unpadded), with "parts" (the
# lengths of a sample's pieces, e.g. prompt / chosen / rejected) where an item has several and "supervised" (the
# count of labels that are not IGNORE_INDEX) where the dataset knows it; or None to drop it. A sample may instead
# give "tokens" (the row's n tokens, unshifted), "label_spans" ([a0, b0, a1, b1, ...]: the shifted positions
# a <= k < b whose label is tokens[k + 1]) and "supervised": the table is then built on whole arrays.
Encoder = Callable[[list[tuple[str, dict[str, Any]]]], list[dict[str, Any] | None]]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where token tables live: ``cache_dir``, else ``$NEMO_LIKE_DATASETS_CACHE``, else ``$NEMO_LIKE_HOME/datasets``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("NEMO_LIKE_DATASETS_CACHE"):
        return Path(os.environ["NEMO_LIKE_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("NEMO_LIKE_HOME") or Path.home() / ".cache" / "nemo_like"
    return Path(home).expanduser() / "datasets"


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (keys sorted; other objects by ``str``)."""
    return xxhash.xxh3_128(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Everything of a tokenizer that decides token ids: vocabulary, merges, normalizer, added and special tokens,
    chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return fingerprint(type(tokenizer).__name__, rules, getattr(tokenizer, "chat_template", None),
                       {k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()},
                       [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id])


def code_fingerprint() -> str:
    """A hash of the data code (this package's dataset modules): a change to how rows are tokenized is a new key."""
    digest = xxhash.xxh3_128()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def default_num_proc(rows: int, num_proc: int | None) -> int:
    """Worker processes for ``rows``: ``num_proc`` (default: this machine's cores), at least 2000 rows each."""
    cores = num_proc if num_proc is not None else len(os.sched_getaffinity(0))
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise DatasetError(f"dataset.num_proc: expected a positive integer, got {num_proc!r}")
    return max(1, min(cores, rows // MIN_ROWS_PER_PROCESS))


class _Stopped(Exception):
    """Another worker met a bad row; this one stops at its next batch."""


class _TokenizeRows:
    """The ``datasets.map`` function: decode each row with its name, tokenize the batch, keep where it came from."""

    def __init__(self, source: RowSource, encode: Encoder, stop_file: str) -> None:
        self.source, self.encode, self.stop_file = source, encode, stop_file
        self.progress: PhaseProgress | None = None  # count lines for a log file (one process; see _build)

    def __call__(self, batch: dict[str, list], indices: list[int]) -> pa.Table:
        if os.path.exists(self.stop_file):
            raise _Stopped
        collecting = gc.isenabled()
        gc.disable()  # a batch makes ~10^5 small lists and no cycles: collector passes over them are a tenth of its time
        try:
            table = self._table(batch, indices)
            if self.progress is not None:
                self.progress.update(len(indices))
            return table
        except DatasetError as err:
            with open(self.stop_file, "a", encoding="utf-8") as f:
                f.write(str(err) + "\n")
            raise
        finally:
            if collecting:
                gc.enable()

    def _table(self, batch: dict[str, list], indices: list[int]) -> pa.Table:
        located = [self.source.decode(batch, i, index) for i, index in enumerate(indices)]
        samples = self.encode([(self.source.where(file, row), data) for file, row, data in located])
        kept = [(index, file, row, sample) for index, (file, row, _), sample in zip(indices, located, samples)
                if sample is not None]
        kept_samples = [sample for *_, sample in kept]
        out: dict[str, Any] = {
            "parts": _int32_lists([sample.get("parts", []) for sample in kept_samples]),
            "cut": [bool(sample.get("cut", False)) for sample in kept_samples],
            "file": [file for _, file, _, _ in kept], "row": [row for _, _, row, _ in kept],
            "index": [index for index, *_ in kept],
        }
        if kept_samples and all("tokens" in sample for sample in kept_samples):
            out["input_ids"], out["labels"] = _shifted_columns(kept_samples)
            out["supervised"] = [sample["supervised"] for sample in kept_samples]
        else:
            shifted = [shifted_lists(sample) for sample in kept_samples]
            out["input_ids"] = _int32_lists([ids for ids, _ in shifted])
            out["labels"] = _int32_lists([labels for _, labels in shifted])
            out["supervised"] = [len(labels) - labels.count(IGNORE_INDEX) if sample.get("supervised") is None
                                 else sample["supervised"] for (_, labels), sample in zip(shifted, kept_samples)]
        return pa.Table.from_pydict(out, schema=_SCHEMA)


def shifted_lists(sample: dict[str, Any]) -> tuple[list[int], list[int]]:
    """A sample's pre-shifted ``input_ids`` and ``labels`` lists, from either form a dataset may give (see Encoder)."""
    if "tokens" not in sample:
        return sample["input_ids"], sample["labels"]
    tokens, spans = sample["tokens"], sample["label_spans"]
    labels = [IGNORE_INDEX] * (len(tokens) - 1)
    for a, b in zip(spans[::2], spans[1::2]):
        labels[a:b] = tokens[a + 1 : b + 1]
    return tokens[:-1], labels


def _shifted_columns(samples: list[dict[str, Any]]) -> tuple[pa.Array, pa.Array]:
    """``input_ids`` and ``labels`` columns of samples in the ``tokens`` / ``label_spans`` form, built on whole
    arrays: each row's tokens but the last are its inputs, its tokens but the first its targets, kept as labels
    inside its spans."""
    rows = [sample["tokens"] for sample in samples]
    n = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    if np.any(n < 1):
        raise ValueError("a sample in the tokens form has no tokens")
    ends = np.cumsum(n)
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(ends[-1]))
    not_last = np.ones(len(flat), dtype=bool)
    not_last[ends - 1] = False
    not_first = np.ones(len(flat), dtype=bool)
    not_first[ends - n] = False
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(n - 1, out=offsets[1:])
    spans = [sample["label_spans"] for sample in samples]
    bounds = np.fromiter(chain.from_iterable(spans), dtype=np.int64, count=sum(map(len, spans)))
    at = bounds + np.repeat(offsets[:-1].astype(np.int64), [len(s) for s in spans])  # positions in the whole batch
    size = int(offsets[-1]) + 1
    inside = np.cumsum(np.bincount(at[0::2], minlength=size) - np.bincount(at[1::2], minlength=size))[:-1] > 0
    labels = np.where(inside, flat[not_first], np.int32(IGNORE_INDEX))  # int32, as both inputs are
    pa_offsets = pa.array(offsets)
    return (pa.ListArray.from_arrays(pa_offsets, pa.array(flat[not_last])),
            pa.ListArray.from_arrays(pa_offsets, pa.array(labels)))


def _int32_lists(rows: list[list[int]]) -> pa.Array:
    """A ``list<int32>`` Arrow column built from flat numpy arrays (not inferred row by row from Python lists)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _features() -> Any:
    ids = datasets.List(datasets.Value("int32"))
    return datasets.Features({"input_ids": ids, "labels": ids, "parts": ids, "supervised": datasets.Value("int32"),
                              "file": datasets.Value("int32"),
                              "row": datasets.Value("int64"), "index": datasets.Value("int64"), "cut": datasets.Value("bool")})


_SCHEMA = _features().arrow_schema


class _ListColumn:
    """One ``list<int32>`` column read through numpy views of its memory-mapped chunks."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.offsets = [chunk.offsets.to_numpy() for chunk in column.chunks]
        self.values = [chunk.values.to_numpy(zero_copy_only=False) for chunk in column.chunks]
        self.starts = np.cumsum([0] + [len(chunk) for chunk in column.chunks])

    def __getitem__(self, i: int) -> np.ndarray:
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        offsets, j = self.offsets[c], i - int(self.starts[c])
        return self.values[c][offsets[j] : offsets[j + 1]]

    def lengths(self) -> np.ndarray:
        if not self.offsets:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.diff(o) for o in self.offsets]).astype(np.int64)


class TokenTable:
    """The samples of one cache entry: pre-shifted ``input_ids`` / ``labels`` (unpadded), where each came from,
    and the build's counts (``manifest``)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.manifest = json.loads((self.directory / "manifest.json").read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT:
            raise DatasetError(f"{self.directory}: cache entry of another format")
        names = self.manifest["files"]
        if any(not isinstance(n, str) or os.path.basename(n) != n or not n.endswith(".arrow") for n in names):
            raise DatasetError(f"{self.directory}: the manifest names files outside its entry")
        tables = [pa.ipc.open_stream(pa.memory_map(str(self.directory / name))).read_all() for name in names]
        table = pa.concat_tables(tables) if tables else _features().arrow_schema.empty_table()
        if len(table) != self.manifest["samples"]:
            raise DatasetError(f"{self.directory}: {len(table)} samples, the manifest says {self.manifest['samples']}")
        self.input_ids = _ListColumn(table.column("input_ids"))
        self.labels = _ListColumn(table.column("labels"))
        self.parts = _ListColumn(table.column("parts"))  # a sample's piece lengths, for datasets whose items have several
        self.supervised = table.column("supervised").to_numpy()
        self.file = table.column("file").to_numpy()
        self.row = table.column("row").to_numpy()
        self.lengths = self.input_ids.lengths()

    def __len__(self) -> int:
        return len(self.lengths)

    def derived(self, name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Arrays computed from this table (a packing plan), kept next to it: built once, then read back.

        ``name`` must say everything the arrays depend on besides the table. Stored as ``.npz``
        without pickles, written to a temporary name and renamed, so readers never see half a file.
        """
        path = self.directory / f"derived-{name}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as stored:
                    return {key: stored[key] for key in stored.files}
            except (OSError, ValueError) as e:
                logger.warning("%s is unreadable (%s); computing it again", path, e)
        arrays = build()
        partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        try:
            np.savez(partial, **arrays)
            os.replace(partial, path)
        except OSError as e:  # a read-only cache still trains, it only plans again next time
            logger.warning("could not keep %s (%s)", path, e.strerror)
            partial.unlink(missing_ok=True)
        return arrays

    def label_counts(self) -> np.ndarray:
        """Supervised labels (not ``IGNORE_INDEX``) of every sample, counted when it was tokenized: packing
        needs them without reading the label column."""
        return self.supervised.astype(np.int64)


def load_or_build(source: RowSource, encode: Encoder, key: str | None, *, cache_dir: str | os.PathLike | None,
                  num_proc: int | None, limit: int | None, describe: str,
                  explain: Callable[[str, dict[str, Any]], str | None] | None = None) -> TokenTable:
    """The token table for ``key``: mapped from the cache, or built once (under a lock) and cached.

    ``key`` None means the tokens cannot be named (a function without source), so they are
    built into a scratch entry removed at exit. ``explain(where, row)`` gives the reason a
    dropped row was dropped; the first one is kept in the manifest (``first_problem``).
    """
    root = cache_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"dataset cache {root}: cannot create it ({e.strerror}); set dataset.cache_dir") from None
    if key is None:
        scratch = Path(tempfile.mkdtemp(prefix="uncached-", dir=root))
        atexit.register(shutil.rmtree, scratch, True)
        _build(source, encode, scratch / "entry", num_proc, limit, describe, explain)
        return TokenTable(scratch / "entry")
    final = root / key
    table = _mapped(final)
    if table is not None:
        logger.info("%s: %d samples from the token cache %s", describe, len(table), final)
        return table
    with FileLock(str(root / f"{key}.lock")):
        table = _mapped(final)
        if table is not None:  # another process built it while this one waited
            logger.info("%s: %d samples from the token cache %s (built by another process)", describe,
                        len(table), final)
            return table
        shutil.rmtree(final, ignore_errors=True)  # a broken entry
        for stale in root.glob(f"{key}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = root / f"{key}.building-{os.getpid()}"
        try:
            _build(source, encode, building, num_proc, limit, describe, explain)
            os.rename(building, final)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return TokenTable(final)


def _mapped(directory: Path) -> TokenTable | None:
    if not (directory / "manifest.json").is_file():
        return None
    try:
        return TokenTable(directory)
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        logger.warning("token cache %s is unreadable (%s); building it again", directory, e)
        return None


def _build(source: RowSource, encode: Encoder, out: Path, num_proc: int | None, limit: int | None,
           describe: str, explain: Callable[[str, dict[str, Any]], str | None] | None) -> None:
    start = time.perf_counter()
    out.mkdir(parents=True)
    scratch = out / "scratch"
    scratch.mkdir()
    rows = source.load(scratch)
    if limit is not None:
        rows = rows.select(range(min(int(limit), len(rows))))
    workers = default_num_proc(len(rows), num_proc)
    stop_file = str(scratch / "stop")
    tokenize = _TokenizeRows(source, encode, stop_file)
    if workers > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers: no tokenizer threads
        probe = rows.select(range(min(PROBE_ROWS, len(rows))))
        tokenize(probe[:], list(range(len(probe))))  # the first rows' errors, before any worker starts
    # A terminal gets datasets' bar; a log file gets plain count lines instead of its carriage returns.
    bar = sys.stderr.isatty()
    tokenize.progress = None if bar or workers > 1 else PhaseProgress(f"tokenizing {describe}", len(rows), "rows")
    bars_were_on = datasets.utils.logging.is_progress_bar_enabled()
    if not bar:
        datasets.utils.logging.disable_progress_bar()
    gc.freeze()  # what exists now is kept for the whole build: the collector (here and in the workers) skips it
    try:
        tokens = rows.map(tokenize, batched=True, batch_size=BATCH_ROWS, with_indices=True,
                          num_proc=workers if workers > 1 else None, remove_columns=rows.column_names,
                          features=_features(), cache_file_name=str(out / "tokens.arrow"),
                          load_from_cache_file=False, new_fingerprint=out.name.replace(".", "-"),
                          writer_batch_size=BATCH_ROWS, desc=f"tokenizing {describe}")
    except Exception:
        if os.path.exists(stop_file):  # the first bad row a worker met, as it was reported there
            with open(stop_file, encoding="utf-8") as f:
                raise DatasetError(f.readline().rstrip("\n")) from None
        raise
    finally:
        gc.unfreeze()
        if bars_were_on:
            datasets.utils.logging.enable_progress_bar()
    first_problem = None
    if explain is not None and len(tokens) < len(rows):  # the first dropped row, and why
        kept = tokens.data.column("index").to_numpy()
        index = int(np.argmax(kept != np.arange(len(kept)))) if np.any(kept != np.arange(len(kept))) else len(kept)
        file, row, data = source.decode(rows[index : index + 1], 0, index)
        first_problem = explain(source.where(file, row), data)
    manifest = {
        "format": FORMAT, "describe": describe,
        "files": [os.path.basename(f["filename"]) for f in tokens.cache_files],
        "rows": len(rows), "samples": len(tokens), "first_problem": first_problem,
        "cut": int(np.count_nonzero(tokens.data.column("cut").to_numpy())) if len(tokens) else 0,
        "built": {"seconds": round(time.perf_counter() - start, 3), "processes": workers, "pid": os.getpid(),
                  "rank": os.environ.get("RANK"), "host": socket.gethostname()},
    }
    del tokens, rows
    shutil.rmtree(scratch, ignore_errors=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    logger.info("%s: tokenized %d rows into %d samples in %.1f s (%d process%s)", describe, manifest["rows"],
                manifest["samples"], manifest["built"]["seconds"], workers, "es" if workers > 1 else "")
