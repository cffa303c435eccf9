"""Read the planted direction from a data file shipped in the code snapshot and report it."""

import sys
from pathlib import Path

values = [float(x) for x in Path(sys.argv[1]).read_text().split()]
norm = sum(v * v for v in values) ** 0.5
print(f"planted direction: {len(values)} dims, norm {norm:.3f}")
