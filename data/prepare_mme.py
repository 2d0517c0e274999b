"""Convert a locally downloaded MME benchmark into one evaluation layout (``mixlora.tasks.prepare_mme``).

    python data/prepare_mme.py --src MME_Benchmark_release_version --out data/mme
    python data/prepare_mme.py --parquet test-0000*-of-00004.parquet --out data/mme   # lmms-lab/MME form

The logic lives in the package so that ``mixlora.tasks.mme`` can read a raw release folder in an installed
copy; inputs, output and exit status are described in that module (``--help`` prints them).
"""

import sys

from mixlora.tasks.prepare_mme import *  # noqa: F401,F403
from mixlora.tasks.prepare_mme import main

if __name__ == "__main__":
    sys.exit(main())
