"""Per-player step-size schedules: the closed forms, exact rates on the bilinear game, one value per game iteration
(both half-steps, every rank, after a resume), the logged columns, Tune keys, and bad values in one line."""

from __future__ import annotations

import csv
import math
import os

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ddp_harness import run_distributed
from gan_fixtures import SCHEMES, make_data, make_module, make_trainer, state_of
from lightning_gan.cli import main
from lightning_gan.game.step import GameStep
from lightning_gan.game.toys import Bilinear1D
from lightning_gan.optim.factory import OptimizerConfig
from lightning_gan.optim.schedules import GameLR
from lightning_gan.resume import StepSizeOverride
from lightning_gan.schemes import make_scheme
from lightning_gan.variance_reduction import SVREConfig
from tune.report import ConfigOptimizerScalars
from tune.space import apply_params

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),
]

DT = torch.float64
TTUR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "quickstart_ttur.yaml")


def closed_form(t: int, name: str, warmup: int = 0, decay_steps: int | None = None, final_factor: float = 0.0,
                gamma: float = 0.1, t0: float = 1.0) -> float:
    """eta_t / eta_0, written out here independently of lightning_gan.optim.schedules."""
    if t < warmup:
        return (t + 1) / (warmup + 1)
    s = t - warmup
    if name == "constant":
        return 1.0
    if name == "linear":
        return 1 - (1 - final_factor) * min(s, decay_steps) / decay_steps
    if name == "cosine":
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * min(s, decay_steps) / decay_steps))
    if name == "step":
        return gamma ** (s // decay_steps)
    if name == "inverse_sqrt":
        return (1 + s / t0) ** -0.5
    assert name == "inverse_time"
    return 1 / (1 + s / t0)


# Every schedule, each with a warm-up, its decay ending or stepping inside the 200 iterations of the oracles.
SCHEDULES = {
    "constant": dict(warmup=10),
    "linear": dict(warmup=5, decay_steps=100, final_factor=0.1),
    "cosine": dict(warmup=20, decay_steps=120, final_factor=0.0),
    "step": dict(warmup=3, decay_steps=40, gamma=0.5),
    "inverse_sqrt": dict(warmup=8, t0=10.0),
    "inverse_time": dict(warmup=4, t0=25.0),
}


def config_for(name: str, lr: float, **overrides) -> OptimizerConfig:
    return OptimizerConfig(rule="sgd", lr=lr, momentum=0.0, schedule=name, **{**SCHEDULES[name], **overrides})


def eta(t: int, name: str, lr: float) -> float:
    return lr * closed_form(t, name, **SCHEDULES[name])


# -- the closed forms -------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no optimizer step here
@pytest.mark.parametrize("name", SCHEDULES)
def test_scheduled_lr_at_iteration_t_is_the_closed_form(name):
    """To a few ulps: the test's expressions round in another order than the library's."""
    optimizer = config_for(name, 0.3).build([torch.nn.Parameter(torch.zeros(1))])
    scheduler = config_for(name, 0.3).scheduler(optimizer)
    for t in range(300):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(eta(t, name, 0.3), rel=1e-14, abs=1e-16), t
        scheduler.step()


def test_hand_picked_values():
    """The definitions, at a few points worked out by hand."""
    values = {
        ("constant", 0): 1 / 11, ("constant", 9): 10 / 11, ("constant", 10): 1.0,
        ("linear", 5): 1.0, ("linear", 55): 0.55, ("linear", 105): 0.1, ("linear", 500): 0.1,
        ("cosine", 20): 1.0, ("cosine", 80): 0.5, ("cosine", 140): 0.0,
        ("step", 42): 1.0, ("step", 43): 0.5, ("step", 123): 0.125,
        ("inverse_sqrt", 0): 1 / 9, ("inverse_sqrt", 38): 0.5, ("inverse_sqrt", 158): 0.25,
        ("inverse_time", 4): 1.0, ("inverse_time", 29): 0.5, ("inverse_time", 104): 0.2,
    }
    for (name, t), factor in values.items():
        assert config_for(name, 1.0).lr_schedule()(t) == pytest.approx(factor, rel=1e-15, abs=1e-16), (name, t)


# -- the exact oracle on x*y ------------------------------------------------------------------------------------


def drive_bilinear(scheme_name: str, config: OptimizerConfig, steps: int, on_call=None) -> tuple[torch.Tensor, list]:
    """x^2 + y^2 after each iteration of ``scheme_name`` through GameStep, both players on ``config``'s schedule,
    each scheduler stepped once per iteration after the scheme's step."""
    game = Bilinear1D(1.0, 0.5)
    scheme = make_scheme(scheme_name, 1)
    optimizers = [config.build(player.parameters(), scheme.optimizer_family) for player in game.players]
    schedulers = [config.scheduler(optimizer) for optimizer in optimizers]
    if on_call is not None:
        on_call(optimizers)
    step = GameStep(game, optimizers, reduce=lambda tensors: None)
    sq = [float(game.flat_point().pow(2).sum())]
    for _ in range(steps):
        scheme.step(step, [None] * scheme.draws_per_step)
        for scheduler in schedulers:
            scheduler.step()
        sq.append(float(game.flat_point().pow(2).sum()))
    return torch.tensor(sq, dtype=DT), schedulers


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize(("scheme", "factor"), [
    ("simultaneous", lambda e: 1 + e**2),
    ("extragradient", lambda e: 1 - e**2 + e**4),
], ids=["simultaneous", "extragradient"])
def test_bilinear_norm_changes_by_the_product_of_the_scheduled_factors(scheme, factor, name):
    """x^2 + y^2 is multiplied by exactly prod_t (1 + eta_t^2) (simultaneous GD) or prod_t (1 - eta_t^2 + eta_t^4)
    (extragradient), with eta_t the closed form: checked per step and cumulatively at every step (float64)."""
    steps, lr = 200, 0.3
    sq, _ = drive_bilinear(scheme, config_for(name, lr), steps)
    factors = torch.tensor([factor(eta(t, name, lr)) for t in range(steps)], dtype=DT)
    per_step = sq[1:] / sq[:-1]
    assert ((per_step - factors).abs() / factors).max() < 1e-12
    cumulative = sq[1:] / sq[0]
    expected = torch.cumprod(factors, 0)
    assert ((cumulative - expected).abs() / expected).max() < 1e-12
    constant = factor(lr) ** steps  # the schedule does change the outcome
    assert not math.isclose(float(cumulative[-1]), constant, rel_tol=1e-3)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")  # the recorder wraps it
def test_extragradient_uses_the_same_lr_at_both_half_steps_on_the_toy():
    seen: list[tuple[str, int, float]] = []

    def record(optimizers):
        for index, optimizer in enumerate(optimizers):
            for method in ("extrapolation", "step"):
                inner = getattr(optimizer, method)

                def wrapper(*args, _inner=inner, _method=method, _index=index, _opt=optimizer, **kwargs):
                    seen.append((_method, _index, _opt.param_groups[0]["lr"]))
                    return _inner(*args, **kwargs)

                setattr(optimizer, method, wrapper)

    drive_bilinear("extragradient", config_for("inverse_sqrt", 0.3), 30, on_call=record)
    assert len(seen) == 30 * 4
    for t in range(30):
        calls = seen[4 * t:4 * t + 4]
        assert [c[:2] for c in calls] == [("extrapolation", 0), ("extrapolation", 1), ("step", 0), ("step", 1)]
        (lr,) = {c[2] for c in calls}  # one value, bit for bit
        assert lr == pytest.approx(eta(t, "inverse_sqrt", 0.3), rel=1e-14)


# -- through the trainer ----------------------------------------------------------------------------------------


def ttur(**g_overrides) -> dict:
    """TTUR as in the configs: G linear decay with warm-up, D inverse square root with warm-up (the fixtures'
    optimizers: Adam for G, SGD with negative momentum for D)."""
    g = {**dict(rule="adam", lr=1e-3, momentum=0.5, beta2=0.9, schedule="linear", warmup=4, decay_steps=30,
                final_factor=0.1), **g_overrides}
    d = dict(rule="sgd", lr=2e-3, momentum=-0.3, schedule="inverse_sqrt", warmup=3, t0=5.0)
    return dict(g_optimizer=OptimizerConfig(**g), d_optimizer=OptimizerConfig(**d))


def expected_lrs(t: int, g_lr: float = 1e-3) -> tuple[float, float]:
    return (g_lr * closed_form(t, "linear", warmup=4, decay_steps=30, final_factor=0.1),
            2e-3 * closed_form(t, "inverse_sqrt", warmup=3, t0=5.0))


def assert_scheduled(calls: list[tuple[int, float]], t: int, g_lr: float = 1e-3) -> None:
    """Each player stepped at iteration ``t`` with one lr, bit for bit: eta_0 * factor(t) as the library computes
    it (what LambdaLR writes), and the test's own closed form to a few ulps."""
    configs = ttur(lr=g_lr)
    for index, config in enumerate((configs["g_optimizer"], configs["d_optimizer"])):
        lrs = {lr for i, lr in calls if i == index}
        assert lrs == {config.lr * config.lr_schedule()(t)}, (t, index, lrs)
        assert lrs.pop() == pytest.approx(expected_lrs(t, g_lr)[index], rel=1e-14)


class RecordStepLRs(Callback):
    """Every lr each optimizer holds when its ``step`` / ``extrapolation`` runs, by game iteration."""

    def __init__(self) -> None:
        self.calls: dict[int, list[tuple[int, float]]] = {}
        self._wrapped = False

    def on_train_batch_start(self, trainer, module, *args) -> None:
        self.calls[trainer.global_step] = []
        if self._wrapped:
            return
        self._wrapped = True
        for index, optimizer in enumerate(module.optimizers(use_pl_optimizer=False)):
            for method in ("step", "extrapolation"):
                inner = getattr(optimizer, method, None)
                if inner is None:
                    continue

                def wrapper(*a, _inner=inner, _index=index, _opt=optimizer, **k):
                    self.calls[trainer.global_step].append((_index, _opt.param_groups[0]["lr"]))
                    return _inner(*a, **k)

                setattr(optimizer, method, wrapper)


SCHEMES_AND_SVRE = [*SCHEMES, "svre"]


def _module(scheme: str, **kwargs):
    if scheme == "svre":
        kwargs.setdefault("svre", SVREConfig(snapshot_every=7))
    return make_module(scheme, **{**ttur(), **kwargs})


@pytest.mark.parametrize("scheme", SCHEMES_AND_SVRE)
def test_every_half_step_of_an_iteration_uses_the_iterations_scheduled_lr(scheme):
    record = RecordStepLRs()
    module = _module(scheme)
    make_trainer(12, callbacks=[record]).fit(module, make_data())
    assert sorted(record.calls) == list(range(12))
    for t, calls in record.calls.items():
        assert {i for i, _ in calls} == {0, 1}, (t, calls)  # both players stepped
        assert_scheduled(calls, t)


def test_logged_lr_columns_show_the_lr_each_iteration_used(tmp_path):
    module = _module("extragradient")
    make_trainer(12, logger=CSVLogger(tmp_path, name="", version=0)).fit(module, make_data())
    with open(tmp_path / "version_0" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/lr_generator")]
    assert [int(row["step"]) for row in rows] == list(range(12))
    for row in rows:
        g, d = expected_lrs(int(row["step"]))
        assert float(row["train/lr_generator"]) == pytest.approx(g, rel=1e-7)  # the logger writes float32
        assert float(row["train/lr_discriminator"]) == pytest.approx(d, rel=1e-7)


def test_constant_schedule_builds_no_scheduler():
    """Without a schedule the run is exactly the unscheduled one (and older checkpoints load as before)."""
    assert isinstance(make_module().configure_optimizers(), list)
    optimizers, schedulers = _module("simultaneous").configure_optimizers()
    assert [type(s) for s in schedulers] == [GameLR, GameLR] and len(optimizers) == 2


@pytest.mark.parametrize("scheme", SCHEMES_AND_SVRE)
def test_resume_mid_schedule_equals_never_stopping(scheme, tmp_path):
    """N + N = 2N bit-identical, the checkpoint taken mid-decay (G linear over 30 after 4 warm-up iterations)."""
    n = 10
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=n, save_top_k=-1, save_last=False)
    uninterrupted = _module(scheme, ema_decay=0.9)
    make_trainer(2 * n, callbacks=[checkpoint], enable_checkpointing=True).fit(uninterrupted, make_data())
    saved = sorted(tmp_path.glob(f"*step={n}.ckpt"))
    assert len(saved) == 1
    assert torch.load(saved[0], weights_only=True)["lr_schedulers"][0]["last_epoch"] == n

    record = RecordStepLRs()
    resumed = _module(scheme, init_seed=123, ema_decay=0.9)
    make_trainer(2 * n, callbacks=[record]).fit(resumed, make_data(), ckpt_path=saved[0])
    assert sorted(record.calls) == list(range(n, 2 * n))
    for t, calls in record.calls.items():
        assert_scheduled(calls, t)
    expected, actual = state_of(uninterrupted), state_of(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    for a, b in zip(uninterrupted.lr_schedulers(), resumed.lr_schedulers()):
        assert a.last_epoch == b.last_epoch == 2 * n and a.get_last_lr() == b.get_last_lr()


def test_a_new_step_size_on_resume_rescales_the_schedule_at_its_iteration(tmp_path):
    """--resume_allow g_optimizer.lr: the new lr is the schedule's eta_0 from the first resumed iteration on."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_top_k=-1, save_last=False)
    make_trainer(10, callbacks=[checkpoint], enable_checkpointing=True).fit(_module("simultaneous"), make_data())
    record = RecordStepLRs()
    resumed = _module("simultaneous", g_optimizer=ttur(lr=5e-4)["g_optimizer"])
    make_trainer(14, callbacks=[StepSizeOverride({0: 5e-4}), record]).fit(
        resumed, make_data(), ckpt_path=sorted(tmp_path.glob("*.ckpt"))[0])
    for t in range(10, 14):
        assert_scheduled(record.calls[t], t, g_lr=5e-4)


# -- Tune -------------------------------------------------------------------------------------------------------


def test_tune_keys_set_each_players_schedule():
    base = {"model": {"g_optimizer": {"lr": 1e-3}, "d_optimizer": {"lr": 1e-3}}}
    config = apply_params(base, {"schedule_g": "linear", "schedule_d": "inverse_sqrt", "warmup": 5,
                                 "model.g_optimizer.decay_steps": 100, "model.d_optimizer.t0": 50.0, "lr_ratio": 4})
    g, d = config["model"]["g_optimizer"], config["model"]["d_optimizer"]
    assert (g["schedule"], g["warmup"], g["decay_steps"]) == ("linear", 5, 100)
    assert (d["schedule"], d["warmup"], d["t0"], d["lr"]) == ("inverse_sqrt", 5, 50.0, 4e-3)
    for field, values in (("g_optimizer", g), ("d_optimizer", d)):
        OptimizerConfig(**values).validate(field)


def test_tunes_re_applied_config_scalars_keep_the_schedule():
    """ConfigOptimizerScalars writes the raw config lr at train start; the module's schedule wins after it."""
    record = RecordStepLRs()
    make_trainer(3, callbacks=[ConfigOptimizerScalars(), record]).fit(_module("simultaneous"), make_data())
    assert_scheduled(record.calls[0], 0)


# -- bad values -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    (dict(schedule="exponential"), "Invalid g_optimizer.schedule: 'exponential'; expected one of constant, linear"),
    (dict(warmup=-1), "Invalid g_optimizer.warmup: -1; expected an integer >= 0"),
    (dict(schedule="linear"), "Invalid g_optimizer.decay_steps: None; expected an integer >= 1 for schedule 'linear'"),
    (dict(schedule="step", decay_steps=0), "Invalid g_optimizer.decay_steps: 0"),
    (dict(schedule="cosine", decay_steps=10, final_factor=1.5), "Invalid g_optimizer.final_factor: 1.5"),
    (dict(schedule="step", decay_steps=10, gamma=0.0), "Invalid g_optimizer.gamma: 0.0; expected 0 < gamma <= 1"),
    (dict(schedule="inverse_sqrt", t0=-2.0), "Invalid g_optimizer.t0: -2.0; expected a finite number > 0"),
])
def test_bad_schedule_values_are_refused_in_one_line(config, message):
    with pytest.raises(ValueError) as error:
        make_module(g_optimizer=OptimizerConfig(**config))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_values_a_schedule_does_not_use_are_ignored():
    make_module(g_optimizer=OptimizerConfig(schedule="inverse_time", t0=3.0, decay_steps=-5, gamma=7.0))




@pytest.mark.usefixtures("cli_process_state")
@pytest.mark.parametrize(("args", "named"), [
    (["--model.d_optimizer.schedule=exponential"], "Invalid d_optimizer.schedule: 'exponential'; expected one of"),
    (["--model.d_optimizer.schedule=linear"], "Invalid d_optimizer.decay_steps: None; expected an integer >= 1"),
    (["--model.g_optimizer.warmup=-3"], "Invalid g_optimizer.warmup: -3"),
], ids=["unknown-schedule", "linear-without-length", "negative-warmup"])
def test_bad_schedule_on_the_command_line_exits_2_with_one_line(args, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", TTUR, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=5", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err and not list(tmp_path.rglob("*.ckpt"))


def _ttur_fit(root, max_steps: int, *extra: str) -> None:
    main(["fit", "--config", TTUR, f"--trainer.default_root_dir={root}", f"--trainer.max_steps={max_steps}",
          "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
          "--data.init_args.num_samples=1024", "--data.init_args.batch_size=32", "--samples.every_n_steps=0",
          "--checkpoint.every_n_train_steps=3", *extra])


def _logged_lrs(metrics_csv) -> dict[int, tuple[float, float]]:
    with open(metrics_csv) as f:
        return {int(row["step"]): (float(row["train/lr_generator"]), float(row["train/lr_discriminator"]))
                for row in csv.DictReader(f) if row.get("train/lr_generator")}


@pytest.mark.usefixtures("cli_process_state")
def test_ttur_quickstart_logs_both_schedules_and_resumes_them_through_the_cli(tmp_path):
    """6 iterations, then ``--ckpt_path last`` to 9: the logged columns are the config's closed forms throughout."""
    _ttur_fit(tmp_path, 6)
    _ttur_fit(tmp_path, 9, "--ckpt_path=last")
    with open(TTUR) as f:
        model = yaml.safe_load(f)["model"]
    keys = ("schedule", "warmup", "decay_steps", "final_factor", "gamma", "t0")
    g, d = ({k: v for k, v in model[p].items() if k in keys} for p in ("g_optimizer", "d_optimizer"))
    g["name"], d["name"] = g.pop("schedule"), d.pop("schedule")
    logged = {**_logged_lrs(tmp_path / "version_0" / "metrics.csv"),
              **_logged_lrs(tmp_path / "version_1" / "metrics.csv")}
    assert sorted(logged) == list(range(9))
    for t, (lr_g, lr_d) in logged.items():  # the CSV holds float32 values
        assert lr_g == pytest.approx(model["g_optimizer"]["lr"] * closed_form(t, **g), rel=1e-6)
        assert lr_d == pytest.approx(model["d_optimizer"]["lr"] * closed_form(t, **d), rel=1e-6)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert [s["last_epoch"] for s in saved["lr_schedulers"]] == [9, 9]


@pytest.mark.usefixtures("cli_process_state")
def test_on_resume_a_schedule_is_the_checkpoints_and_an_allowed_lr_rescales_it(tmp_path, capsys):
    _ttur_fit(tmp_path, 6)
    with pytest.raises(SystemExit) as exit_:
        _ttur_fit(tmp_path, 9, "--ckpt_path=last", "--model.d_optimizer.t0=100")
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and "Invalid model.d_optimizer.t0: 100.0 given" in errors[0], errors
    _ttur_fit(tmp_path, 9, "--ckpt_path=last", "--model.g_optimizer.lr=0.00025", "--resume_allow=g_optimizer.lr")
    with open(TTUR) as f:
        g = yaml.safe_load(f)["model"]["g_optimizer"]
    factor = OptimizerConfig(**g).lr_schedule()
    logged = _logged_lrs(tmp_path / "version_1" / "metrics.csv")
    assert sorted(logged) == [6, 7, 8]
    for t, (lr_g, _) in logged.items():
        assert lr_g == pytest.approx(0.00025 * factor(t), rel=1e-6)


# -- two ranks --------------------------------------------------------------------------------------------------

ITERATIONS = 20


def _train_every_scheme(rank, batch_size):
    results = {}
    for scheme in SCHEMES_AND_SVRE:
        module = _module(scheme, init_seed=rank, ema_decay=0.9)
        trainer = make_trainer(ITERATIONS, devices=2, strategy="game_ddp")
        trainer.fit(module, make_data(batch_size=batch_size))
        results[scheme] = {"state": state_of(module), "global_step": trainer.global_step,
                           "lrs": [s.get_last_lr() for s in module.lr_schedulers()]}
    return results


@pytest.fixture(scope="module")
def two_rank_runs():
    return run_distributed(_train_every_scheme, 2, 8, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES_AND_SVRE)
def test_two_ranks_stay_bit_identical_with_a_schedule(two_rank_runs, scheme):
    rank0, rank1 = (run[scheme] for run in two_rank_runs)
    assert rank0["global_step"] == rank1["global_step"] == ITERATIONS
    assert rank0["lrs"] == rank1["lrs"]
    assert [lr for (lr,) in rank0["lrs"]] == pytest.approx(expected_lrs(ITERATIONS), rel=1e-14)
    assert rank0["state"].keys() == rank1["state"].keys()
    for key in rank0["state"]:
        assert torch.equal(rank0["state"][key], rank1["state"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES_AND_SVRE)
def test_two_ranks_with_batch_b_match_one_rank_with_batch_2b_with_a_schedule(two_rank_runs, scheme):
    module = _module(scheme, init_seed=0, ema_decay=0.9)
    make_trainer(ITERATIONS).fit(module, make_data(batch_size=16))
    two_ranks = two_rank_runs[0][scheme]["state"]
    for key, value in state_of(module).items():
        if key.endswith(".step"):
            assert torch.equal(value, two_ranks[key]), key
            continue
        torch.testing.assert_close(two_ranks[key], value, rtol=1e-5, atol=1e-5, msg=key)
