"""The exceptions mmvae raises on purpose."""


class InputError(ValueError):
    """Bad user input: the message names the modality, what was expected and what was received."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not match the model it is loaded into."""


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many consecutive steps had a non-finite loss or non-finite gradients."""
