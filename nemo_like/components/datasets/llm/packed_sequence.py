"""Packed sequences: many short tokenized documents laid end to end in fixed-size rows.

Why: instruction data is mostly short, so padding each row to the longest one wastes
most of the compute. Packing fills every row, but then two things must hold for the
loss to stay the loss of the documents run one by one:

* every document restarts its ``position_ids`` at 0, and
* no token attends to a token of another document.

The second is *not* implied by the first under SDPA or eager attention; the packed
collater therefore builds a 4-D block-diagonal causal mask ``[B, 1, S, S]`` from the
position ids (a new document starts wherever the position is 0), and
:func:`prepare_packed_attention` turns it into what the model's attention backend
expects. Labels arrive pre-shifted from the datasets, so concatenating documents never
makes one document's last token predict the next one's first.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch
import numpy as np
from torch.utils.data import Dataset

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm import packed_attention  # noqa: F401  registers attn "packed_sdpa"
from nemo_like.components.datasets.llm.pack_planner import STRATEGIES, PackPlan, plan_packs
from nemo_like.components.datasets.llm.tokenized_dataset import TokenizedDataset
from nemo_like.components.datasets.token_table import TokenTable
from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")

_PACKED_KEYS = ("input_ids", "labels", "position_ids")


def _row_name(dataset: Any, idx: int) -> str:
    """Where a sample came from (``file:line`` when the dataset kept it), for error messages."""
    locations = getattr(dataset, "locations", None)
    if locations is not None and idx < len(locations):
        return str(locations[idx])
    return f"dataset row {idx}"


_STRATEGIES = STRATEGIES


def _as_list(tokens: Any) -> list[int]:
    """The row's own list when it is one (packs are read-only views of it, no copy), else a list of it."""
    return tokens if type(tokens) is list else list(tokens)


Document = tuple[list[int], list[int]]  # (input_ids, labels) of one document


class _TableDocuments:
    """Documents read from a token table when a pack is built: nothing is copied up front."""

    def __init__(self, table: TokenTable, rows: np.ndarray) -> None:
        self.table, self.rows = table, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, doc: int) -> Document:
        row = int(self.rows[doc])
        return self.table.input_ids[row].tolist(), self.table.labels[row].tolist()


class PackedSequence(Dataset):
    """Greedy packing of a tokenized dataset into rows of exactly ``packed_sequence_size`` tokens.

    Strategies (``packing_strategy``):

    * ``max_fill`` (default): pack after pack, the longest remaining document opens it and
      the remaining documents that fill the rest the most join it (an exact subset sum over
      their lengths; longer ones first, earlier rows first among equal lengths). On short,
      near-uniform chat rows this reaches ~99% where the online strategies stop at ~95%; on
      short rows with a long tail, long rows are not left to the last, half-empty packs.
      Runs of packs that make the same choice are placed at once, so a million documents
      of few distinct lengths stay cheap; past a budget of subset-sum work (many documents
      of many lengths) the fuller of ``best_fit`` and best-fit-decreasing is used instead
      (logged; ``stats["packing_strategy"]`` says which).
    * ``best_fit``: each document, in dataset order, goes into the open pack with the
      least room that still holds it (fast, near-optimal on varied lengths).
    * ``sequential``: append to the current pack while it fits; the next document that
      does not fit closes it (NeMo/torchtune style, strictly in order).

    With ``split_across_pack`` a document is cut: ``sequential`` fills the rest of the
    current pack and continues in the next one; the others cut only documents longer
    than a pack, into whole packs plus a remainder. Each piece is a document of its own
    (positions from 0, no attention to the other piece). Without it, a document longer
    than a pack is an error naming its row, or is skipped and counted with
    ``skip_long_samples``. Documents keep their dataset order inside a pack; the padding
    that fills a pack is a block of its own with labels -100.

    Items hold ``input_ids``, ``labels`` and ``position_ids`` (lists); batch them with
    :func:`nemo_like.components.datasets.utils.packed_sequence_collater`. ``stats`` has
    the counts that are logged once, when packing is done. The packs are planned from the
    document lengths (:mod:`~nemo_like.components.datasets.llm.pack_planner`) and built when
    read, so a million documents cost the plan's few arrays, not a million rows of lists.
    """

    def __init__(
        self,
        dataset: Any,
        packed_sequence_size: int,
        split_across_pack: bool = False,
        pad_token_id: int | None = None,
        skip_long_samples: bool = False,
        packing_strategy: str = "max_fill",
        max_packs: int | None = None,
    ) -> None:
        size = int(packed_sequence_size)
        if size <= 0:
            raise ValueError(f"packed_sequence.packed_sequence_size: must be > 0, got {packed_sequence_size!r}")
        if packing_strategy not in _STRATEGIES:
            raise ValueError(
                f"packed_sequence.packing_strategy: {packing_strategy!r} is not one of {list(_STRATEGIES)}"
            )
        self.packed_sequence_size = size
        self.split_across_pack = bool(split_across_pack)
        self.packing_strategy = packing_strategy
        if pad_token_id is None:
            pad_token_id = getattr(dataset, "pad_token_id", None)
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0
        self.skip_long_samples = skip_long_samples
        self.stats: dict[str, Any] = {"documents": 0, "skipped_too_long": 0, "label_tokens": 0}
        table = dataset.document_table() if isinstance(dataset, TokenizedDataset) else None
        if table is not None:  # planned once per token table and these options, then read back
            self.documents, lengths = self._table_documents(dataset, table)
            name = f"packs-{size}-{packing_strategy}-split{int(self.split_across_pack)}-skip{int(skip_long_samples)}"
            plan = PackPlan.from_arrays(table.derived(
                name, lambda: plan_packs(lengths, size, packing_strategy, self.split_across_pack).arrays()))
        else:
            self.documents = self._documents(dataset)
            lengths = np.fromiter((len(ids) for ids, _ in self.documents), dtype=np.int64,
                                  count=len(self.documents))
            plan = plan_packs(lengths, size, packing_strategy, self.split_across_pack)
        if max_packs is not None:
            plan = plan.truncated(int(max_packs))
        if not len(plan):
            skipped = self.stats["skipped_too_long"]
            why = f" ({skipped} longer than a pack skipped)" if skipped else ""
            raise DatasetError(f"packed_sequence: no documents to pack{why}")
        self.plan: PackPlan = plan  # packs are built when read: a million of them would not fit in memory
        tokens = plan.tokens
        self.stats.update(packs=len(plan), packed_sequence_size=size, tokens=tokens,
                          fill_ratio=tokens / (len(plan) * size), packing_strategy=plan.strategy)
        self._log_stats()

    # ------------------------------------------------------------------ packing
    def _documents(self, dataset: Any) -> list[Document]:
        """The real tokens of every sample, checked against the pack size; counts what it skips."""
        size = self.packed_sequence_size
        documents: list[Document] = []
        for idx in range(len(dataset)):
            sample = dataset[idx]
            ids, labels = _as_list(sample["input_ids"]), _as_list(sample["labels"])
            mask = sample.get("attention_mask")
            if mask is not None and 0 in mask:  # a dataset padded its rows: pack only the real tokens
                keep = [i for i, m in enumerate(mask) if m]
                ids, labels = [ids[i] for i in keep], [labels[i] for i in keep]
            if len(ids) != len(labels):
                raise DatasetError(f"{_row_name(dataset, idx)}: input_ids and labels differ in length")
            if not ids:
                continue
            if len(ids) > size and not self.split_across_pack:
                if self.skip_long_samples:
                    self.stats["skipped_too_long"] += 1
                    continue
                raise self._too_long(_row_name(dataset, idx), len(ids))
            self.stats["documents"] += 1
            self.stats["label_tokens"] += len(labels) - labels.count(IGNORE_INDEX)
            documents.append((ids, labels))
        return documents

    def _too_long(self, where: str, tokens: int) -> DatasetError:
        return DatasetError(f"{where}: {tokens} tokens exceed packed_sequence_size {self.packed_sequence_size}; "
                            "raise packed_sequence_size, set packed_sequence.split_across_pack: true, "
                            "or skip such rows with packed_sequence.skip_long_samples: true")

    def _table_documents(self, dataset: TokenizedDataset, table: TokenTable) -> tuple[_TableDocuments, np.ndarray]:
        """``_documents`` on the arrays of a token table: the same checks and counts, no row read."""
        lengths = table.lengths
        keep = lengths > 0
        if not self.split_across_pack:
            too_long = lengths > self.packed_sequence_size
            if too_long.any() and not self.skip_long_samples:
                first = int(np.argmax(too_long))
                raise self._too_long(dataset.location(first), int(lengths[first]))
            self.stats["skipped_too_long"] += int(np.count_nonzero(too_long & keep))
            keep &= ~too_long
        rows = np.flatnonzero(keep)
        self.stats["documents"] += len(rows)
        self.stats["label_tokens"] += int(table.label_counts()[rows].sum())
        return _TableDocuments(table, rows), lengths[rows]

    def _materialize(self, idx: int) -> dict[str, list[int]]:
        """One row: the pieces end to end, positions restarting, then a padding block without loss."""
        plan = self.plan
        lo, hi = int(plan.pack_offsets[idx]), int(plan.pack_offsets[idx + 1])
        pack: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for doc, start, n in zip(plan.doc[lo:hi].tolist(), plan.start[lo:hi].tolist(), plan.length[lo:hi].tolist()):
            ids, labels = self.documents[doc]
            whole = start == 0 and n == len(ids)
            pack["input_ids"] += ids if whole else ids[start : start + n]
            pack["labels"] += labels if whole else labels[start : start + n]
            pack["position_ids"] += range(n)
        pad = self.packed_sequence_size - len(pack["input_ids"])
        pack["input_ids"] += [self.pad_token_id] * pad
        pack["labels"] += [IGNORE_INDEX] * pad
        pack["position_ids"] += range(pad)
        return pack

    def _log_stats(self) -> None:
        s = self.stats
        skipped = f", skipped {s['skipped_too_long']} longer than a pack" if s["skipped_too_long"] else ""
        logger.info(
            "packed sequences (%s): %d documents into %d packs of %d tokens, fill ratio %.1f%%%s",
            s["packing_strategy"], s["documents"], s["packs"], s["packed_sequence_size"], 100 * s["fill_ratio"],
            skipped,
        )

    # ------------------------------------------------------------------ Dataset
    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, idx: int) -> dict[str, list[int]]:
        if idx < 0:
            idx += len(self.plan)
        if not 0 <= idx < len(self.plan):
            raise IndexError(f"pack {idx} out of range ({len(self.plan)} packs)")
        return self._materialize(idx)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Number the documents of each row: a new one starts wherever the position is 0."""
    return torch.cumsum((position_ids == 0).to(torch.long), dim=-1)


def document_lengths(batch: dict[str, torch.Tensor]) -> list[int]:
    """Lengths of the real documents in a batch: each padded row's attention mask; in packed rows (a 4-D mask
    or none, with ``position_ids``) the blocks between restarts of the position at 0, up to the last block
    that carries a label (real documents always do; after it come a pack's padding block and the batch's
    padding of a shorter pack, each of whose tokens restarts at position 0)."""
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return [int(n) for n in mask.sum(dim=1)]
    lengths = []
    for positions, labels in zip(batch["position_ids"], batch["labels"]):
        starts = sorted({0, *(positions == 0).nonzero().flatten().tolist()}) + [positions.numel()]
        blocks = [(end - begin, bool((labels[begin:end] != IGNORE_INDEX).any()))
                  for begin, end in zip(starts, starts[1:])]
        while blocks and not blocks[-1][1]:
            blocks.pop()
        lengths += [n for n, _ in blocks]
    return lengths


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens of the real documents in a batch (:func:`document_lengths`)."""
    return sum(document_lengths(batch))


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, 1, S, S]`` mask: query i sees key j iff j <= i and both are in the same document."""
    docs = document_ids(position_ids)
    seq = position_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=position_ids.device).tril()
    same_doc = docs[:, :, None] == docs[:, None, :]
    return (same_doc & causal)[:, None, :, :]


def attention_implementation(model: torch.nn.Module) -> str:
    """The attention backend a transformers model was loaded with (``sdpa`` when it does not say)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "sdpa")


def prepare_packed_attention(
    inputs: dict[str, torch.Tensor], attn_implementation: str, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Adapt a packed batch's 4-D boolean mask to the attention backend; other batches pass through.

    * ``sdpa``: the boolean mask as is.
    * ``packed_sdpa``: the boolean mask as is; the attention finds the documents from ``position_ids``
      and computes each one alone (see :mod:`nemo_like.components.datasets.llm.packed_attention`).
    * ``eager`` / ``flex_attention``: these add the mask to the scores, so 0 / most-negative floats.
    * ``flash_attention_*``: no dense mask; transformers cuts documents (``cu_seqlens``) where
      ``position_ids`` restart, which is what the packs carry.
    """
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 4 or mask.dtype != torch.bool:
        return inputs
    out = dict(inputs)
    if attn_implementation.startswith("flash"):
        if "position_ids" not in out:
            raise ValueError("packed batch without position_ids: flash attention could not find the documents")
        del out["attention_mask"]
    elif attn_implementation in ("eager", "flex_attention"):
        if not dtype.is_floating_point:
            dtype = torch.float32
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        out["attention_mask"] = additive.masked_fill(~mask, torch.finfo(dtype).min)
    return out


def pack_dataset(dataset: Any, packed_sequence_size: int | None = 0, **options: Any) -> Any:
    """Apply a ``packed_sequence:`` section: pack when the size is > 0 (NeMo's "0 = off"), else return ``dataset``."""
    known = [n for n in inspect.signature(PackedSequence).parameters if n not in ("dataset", "packed_sequence_size")]
    for key in options:
        if key not in known:
            raise ConfigError(f"packed_sequence.{key}: unknown option; the section takes packed_sequence_size, "
                              + ", ".join(k for k in known if k != "pad_token_id"))
    try:
        size = int(packed_sequence_size or 0)
    except (TypeError, ValueError):
        raise ConfigError(
            f"packed_sequence.packed_sequence_size: expected an integer, got {packed_sequence_size!r}"
        ) from None
    if size < 0:
        raise ConfigError(f"packed_sequence.packed_sequence_size: must be >= 0 (0 turns packing off), got {size}")
    if size == 0:
        return dataset
    try:
        return PackedSequence(dataset, size, **options)
    except DatasetError:
        raise
    except ValueError as err:  # a bad option value, not bad data
        raise ConfigError(str(err)) from None


__all__: Sequence[str] = (
    "PackedSequence", "attention_implementation", "block_causal_mask", "document_ids", "document_lengths",
    "pack_dataset", "prepare_packed_attention",
)
