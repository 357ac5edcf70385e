"""Data modules: (x, index) items, rank-invariant sampling, mid-epoch resume, clear errors, real MNIST."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_gan.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    GameDataModule,
    GaussianMixtureDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    ShardSampler,
)

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.14

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")


# -- fixtures: tiny on-disk datasets in the real formats ------------------------------------------------
def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    raw = np.array([magic, *array.shape], dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_fake_mnist(folder: Path, n: int = 6, compress: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)


def write_fake_cifar(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[0, :1024], data[0, 1024:] = 255, 0  # first image: pure red (channel-major layout)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(range(per_batch)), b"batch_label": name.encode()}, f)


def write_fake_folder(folder: Path) -> None:
    (folder / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "one.png")
    Image.new("L", (16, 16), 0).save(folder / "a" / "two.PNG")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(folder / "a" / "b" / "three.jpg")
    Image.new("RGB", (33, 50), (0, 255, 0)).save(folder / "a" / "b" / "four.bmp")
    (folder / "notes.txt").write_text("not an image")


def make(kind: str, tmp_path: Path, **kwargs) -> GameDataModule:
    if kind == "ring":
        return GaussianMixtureDataModule(kind="ring", num_samples=512, num_val_samples=64, **kwargs)
    if kind == "grid":
        return GaussianMixtureDataModule(kind="grid", num_samples=512, num_val_samples=0, **kwargs)
    if kind == "digits":
        return DigitsDataModule(**kwargs)
    if kind == "mnist-fake":
        write_fake_mnist(tmp_path / "mnist", n=40)
        return MNISTDataModule(root=str(tmp_path / "mnist"), image_size=32, **kwargs)
    if kind == "cifar-fake":
        write_fake_cifar(tmp_path / "cifar-10-batches-py", per_batch=8)
        return CIFAR10DataModule(root=str(tmp_path), **kwargs)
    if kind == "folder":
        write_fake_folder(tmp_path / "images")
        return ImageFolderDataModule(root=str(tmp_path / "images"), image_size=8, **kwargs)
    raise AssertionError(kind)


SHAPES = {"ring": (2,), "grid": (2,), "digits": (1, 8, 8), "mnist-fake": (1, 32, 32), "cifar-fake": (3, 32, 32),
          "folder": (3, 8, 8)}


# -- every module: items, batch size, ranges ----------------------------------------------------------
@pytest.mark.parametrize("kind", list(SHAPES))
def test_train_batches_are_x_and_index_of_batch_size_times_draws(kind, tmp_path):
    dm = make(kind, tmp_path, batch_size=2, seed=3)
    dm.draws_per_step = 2
    x, index = next(iter(dm.train_dataloader()))
    assert x.shape == (4, *SHAPES[kind]) and x.dtype == torch.float32
    assert index.shape == (4,) and index.dtype == torch.int64
    if kind not in ("ring", "grid"):
        assert x.min() >= -1 and x.max() <= 1
    dm.setup("fit")
    for xi, i in zip(x, index.tolist(), strict=True):  # index is the sample's position in the training set
        assert torch.equal(dm.train_set[i][0], xi)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_sample_real_is_deterministic(kind, tmp_path):
    dm = make(kind, tmp_path, batch_size=2)
    a, b = dm.sample_real(5), dm.sample_real(5)
    assert a.shape == (5, *SHAPES[kind]) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_sample_real_beyond_the_training_set_cycles_through_permutations():
    dm = GaussianMixtureDataModule(num_samples=10, num_val_samples=0)
    x = dm.sample_real(25)
    assert x.shape == (25, 2)
    assert len(torch.unique(x[:10], dim=0)) == 10  # the first 10 are the whole set, without replacement


# -- the distributed sampling contract -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ring", "digits"])
@pytest.mark.parametrize("draws", [1, 3])
def test_two_ranks_see_the_samples_of_one_rank_with_double_batch(kind, draws, tmp_path):
    """Ranks 0 and 1 with micro-batch B see together what 1 rank with batch 2B sees, draw by draw."""
    B = 4
    two = make(kind, tmp_path, batch_size=B, seed=7)
    one = make(kind, tmp_path, batch_size=2 * B, seed=7)
    two.draws_per_step = one.draws_per_step = draws
    rank_batches = [iter(two._train_loader(world_size=2, rank=r)) for r in (0, 1)]
    single = iter(one._train_loader(world_size=1, rank=0))
    for _ in range(2):  # the first two steps
        (_, i0), (_, i1) = next(rank_batches[0]), next(rank_batches[1])
        _, i = next(single)
        assert len(i0) == len(i1) == B * draws and len(i) == 2 * B * draws
        assert set(i0.tolist()).isdisjoint(i1.tolist())
        for c0, c1, c in zip(i0.chunk(draws), i1.chunk(draws), i.chunk(draws), strict=True):
            assert sorted(c0.tolist() + c1.tolist()) == sorted(c.tolist())


def test_train_dataloader_uses_a_distributed_sampler_with_one_process_too():
    dm = GaussianMixtureDataModule(num_samples=100, batch_size=8, seed=5)
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, torch.utils.data.DistributedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.seed) == (1, 0, 5)
    assert sampler.shuffle and sampler.drop_last
    assert loader.drop_last and loader.batch_size == 8
    assert len(loader) == 100 // 8


def test_stateful_loader_resumes_mid_epoch():
    dm = GaussianMixtureDataModule(num_samples=200, batch_size=8, seed=1)
    dm.draws_per_step = 2
    original = iter(dm.train_dataloader())
    expected = [next(original) for _ in range(4)]
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    x, index = next(iter(resumed))
    assert torch.equal(index, expected[3][1]) and torch.equal(x, expected[3][0])


def test_too_large_a_batch_is_refused_with_the_counts():
    dm = GaussianMixtureDataModule(num_samples=10, batch_size=4)
    dm.draws_per_step = 2
    with pytest.raises(ValueError, match=r"Invalid batch_size: 4; .* 10 training samples"):
        dm._train_loader(world_size=2, rank=0)


def test_validation_shards_cover_the_held_out_set_exactly_once():
    dm = GaussianMixtureDataModule(num_samples=64, num_val_samples=11, batch_size=4)
    dm.setup("validate")
    shards = [list(ShardSampler(dm.val_set, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(11))
    batches = list(dm.val_dataloader())  # no trainer: world 1, sequential
    assert torch.equal(torch.cat([i for _, i in batches]), torch.arange(11))


def test_full_pass_covers_the_training_set_once_across_ranks():
    dm = GaussianMixtureDataModule(num_samples=37, num_val_samples=0, batch_size=4)
    dm.setup()
    shards = [list(ShardSampler(dm.train_set, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(37))
    indices = torch.cat([i for _, i in dm.full_pass_dataloader(batch_size=5)])
    assert torch.equal(indices, torch.arange(37))  # world 1: all samples, in order, none dropped


def test_no_held_out_split_gives_an_empty_val_loader():
    assert GaussianMixtureDataModule(num_samples=64, num_val_samples=0).val_dataloader() == []


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
def test_lightning_keeps_our_sampler_and_advances_its_epoch():
    import lightning.pytorch as pl

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[1])
            return self.layer(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = GaussianMixtureDataModule(num_samples=64, num_val_samples=0, batch_size=16, seed=2)
    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert type(trainer.train_dataloader).__name__ == "StatefulDataLoader"
    epoch0, epoch1 = torch.cat(model.seen[:4]), torch.cat(model.seen[4:])
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(64))
    assert not torch.equal(epoch0, epoch1)  # set_epoch reshuffled


# -- mixtures ------------------------------------------------------------------------------------------
def test_mixture_modes_and_std_follow_the_literature():
    ring = GaussianMixtureDataModule(kind="ring")
    assert ring.modes.shape == (8, 2) and ring.std == 0.02
    assert torch.allclose(ring.modes.norm(dim=1), torch.full((8,), 2.0))
    grid = GaussianMixtureDataModule(kind="grid")
    assert grid.modes.shape == (25, 2) and grid.std == 0.05
    assert sorted(set(grid.modes[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


@pytest.mark.parametrize("kind", ["ring", "grid"])
def test_mixture_samples_sit_on_the_modes_and_depend_only_on_seed(kind):
    dm = GaussianMixtureDataModule(kind=kind, num_samples=5000, num_val_samples=0, seed=11)
    dm.setup()
    x = dm.train_set.data
    distance = torch.cdist(x, dm.modes).min(dim=1).values
    assert distance.max() < 6 * dm.std
    nearest = torch.cdist(x, dm.modes).argmin(dim=1)
    assert len(torch.unique(nearest)) == len(dm.modes)  # every mode is populated
    again = GaussianMixtureDataModule(kind=kind, num_samples=5000, num_val_samples=0, seed=11)
    other = GaussianMixtureDataModule(kind=kind, num_samples=5000, num_val_samples=0, seed=12)
    again.setup(), other.setup()
    assert torch.equal(again.train_set.data, x) and not torch.equal(other.train_set.data, x)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"kind": "spiral"}, "kind"), ({"num_samples": 0}, "num_samples"), ({"std": -1.0}, "std"),
     ({"batch_size": 0}, "batch_size"), ({"num_workers": -1}, "num_workers"), ({"radius": 0.0}, "radius")],
)
def test_mixture_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}: "):
        GaussianMixtureDataModule(**kwargs)


# -- digits --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_size", [8, 28, 32])
def test_digits_images_and_split(image_size):
    dm = DigitsDataModule(image_size=image_size, val_fraction=0.1, seed=0)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1797 and len(dm.val_set) == 180
    x = dm.train_set.data
    assert x.shape[1:] == (1, image_size, image_size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    if image_size == 8:
        assert x.min() == -1 and x.max() == 1  # 0..16 maps onto [-1, 1]
    assert dm.train_labels.shape == (len(dm.train_set),) and dm.train_labels.dtype == torch.int64


def test_digits_split_is_fixed_by_seed():
    a, b, c = DigitsDataModule(seed=0), DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_set.data, b.val_set.data) and not torch.equal(a.val_set.data, c.val_set.data)


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="Invalid val_fraction: "):
        DigitsDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match="Invalid image_size: "):
        DigitsDataModule(image_size=0)


# -- MNIST / Fashion-MNIST ------------------------------------------------------------------------------
@needs_shared_data
def test_mnist_from_the_shared_idx_files():
    dm = MNISTDataModule(root=str(SHARED_DATA / "mnist"))
    dm.setup()
    assert len(dm.train_set) == 60000 and len(dm.val_set) == 10000
    assert dm.train_labels[0].item() == 5
    x = dm.train_set.data
    assert x.shape == (60000, 1, 28, 28)
    sample, index = dm.train_set[0]
    assert sample.dtype == torch.float32 and index == 0
    first = dm.sample_real(256)
    assert first.min() == -1 and first.max() == 1


@needs_shared_data
def test_fashion_mnist_from_the_shared_idx_files_padded_to_32():
    dm = MNISTDataModule(root=str(SHARED_DATA / "fashion-mnist"), dataset="fashion-mnist", image_size=32)
    dm.setup()
    assert len(dm.train_set) == 60000 and dm.val_labels[0].item() == 9
    x, _ = dm.train_set[0]
    assert x.shape == (1, 32, 32)
    assert torch.all(x[:, :2] == -1) and torch.all(x[:, :, -2:] == -1)  # black padding


def test_mnist_accepts_uncompressed_files(tmp_path):
    write_fake_mnist(tmp_path, n=6, compress=False)
    dm = MNISTDataModule(root=str(tmp_path))
    dm.setup()
    assert len(dm.train_set) == 6 and dm.train_labels.tolist() == list(range(6))


def test_mnist_missing_folder_names_the_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"MNIST folder .*nowhere does not exist; expected the four"):
        MNISTDataModule(root=str(missing)).setup()


def test_mnist_missing_file_names_every_missing_file(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as error:
        MNISTDataModule(root=str(tmp_path), dataset="fashion-mnist").setup()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"Fashion-MNIST folder {tmp_path} is missing train-images-idx3-ubyte.gz, "
                              "t10k-labels-idx1-ubyte.gz; expected the four standard IDX files")
    assert "zalandoresearch" in message


def test_mnist_bad_magic_number_is_reported(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(6, dtype=np.uint8))  # a label file in its place
    with pytest.raises(ValueError, match=r"Malformed IDX file .*train-images-idx3-ubyte.gz: magic number 2049, "
                                         r"expected 2051"):
        MNISTDataModule(root=str(tmp_path)).setup()


def test_mnist_truncated_file_is_reported(tmp_path):
    write_fake_mnist(tmp_path, n=6, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    expected = r"Malformed IDX file .*t10k-images-idx3-ubyte: 4710 bytes, expected 4720 for shape \(6, 28, 28\)"
    with pytest.raises(ValueError, match=expected):
        MNISTDataModule(root=str(tmp_path)).setup()


def test_mnist_bad_arguments():
    with pytest.raises(ValueError, match="Invalid image_size: 64; expected 28 or 32"):
        MNISTDataModule(root="x", image_size=64)
    with pytest.raises(ValueError, match="Invalid dataset: "):
        MNISTDataModule(root="x", dataset="kmnist")


# -- CIFAR-10 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("point_at", ["parent", "batches-folder"])
def test_cifar_reads_the_pickled_batches(tmp_path, point_at):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder, per_batch=4)
    dm = CIFAR10DataModule(root=str(tmp_path if point_at == "parent" else folder))
    dm.setup()
    assert len(dm.train_set) == 20 and len(dm.val_set) == 4
    assert dm.train_labels.tolist() == [0, 1, 2, 3] * 5
    red, _ = dm.train_set[0]
    assert red.shape == (3, 32, 32)
    assert torch.all(red[0] == 1) and torch.all(red[1:] == -1)


def test_cifar_missing_batches_are_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 folder .*cifar-10-batches-py is missing data_batch_3; "
                                                r"expected the extracted 'python version' archive"):
        CIFAR10DataModule(root=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 folder .*absent does not exist"):
        CIFAR10DataModule(root=str(tmp_path / "absent")).setup()


def test_cifar_malformed_batch_is_reported(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"Malformed CIFAR batch .*test_batch: b'data' is uint8 \(2, 100\)"):
        CIFAR10DataModule(root=str(folder)).setup()
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"Malformed CIFAR batch .*data_batch_1"):
        CIFAR10DataModule(root=str(folder)).setup()


# -- image folder --------------------------------------------------------------------------------------
def test_image_folder_finds_images_recursively_and_resizes(tmp_path):
    write_fake_folder(tmp_path)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=12, channels=3)
    dm.setup()
    assert len(dm.train_set) == 4  # .png, .PNG, .jpg, .bmp; not .txt
    assert dm.train_set.paths == sorted(dm.train_set.paths)  # index order is a pure function of the folder
    names = [p.name for p in dm.train_set.paths]
    images = torch.stack([dm.train_set[i][0] for i in range(4)])
    assert images.shape == (4, 3, 12, 12) and images.min() >= -1 and images.max() <= 1
    red = dm.train_set[names.index("one.png")][0]
    assert torch.allclose(red[0], torch.ones(12, 12)) and torch.allclose(red[1:], -torch.ones(2, 12, 12))
    gray = ImageFolderDataModule(root=str(tmp_path), image_size=5, channels=1)
    gray.setup()
    assert gray.train_set[0][0].shape == (1, 5, 5)


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Image folder .*missing does not exist; expected a folder"):
        ImageFolderDataModule(root=str(tmp_path / "missing")).setup()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"Image folder .*empty contains no images; expected .*\.png"):
        ImageFolderDataModule(root=str(tmp_path / "empty")).setup()
    with pytest.raises(ValueError, match="Invalid channels: 4"):
        ImageFolderDataModule(root=str(tmp_path), channels=4)


def test_prepare_data_downloads_nothing(tmp_path):
    for dm in (MNISTDataModule(root=str(tmp_path / "m")), CIFAR10DataModule(root=str(tmp_path / "c")),
               ImageFolderDataModule(root=str(tmp_path / "f"))):
        dm.prepare_data()
    assert list(tmp_path.iterdir()) == []


def test_mnist_num_train_samples_keeps_the_first_images():
    from lightning_gan.data import MNISTDataModule

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    dm = MNISTDataModule(root=str(root), num_train_samples=100)
    dm.setup("fit")
    assert len(dm.train_set) == 100 and len(dm.train_labels) == 100 and int(dm.train_labels[0]) == 5
    with pytest.raises(ValueError, match="Invalid num_train_samples: 0"):
        MNISTDataModule(root=str(root), num_train_samples=0)
