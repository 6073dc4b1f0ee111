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
