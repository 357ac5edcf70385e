"""Faults a cluster job meets lose nothing: signals save and stop every rank, divergence stops before a NaN checkpoint,
a frozen rank ends the job naming it. (Checkpoint files: test_faults_checkpoint.py; bad input: test_faults_input.py.)

The in-process tests run in the default suite; those that start ``lightning-gan`` processes are marked slow.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from gan_fixtures import SCHEMES, make_data, make_module, make_trainer, state_of
from lightning_gan import distributed
from lightning_gan.callbacks import FinalStepCheckpoint, SignalCheckpoint
from lightning_gan.game.finite import DivergenceError, FiniteCheck, first_non_finite_parameter
from lightning_gan.optim.factory import OptimizerConfig

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


class _AtStep(Callback):
    """Runs ``action(trainer, module)`` at the end of iteration ``step`` (before the callbacks listed after it)."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == self.step:
            self.action(trainer, module)


def _send(signum: int):
    return lambda trainer, module: os.kill(os.getpid(), signum)


def _checkpointing(tmp_path: Path, every: int = 100) -> FinalStepCheckpoint:
    return FinalStepCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0,
                               every_n_train_steps=every)


def _trainer(max_steps: int, tmp_path: Path, *callbacks: Callback):
    return make_trainer(max_steps, callbacks=list(callbacks), default_root_dir=tmp_path, enable_checkpointing=True)


def _saved(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- signals ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2], ids=lambda s: s.name)
def test_a_signal_saves_the_current_iteration_stops_and_restores_the_handlers(signum, tmp_path):
    before = signal.getsignal(signum)
    stopper = SignalCheckpoint(signal_names=["SIGTERM", "SIGINT", "SIGUSR2"])
    trainer = _trainer(50, tmp_path, _AtStep(4, _send(signum)), stopper, _checkpointing(tmp_path))
    trainer.fit(make_module("extragradient"), datamodule=make_data())
    assert trainer.global_step == 4  # the signal sent after iteration 4 is acted on at that boundary
    assert stopper.stopped_by == signum
    assert _saved(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert signal.getsignal(signum) == before


def test_resume_after_a_signal_equals_never_stopping(tmp_path):
    never = make_module("optimistic")
    make_trainer(9).fit(never, datamodule=make_data())

    stopped = make_module("optimistic")
    _trainer(9, tmp_path, _AtStep(4, _send(signal.SIGTERM)), SignalCheckpoint(), _checkpointing(tmp_path)).fit(
        stopped, datamodule=make_data())
    resumed = make_module("optimistic", init_seed=1)
    make_trainer(9).fit(resumed, datamodule=make_data(), ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    expected, actual = state_of(never), state_of(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_no_signal_no_stop(tmp_path):
    stopper = SignalCheckpoint()
    trainer = make_trainer(6, callbacks=[stopper], default_root_dir=tmp_path)
    trainer.fit(make_module(), datamodule=make_data())
    assert trainer.global_step == 6 and stopper.stopped_by is None


def test_a_second_ctrl_c_interrupts_at_once():
    stopper = SignalCheckpoint()
    stopper._on_signal(signal.SIGINT, None)
    assert stopper.received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        stopper._on_signal(signal.SIGINT, None)


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"signal_names": ["SIGNOPE"]}, "SIGNOPE"),
    ({"signal_names": ["SIGKILL"]}, "SIGKILL"),
    ({"check_every_n_steps": 0}, "check_every_n_steps"),
])
def test_bad_signal_settings_fail_naming_the_value(kwargs, named):
    with pytest.raises(ValueError, match=named):
        SignalCheckpoint(**kwargs)


# -- divergence ------------------------------------------------------------------------------------------------------

HUGE = OptimizerConfig(rule="sgd", lr=1e12)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_diverging_run_stops_naming_the_iteration_the_player_and_the_quantity(scheme, tmp_path):
    module = make_module(scheme, g_optimizer=HUGE, d_optimizer=HUGE)
    trainer = _trainer(50, tmp_path, _checkpointing(tmp_path, every=1))
    with pytest.raises(DivergenceError) as error:
        trainer.fit(module, datamodule=make_data())
    message = str(error.value)
    assert "\n" not in message
    assert f"scheme {scheme}" in message and "field F is" in message
    assert ("generator" in message or "discriminator" in message) and ("NaN" in message or "inf" in message)
    failed_at = int(message.split("Diverged in iteration ")[1].split(" ")[0])
    assert failed_at == trainer.global_step + 1 < 50
    last = tmp_path / "checkpoints" / "last.ckpt"
    if last.exists():  # every checkpoint on disk holds finite weights
        assert all(torch.isfinite(t).all() for t in _saved(last)["state_dict"].values() if t.is_floating_point())


def _poison(trainer, module) -> None:
    with torch.no_grad():
        next(module.discriminator.parameters()).view(-1)[0] = float("nan")


def test_nan_injected_mid_run_keeps_the_last_finite_checkpoint(tmp_path):
    """NaN enters D after iteration 5 (before that iteration's checkpoint): the save is refused, iteration 6 finds
    the NaN field, and last.ckpt stays at iteration 4, the last finite state."""
    trainer = _trainer(50, tmp_path, _AtStep(5, _poison), _checkpointing(tmp_path, every=1))
    with pytest.raises(DivergenceError, match=r"discriminator\.[\w.]+ is not finite; not saving"):
        trainer.fit(make_module("extragradient"), datamodule=make_data())
    saved = _saved(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())
    assert not list((tmp_path / "checkpoints").glob("*.tmp*"))


def test_nan_injected_between_checkpoints_is_found_at_the_next_iteration(tmp_path):
    trainer = _trainer(50, tmp_path, _AtStep(5, _poison), _checkpointing(tmp_path, every=3))
    # NaN in D's weights: both players' fields are NaN at the first evaluation of iteration 6.
    with pytest.raises(DivergenceError, match="Diverged in iteration 6 .*: the generator's field F is NaN and the "
                                              "discriminator's field F is NaN at evaluation 1 of 1"):
        trainer.fit(make_module("simultaneous"), datamodule=make_data())
    assert _saved(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_the_check_can_be_switched_off(tmp_path):
    trainer = make_trainer(3, default_root_dir=tmp_path)
    module = make_module(g_optimizer=HUGE, d_optimizer=HUGE, check_finite=False)
    trainer.fit(module, datamodule=make_data())
    assert trainer.global_step == 3
    assert first_non_finite_parameter({"generator": module.generator, "discriminator": module.discriminator})


def test_finite_check_names_the_first_non_finite_evaluation_and_player():
    check = FiniteCheck()
    finite = [torch.ones(3), torch.zeros(2)]
    check.record([0, 1], [finite, finite])
    check.record([1], [[torch.ones(2), torch.tensor([1.0, -math.inf])]])
    check.record([0], [[torch.tensor([math.nan])]])
    bad = check.verdict()
    assert (bad.evaluation, bad.evaluations, bad.players, bad.values) == (2, 3, (1,), (math.inf,))
    assert "discriminator's field F is infinite at evaluation 2 of 3" in bad.describe()
    assert check.verdict() is None  # read once
    check.record([0, 1], [finite, finite])
    assert check.verdict() is None
    check.record([0], [[torch.tensor([1e18, -3e18])]])  # huge but finite
    assert check.verdict() is None
    check.record([0, 1], [[torch.tensor([math.nan])], [torch.tensor([math.inf, 1.0])]])
    assert check.verdict().describe() == ("the generator's field F is NaN and the discriminator's field F is infinite "
                                          "at evaluation 1 of 1")


# -- lost ranks ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "lost"), [
    (RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation"), True),
    (RuntimeError("Application timeout caused pair closure"), True),
    (RuntimeError("Connection reset by peer"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("timeout"), False),
])
def test_collective_failures_are_told_from_other_errors(error, lost):
    assert distributed.is_collective_failure(error) is lost


def test_roll_call_without_a_process_group_finds_nobody_missing():
    assert distributed.roll_call() == []


# -- the command, in processes ----------------------------------------------------------------------------------------

def _command(root: Path, max_steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lightning_gan", "fit", "--config", str(QUICKSTART),
            f"--trainer.default_root_dir={root}", f"--trainer.max_steps={max_steps}",
            "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=50",
            "--data.init_args.num_samples=4096", "--data.init_args.batch_size=32",
            "--samples.every_n_steps=0", "--checkpoint.every_n_train_steps=20", *extra]


def _wait_for(path: Path, process: subprocess.Popen, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear within {limit} s"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _same_state(a: Path, b: Path) -> None:
    first, second = _saved(a), _saved(b)
    assert first["global_step"] == second["global_step"]
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key
    for opt_a, opt_b in zip(first["optimizer_states"], second["optimizer_states"]):
        for index, per_param in opt_a["state"].items():
            for key, value in per_param.items():
                if torch.is_tensor(value):
                    assert torch.equal(value, opt_b["state"][index][key]), (index, key)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_sigterm_to_the_command_saves_exits_143_and_resumes_bit_identically(devices, tmp_path):
    """SIGTERM to the process the user started (rank 0; with 2 devices it launched rank 1 itself): every process
    exits 143 within seconds, last.ckpt holds the step it stopped at, and resuming there to step S + 10 gives the
    state of an uninterrupted run to S + 10."""
    ranks = [f"--trainer.devices={devices}", "--trainer.accelerator=cpu"]
    run = tmp_path / "stopped"
    process = subprocess.Popen(_command(run, 100_000, *ranks), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / "checkpoints" / "last.ckpt", process)
        children = _children(process.pid)
        assert len(children) == devices - 1
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert took < 20, took
    time.sleep(1)
    assert not any(_alive(pid) for pid in children)
    assert stderr.strip().splitlines()[-1].startswith("lightning-gan: SIGTERM: saved")
    stopped_at = _saved(run / "checkpoints" / "last.ckpt")["global_step"]
    assert stopped_at > 20  # a checkpoint of the iteration it stopped at, not of the last periodic save

    end = stopped_at + 10
    resumed = subprocess.run([*_command(run, end, *ranks), "--ckpt_path=last"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    never = tmp_path / "never"
    straight = subprocess.run(_command(never, end, *ranks), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    _same_state(run / "checkpoints" / "last.ckpt", never / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_a_frozen_rank_ends_the_job_within_the_timeout_naming_it(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(_command(run, 100_000, "--trainer.devices=2", "--trainer.accelerator=cpu",
                                        "--collective_timeout=5"),
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        _wait_for(run / "checkpoints" / "last.ckpt", process)
        children = _children(process.pid)
        assert len(children) == 1
        os.kill(children[0], signal.SIGSTOP)  # rank 1 freezes (a stuck file system, a dead GPU)
        frozen = time.monotonic()
        _, stderr = process.communicate(timeout=120)
        took = time.monotonic() - frozen
    finally:
        process.kill()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == 4, stderr[-3000:]
    assert took < 5 + 5 + 10, took  # the timeout, the roll call, the exit
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lightning-gan: error: rank 0: a collective failed") and "rank(s) 1 did not answer" in last
    time.sleep(1)
    assert not _alive(children[0])  # the job is over: rank 0 ended the rank it launched


@pytest.mark.slow
def test_a_diverging_command_exits_3_with_one_line_and_no_nan_checkpoint(tmp_path):
    result = subprocess.run(_command(tmp_path, 300, "--model.g_optimizer.lr=1e6", "--model.d_optimizer.lr=1e6",
                                     "--checkpoint.every_n_train_steps=1"),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("lightning-gan: error: Diverged in iteration ")
    assert "Traceback" not in result.stderr
    for path in tmp_path.rglob("*.ckpt"):
        state = _saved(path)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path
