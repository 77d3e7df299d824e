"""User errors: bad input that the CLI reports as one line and exit code 2."""


class UserError(Exception):
    """Something the user gave is wrong; the message says what and what to do."""


class RecipeError(UserError):
    pass


class StoreError(UserError):
    pass


class CheckpointError(UserError):
    pass


def quote(text, limit: int = 60) -> str:
    """User input quoted in a message, shortened to `limit` characters ("…" marks the cut)."""
    text = str(text)
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
