"""The one exception type for bad input: the command line prints its message and exits 2."""


class LortError(Exception):
    """Bad input or an impossible request.

    The message is one line that names the file, line or value at fault and, where it
    helps, what to do instead (line breaks in text quoted from other libraries are folded
    into spaces). ``lort.cli`` prints it and exits with code 2.
    """

    def __init__(self, message: str = "", *args) -> None:
        super().__init__(" ".join(str(message).split()), *args)
