"""Model registry and the tiny offline model builder."""


def quiet() -> None:
    """Silence diffusers' and transformers' progress bars and chatter (workers log instead)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
