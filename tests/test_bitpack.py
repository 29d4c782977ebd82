import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qtrain.codecs import WireFormatError
from qtrain.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits


def reference_pack(codes: list[int], bits: int) -> bytes:
    """Bit by bit, straight from the documented layout (LSB-first)."""
    out = bytearray(packed_nbytes(len(codes), bits))
    for i, c in enumerate(codes):
        for j in range(bits):
            if (c >> j) & 1:
                k = i * bits + j
                out[k // 8] |= 1 << (k % 8)
    return bytes(out)


@given(bits=st.integers(1, 8), data=st.data())
def test_pack_matches_reference_and_round_trips(bits, data):
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=200))
    t = torch.tensor(codes, dtype=torch.uint8)
    packed = pack_bits(t, bits)
    assert bytes(packed.numpy()) == reference_pack(codes, bits)
    assert packed.numel() == packed_nbytes(len(codes), bits)
    assert torch.equal(unpack_bits(packed, bits, len(codes)), t)


def test_one_bit_is_numpy_little_endian_packbits():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=1001).astype(np.uint8)
    ours = pack_bits(torch.from_numpy(bits), 1).numpy()
    assert np.array_equal(ours, np.packbits(bits, bitorder="little"))


def test_lsb_first_worked_example():
    # codes 1, 2, 3 at 2 bits: 0b11_10_01 -> 0x39
    assert pack_bits(torch.tensor([1, 2, 3], dtype=torch.uint8), 2).tolist() == [0x39]
    # five 3-bit codes 7,0,5,1,6: bits 111 000 101 100 011 (LSB-first) -> 0x47, 0x63
    assert pack_bits(torch.tensor([7, 0, 5, 1, 6], dtype=torch.uint8), 3).tolist() == [0x47, 0x63]


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 7])
def test_nonzero_padding_bits_are_rejected(bits):
    packed = pack_bits(torch.ones(3, dtype=torch.uint8), bits)
    packed[-1] |= 0x80
    with pytest.raises(WireFormatError, match="padding"):
        unpack_bits(packed, bits, 3)


def test_wrong_length_is_rejected():
    with pytest.raises(WireFormatError, match="need"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bits", range(1, 9))
def test_cpu_and_cuda_pack_identically(bits):
    codes = torch.randint(0, 2**bits, (100_003,), dtype=torch.uint8)
    cpu = pack_bits(codes, bits)
    gpu = pack_bits(codes.cuda(), bits)
    assert torch.equal(cpu, gpu.cpu())
    assert torch.equal(unpack_bits(gpu, bits, codes.numel()).cpu(), codes)
