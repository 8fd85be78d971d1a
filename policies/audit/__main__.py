"""``python -m policies.audit`` (see :mod:`policies.audit`)."""

import sys

from policies.audit import main

sys.exit(main())
