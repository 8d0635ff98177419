"""Load one stored tensor at a time from the blob store as a torch tensor."""

from __future__ import annotations

import torch

from graft.registry import CorruptBlob, Store, TensorRecord
from graft.registry.safetensors_header import FLOAT_DTYPES

__all__ = ["FLOAT_DTYPES", "TORCH_DTYPES", "load_tensor"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def load_tensor(
    store: Store, record: TensorRecord, into: torch.Tensor | None = None
) -> torch.Tensor:
    """The tensor's values in its own dtype (one read of its blob), in the uint8
    buffer `into` (of its byte size) when given."""
    dtype = TORCH_DTYPES[record.dtype]
    if not record.nbytes:
        return torch.empty(record.shape, dtype=dtype)
    # read straight into the tensor's memory: no second copy
    data = torch.empty(record.nbytes, dtype=torch.uint8) if into is None else into
    with store.blobs.open(record.blob, record.name) as blob:
        if blob.size != record.nbytes:
            raise CorruptBlob(
                f"{blob.what} holds {blob.size} bytes, not its {record.nbytes}",
                "run `graft verify`",
            )
        blob.readinto(0, data.numpy().data)
    return data.view(dtype).reshape(record.shape)
