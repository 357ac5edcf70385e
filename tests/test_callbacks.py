"""SampleGrid: one PNG per available generator, image mosaics or scatter plots, TensorBoard images, rank 0 only;
EvaluationBudget: stops at equal F-evaluations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gan_fixtures import make_data, make_module, make_trainer
from lightning_gan.callbacks import EvaluationBudget, SampleGrid
from lightning_gan.callbacks.samples import TITLE_HEIGHT
from lightning_gan.data import mixture_modes
from lightning_gan.variance_reduction import SVREConfig

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.14


class FakeGAN:
    """Stands in for GANModule: draws ``shape``-d samples from 'live' and 'ema'; keeps no uniform average."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def generator_for(self, which: str) -> str:
        if which == "uniform":
            raise ValueError("Invalid generator choice: 'uniform'; this run keeps no uniform average")
        return which

    def sample(self, num_samples: int, which: str = "live", seed: int = 0) -> torch.Tensor:
        return torch.rand(num_samples, *self.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def fake_trainer(tmp_path, step: int, *, loggers=(), modes=None, rank_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_global_zero=rank_zero, loggers=list(loggers),
                           datamodule=SimpleNamespace(modes=modes), log_dir=str(tmp_path),
                           default_root_dir=str(tmp_path))


def test_image_grid_is_a_png_per_kept_generator_and_a_tensorboard_image(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path, name="tb", version=0)
    trainer = fake_trainer(tmp_path, step=7, loggers=[logger])
    grid = SampleGrid(num_samples=16, generators=["live", "uniform", "ema"])
    grid.setup(trainer, FakeGAN((1, 8, 8)), "fit")

    written = grid.draw(trainer, FakeGAN((1, 8, 8)))

    assert sorted(p.name for p in written) == ["ema_step7.png", "live_step7.png"]  # no uniform average: skipped
    with Image.open(tmp_path / "samples" / "live_step7.png") as png:
        side = 4 * (8 + 2) + 2  # 4 x 4 mosaic of 8x8 images, 2-pixel padding: 42 px, enlarged 12x to >= 480 px
        assert png.size == (12 * side, 12 * side + TITLE_HEIGHT)
        band = np.asarray(png.convert("L"))[:TITLE_HEIGHT]
        assert band.min() < 128 < band.max()  # a title, dark on white
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert set(events.Tags()["images"]) == {"samples/live", "samples/ema"}
    assert events.Images("samples/live")[0].step == 7


def test_two_dimensional_points_become_a_scatter_plot_over_the_modes(tmp_path):
    trainer = fake_trainer(tmp_path, step=3, modes=mixture_modes("ring"))
    grid = SampleGrid(num_samples=100, generators=["live"])
    grid.setup(trainer, FakeGAN((2,)), "fit")

    (path,) = grid.draw(trainer, FakeGAN((2,)))

    with Image.open(path) as png:
        assert png.size == (400, 400)  # 4 x 4 inches at 100 dpi


def test_other_ranks_draw_nothing(tmp_path):
    trainer = fake_trainer(tmp_path, step=3, rank_zero=False)
    grid = SampleGrid(num_samples=4)
    grid.setup(trainer, FakeGAN((1, 8, 8)), "fit")
    assert grid.draw(trainer, FakeGAN((1, 8, 8))) == []
    assert not (tmp_path / "samples").exists()


def test_draws_every_n_steps_and_at_the_end_of_training(tmp_path):
    module = make_module("simultaneous")  # keeps uniform and EMA averages
    trainer = make_trainer(max_steps=7, default_root_dir=tmp_path,
                           callbacks=[SampleGrid(every_n_steps=3, num_samples=8, generators=["live", "uniform"])])
    trainer.fit(module, make_data())
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == sorted(f"{which}_step{k}.png" for which in ("live", "uniform") for k in (3, 6, 7))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"every_n_steps": -1}, "every_n_steps"),
    ({"num_samples": 0}, "num_samples"),
    ({"generators": ["best"]}, "generators"),
])
def test_invalid_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"Invalid {field}"):
        SampleGrid(**kwargs)


@pytest.mark.parametrize(("scheme", "budget", "iterations", "spent"), [
    ("extragradient", 11, 6, 12),  # 2 per iteration: the first iteration reaching 11 is the 6th
    ("simultaneous", 7, 7, 7),
    ("alternating", 9, 3, 9),  # n_dis = 2 (gan_fixtures): 3 per iteration
])
def test_evaluation_budget_stops_at_the_first_iteration_that_spends_it(scheme, budget, iterations, spent):
    module = make_module(scheme)
    trainer = make_trainer(1000, callbacks=[EvaluationBudget(budget)])
    trainer.fit(module, datamodule=make_data())
    assert (trainer.global_step, module.evaluations) == (iterations, spent)


def test_evaluation_budget_counts_svre_snapshot_passes():
    module = make_module("svre", svre=SVREConfig(snapshot_every=5))
    trainer = make_trainer(1000, callbacks=[EvaluationBudget(100)])
    trainer.fit(module, datamodule=make_data())  # a pass over 512 samples at batch 16 is worth 32 evaluations
    # 1st iteration: snapshot 32 + 4; after the 5th: 52; 6th (snapshot): 88; 9th: 100
    assert (trainer.global_step, module.evaluations, module.snapshot_passes) == (9, 100, 2)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_evaluation_budget_refuses_a_bad_budget(value):
    with pytest.raises(ValueError, match=f"Invalid max_evaluations: {value!r}; expected an integer >= 1"):
        EvaluationBudget(value)
