"""`python -m minimoe.eval ...`: the lm-evaluation-harness's own command line, with `--model minimoe` registered."""

import sys

from minimoe.eval import register

if __name__ == "__main__":
    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()
