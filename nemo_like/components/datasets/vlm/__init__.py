"""Vision-language data: conversations with images as items, and the collater that tokenizes them with a processor."""

from nemo_like.components.datasets.vlm.collate_fns import VLMCollater, default_collate_fn
from nemo_like.components.datasets.vlm.column_mapped_dataset import ColumnMappedVLMDataset
from nemo_like.components.datasets.vlm.conversation_dataset import VLMConversationDataset

__all__ = ["VLMCollater", "default_collate_fn", "ColumnMappedVLMDataset", "VLMConversationDataset"]
