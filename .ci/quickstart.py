"""Print the README's Quickstart commands, so that CI runs exactly what a new user is told to.

    python .ci/quickstart.py install   -> the install part of the first command
    python .ci/quickstart.py job       -> the main job (the rest of the first command)
    python .ci/quickstart.py test      -> the test command
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_blocks(text: str) -> list[str]:
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```[a-z]*\n(.*?)```", section, flags=re.S)]


def main(which: str) -> str:
    blocks = quickstart_blocks(README.read_text(encoding="utf-8"))
    first, test = blocks[0], blocks[1]
    if "\n" in first or "\n" in test or " && " not in first:
        raise SystemExit("README Quickstart: expected one 'install && main job' line and one test line")
    install, job = first.split(" && ", 1)
    return {"install": install, "job": job, "test": test}[which]


if __name__ == "__main__":
    print(main(sys.argv[1]))
