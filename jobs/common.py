"""Small helpers every job entrypoint shares: logging set-up and offline defaults."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | int = "INFO") -> None:
    """Configure logging once, in the entrypoint (libraries only call ``logging.getLogger``)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def offline_defaults() -> None:
    """Keep Ray on loopback and Hugging Face libraries off the network unless the user says otherwise."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class UserError(Exception):
    """A problem with the user's input (a path, a value, a config key). ``cli_main`` prints it as one
    line on stderr and exits with code 2; the message names the input and the fix."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's input, not a bug: printed as one line, exit code 2."""
    types: list[type[BaseException]] = [UserError]
    from pipeline.manifest import ManifestError

    types.append(ManifestError)
    from jobs.config import ConfigError

    types.append(ConfigError)
    from pipeline.errors import SetupError

    types.append(SetupError)
    return tuple(types)


def cli_main(prog: str, main, argv: list[str] | None = None) -> int:
    """Run a job's ``main(argv)``: a user error is one line on stderr and exit code 2, never a traceback.

    ``--debug`` anywhere in argv re-raises instead, for a developer who wants the traceback.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return int(main(argv) or 0)
    except user_error_types() as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
