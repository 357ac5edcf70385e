"""The training sampler resumes to the sample, across pass boundaries, whatever epoch Lightning reports."""

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_gan.data.base import IndexedTensorDataset
from lightning_gan.data.sampler import GameSampler

DATASET = IndexedTensorDataset(torch.arange(20.0).unsqueeze(1))


def loader(rank=0, world=1, batch=4):
    return StatefulDataLoader(DATASET, batch_size=batch, sampler=GameSampler(DATASET, world, rank, seed=3),
                              drop_last=True)


def indices(batches):
    return [b[1].tolist() for b in batches]


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_each_pass_is_a_new_permutation_and_set_epoch_is_ignored():
    data = loader()
    first, second = indices(data), indices(data)
    assert sorted(sum(first, [])) == list(range(20)) == sorted(sum(second, []))
    assert first != second
    data.sampler.set_epoch(7)
    third = indices(data)
    fresh = loader()
    indices(fresh), indices(fresh)
    assert third == indices(fresh)  # the third pass, not "epoch 7"


def test_resume_mid_pass_and_at_the_end_of_a_pass():
    reference = loader()
    expected = indices(reference) + indices(reference)
    for stop in (2, 5):  # mid-pass, and after the last batch of the first pass
        original = loader()
        it = iter(original)
        seen = indices(take(it, stop))
        state = original.state_dict()
        resumed = loader()
        resumed.load_state_dict(state)
        rest = indices(resumed)  # the remainder of the interrupted pass (possibly empty)
        rest += indices(resumed)  # the next pass
        assert seen + rest == expected


def test_ranks_share_one_permutation():
    one = indices(loader(batch=4))
    two = [indices(loader(rank=r, world=2, batch=2)) for r in range(2)]
    for k, batch in enumerate(one):
        assert sorted(batch) == sorted(two[0][k] + two[1][k])
