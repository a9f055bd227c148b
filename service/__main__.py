"""`python -m service` / `attnserve serve`: start the HTTP server (flags: `--help`)."""

from service.api.server import serve
from service.api.settings import parse_args


def main() -> None:
    serve(parse_args())


if __name__ == "__main__":
    main()
