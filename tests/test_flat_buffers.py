"""The persistent flat buffers of the collectives (``lightning_gan.distributed._FlatBuffers``): one buffer per list of
shapes, reused across calls, and results bit for bit those of ``torch.cat`` (``_flatten_dense_tensors``)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ddp_harness import run_distributed
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from lightning_gan import distributed as D
from lightning_gan.distributed import _FlatBuffers


def _tensors(shapes, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=dtype) for s in shapes]


def test_one_buffer_per_list_of_shapes_reused_across_calls():
    buffers = _FlatBuffers()
    a, b = [(3, 4), (5,)], [(2, 2), (7,), (1,)]
    for seed in range(3):
        for shapes in (a, b):
            group = _tensors(shapes, seed)
            flat, views = buffers.flat(group)
            assert torch.equal(flat, _flatten_dense_tensors(group))  # the values of torch.cat, in order
            assert [v.shape for v in views] == [t.shape for t in group]
            assert all(v.data_ptr() >= flat.data_ptr() for v in views)  # views of the buffer
    assert buffers.allocations == 2 and len(buffers) == 2


def test_same_buffer_object_for_the_same_shapes():
    buffers = _FlatBuffers()
    first, _ = buffers.flat(_tensors([(4,), (2, 3)], 0))
    second, _ = buffers.flat(_tensors([(4,), (2, 3)], 1))
    assert first.data_ptr() == second.data_ptr()
    other, _ = buffers.flat(_tensors([(4,), (3, 2)], 1))  # same size, other shapes: its own buffer
    assert other.data_ptr() != first.data_ptr() and buffers.allocations == 2


def test_dtype_is_part_of_the_key():
    buffers = _FlatBuffers()
    buffers.flat(_tensors([(4,), (2,)], dtype=torch.float32))
    flat, _ = buffers.flat(_tensors([(4,), (2,)], dtype=torch.float64))
    assert flat.dtype == torch.float64 and buffers.allocations == 2


def test_least_recently_used_buffer_is_dropped_beyond_capacity():
    buffers = _FlatBuffers(capacity=2)
    keys = [[(n,), (1,)] for n in (1, 2, 3)]
    buffers.flat(_tensors(keys[0]))
    buffers.flat(_tensors(keys[1]))
    buffers.flat(_tensors(keys[0]))  # keys[0] is now the most recently used
    buffers.flat(_tensors(keys[2]))  # drops keys[1]
    assert len(buffers) == 2 and buffers.allocations == 3
    buffers.flat(_tensors(keys[0]))
    assert buffers.allocations == 3
    buffers.flat(_tensors(keys[1]))
    assert buffers.allocations == 4


def test_one_contiguous_tensor_is_sent_as_itself():
    buffers = _FlatBuffers()
    t = torch.randn(3, 4)
    flat, views = buffers.flat([t])
    assert views is None and flat.data_ptr() == t.data_ptr() and buffers.allocations == 0


def test_non_contiguous_and_channels_last_tensors_flatten_in_logical_order():
    buffers = _FlatBuffers()
    group = [torch.randn(4, 3).t(), torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)]
    flat, views = buffers.flat(group)
    assert torch.equal(flat, _flatten_dense_tensors(group))
    flat.mul_(2)
    targets = [t.clone() for t in group]
    torch._foreach_copy_(targets, views)
    assert all(torch.equal(x, 2 * y) for x, y in zip(targets, group))
    single, views = buffers.flat([group[0]])  # one non-contiguous tensor: through a buffer too
    assert views is not None and torch.equal(single, group[0].reshape(-1))


# --- two gloo ranks: the buffer path against the torch.cat path, shapes changing between calls --------------------


def _reference_mean(tensors):
    """The previous implementation: torch.cat into a new buffer, all_reduce, divide, copy back."""
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    torch._foreach_copy_(tensors, _unflatten_dense_tensors(flat, tensors))


def _two_rank_child(rank: int) -> dict:
    dist.init_process_group("gloo")
    D._FLAT_BUFFERS.clear()
    D._FLAT_BUFFERS.allocations = 0
    lists = [[(3, 4), (5,)], [(6,)], [(2, 2), (7,), (1,)], [(3, 4), (5,)], [(2, 2), (7,), (1,)]] * 2
    same = []
    for i, shapes in enumerate(lists):
        ours = _tensors(shapes, seed=10 * rank + i) + [torch.arange(3, dtype=torch.float64) + rank]
        theirs = [t.clone() for t in ours]
        D.all_reduce_mean_(ours)
        _reference_mean(theirs[:-1])
        _reference_mean(theirs[-1:])
        same.append(all(torch.equal(a, b) for a, b in zip(ours, theirs)))
        total = _tensors(shapes, seed=i)
        expected = [t * 2 for t in total]
        D.all_reduce_sum_(total)
        same.append(all(torch.equal(a, b) for a, b in zip(total, expected)))
    source = _tensors([(4,), (2, 3)], seed=rank)
    D.broadcast_tensors_(source, src=1)
    same.append(all(torch.equal(a, b) for a, b in zip(source, _tensors([(4,), (2, 3)], seed=1))))
    return {"same": same, "allocations": D._FLAT_BUFFERS.allocations}


@pytest.mark.slow
def test_all_reduce_through_reused_buffers_matches_torch_cat_on_two_ranks():
    results = run_distributed(_two_rank_child, 2)
    for result in results:
        assert all(result["same"])
        # two float32 lists of shapes with several tensors + the broadcast's; one contiguous tensor ([(6,)], the
        # float64 group) goes without a buffer
        assert result["allocations"] == 3
