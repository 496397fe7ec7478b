"""Write the docstring-family task: python -m data.write_task_cli --out=DIR [--families=a,b,c] [--per_family=150].

The task and its splits are made by data/docstring_task.py.
"""

from __future__ import annotations

import argparse

from data.docstring_task import DEFAULT_FAMILIES, write_task


def main() -> None:
    parser = argparse.ArgumentParser(description="Write train.csv and validation.csv of the docstring-family task.")
    parser.add_argument("--out", required=True, help="Folder for train.csv and validation.csv.")
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES), help="Standard-library packages, comma-separated.")
    parser.add_argument("--per_family", type=int, default=150, help="Documents per family (both splits together).")
    args = parser.parse_args()
    train, validation = write_task(args.out, tuple(args.families.split(",")), per_family=args.per_family)
    print(f"wrote {train} and {validation}")


if __name__ == "__main__":
    main()
