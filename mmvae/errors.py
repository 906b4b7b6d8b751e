"""The exceptions mmvae raises on purpose."""


class InputError(ValueError):
    """Bad user input: the message names the modality, what was expected and what was received."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not match the model it is loaded into."""


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many consecutive steps had a non-finite loss or non-finite gradients."""


class WriteError(OSError):
    """An output could not be written (disk full, read-only folder, file-size limit, I/O error); any previous file
    at `path` is intact. The message is "cannot write PATH: REASON"."""

    def __init__(self, path, cause: OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return self.args[1]


class RunLockedError(InputError):
    """A run folder already has a writer (another `mmvae train` or `Trainer`): the message names its pid and host."""
