"""User-facing errors: each carries one clear sentence that the CLI and the page show as is."""


class StudioError(Exception):
    """Base class for every error caused by user input, files or settings (never a bug)."""


class InvalidRequest(StudioError):
    """A setting or input a user gave cannot be used (size, steps, image, mask...); `setting`: the request field
    the sentence is about, where one is (an API names its own parameter after it)."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class ModelLoadError(StudioError):
    """A model folder, file or repo is missing, incomplete, corrupt or of the wrong kind."""


class WordedTwice(ModelLoadError):
    """A model error worded for where it is read: str() for the page (what to do there), `cli_text` for the
    command line (its flags)."""

    def __init__(self, page_text: str, cli_text: str | None = None):
        super().__init__(page_text)
        self.cli_text = cli_text or page_text


class Cancelled(StudioError):
    """The user stopped a generation."""
