"""Typed exceptions. The CLI turns every CompressError into one line on stderr and exit code 2."""


class CompressError(Exception):
    """Base class: a user-facing problem with a message that names the problem and the fix."""


class UnsupportedModelError(CompressError):
    pass


class InvalidConfigError(CompressError):
    pass


class DataError(CompressError):
    pass


class ArtifactError(CompressError):
    """A model file, ONNX graph or compression.json that is missing, corrupt or inconsistent."""


class GraphPatternError(CompressError):
    """An ONNX graph whose encoder structure was not recognised."""


class ValidationError(CompressError):
    """An exported or transformed artifact that does not match its source within tolerance."""


def first_line(e: BaseException) -> str:
    """The first line of an exception message (ORT and onnx append long C++ context), for error messages."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else e.__class__.__name__)[:200]
