"""Data tools of the bundle, as a fire CLI: `python -m scripts <command> --help`."""

import logging

import fire

from scripts.phantoms import write_phantoms

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    fire.Fire({"phantoms": write_phantoms})
