"""The product's server: MONAI Label's ASGI app for this app, behind middleware of our own (run it this way).

    python -m monailabel_app.serve --studies DIR [--host 127.0.0.1] [--port 8000] [--token-file F]
        [--allow-origin URL ...] [--allow-datastore-writes] [--queue-size 4] [--conf KEY VALUE ...]

From the outside in: CORS (no origin unless `--allow-origin`), the bearer token (lib/serving/auth.py;
required unless the host is a loopback address), the body limit (lib/serving/body_limit.py), the
guard (lib/serving/guard.py: the route allow-list, checked /infer requests, the generation queue).
MONAI Label's bare `start_server` has none of this; see README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(APP_DIR))  # the app's `lib` package, importable as MONAI Label imports it for main.py

import uvicorn  # noqa: E402
from monailabel.config import settings  # noqa: E402
from starlette.middleware.cors import CORSMiddleware  # noqa: E402
from starlette.types import ASGIApp  # noqa: E402

from lib.serving.auth import BearerAuth, is_loopback, read_token  # noqa: E402
from lib.serving.body_limit import BodyLimit, body_limit  # noqa: E402
from lib.serving.generation_queue import GenerationQueue  # noqa: E402

logger = logging.getLogger("monailabel_app.serve")

#: Requests admitted at once (one generating, the others waiting): about 4 generations of waiting at most.
DEFAULT_QUEUE_SIZE = 4
#: Open connections uvicorn serves at once; more are answered 503.
MAX_CONNECTIONS = 64
ORIGIN = re.compile(r"https?://[^/\s]+")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: a token is required off loopback, origins are bare scheme://host[:port]."""
    parser = argparse.ArgumentParser(prog="python -m monailabel_app.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=Path, required=True, help="the datastore folder (images by id)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token clients must send")
    parser.add_argument("--allow-origin", action="append", default=[], help="a browser origin CORS admits")
    parser.add_argument("--allow-datastore-writes", action="store_true", help="accept PUT /datastore/image, /label")
    parser.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="requests admitted at once")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args(argv)
    if args.token_file is None and not is_loopback(args.host):
        parser.error(f"--token-file is required when --host is not a loopback address (got {args.host})")
    if not args.studies.is_dir():
        parser.error(f"--studies: {args.studies} is not a folder")
    if args.queue_size < 1:
        parser.error("--queue-size must be at least 1")
    for origin in args.allow_origin:
        if not ORIGIN.fullmatch(origin):
            parser.error(f"--allow-origin: {origin!r} is not an origin (scheme://host[:port], no path)")
    return args


def configure_monai_label(args: argparse.Namespace) -> None:
    """MONAI Label's settings for this app, set before `monailabel.app` is imported (it reads them then)."""
    settings.MONAI_LABEL_APP_DIR = str(APP_DIR)
    settings.MONAI_LABEL_STUDIES = str(args.studies.resolve())
    settings.MONAI_LABEL_APP_CONF = dict(args.conf)
    settings.MONAI_LABEL_SERVER_PORT = args.port
    settings.MONAI_LABEL_TASKS_TRAIN = settings.MONAI_LABEL_TASKS_BATCH_INFER = False
    # One copy of `lib`: MONAI Label would drop the modules imported here and load main.py's own (another QueueFull).
    os.environ["MONAI_LABEL_RELOAD_APP_LIB"] = "false"


def served_app(args: argparse.Namespace, token: str | None) -> ASGIApp:
    """MONAI Label's app with the networks loaded, without its CORS (which echoes any origin), behind ours."""
    configure_monai_label(args)
    from monailabel.app import app as monai_app  # noqa: PLC0415 (needs the settings above)
    from monailabel.interfaces.utils.app import app_instance  # noqa: PLC0415

    monai_app.user_middleware = [m for m in monai_app.user_middleware if m.cls is not CORSMiddleware]
    instance = app_instance()
    from lib.serving.guard import Guard  # noqa: PLC0415 (reads the bundle's `scripts`, importable once the app is)

    guard = Guard(monai_app, instance, GenerationQueue(args.queue_size), args.allow_datastore_writes)
    limit = body_limit(instance.upload_voxel_limit())
    logger.info(
        "serving %s; token %s; CORS origins %s; datastore writes %s; body limit %d bytes; voxel limit %d; queue %d",
        instance.task_names(),
        "required" if token else "off (loopback)",
        args.allow_origin or "none",
        "on" if args.allow_datastore_writes else "off",
        limit,
        instance.upload_voxel_limit(),
        args.queue_size,
    )
    return CORSMiddleware(
        BearerAuth(BodyLimit(guard, limit), token),
        allow_origins=args.allow_origin,
        allow_methods=["GET", "POST", "PUT"],
        allow_headers=["Authorization", "Content-Type"],
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, load the app and serve it until stopped."""
    args = arguments(argv)
    token = read_token(args.token_file) if args.token_file else None
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s")
    uvicorn.run(served_app(args, token), host=args.host, port=args.port, limit_concurrency=MAX_CONNECTIONS)


if __name__ == "__main__":
    main()
