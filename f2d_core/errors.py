"""User-facing errors.

Every error a user can cause (a wrong file, no face, a missing trigger) is an
F2DError whose message says what was found, what was expected and what to do.
They subclass ValueError so hosts that catch ValueError (ComfyUI shows the message
in its error dialog) treat them as bad input rather than as crashes.
"""


class F2DError(ValueError):
    """Base class for every actionable Face2Diffusion error."""

    # ComfyUI titles its error dialog with module.Class, and it names a custom node's modules after
    # their file path; a short stable module keeps that title readable ("face2diffusion.NoFaceError").
    __module__ = "face2diffusion"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = "face2diffusion"


class CheckpointError(F2DError):
    """A weight file is missing, unreadable, unsafe or of the wrong kind."""


class NoFaceError(F2DError):
    """No usable face was found in an image."""


class TriggerError(F2DError):
    """The trigger words are missing from the prompt or cannot be used."""


class ModelFilesMissing(F2DError):
    """Model files are not where they are looked for."""
