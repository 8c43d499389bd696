"""A file sent as Download chunks, whole or resumed from a byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from essaim.coordinator.blobs import CHUNK_BYTES, file_chunks
from essaim.coordinator.errors import InvalidArgument


def test_chunks_from_a_byte_on(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * (CHUNK_BYTES // 128 + 3)  # two chunks and a bit
    path.write_bytes(data)
    whole = list(file_chunks(path, "data/x"))
    assert b"".join(c.data for c in whole) == data and [c.last for c in whole] == [False, False, True]
    resumed = list(file_chunks(path, "data/x", start=CHUNK_BYTES + 7))
    assert resumed[0].offset == CHUNK_BYTES + 7 and b"".join(c.data for c in resumed) == data[CHUNK_BYTES + 7:]
    assert {c.sha256 for c in resumed} == {whole[0].sha256} and resumed[-1].last
    (end,) = file_chunks(path, "data/x", start=len(data))  # all there already: one empty last chunk
    assert end.data == b"" and end.last and end.offset == len(data)
    with pytest.raises(InvalidArgument, match="cannot resume it at byte"):
        list(file_chunks(path, "data/x", start=len(data) + 1))
