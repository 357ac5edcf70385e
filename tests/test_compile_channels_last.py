"""GANModule's ``channels_last`` and ``compile`` flags: the default path's results within float tolerance, one-line
refusals where they cannot apply (compile with a double backward, channels_last without convolutions)."""

from __future__ import annotations


import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from gan_fixtures import fit_cli_errors, make_data, make_module, make_trainer, state_of
from lightning_gan.diagnostics import SpectrumDiagnostics
from lightning_gan.models import DCGANDiscriminator, DCGANGenerator
from lightning_gan.module import GANModule
from lightning_gan.optim.factory import OptimizerConfig

STEPS = 10


def _dcgan(**kwargs) -> GANModule:
    """SGD, not Adam: G's biases before BatchNorm have a zero gradient up to rounding, which Adam would scale up to
    lr-sized steps, so two float-close paths would move them apart by the step size."""
    torch.manual_seed(0)
    return GANModule(DCGANGenerator(latent_dim=8, channels=1, image_size=28, base_width=4),
                     DCGANDiscriminator(channels=1, image_size=28, base_width=4),
                     g_optimizer=OptimizerConfig(rule="sgd", lr=0.02, momentum=0.5),
                     d_optimizer=OptimizerConfig(rule="sgd", lr=0.02, momentum=0.5), **kwargs)


def _images() -> DataLoader:
    real = torch.rand(STEPS * 8, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return DataLoader(real, batch_size=8, shuffle=False)  # plain tensors: the module's (x) batches


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], msg=lambda m, key=key: f"{key}: {m}", **tolerance)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()  # no recompile limit carried over from another test's players
    yield
    torch._dynamo.reset()


# -- channels_last -----------------------------------------------------------------------------------------------

def test_channels_last_dcgan_equals_the_default_after_ten_iterations():
    default, converted = _dcgan(), _dcgan(channels_last=True)
    make_trainer(STEPS).fit(default, _images())
    make_trainer(STEPS).fit(converted, _images())
    for player in (converted.generator, converted.discriminator):
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in player.parameters() if p.dim() == 4)
    moved = [(a - b).abs().max() for a, b in zip(converted.discriminator.parameters(), _dcgan().discriminator.parameters())]
    assert max(moved) > 1e-3  # the runs trained
    assert converted.trainer.global_step == STEPS
    _assert_close(state_of(default), state_of(converted), rtol=1e-4, atol=1e-5)


def test_channels_last_without_a_convolutional_player_is_refused():
    with pytest.raises(ValueError, match=r"^Invalid channels_last: true; neither player has a 4-D") as error:
        make_module(channels_last=True)
    assert "\n" not in str(error.value)


# -- compile -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "named"), [
    ({"loss": "wgan_gp"}, "gp_weight 10"),
    ({"r1_gamma": 0.1}, "r1_gamma 0.1"),
    ({"r2_gamma": 0.5}, "r2_gamma 0.5"),
    ({"consensus": 1.0}, "consensus 1"),
    ({"unroll_steps": 2}, "unroll_steps 2"),
])
def test_compile_with_a_double_backward_is_refused_in_one_line(kwargs, named):
    with pytest.raises(ValueError, match=r"^Invalid compile: true with .*double backward") as error:
        make_module(compile=True, **kwargs)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_compile_with_mmd_witness_penalty_is_refused_and_without_it_is_accepted():
    torch.manual_seed(0)
    kwargs = {"loss": "mmd", "generator": DCGANGenerator(latent_dim=8, channels=1, image_size=28, base_width=4),
              "discriminator": DCGANDiscriminator(channels=1, image_size=28, base_width=4, features=4)}
    with pytest.raises(ValueError, match=r"^Invalid compile: true with mmd_gp_weight 1 "):
        GANModule(compile=True, **kwargs)
    assert GANModule(compile=True, mmd_gp_weight=0.0, **kwargs).compile_players


def test_compile_with_spectrum_diagnostics_is_refused():
    with pytest.raises(ValueError, match=r"^Invalid diagnostics.every_n_steps: .*compile: true"):
        SpectrumDiagnostics(every_n_steps=5, k=2).check(make_module(compile=True))


def test_compile_with_a_penalty_through_the_cli_exits_2(tmp_path, capsys):
    errors, _ = fit_cli_errors(capsys, "configs/quickstart_consensus.yaml", tmp_path, "--model.compile=true")
    assert len(errors) == 1 and "compile" in errors[0] and "consensus" in errors[0]


def test_compiled_players_equal_eager_after_ten_iterations_and_resume_from_a_checkpoint(tmp_path, fresh_dynamo):
    """One compiled run (the compile time is the test's cost): equal to eager, state_dict keys unchanged, and a
    resume of the compiled run from its iteration-5 checkpoint ends where the uninterrupted compiled run ended."""
    eager = make_module("extragradient", ema_decay=0.9)
    make_trainer(STEPS).fit(eager, make_data())
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=STEPS // 2, save_top_k=-1, save_last=False)
    compiled = make_module("extragradient", ema_decay=0.9, compile=True)
    make_trainer(STEPS, callbacks=[checkpoint], enable_checkpointing=True).fit(compiled, make_data())
    assert compiled.generator._compiled_call_impl is not None
    assert compiled.discriminator._compiled_call_impl is not None
    _assert_close(state_of(eager), state_of(compiled), rtol=1e-4, atol=1e-5)

    saved = torch.load(tmp_path / f"epoch=0-step={STEPS // 2}.ckpt", weights_only=True)
    assert saved["state_dict"].keys() == eager.state_dict().keys()  # no `_orig_mod.` prefixes
    resumed = make_module("extragradient", ema_decay=0.9, compile=True)
    make_trainer(STEPS).fit(resumed, make_data(), ckpt_path=tmp_path / f"epoch=0-step={STEPS // 2}.ckpt")
    _assert_close(state_of(compiled), state_of(resumed), rtol=1e-5, atol=1e-6)
