"""User-facing errors: the CLI prints these as one line on stderr and exits with code 2."""


class TFT2VError(Exception):
    """Bad user input (missing file, wrong shape, unknown key, bad value). Message is one line."""


class ConfigError(TFT2VError):
    """An invalid or unknown configuration key or value."""


class CheckpointError(TFT2VError):
    """A checkpoint that cannot be read or does not match the model (missing/unexpected keys)."""
