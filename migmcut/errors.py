"""User errors: bad input that the CLI reports as one line and exit code 2."""


class UserError(Exception):
    """Something the user gave is wrong; the message says what and what to do."""


class RecipeError(UserError):
    pass


class StoreError(UserError):
    pass


class CheckpointError(UserError):
    pass
