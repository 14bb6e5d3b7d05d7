"""TensorBoard's dashboard: the HPARAMS entry and the custom-scalars page."""

from __future__ import annotations

from typing import Any

from seqstab import internals


def custom_scalars_layout() -> dict:
    """One page with the loss, pre/post-clip norms, gradient flow, spectra and saturation (TensorBoard's CUSTOM SCALARS
    tab)."""
    return {
        "seqstab": {
            "loss": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
            "gradient norm: pre-clip, post-clip, threshold": [
                "Multiline",
                [r"^grad/norm_total$", r"^grad/norm_total_clipped$", r"^grad/clip_threshold$"],
            ],
            "gradient flow: ‖∂L/∂h_1‖ and ‖∂L/∂h_k‖": ["Multiline", [r"^grad_flow/first", r"^grad_flow/last"]],
            "gradient flow: growth per step back in time (>1 explodes)": ["Multiline", [r"^grad_flow/growth"]],
            "W_hh: σ_max and spectral radius vs Pascanu bound": [
                "Multiline",
                [r"^rnn/(sigma_max|spectral_radius|pascanu_bound)"],
            ],
            "saturation: tanh |h| > 0.99, gates < 0.01 or > 0.99, dead ReLUs": ["Multiline", [r"^rnn/saturation/"]],
            "clipped updates and explosion events": ["Multiline", [r"^grad/clipped$", r"^explosion/events$"]],
        }
    }


def write_dashboard(writers, hparams: dict[str, Any] | None = None, metric_tags: list[str] | None = None) -> None:
    """Write the custom-scalars layout and, given ``hparams``, register the run in HPARAMS (flat plain values, with
    ``metric_tags`` as its metric columns).

    Written at fit start, before Lightning's own ``log_hyperparams``: TensorBoard keeps the first HPARAMS entry
    of a run. Its metric columns show the last value of each tagged series, i.e. the run's final metrics.
    """
    if not writers:
        return
    summaries = ()
    if hparams is not None:
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        summaries = hparams_summaries(hparams, {tag: 0.0 for tag in metric_tags or []})
    for writer in writers:
        file_writer = internals.file_writer(writer)
        for summary in summaries:
            file_writer.add_summary(summary)
        writer.add_custom_scalars(custom_scalars_layout())
