"""`python -m service` / `attnserve`: will start the HTTP server (the service issue builds it)."""

import sys


def main() -> None:
    print(
        "attnserve: the HTTP service is not built yet (the engine and service issues add it).\n"
        "What works today:\n"
        "  .venv/bin/python -m model.translate 'Open the file'   # the bundled EN→DE translator\n"
        "  .venv/bin/python -m model.evaluate model/checkpoints/en-de --split test\n",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
