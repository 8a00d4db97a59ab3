"""python -m minimoe.engines fingerprints: print the current fingerprints of every mirrored reference function
(the contents of minimoe/engines/verified.py), after you made a fast path match an edited reference again."""

import sys

from minimoe.engines.mirror import _owner_and_attribute, fingerprint
from minimoe.engines.native import all_mirrored_names

if __name__ == "__main__":
    if sys.argv[1:] != ["fingerprints"]:
        sys.exit("usage: python -m minimoe.engines fingerprints")
    print("VERIFIED = {")
    for name in all_mirrored_names():
        owner, attribute = _owner_and_attribute(name)
        print(f"    {name!r}: {fingerprint(getattr(owner, attribute))!r},")
    print("}")
