"""The numpy writer and reader of .bin/.idx equal megatron's own, byte for byte."""

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from chatbaker_megatron.data.datasets.indexed_files import (
    IndexedFileWriter,
    read_index,
    token_dtype,
)


def random_documents(rng, count, seqs_per_doc, high):
    """(tokens, per-sequence lengths) of `count` documents, some sequences empty."""
    lengths = rng.integers(0, 40, size=count * seqs_per_doc)
    tokens = rng.integers(0, high, size=int(lengths.sum()))
    return tokens, lengths


def write_with_megatron(prefix, dtype, chunks, seqs_per_doc, parts=()):
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for tokens, lengths in chunks:
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        for first in range(0, len(lengths), seqs_per_doc):
            begin, end = bounds[first], bounds[first + seqs_per_doc]
            builder.add_document(tokens[begin:end], lengths[first : first + seqs_per_doc].tolist())
    for part in parts:
        builder.add_index(part)
    builder.finalize(f"{prefix}.idx")


def write_with_numpy(prefix, dtype, chunks, seqs_per_doc, parts=()):
    writer = IndexedFileWriter(f"{prefix}.bin", dtype)
    for tokens, lengths in chunks:
        writer.add_documents(tokens.astype(dtype), lengths, seqs_per_doc)
    for part in parts:
        writer.add_dataset(part)
    writer.finalize(f"{prefix}.idx")


def same_files(a, b):
    return all(open(a + s, "rb").read() == open(b + s, "rb").read() for s in (".bin", ".idx"))


@pytest.mark.parametrize(("vocab_size", "seqs_per_doc"), [(4096, 1), (128_256, 2)])
def test_numpy_writer_is_byte_identical_to_megatrons(tmp_path, vocab_size, seqs_per_doc):
    rng = np.random.default_rng(vocab_size + seqs_per_doc)
    dtype = token_dtype(vocab_size)
    assert dtype == (np.uint16 if vocab_size < 65_500 else np.int32)
    chunks = [random_documents(rng, n, seqs_per_doc, vocab_size) for n in (7, 1, 0, 30)]
    write_with_megatron(str(tmp_path / "megatron"), dtype, chunks, seqs_per_doc)
    write_with_numpy(str(tmp_path / "numpy"), dtype, chunks, seqs_per_doc)
    assert same_files(str(tmp_path / "megatron"), str(tmp_path / "numpy"))
    # Appending whole datasets (the scale-out merge) equals megatron's add_index.
    parts = [str(tmp_path / "megatron"), str(tmp_path / "numpy")]
    more = [random_documents(rng, 5, seqs_per_doc, vocab_size)]
    write_with_megatron(str(tmp_path / "m2"), dtype, more, seqs_per_doc, parts)
    write_with_numpy(str(tmp_path / "n2"), dtype, more, seqs_per_doc, parts)
    assert same_files(str(tmp_path / "m2"), str(tmp_path / "n2"))
    # The reader agrees with megatron's.
    index, data = read_index(str(tmp_path / "n2.idx")), IndexedDataset(str(tmp_path / "n2"))
    assert index.dtype == np.dtype(dtype)
    assert index.sequence_lengths.tolist() == data.sequence_lengths.tolist()
    assert index.document_indices.tolist() == data.document_indices.tolist()
    assert len(index.document_indices) == 1 + 5 + 2 * 38


def test_reader_refuses_what_is_not_an_index_naming_the_file(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"not an index at all, long enough to hold a header")
    with pytest.raises(ValueError, match=r"x\.idx: not a megatron index"):
        read_index(str(path))
    write_with_numpy(str(tmp_path / "a"), np.uint16, [(np.arange(6), np.array([2, 4]))], 1)
    whole = (tmp_path / "a.idx").read_bytes()
    path.write_bytes(whole[:-8])
    with pytest.raises(ValueError, match=r"x\.idx: shorter than the 2 sequences"):
        read_index(str(path))
    path.write_bytes(whole[:9] + b"\x02" + whole[10:])
    with pytest.raises(ValueError, match=r"x\.idx: index version 2"):
        read_index(str(path))


def test_writer_refuses_a_part_of_another_dtype(tmp_path):
    write_with_numpy(str(tmp_path / "a"), np.int32, [(np.arange(3), np.array([3]))], 1)
    writer = IndexedFileWriter(str(tmp_path / "b.bin"), np.uint16)
    with pytest.raises(ValueError, match=r"a\.idx: tokens of int32, expected uint16"):
        writer.add_dataset(str(tmp_path / "a"))
    writer.data_file.close()
