"""A damaged .bin or .idx is refused when the datasets are built, naming the file and the sizes."""

import os
import re
import shutil

import numpy as np
import pytest

from chatbaker_megatron.data.datasets.integrity import DataIntegrityError, check_indexed_dataset
from chatbaker_megatron.data.datasets.pretrain import build_pretrain_datasets
from tests.data.datasets.test_pretrain import config, write_documents


@pytest.fixture
def corpus(tmp_path):
    write_documents(tmp_path / "a", 10, 50, seed=1)
    write_documents(tmp_path / "b", 1000, 50, seed=2)
    return tmp_path


def truncate(path, by: int) -> int:
    size = os.path.getsize(path)
    os.truncate(path, size - by)
    return size


def build(corpus, tokenizer):
    return build_pretrain_datasets(
        config(corpus, cache_dir=str(corpus / "cache")),
        tokenizer=tokenizer,
        seq_length=32,
        seed=1,
        num_samples=(64, 0, 0),
    )


def test_whole_dataset_passes(corpus, tokenizer):
    check_indexed_dataset(str(corpus / "a"), "data.datasets[0].path='a'", vocab_size=4096)


def test_short_bin_is_refused_before_training_naming_file_and_sizes(corpus, tokenizer):
    full = truncate(corpus / "b.bin", 100)
    with pytest.raises(DataIntegrityError) as err:
        build(corpus, tokenizer)
    message = str(err.value)
    assert message.startswith("data.datasets[1].path='b': ")
    assert f"{corpus / 'b.bin'} is {full - 100:,} bytes" in message
    assert f"describes {full:,} bytes" in message and "uint16" in message
    assert "\n" not in message


def test_truncated_idx_is_refused_naming_file_and_sizes(corpus, tokenizer):
    full = truncate(corpus / "a.idx", 8)
    with pytest.raises(DataIntegrityError) as err:
        build(corpus, tokenizer)
    message = str(err.value)
    assert message.startswith("data.datasets[0].path='a': ")
    assert re.search(
        rf"{re.escape(str(corpus / 'a.idx'))} is {full - 8:,} bytes, expected {full:,} "
        r"for the 50 sequences and 51 document boundaries",
        message,
    ), message


def test_idx_cut_inside_its_header_is_refused(corpus):
    os.truncate(corpus / "a.idx", 20)
    with pytest.raises(DataIntegrityError, match=r"a\.idx is 20 bytes, shorter than the 34-byte"):
        check_indexed_dataset(str(corpus / "a"), "data.datasets[0].path='a'")


def test_foreign_file_is_not_an_index(corpus):
    (corpus / "a.idx").write_bytes(b"\x00" * 64)
    with pytest.raises(DataIntegrityError, match="not a megatron index"):
        check_indexed_dataset(str(corpus / "a"), "data.datasets[0].path='a'")


def test_token_dtype_must_hold_the_vocabulary(corpus):
    with pytest.raises(DataIntegrityError, match=r"uint16 tokens \(at most 65535\).*70,000 ids"):
        check_indexed_dataset(str(corpus / "a"), "data.datasets[0].path='a'", vocab_size=70_000)


def test_sft_store_is_checked_too(demo, tokenizer, tmp_path):
    from chatbaker_megatron.config.data import DataConfig, SFTConfig
    from chatbaker_megatron.data.datasets.sft import open_sft_store

    prefix = tmp_path / "sft"
    for suffix in (".bin", ".idx", ".meta.json"):
        shutil.copyfile(demo.sft + suffix, f"{prefix}{suffix}")
    truncate(f"{prefix}.bin", 2 * np.dtype(np.uint16).itemsize)
    cfg = DataConfig(kind="sft", root=str(tmp_path), sft=SFTConfig(path="sft"))
    with pytest.raises(DataIntegrityError, match=r"data\.sft\.path='sft': .*sft\.bin is"):
        open_sft_store(cfg, tokenizer)


def _patch(path, offset: int, value: np.ndarray) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value.tobytes())


@pytest.mark.parametrize(
    ("array", "entry", "value", "expected"),
    [
        (
            "pointers",
            7,
            np.int64(-5),
            r"sequence 7 starts at byte -5, expected [\d,]+ \(the previous",
        ),
        ("lengths", 3, np.int32(-1), r"sequence 3 has length -1"),
        ("documents", 4, np.int64(99), r"document boundary 4 is sequence 99, outside \d+\.\.50"),
    ],
)
def test_idx_of_the_right_size_with_a_damaged_entry_is_refused(
    corpus, array, entry, value, expected
):
    """Issue 25: a corrupted .idx of the same size passed, trained a step, then failed with
    `offset must be non-negative`, naming no file."""
    from chatbaker_megatron.data.datasets.integrity import HEADER_BYTES

    sequences = 50  # a.idx: 50 sequences, 51 document boundaries
    offsets = {
        "lengths": HEADER_BYTES + 4 * entry,
        "pointers": HEADER_BYTES + 4 * sequences + 8 * entry,
        "documents": HEADER_BYTES + 12 * sequences + 8 * entry,
    }
    size = os.path.getsize(corpus / "a.idx")
    _patch(corpus / "a.idx", offsets[array], value)
    assert os.path.getsize(corpus / "a.idx") == size
    with pytest.raises(DataIntegrityError) as err:
        check_indexed_dataset(str(corpus / "a"), "data.datasets[0].path='a'")
    message = str(err.value)
    assert message.startswith(
        f"data.datasets[0].path='a': {corpus / 'a.idx'} is damaged at its first"
    )
    assert re.search(expected, message), message
