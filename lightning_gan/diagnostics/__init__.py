"""Diagnostics of the game during training: the spectrum of the game Jacobian (and of the players' Hessians)."""

from lightning_gan.diagnostics.callback import (
                                                SpectrumDiagnostics,
                                                isolated_estimate,
                                                plot_spectrum,
)
from lightning_gan.diagnostics.spectrum import (
                                                GameJacobian,
                                                Spectrum,
                                                check_spectrum_request,
                                                game_jacobian_eigenvalues,
                                                parameter_count,
)

__all__ = ["GameJacobian", "Spectrum", "SpectrumDiagnostics", "check_spectrum_request", "game_jacobian_eigenvalues",
           "isolated_estimate", "parameter_count", "plot_spectrum"]
