"""Load a native export and run it on saved feeds, in a process of its own: the fresh reload that
``llmdual.native.export.verify_native`` compares with the native model.

    python -m llmdual.native.check PATH FORMAT BACKEND FEEDS.npz OUTPUTS.npz
"""

from __future__ import annotations

import sys

import numpy as np

from llmdual.contract import backend


def main(argv: list[str]) -> int:
    """Run the export at ``PATH`` on each feed ``i/<input>`` of FEEDS; write outputs ``i/<j>`` and ``i/count``."""
    path, format, name, feeds_path, outputs_path = argv
    run, _ = backend(name).load_native(path, format)
    outputs: dict[str, np.ndarray] = {}
    with np.load(feeds_path) as data:
        count = len({key.split("/")[0] for key in data.files})
        for i in range(count):
            results = run({key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(f"{i}/")})
            outputs.update({f"{i}/{j}": r for j, r in enumerate(results)}, **{f"{i}/count": np.array(len(results))})
    np.savez(outputs_path, **outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
