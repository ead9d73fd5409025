"""NeMo AutoModel's image-text dataset makers, by their names: hub sets (or local copies in their shape) as
conversations.

Why: a NAM VLM YAML names ``...datasets.vlm.datasets.make_<set>_dataset``; here each is a
``ColumnMappedVLMDataset`` over that set's columns (images decoded when an item is read, rows
named by index), so the YAML runs unchanged against a local copy (``path_or_dataset``: a
folder of split files, a Parquet file, or the hub id where the hub is reachable).
"""

from __future__ import annotations

import json
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.vlm.column_mapped_dataset import ColumnMappedVLMDataset

__all__ = ["json2token", "make_cord_v2_dataset", "make_medpix_dataset", "make_rdr_dataset"]

DESCRIBE = "Describe this image."


def make_rdr_dataset(path_or_dataset: str = "quintend/rdr-items", split: str = "train",
                     limit_dataset_samples: int | None = None, image_root: str | None = None) -> ColumnMappedVLMDataset:
    """RDR items: an ``image`` and its description ``text``, asked as "Describe this image."."""
    return ColumnMappedVLMDataset(path_or_dataset, {"image": "image", "answer": "text"}, split=split,
                                  question=DESCRIBE, limit_dataset_samples=limit_dataset_samples, image_root=image_root)


def make_medpix_dataset(path_or_dataset: str = "medpix-dataset/medpix-dataset", split: str = "train",
                        limit_dataset_samples: int | None = None, image_root: str | None = None) -> ColumnMappedVLMDataset:
    """MedPix: an ``image_id`` image, a ``question`` and its ``answer``."""
    return ColumnMappedVLMDataset(path_or_dataset, {"image": "image_id", "question": "question", "answer": "answer"},
                                  split=split, limit_dataset_samples=limit_dataset_samples, image_root=image_root)


def make_cord_v2_dataset(path_or_dataset: str = "naver-clova-ix/cord-v2", split: str = "train",
                         limit_dataset_samples: int | None = None, image_root: str | None = None) -> ColumnMappedVLMDataset:
    """CORD-v2 receipts: the ``image`` described by its ``ground_truth`` parse written as Donut tokens
    (``<s_key>value</s_key>``). Where a row holds several parses the first is taken (the same every epoch,
    so a resumed run sees the same answers)."""
    return _CordV2(path_or_dataset, {"image": "image", "answer": "ground_truth"}, split=split, question=DESCRIBE,
                   limit_dataset_samples=limit_dataset_samples, image_root=image_root)


class _CordV2(ColumnMappedVLMDataset):
    def _answer(self, cell: Any, where: str) -> Any:
        try:
            truth = json.loads(cell) if isinstance(cell, str) else cell
            parses = truth["gt_parses"] if "gt_parses" in truth else [truth["gt_parse"]]
            return json2token(parses[0])
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise DatasetError(f"{where}: ground_truth is not a CORD parse ({type(err).__name__}: {err}); expected "
                               "JSON with 'gt_parse' or a non-empty 'gt_parses' list") from None


def json2token(obj: Any, sort_json_key: bool = True) -> str:
    """A JSON value as Donut's tag sequence: ``{"k": v}`` -> ``<s_k>v</s_k>`` (keys in reverse order when sorted),
    lists joined with ``<sep/>``; ``{"text_sequence": t}`` is ``t`` itself."""
    if isinstance(obj, dict):
        if len(obj) == 1 and "text_sequence" in obj:
            return str(obj["text_sequence"])
        keys = sorted(obj, reverse=True) if sort_json_key else list(obj)
        return "".join(f"<s_{k}>{json2token(obj[k], sort_json_key)}</s_{k}>" for k in keys)
    if isinstance(obj, list):
        return "<sep/>".join(json2token(item, sort_json_key) for item in obj)
    return str(obj)
