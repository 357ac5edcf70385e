"""``lightning-gan adagan`` end to end on a tiny ring run: the state and the mixture it writes, ``evaluate`` and
``sample`` on the mixture, a resume mid-component equal bit for bit to the uninterrupted run, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_gan.adagan import run as adagan_run
from lightning_gan.adagan.component import ComponentCLI
from lightning_gan.checkpointing import read_checkpoint
from lightning_gan.cli import main

TINY = {
    "seed_everything": 0,
    "torch_num_threads": 1,
    "trainer": {"max_steps": 20, "log_every_n_steps": 5, "enable_model_summary": False,
                "enable_progress_bar": False, "accelerator": "cpu", "logger": False},
    "model": {
        "generator": {"class_path": "lightning_gan.models.MLPGenerator",
                      "init_args": {"latent_dim": 2, "output_dim": 2, "hidden_dim": 16, "num_layers": 2}},
        "discriminator": {"class_path": "lightning_gan.models.MLPDiscriminator",
                          "init_args": {"input_dim": 2, "hidden_dim": 16, "num_layers": 2}},
        "scheme": "simultaneous",
        "g_optimizer": {"rule": "adam", "lr": 1.0e-3, "momentum": 0.5, "beta2": 0.9},
        "d_optimizer": {"rule": "adam", "lr": 1.0e-3, "momentum": 0.5, "beta2": 0.9},
        "uniform_average": False,
        "ema_decay": 0.9,
    },
    "data": {"class_path": "lightning_gan.data.GaussianMixtureDataModule",
             "init_args": {"kind": "ring", "num_samples": 256, "num_val_samples": 0, "batch_size": 32}},
    "samples": {"every_n_steps": 0, "generators": []},
    "checkpoint": {"every_n_train_steps": 5},
}


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _adagan(config: Path, root: Path, *args: str) -> None:
    main(["adagan", "--config", str(config), f"--trainer.default_root_dir={root}", "--adagan.classifier_epochs=1",
          *args])


def _errors(capsys, *argv: str) -> list[str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("lightning-gan: error:")]


class _Killed(RuntimeError):
    pass


class _KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == self.step:
            raise _Killed(f"killed at step {self.step}")


@pytest.mark.slow
def test_resume_mid_component_gives_the_uninterrupted_mixture(config, tmp_path, monkeypatch, cli_process_state,
                                                               capsys):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _adagan(config, straight, "--adagan.components=3")
    state = json.loads((straight / "adagan.json").read_text())
    assert [e["global_step"] for e in state["trained"]] == [20, 20, 20]
    assert state["mixture_weights"] == pytest.approx([1 / 3] * 3, abs=1e-15)
    assert sorted(state["data_weights"]) == ["1", "2"]

    original = ComponentCLI._instantiate_trainer

    def with_kill(self, trainer_config, callbacks):  # component 1 (the first one on weighted data) dies at step 12
        if self._weights_seed == 1:
            callbacks = [*callbacks, _KillAt(12)]
        return original(self, trainer_config, callbacks)

    monkeypatch.setattr(ComponentCLI, "_instantiate_trainer", with_kill)
    with pytest.raises(_Killed):
        _adagan(config, killed, "--adagan.components=3")
    import torch.distributed as dist
    assert not (dist.is_available() and dist.is_initialized())  # the in-process component cleaned up
    partial = json.loads((killed / "adagan.json").read_text())
    assert len(partial["trained"]) == 1 and (killed / "component_1" / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(ComponentCLI, "_instantiate_trainer", original)
    _adagan(config, killed, "--adagan.components=3")  # the same command again: resumes component 1 at its checkpoint

    expected = read_checkpoint(straight / "mixture.ckpt")
    actual = read_checkpoint(killed / "mixture.ckpt")
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, actual["state_dict"][key]), key
    assert json.loads((killed / "adagan.json").read_text())["mixture_weights"] == state["mixture_weights"]
    for t in (1, 2):
        assert torch.equal(torch.load(straight / f"component_{t}" / "data_weights.pt"),
                           torch.load(killed / f"component_{t}" / "data_weights.pt"))

    # evaluate and sample take the mixture as any checkpoint
    capsys.readouterr()
    main(["evaluate", "--ckpt", str(straight / "mixture.ckpt"), "--metrics", "modes", "--num-samples", "500",
          "--generator", "live", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "live: modes" in out and "step 60" in out
    main(["sample", "--ckpt", str(straight / "mixture.ckpt"), "--num-samples", "50", "--format", "npz",
          "--device", "cpu", "--out", str(tmp_path / "samples")])
    samples = __import__("numpy").load(tmp_path / "samples" / "live_step60.npz")["samples"]
    assert samples.shape == (50, 2)


def test_constant_beta_ema_components_and_growing_a_finished_run(config, tmp_path, cli_process_state):
    root = tmp_path / "run"
    _adagan(config, root, "--adagan.components=2", "--adagan.beta=constant", "--adagan.beta_constant=0.25",
            "--adagan.generator=ema", "--trainer.max_steps=10")
    assert json.loads((root / "adagan.json").read_text())["mixture_weights"] == pytest.approx([0.75, 0.25])
    _adagan(config, root, "--adagan.components=3", "--adagan.beta=constant", "--adagan.beta_constant=0.25",
            "--adagan.generator=ema", "--trainer.max_steps=10")
    state = json.loads((root / "adagan.json").read_text())
    assert state["mixture_weights"] == pytest.approx([0.5625, 0.1875, 0.25], abs=1e-15)
    mixture = read_checkpoint(root / "mixture.ckpt")
    torch.testing.assert_close(mixture["state_dict"]["generator.weights"],
                               torch.tensor([0.5625, 0.1875, 0.25], dtype=torch.float64), rtol=0, atol=1e-15)
    # the EMA of component 2 is what went into the mixture
    component = read_checkpoint(root / "component_2" / "checkpoints" / "last.ckpt")["state_dict"]
    ema = {k.split("module.", 1)[1]: v for k, v in component.items()
           if k.startswith("generator_averages.") and "module." in k and "ema" in k}
    assert ema, sorted(component)[:10]
    for key, value in ema.items():
        assert torch.equal(mixture["state_dict"][f"generator.components.2.{key}"], value), key


def test_reweighting_none_is_a_mixture_of_plain_fit_runs_with_their_seeds(config, tmp_path, cli_process_state):
    """The control: component t is the `fit` run with seeds + t on the uniform data, no classifier, no weights."""
    from gan_fixtures import fit_in_process

    root = tmp_path / "control"
    _adagan(config, root, "--adagan.components=2", "--adagan.reweighting=none", "--trainer.max_steps=8",
            "--trainer.strategy=auto")
    state = json.loads((root / "adagan.json").read_text())
    assert state["data_weights"] == {} and not (root / "component_1" / "data_weights.pt").exists()
    assert state["mixture_weights"] == pytest.approx([0.5, 0.5])
    plain = fit_in_process(tmp_path / "plain", config, "--trainer.max_steps=8", "--seed_everything=1",
                           "--model.seed=1")
    expected = read_checkpoint(plain)["state_dict"]
    component = read_checkpoint(root / "component_1" / "checkpoints" / "last.ckpt")["state_dict"]
    for key, value in expected.items():
        assert torch.equal(component[key], value), key


def test_one_component_is_a_plain_fit_run(config, tmp_path, cli_process_state):
    """T = 1: component 0 is the `fit` run with the same arguments (uniform data, the user's seeds), bit for bit."""
    from gan_fixtures import fit_in_process

    _adagan(config, tmp_path / "adagan", "--trainer.max_steps=8", "--trainer.strategy=auto")
    plain = fit_in_process(tmp_path / "plain", config, "--trainer.max_steps=8")
    expected = read_checkpoint(plain)["state_dict"]
    component = read_checkpoint(tmp_path / "adagan" / "component_0" / "checkpoints" / "last.ckpt")["state_dict"]
    mixture = read_checkpoint(tmp_path / "adagan" / "mixture.ckpt")["state_dict"]
    for key, value in expected.items():
        assert torch.equal(component[key], value), key
        if key.startswith("generator."):
            assert torch.equal(mixture[key.replace("generator.", "generator.components.0.", 1)], value), key


@pytest.mark.parametrize(("args", "named"), [
    (["--adagan.components=0"], "Invalid adagan.components: 0; expected an integer >= 1"),
    (["--adagan.beta=linear"], "Invalid adagan.beta: 'linear'"),
    (["--adagan.beta_constant=1.5"], "Invalid adagan.beta_constant: 1.5"),
    (["--adagan.reweighting=topk"], "Invalid adagan.reweighting: 'topk'; expected one of theory_star, none"),
    (["--adagan.generator=uniform"], "Invalid adagan.generator: 'uniform'; the components keep live, ema"),
    (["--model.scheme=leapfrog"], "Invalid scheme: 'leapfrog'"),
    (["--ckpt_path=last"], "Invalid ckpt_path"),
    (["--adagan.components", "two"], "invalid int value: 'two'"),
])
def test_bad_values_are_one_line_before_any_work(args, named, config, tmp_path, capsys, cli_process_state):
    root = tmp_path / "run"
    errors = _errors(capsys, "adagan", "--config", str(config), f"--trainer.default_root_dir={root}", *args)
    assert len(errors) == 1 and named in errors[0], errors
    assert not root.exists()


def test_weights_that_vanish_are_refused_before_training(config, tmp_path, capsys, cli_process_state):
    from lightning_gan.adagan.component import main as component

    weights = torch.zeros(256, dtype=torch.float64)
    weights[:20] = 1.0  # 20 points of nonzero weight; a minibatch draws 32 without replacement
    path = tmp_path / "w.pt"
    torch.save(weights, path)
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        component(["--adagan_weights", str(path), "fit", "--config", str(config), f"--trainer.default_root_dir={root}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(lines) == 1 and "Invalid data weights: only 20" in lines[0] and "weights that vanish" in lines[0]
    assert not (root / "checkpoints").exists()


def test_a_resume_with_other_adagan_settings_is_refused(config, tmp_path, capsys, cli_process_state):
    root = tmp_path / "run"
    root.mkdir()
    (root / "adagan.json").write_text(json.dumps({"settings": {**adagan_run.AdaGANSettings().recorded(),
                                                               "beta": "constant"}, "trained": []}))
    errors = _errors(capsys, "adagan", "--config", str(config), f"--trainer.default_root_dir={root}")
    assert len(errors) == 1 and "Invalid adagan.beta: 'uniform'; the AdaGAN run in" in errors[0]


def test_adagan_help_is_short(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["adagan", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--adagan.components" in text and "--adagan.beta" in text and "lightning-gan fit --help" in text
    assert len(text.splitlines()) < 45


def test_the_mixture_so_far_is_monitored_while_a_component_trains(config, tmp_path, capsys, cli_process_state):
    """The last value logged in component 1 is the final mixture's mode count as ``evaluate`` finds it (the same 2500
    latents of seed 0, the previous component at 1/2 and the trained one at 1/2)."""
    import csv

    root = tmp_path / "run"
    _adagan(config, root, "--adagan.components=2", "--adagan.monitor_every=5", "--trainer.logger=true")
    with open(root / "component_1" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = {int(r["step"]): (float(r["adagan/mixture_modes"]), float(r["adagan/mixture_high_quality"]))
              for r in rows if r.get("adagan/mixture_modes")}
    assert sorted(logged) == [5, 10, 15, 20]
    capsys.readouterr()
    main(["evaluate", "--ckpt", str(root / "mixture.ckpt"), "--metrics", "modes", "--num-samples", "2500",
          "--generator", "live", "--device", "cpu", "--seed", "0", "--out", str(tmp_path / "eval.json")])
    final = json.loads((tmp_path / "eval.json").read_text())["results"]["live"]
    assert logged[20][0] == final["modes_covered"]
    assert logged[20][1] == pytest.approx(final["high_quality"], abs=1e-12)


def test_monitoring_needs_mixture_data(tmp_path, capsys, cli_process_state):
    settings = {**TINY, "data": {"class_path": "lightning_gan.data.DigitsDataModule", "init_args": {"batch_size": 32}}}
    settings["model"] = {**TINY["model"],
                         "generator": {"class_path": "lightning_gan.models.MLPGenerator",
                                       "init_args": {"latent_dim": 2, "output_dim": 64, "hidden_dim": 16,
                                                     "num_layers": 2, "image_shape": [1, 8, 8]}},
                         "discriminator": {"class_path": "lightning_gan.models.MLPDiscriminator",
                                           "init_args": {"input_dim": 64, "hidden_dim": 16, "num_layers": 2}}}
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(settings))
    errors = _errors(capsys, "adagan", "--config", str(path), f"--trainer.default_root_dir={tmp_path / 'run'}",
                     "--adagan.monitor_every=5")
    assert len(errors) == 1 and "Invalid adagan.monitor_every: 5; the mode metrics need 2-D mixture data" in errors[0]


@pytest.mark.slow
def test_two_ranks_with_batch_b_make_the_mixture_of_one_rank_with_batch_2b(config, tmp_path, cli_process_state):
    """2 gloo ranks on CPU (each component its own command, which Lightning runs on both ranks) against one rank with
    the global batch: same data weights, same mixture, to float tolerance; the ranks drew one weighted sequence."""
    import subprocess
    import sys

    smooth = ["--model.generator.init_args.activation=silu", "--model.discriminator.init_args.activation=silu",
              "--adagan.components=2", "--trainer.max_steps=10", "--adagan.classifier_batch_size=32",
              "--adagan.classifier_epochs=1"]
    two = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gan", "adagan", "--config", str(config), f"--trainer.default_root_dir={two}",
         "--trainer.devices=2", "--trainer.accelerator=cpu", "--data.init_args.batch_size=16", *smooth],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    main(["adagan", "--config", str(config), f"--trainer.default_root_dir={one}", "--data.init_args.batch_size=32",
          *smooth])
    assert read_checkpoint(two / "component_1" / "checkpoints" / "last.ckpt")["lightning_gan"]["world_size"] == 2
    torch.testing.assert_close(torch.load(two / "component_1" / "data_weights.pt"),
                               torch.load(one / "component_1" / "data_weights.pt"), rtol=1e-4, atol=0)
    expected, actual = (read_checkpoint(r / "mixture.ckpt")["state_dict"] for r in (one, two))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_run_stopped_between_a_component_and_its_record_does_not_train_it_again(config, tmp_path,
                                                                                   cli_process_state):
    root = tmp_path / "run"
    _adagan(config, root, "--adagan.components=2", "--trainer.max_steps=6")
    expected = read_checkpoint(root / "mixture.ckpt")["state_dict"]
    state = json.loads((root / "adagan.json").read_text())
    state["trained"].pop()  # as if stopped after component 1's fit returned, before adagan.json was rewritten
    state["mixture_weights"] = [1.0]
    (root / "adagan.json").write_text(json.dumps(state))
    last = root / "component_1" / "checkpoints" / "last.ckpt"
    written = last.stat().st_mtime_ns
    _adagan(config, root, "--adagan.components=2", "--trainer.max_steps=6")
    assert last.stat().st_mtime_ns == written  # not trained again
    assert json.loads((root / "adagan.json").read_text())["mixture_weights"] == [0.5, 0.5]
    actual = read_checkpoint(root / "mixture.ckpt")["state_dict"]
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_the_reweighting_is_seeded(tmp_path):
    from lightning_gan.adagan.classifier import ClassifierConfig, mixture_samples, prob_real
    from lightning_gan.data import GaussianMixtureDataModule
    from lightning_gan.models import MLPDiscriminator, MLPGenerator

    data = GaussianMixtureDataModule(kind="ring", num_samples=256, num_val_samples=0, batch_size=32)
    data.setup("fit")
    generator, critic = MLPGenerator(latent_dim=2, hidden_dim=8, num_layers=1), MLPDiscriminator(hidden_dim=8,
                                                                                                num_layers=1)
    fake = mixture_samples(generator, 256, seed=3)
    assert torch.equal(fake, mixture_samples(generator, 256, seed=3))
    runs = [prob_real(critic, data.train_set, fake, ClassifierConfig(epochs=2), seed=s, default_batch_size=32)
            for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert runs[0].dtype == torch.float64 and bool(((runs[0] >= 0) & (runs[0] <= 1)).all())
