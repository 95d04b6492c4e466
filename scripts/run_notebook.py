"""Execute a notebook headless (nbclient) and print what it shows as it arrives.

Used by `make demo`: the agent's streamed replies appear in the terminal while the
notebook runs, and the executed notebook (with every output) is saved for a look later.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient


def _text(content: dict[str, Any]) -> str:
    data = content.get("data") or {}
    if "application/vnd.jupyter.widget-view+json" in data:
        return ""  # a widget (the Cancel button): nothing to print in a terminal
    if "agentrt-snapshot" in str(data.get("text/html", "")):
        return ""  # a widget's copy for saved notebooks: the widget is not printed either
    for mime in ("text/markdown", "text/plain"):
        if mime in data:
            value = data[mime]
            return "".join(value) if isinstance(value, list) else str(value)
    return ""


class PrintingClient(NotebookClient):  # type: ignore[misc]
    """Prints stream output and display updates (only the new tail of each display)."""

    shown: dict[str, str]

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        kind = msg["msg_type"]
        content = msg.get("content", {})
        if kind == "stream":
            sys.stdout.write(content.get("text", ""))
        elif kind in ("display_data", "update_display_data", "execute_result"):
            text = _text(content)
            key = (content.get("transient") or {}).get("display_id") or msg["header"]["msg_id"]
            before = self.shown.get(key)
            if before and text.startswith(before):
                sys.stdout.write(text[len(before) :])
            elif text:
                sys.stdout.write("\n" + text)  # a new display, or one rewritten
            self.shown[key] = text
        elif kind == "error":
            sys.stdout.write(f"\n{content.get('ename')}: {content.get('evalue')}\n")
        sys.stdout.flush()
        return super().process_message(msg, cell, cell_index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    notebook = nbformat.read(args.notebook, as_version=4)
    client = PrintingClient(
        notebook,
        timeout=args.timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(args.notebook.parent)}},
    )
    client.shown = {}
    client.on_cell_execute = lambda cell, cell_index: print(
        f"\n\033[2m--- [{cell_index}] {cell.source.splitlines()[0] if cell.source else ''}\033[0m"
    )
    try:
        client.execute()
    finally:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, args.output)
        print(f"\n\nexecuted notebook saved to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
