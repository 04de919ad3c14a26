"""`t2vrt`: one click group; each subcommand lives in t2vrt/commands/<name>.py and imports heavy modules lazily."""

from __future__ import annotations

import click

from t2vrt import __version__
from t2vrt.commands import COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="t2vrt")
def cli() -> None:
    """ModelScope text-to-video on one NVIDIA card: export -> build -> generate."""


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    from t2vrt.safety import signals

    signals.install()  # SIGTERM/SIGHUP clean up like Ctrl-C: no temp directories left behind
    cli(prog_name="t2vrt")


if __name__ == "__main__":
    main()
